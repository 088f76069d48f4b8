"""Low-Rank Adaptation (Hu et al. 2021): W = W0 + (alpha / r) B A, with W0 frozen.

A linear layer W0 (out x in) or a convolution W0 (out x in x k x k) is wrapped in a `LoRALayer`,
which keeps W0 as `base` and adds, per named adapter, a down-projection A (r x in, or r x in x k x k:
a convolution with W0's kernel, stride and padding) and an up-projection B (out x r, or a 1x1
convolution). A starts like a linear layer's weight, B at zero, so a new adapter leaves the
output unchanged. The layer computes

    h = W0 x + sum_a  s_a (alpha_a / r_a) B_a A_a dropout(x)

with `s_a` the adapter's scale (the multiplier a user sets: 0 removes it exactly, 1 is as trained).
An adapter can be merged into W0 (no added latency) and unmerged again.

Adapters are injected by module-name patterns (`add_lora`), so the networks' code never mentions
them: a pattern matches a module whose dotted name ends with it ("to_q" matches
"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"); patterns are regular expressions.

The adapter's weights are named like PEFT's, relative to the model: `<module>.lora_A.weight` (A) and
`<module>.lora_B.weight` (B); io/lora_files.py translates the ecosystem's file formats to these.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from types import MappingProxyType
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentlabError
from ..models import activation_memory, lowrank
from ..models.activation_memory import recording
from ..models.checkpointing import first_pass
from ..models.precision import compute_copy, stacked_copy, to_autocast_dtype

# the default targets: the attention projections (q, k, v, out) of the U-Net's self- and cross-attention
UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
# and optionally its convolutions: the residual blocks' and the transformers' 1x1 projections
UNET_CONVOLUTIONS = ("conv1", "conv2", "conv_shortcut", "proj_in", "proj_out")
# a text encoder's attention and feed-forward layers: ours and SD's CLIP (transformers' names), and BERT
TEXT_ENCODER = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
                "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2",
                "query", "key", "value", "attention.output.dense", "intermediate.dense", r"\d+\.output\.dense")
DEFAULT_ADAPTER = "default"


def _check_float32(what: str, value: float) -> None:
    """A multiplier of float32 weights: finite, and within float32's range."""
    if not math.isfinite(value) or abs(value) > torch.finfo(torch.float32).max:
        raise LatentlabError(f"{what} must be a finite number that float32 holds, got {value}")


def check_adapter_name(name) -> None:
    """An adapter's name is any non-empty string without "." (a module path's separator)."""
    if not isinstance(name, str) or not name or "." in name:
        raise LatentlabError(f"LoRA name {name!r} must be non-empty and hold no '.'")


class AdapterDict(nn.ModuleDict):
    """An nn.ModuleDict by adapter name that takes any name: one that is an attribute of the dict (train, to,
    half) or starts with "~" is kept under "~" + name, so that other names keep their state-dict keys
    (`<module>.lora_A.<name>.weight`)."""

    def _key(self, name: str) -> str:
        return f"~{name}" if name.startswith("~") or name not in self._modules and hasattr(self, name) else name

    @staticmethod
    def _name(key: str) -> str:
        return key[1:] if key.startswith("~") else key

    def __getitem__(self, name: str) -> nn.Module:
        return super().__getitem__(self._key(name))

    def __setitem__(self, name: str, module: nn.Module) -> None:
        super().__setitem__(self._key(name), module)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(self._key(name))

    def __contains__(self, name: str) -> bool:
        return super().__contains__(self._key(name))

    def __iter__(self) -> Iterator[str]:
        return map(self._name, super().__iter__())

    def keys(self) -> list[str]:
        return list(self)

    def items(self) -> list[tuple[str, nn.Module]]:
        return [(self._name(k), m) for k, m in super().items()]


class LoRALayer(nn.Module):
    """A frozen nn.Linear or nn.Conv2d (`base`) plus any number of named low-rank adapters."""

    def __init__(self, base: nn.Linear | nn.Conv2d):
        super().__init__()
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise LatentlabError(f"LoRA needs an ungrouped convolution; this one has {base.groups} groups")
        self.base = base
        self.lora_A, self.lora_B = AdapterDict(), AdapterDict()
        self.lora_dropout = AdapterDict()
        self._alpha: dict[str, float] = {}
        self._scale: dict[str, float] = {}  # the user's multiplier s_a
        self._merged: dict[str, float] = {}  # adapter -> the scaling (s alpha / r) it was merged with
        self._active_memo: list[tuple] | None = None  # _adapters_in_use(), until the adapters change

    # read-only views: the methods below change them, and forget what _adapters_in_use() remembered
    alpha = property(lambda self: MappingProxyType(self._alpha), doc="adapter -> alpha")
    scale = property(lambda self: MappingProxyType(self._scale), doc="adapter -> the user's multiplier s")
    merged = property(lambda self: MappingProxyType(self._merged),
                      doc="adapter -> the scaling (s alpha / r) it was merged into W0 with")

    # ------------------------------------------------------------------ adapters

    def add(self, name: str, rank: int, alpha: float | None = None, dropout: float = 0.0,
            dtype: torch.dtype | None = None) -> None:
        check_adapter_name(name)
        if name in self.lora_A:
            raise LatentlabError(f"this layer already holds an adapter named {name!r}")
        if rank < 1:
            raise LatentlabError(f"LoRA rank must be a positive integer, got {rank}")
        if alpha is not None:
            _check_float32("LoRA alpha", alpha)
        base = self.base
        factory = dict(device=base.weight.device, dtype=dtype or torch.float32)
        if isinstance(base, nn.Linear):
            A = nn.Linear(base.in_features, rank, bias=False, **factory)
            B = nn.Linear(rank, base.out_features, bias=False, **factory)
        else:
            A = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                          bias=False, **factory)
            B = nn.Conv2d(rank, base.out_channels, 1, bias=False, **factory)
        nn.init.kaiming_uniform_(A.weight, a=math.sqrt(5))  # as nn.Linear initialises its weight
        nn.init.zeros_(B.weight)
        self.lora_A[name], self.lora_B[name] = A, B
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._alpha[name] = float(rank if alpha is None else alpha)
        self._scale[name] = 1.0
        self._active_memo = None

    def remove(self, name: str, keep_merged: bool = False) -> None:
        """Delete the adapter; a merged one is unmerged first, unless `keep_merged` (it then stays in W0)."""
        if keep_merged:
            self._merged.pop(name, None)
        if name in self._merged:
            self.unmerge(name)
        for table in (self.lora_A, self.lora_B, self.lora_dropout):
            del table[name]
        del self._alpha[name], self._scale[name]
        self._active_memo = None

    @property
    def adapters(self) -> list[str]:
        return list(self.lora_A)

    def rank(self, name: str) -> int:
        return self.lora_A[name].weight.shape[0]

    def scaling(self, name: str) -> float:
        """s alpha / r: the factor of B A in W."""
        return self._scale[name] * self._alpha[name] / self.rank(name)

    def set_scale(self, name: str, scale: float) -> None:
        """Change an adapter's multiplier; a merged adapter is re-merged with it."""
        _check_float32("a LoRA's scale", scale)
        merged = name in self._merged
        if merged:
            self.unmerge(name)
        self._scale[name] = float(scale)
        self._active_memo = None
        if merged:
            self.merge(name)

    # ------------------------------------------------------------------ merging

    def delta_weight(self, name: str, scaling: float | None = None) -> torch.Tensor:
        """(alpha / r) s B A in W0's shape, in float32."""
        A, B = self.lora_A[name].weight.float(), self.lora_B[name].weight.float()
        delta = (B.flatten(1) @ A.flatten(1)).view(self.base.weight.shape)
        return delta * (self.scaling(name) if scaling is None else scaling)

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """W0 <- W0 + delta: the adapter costs nothing at inference until unmerged."""
        if name in self._merged:
            return
        scaling = self.scaling(name)
        self._add_to_base(self.delta_weight(name, scaling))
        self._merged[name] = scaling
        self._active_memo = None

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self._merged:
            return
        self._add_to_base(-self.delta_weight(name, self._merged.pop(name)))
        self._active_memo = None

    def _add_to_base(self, delta: torch.Tensor) -> None:
        weight = self.base.weight
        weight.copy_((weight.float() + delta).to(weight.dtype))  # summed in float32 whatever W0's dtype

    # ------------------------------------------------------------------ forward

    def plain_layer(self) -> nn.Linear | nn.Conv2d | None:
        """W0's layer when no adapter adds anything (each at scale 0 or merged), else None: a network
        that computes a layer's product its own way (GEGLU's halves) then computes exactly W0's output."""
        return None if self._adapters_in_use() else self.base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_autocast_dtype(x)  # one cast, read (and saved) by W0 and by every A
        out = _training_node([self], x)  # training this layer's one adapter
        if out is not None:
            return out
        tokens = x.dim() == 3 and isinstance(self.base, nn.Conv2d)  # a 1x1 convolution applied to (B, N, C)
        out = self._product(self.base.weight, x, tokens, self.base.bias) if tokens else self.base(x)
        for _, scaling, A, B, dropout in self._adapters_in_use():  # (scale 0 is exactly the base layer)
            A, B = _in_dtype(A, B, x.dtype)
            h = self._product(A, dropout(x), tokens, down=True)
            out = torch.add(out, self._product(B, h, tokens), alpha=scaling)
        return out

    @staticmethod
    def stacked(layers: list[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """Each layer's output for the same input x (q, k and v of one attention), computed by one
        `_LoRALinear` node over their stacked weights when each trains one adapter on a frozen linear
        layer; None otherwise (apply them one by one)."""
        if not all(isinstance(layer, LoRALayer) for layer in layers):
            return None
        out = _training_node(layers, to_autocast_dtype(x))
        return None if out is None else out.split([layer.base.weight.shape[0] for layer in layers], dim=-1)

    @staticmethod
    def training_factors(layers: list[nn.Module], x: torch.Tensor) -> lowrank.Factors | None:
        """The low-rank product (models/lowrank.py) that computes these layers' outputs for x, stacked when
        several, in x's dtype: when each is a LoRALayer that trains one adapter (`_trained`) and, for several,
        they share a scaling and have no bias, equal widths and equal ranks (as attention's q, k and v)."""
        if not all(isinstance(layer, LoRALayer) for layer in layers):
            return None
        trained = [layer._trained(x) for layer in layers]
        if None in trained:
            return None
        scaling, dtype = trained[0][0], x.dtype
        A, B = tuple(t[1] for t in trained), tuple(t[2] for t in trained)
        frozen = lowrank.frozen_linear(tuple(layer.base for layer in layers), dtype)  # W0 (stacked), b
        if frozen is None or any(t[0] != scaling for t in trained) or len({a.shape[0] for a in A}) > 1:
            return None  # (stacks of equal layers without bias, of one scaling and one rank, as attention's)
        if len(layers) == 1:
            return frozen._replace(A=_matrix(compute_copy(A[0], dtype)), B=_matrix(compute_copy(B[0], dtype)),
                                   scaling=scaling, params=(*A, *B))
        return frozen._replace(A=stacked_copy(A, dtype), B=stacked_copy(B, dtype, diagonal=True), scaling=scaling,
                               params=(*A, *B))

    def _adapters_in_use(self) -> list[tuple]:
        """(adapter, s alpha / r, A, B, dropout) of each adapter that adds to the output (unmerged, at a nonzero
        scale), remembered until a method changes them."""
        if self._active_memo is None:
            self._active_memo = [(n, s, self.lora_A[n].weight, self.lora_B[n].weight, self.lora_dropout[n])
                                 for n in self.lora_A if n not in self._merged and (s := self.scaling(n)) != 0]
        return self._active_memo

    def _trained(self, x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor] | None:
        """(scaling, A, B) when this layer can train through `_LoRALinear`: one active adapter on a frozen
        linear layer (or 1x1 convolution over tokens), without dropout, while autograd records outside
        torch.compile, or in a checkpointed block's first pass (models/checkpointing.py), which the
        recomputation then repeats product for product. (On the hot path of every training step: few lookups.)"""
        base = self.base
        weight, bias = base.weight, base.bias
        if weight.requires_grad or bias is not None and bias.requires_grad:
            return None
        if not (isinstance(base, nn.Linear) or x.dim() == 3 and isinstance(base, nn.Conv2d)
                and base.kernel_size == (1, 1)):
            return None
        active = self._adapters_in_use()
        if len(active) != 1:
            return None
        _, scaling, A, B, dropout = active[0]
        if dropout.training and isinstance(dropout, nn.Dropout):  # (the trainer keeps the base in eval mode)
            return None
        trains = recording(x, A, B) or first_pass() and activation_memory.ENABLED and A.requires_grad
        return (scaling, A, B) if trains else None

    def _product(self, weight: torch.Tensor, x: torch.Tensor, tokens: bool, bias: torch.Tensor | None = None,
               down: bool = False) -> torch.Tensor:
        base = self.base
        if isinstance(base, nn.Linear) or tokens:
            if tokens and base.kernel_size != (1, 1):
                raise LatentlabError(f"a {base.kernel_size} convolution cannot be applied to tokens")
            return F.linear(x, weight.flatten(1), bias)
        if down:  # A has W0's kernel, stride and padding
            return F.conv2d(x, weight, bias, base.stride, base.padding, base.dilation)
        return F.conv2d(x, weight, bias)

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self.rank(n)} alpha={self._alpha[n]:g} scale={self._scale[n]:g}"
                         f"{' merged' if n in self._merged else ''}" for n in self.lora_A)


def _training_node(layers: list[LoRALayer], x: torch.Tensor) -> torch.Tensor | None:
    """The layers' outputs for input x, side by side on the last dimension, from one `_LoRALinear` node;
    None unless each layer trains one adapter through it (`training_factors`)."""
    f = LoRALayer.training_factors(layers, x)
    return None if f is None else _LoRALinear.apply(x, f, *f.params)


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight, or a 1x1 convolution's as one: (out, in)."""
    return weight if weight.dim() == 2 else weight.flatten(1)


class _LoRALinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T as one autograd node, for training the adapters of frozen linear layers:
    one layer's (W = W0), or those of n layers that read the same x, stacked (models/lowrank.py: q, k and v
    of an attention in three products, not nine).

    The plain composition records seven nodes per layer (W0's product, A's and B's casts and products, the
    scaling, the sum) and adds the two paths' input gradients in a separate pass. W, A and B come in the
    compute dtype (models/precision.py: cast or stacked once per optimiser step); the float32 A_i and B_i
    (`params`) only receive their gradients. Saved: x (which other layers usually save too), the small
    h = x A^T, and the weights in the compute dtype."""

    @staticmethod
    def forward(ctx, x, f, *params):
        x2 = x.reshape(-1, x.shape[-1])
        out, h = lowrank.forward(x2, f)
        ctx.save_for_backward(x2, h, f.W, f.bias, f.A, f.B)
        ctx.f, ctx.x_shape = f._replace(W=None, bias=None, A=None, B=None), x.shape
        return out.view(*x.shape[:-1], f.W.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, h, W, bias, A, B = ctx.saved_tensors
        f, needs = ctx.f._replace(W=W, bias=bias, A=A, B=B), ctx.needs_input_grad
        dx, grads = lowrank.backward(grad.reshape(-1, grad.shape[-1]), x2, h, f, needs[0], any(needs[2:]))
        return (None if dx is None else dx.view(ctx.x_shape)), None, *grads


def _in_dtype(A: torch.Tensor, B: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B in the compute dtype: differentiable casts where autograd records or torch.compile traces,
    else the cached compute copies (sampling reads the same weights step after step)."""
    if torch.compiler.is_compiling() or torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
        return A.to(dtype), B.to(dtype)
    return compute_copy(A, dtype), compute_copy(B, dtype)


# ---------------------------------------------------------------------- models


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(rf"(?:^|\.)(?:{p})$", name) for p in patterns)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    """(name, layer) of every wrapped layer, named as the layer it wraps."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def adapters_of(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for _, layer in lora_layers(model):
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def target_modules(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """The linear layers and convolutions whose names match `targets` (wrapped ones included)."""
    targets = list(targets)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            if _matches(name, targets):
                found.append(name)
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and _matches(name, targets) and not name.endswith(".base") \
                and ".lora_" not in name:
            found.append(name)
    return found


def _put(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule `name` by `module`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child.isdigit():
        parent[int(child)] = module
    else:
        setattr(parent, child, module)


def _wrap(model: nn.Module, name: str) -> LoRALayer:
    module = model.get_submodule(name)
    if isinstance(module, LoRALayer):
        return module
    layer = LoRALayer(module)
    _put(model, name, layer)
    return layer


@contextmanager
def unchanged_on_error(models: Iterable[nn.Module], adapter: str):
    """For a block that adds adapter `adapter` to `models`: if it raises (whatever the exception), the
    adapter is removed where the block added it, the layers it wrapped are unwrapped and requires_grad
    flags are restored, leaving the models as they were."""
    before = [(m, dict(lora_layers(m)), {p: p.requires_grad for p in m.parameters()}) for m in models]
    held = {id(layer) for _, wrapped, _ in before for layer in wrapped.values() if adapter in layer.adapters}
    try:
        yield
    except BaseException:
        for model, wrapped, grads in before:
            for name, layer in list(lora_layers(model)):
                if adapter in layer.adapters and id(layer) not in held:
                    layer.remove(adapter)
                if name not in wrapped:
                    _put(model, name, layer.base)
            for p, grad in grads.items():
                p.requires_grad_(grad)
        raise


def add_lora(model: nn.Module, adapter: str = DEFAULT_ADAPTER, *, rank: int | dict[str, int] = 4,
             alpha: float | dict[str, float] | None = None, dropout: float = 0.0,
             targets: Iterable[str] | None = None, dtype: torch.dtype | None = None) -> list[str]:
    """Add adapter `adapter` to every linear layer and convolution of `model` named by `targets`
    (patterns; default UNET_ATTENTION), or, when `rank` is a dict, to exactly the modules it names with
    their ranks. alpha: a number for all, a dict per module, or None (alpha = r: scaling 1). The
    adapter's weights are float32 unless `dtype` says otherwise; W0 is frozen. Returns the module names.
    All or nothing: if any layer refuses the adapter, the model is left as it was."""
    check_adapter_name(adapter)
    if isinstance(rank, dict):
        names = list(rank)
        known = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, LoRALayer))}
        missing = [n for n in names if n not in known]
        if missing:
            raise LatentlabError(f"{len(missing)} LoRA modules are not linear layers or convolutions of this model, "
                                 f"e.g. {', '.join(missing[:3])}")
    else:
        names = target_modules(model, UNET_ATTENTION if targets is None else targets)
        if not names:
            raise LatentlabError(f"no linear layer or convolution of this model matches the LoRA targets "
                                 f"{list(UNET_ATTENTION if targets is None else targets)}")
    with unchanged_on_error([model], adapter):
        for name in names:
            layer = _wrap(model, name)
            layer.base.requires_grad_(False)
            r = rank[name] if isinstance(rank, dict) else rank
            a = alpha.get(name) if isinstance(alpha, dict) else alpha
            layer.add(adapter, r, a, dropout, dtype)
    return names


def _layers_with(model: nn.Module, adapter: str | None) -> list[tuple[str, LoRALayer]]:
    layers = [(n, l) for n, l in lora_layers(model) if adapter is None or adapter in l.adapters]
    if adapter is not None and not layers:
        raise LatentlabError(f"this model has no LoRA adapter named {adapter!r}; it has: "
                             f"{', '.join(adapters_of(model)) or 'none'}")
    return layers


def _each(model: nn.Module, adapter: str | None):
    for _, layer in _layers_with(model, adapter):
        for name in ([adapter] if adapter is not None else layer.adapters):
            yield layer, name


def set_lora_scale(model: nn.Module, adapter: str, scale: float) -> None:
    """The adapter's multiplier s (0: the base model exactly); no reloading, merged or not."""
    for layer, name in _each(model, adapter):
        layer.set_scale(name, scale)


def merge_lora(model: nn.Module, adapter: str | None = None) -> None:
    """Merge one adapter (or all) into the base weights."""
    for layer, name in _each(model, adapter):
        layer.merge(name)


def unmerge_lora(model: nn.Module, adapter: str | None = None) -> None:
    for layer, name in _each(model, adapter):
        layer.unmerge(name)


def remove_lora(model: nn.Module, adapter: str | None = None, *, keep_merged: bool = False) -> None:
    """Delete one adapter (or all); a layer left with none is replaced by its base layer again. With
    `keep_merged`, merged adapters stay in the base weights (what `lora merge` writes); otherwise they
    are unmerged first."""
    for name, layer in _layers_with(model, adapter):
        for a in [adapter] if adapter is not None else layer.adapters:
            layer.remove(a, keep_merged)
        if not layer.adapters:
            _put(model, name, layer.base)


def lora_parameters(model: nn.Module, adapter: str | None = None) -> list[nn.Parameter]:
    return [p for layer, name in _each(model, adapter)
            for p in (layer.lora_A[name].weight, layer.lora_B[name].weight)]


def lora_state_dict(model: nn.Module, adapter: str = DEFAULT_ADAPTER) -> dict[str, torch.Tensor]:
    """{"<module>.lora_A.weight": A, "<module>.lora_B.weight": B} of one adapter."""
    state = {}
    for name, layer in _layers_with(model, adapter):
        state[f"{name}.lora_A.weight"] = layer.lora_A[adapter].weight.detach()
        state[f"{name}.lora_B.weight"] = layer.lora_B[adapter].weight.detach()
    return state


def lora_alphas(model: nn.Module, adapter: str = DEFAULT_ADAPTER) -> dict[str, float]:
    return {name: layer.alpha[adapter] for name, layer in _layers_with(model, adapter)}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter: str = DEFAULT_ADAPTER, *,
                         alphas: dict[str, float] | None = None, scale: float = 1.0,
                         dtype: torch.dtype | None = None) -> list[str]:
    """Add adapter `adapter` holding the weights in `state` (named as lora_state_dict names them) to the
    modules they name, with their ranks. Keys naming no module, A without B and shapes that do not fit
    W0 raise LatentlabError naming them; nothing is added then, nor after any other exception. alphas: per
    module (default alpha = r)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight", key)
        if match is None:
            unknown.append(key)
        else:
            modules.setdefault(match.group(1), {})[match.group(2)] = tensor
    if unknown:
        raise LatentlabError(f"{len(unknown)} keys are not LoRA weights (<module>.lora_A.weight or .lora_B.weight), "
                             f"e.g. {', '.join(unknown[:3])}")
    incomplete = [m for m, ab in modules.items() if len(ab) != 2]
    if incomplete:
        raise LatentlabError(f"{len(incomplete)} LoRA modules lack their A or B weight, e.g. {', '.join(incomplete[:3])}")
    layers = dict(model.named_modules())
    missing = [m for m in modules if not isinstance(layers.get(m), (nn.Linear, nn.Conv2d, LoRALayer))]
    if missing:
        raise LatentlabError(f"{len(missing)} LoRA modules are not in this model (is the file for another base "
                             f"model?), e.g. {', '.join(sorted(missing)[:3])}")
    bad = [m for m, ab in modules.items() if not _fits(layers[m], ab["lora_A"], ab["lora_B"])]
    if bad:
        raise LatentlabError(f"{len(bad)} LoRA weights do not fit their layers' shapes (another base model, or "
                             f"a wrong rank?), e.g. {', '.join(sorted(bad)[:3])}")
    ranks = {m: ab["lora_A"].shape[0] for m, ab in modules.items()}
    with unchanged_on_error([model], adapter), torch.no_grad():
        add_lora(model, adapter, rank=ranks, alpha=alphas, dtype=dtype)
        for m, ab in modules.items():
            layer = model.get_submodule(m)
            layer.lora_A[adapter].weight.copy_(ab["lora_A"])
            layer.lora_B[adapter].weight.copy_(ab["lora_B"])
            layer.set_scale(adapter, scale)
    return list(modules)


def _fits(layer: nn.Module, A: torch.Tensor, B: torch.Tensor) -> bool:
    base = layer.base if isinstance(layer, LoRALayer) else layer
    r = A.shape[0]
    if isinstance(base, nn.Linear):
        return tuple(A.shape) == (r, base.in_features) and tuple(B.shape) == (base.out_features, r)
    return (tuple(A.shape) == (r, base.in_channels, *base.kernel_size)
            and tuple(B.shape) == (base.out_channels, r, 1, 1))
