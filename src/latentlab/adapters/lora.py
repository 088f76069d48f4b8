"""Low-Rank Adaptation (Hu et al. 2021): W = W0 + (alpha / r) B A, with W0 frozen.

A linear layer W0 (out x in) or a convolution W0 (out x in x k x k) is wrapped in a `LoRALayer`,
which keeps W0 as `base` and adds, per named adapter, a down-projection A (r x in, or r x in x k x k:
a convolution with W0's kernel, stride and padding) and an up-projection B (out x r, or a 1x1
convolution). A starts like a linear layer's weight, B at zero, so a new adapter leaves the
output unchanged. The layer computes

    h = W0 x + sum_a  s_a (alpha_a / r_a) B_a A_a dropout(x)

with `s_a` the adapter's scale (the multiplier a user sets: 0 removes it exactly, 1 is as trained).
An adapter can be merged into W0 (no added latency) and unmerged again.

`LoRALayer` implements the adapter interface (adapters/base.py). Adapters are injected by module-name
patterns (`add_lora`, adapters/inject.py), so the networks' code never mentions them: a pattern matches
a module whose dotted name ends with it ("to_q" matches
"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"); patterns are regular expressions.

The adapter's weights are named like PEFT's, relative to the model: `<module>.lora_A.weight` (A) and
`<module>.lora_B.weight` (B); io/lora_files.py translates the ecosystem's file formats to these.
"""

from __future__ import annotations

import math
import re
from types import MappingProxyType
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentlabError
from .base import AdapterDict, AdapterLayer, check_adapter_name, check_float32
from .inject import (adapter_layers, adapter_state_dict, adapters_of, layers_with, merge, remove, set_scale,
                     target_modules, trainable, unchanged_on_error, unmerge, wrap)

# the default targets: the attention projections (q, k, v, out) of the U-Net's self- and cross-attention
UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
# and optionally its convolutions: the residual blocks' and the transformers' 1x1 projections
UNET_CONVOLUTIONS = ("conv1", "conv2", "conv_shortcut", "proj_in", "proj_out")
# a text encoder's attention and feed-forward layers: ours and SD's CLIP (transformers' names), and BERT
TEXT_ENCODER = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
                "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2",
                "query", "key", "value", "attention.output.dense", "intermediate.dense", r"\d+\.output\.dense")
DEFAULT_ADAPTER = "default"


class LoRALayer(AdapterLayer):
    """A frozen nn.Linear or nn.Conv2d (`base`) plus any number of named low-rank adapters. A 1x1 convolution
    also takes tokens (B, N, C), as the linear layer over channels it is."""

    label = "LoRA"

    def __init__(self, base: nn.Linear | nn.Conv2d):
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise LatentlabError(f"LoRA wraps linear layers and convolutions, not {type(base).__name__}")
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise LatentlabError(f"LoRA needs an ungrouped convolution; this one has {base.groups} groups")
        super().__init__(base)
        self.lora_A, self.lora_B = AdapterDict(), AdapterDict()
        self.lora_dropout = AdapterDict()
        self._alpha: dict[str, float] = {}

    alpha = property(lambda self: MappingProxyType(self._alpha), doc="adapter -> alpha")

    def create(self, name: str, rank: int = 4, alpha: float | None = None, dropout: float = 0.0,
               dtype: torch.dtype | None = None) -> None:
        """A (r x in, or a convolution with W0's kernel, stride and padding) initialised as nn.Linear's weight,
        B (out x r, or a 1x1 convolution) at zero; the weights float32 unless `dtype` says otherwise."""
        if rank < 1:
            raise LatentlabError(f"LoRA rank must be a positive integer, got {rank}")
        if alpha is not None:
            check_float32("LoRA alpha", alpha)
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

    def destroy(self, name: str) -> None:
        for table in (self.lora_A, self.lora_B, self.lora_dropout):
            del table[name]
        del self._alpha[name]

    def rank(self, name: str) -> int:
        return self.lora_A[name].weight.shape[0]

    def scaling(self, name: str) -> float:
        """s alpha / r: the factor of B A in W."""
        return self._scale[name] * self._alpha[name] / self.rank(name)

    def merge_factor(self, name: str) -> float:
        return self.scaling(name)

    def trainable(self, name: str) -> list[nn.Parameter]:
        return [self.lora_A[name].weight, self.lora_B[name].weight]

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {"lora_A.weight": self.lora_A[name].weight.detach(), "lora_B.weight": self.lora_B[name].weight.detach()}

    def delta_weight(self, name: str, factor: float | None = None) -> torch.Tensor:
        """(alpha / r) s B A in W0's shape, in float32 (at `factor` instead of s alpha / r when given)."""
        A, B = self.lora_A[name].weight.float(), self.lora_B[name].weight.float()
        delta = (B.flatten(1) @ A.flatten(1)).view(self.base.weight.shape)
        return delta * (self.scaling(name) if factor is None else factor)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.on_tokens(x)
        out = self.product(self.base.weight, x, tokens, self.base.bias) if tokens else self.base(x)
        for name in self.active():  # (scale 0 is exactly the base layer)
            out = out + self.delta(name, x)
        return out

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """s (alpha / r) B A dropout(x), with A and B in x's dtype."""
        tokens = self.on_tokens(x)
        A, B = self.lora_A[name].weight.to(x.dtype), self.lora_B[name].weight.to(x.dtype)
        h = self.product(A, self.lora_dropout[name](x), tokens, down=True)
        return self.scaling(name) * self.product(B, h, tokens)

    def on_tokens(self, x: torch.Tensor) -> bool:
        """Whether x is tokens (B, N, C) for a convolution (a 1x1 one: a linear layer over channels)."""
        return x.dim() == 3 and isinstance(self.base, nn.Conv2d)

    def product(self, weight: torch.Tensor, x: torch.Tensor, tokens: bool, bias: torch.Tensor | None = None,
                down: bool = False) -> torch.Tensor:
        """x through W0's kind of layer with `weight`: a linear map, or a convolution (A's with W0's kernel,
        stride and padding, `down`; B's 1x1)."""
        base = self.base
        if isinstance(base, nn.Linear) or tokens:
            if tokens and base.kernel_size != (1, 1):
                raise LatentlabError(f"a {base.kernel_size} convolution cannot be applied to tokens")
            return F.linear(x, weight.flatten(1), bias)
        if down:
            return F.conv2d(x, weight, bias, base.stride, base.padding, base.dilation)
        return F.conv2d(x, weight, bias)

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self.rank(n)} alpha={self._alpha[n]:g} scale={self._scale[n]:g}"
                         f"{' merged' if n in self._merged else ''}" for n in self.adapters)


# ---------------------------------------------------------------------- models


def lora_layers(model: nn.Module):
    """(name, layer) of every LoRA-wrapped layer, named as the layer it wraps."""
    return adapter_layers(model, LoRALayer)


def add_lora(model: nn.Module, adapter: str = DEFAULT_ADAPTER, *, rank: int | dict[str, int] = 4,
             alpha: float | dict[str, float] | None = None, dropout: float = 0.0,
             targets: Iterable[str] | None = None, dtype: torch.dtype | None = None) -> list[str]:
    """Add adapter `adapter` to every linear layer and convolution of `model` named by `targets`
    (patterns; default UNET_ATTENTION), or, when `rank` is a dict, to exactly the modules it names with
    their ranks. alpha: a number for all, a dict per module, or None (alpha = r: scaling 1). The
    adapter's weights are float32 unless `dtype` says otherwise; W0 is frozen. Returns the module names.
    All or nothing: if any layer refuses the adapter, the model is left as it was."""
    check_adapter_name(adapter, "LoRA")
    targets = list(UNET_ATTENTION if targets is None else targets)
    names = list(rank) if isinstance(rank, dict) else target_modules(model, targets)
    _check_targets(model, names, rank, targets)
    with unchanged_on_error([model], adapter):
        for name in names:
            r = rank[name] if isinstance(rank, dict) else rank
            a = alpha.get(name) if isinstance(alpha, dict) else alpha
            wrap(model, name, LoRALayer).add(adapter, rank=r, alpha=a, dropout=dropout, dtype=dtype)
    return names


def _check_targets(model: nn.Module, names: list[str], rank, targets) -> None:
    if isinstance(rank, dict):
        known = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, LoRALayer))}
        missing = [n for n in names if n not in known]
        if missing:
            raise LatentlabError(f"{len(missing)} LoRA modules are not linear layers or convolutions of this model, "
                                 f"e.g. {', '.join(missing[:3])}")
    elif not names:
        raise LatentlabError(f"no linear layer or convolution of this model matches the LoRA targets "
                             f"{targets}")


def set_lora_scale(model: nn.Module, adapter: str, scale: float) -> None:
    """The adapter's multiplier s (0: the base model exactly); no reloading, merged or not."""
    set_scale(model, adapter, scale, LoRALayer)


def merge_lora(model: nn.Module, adapter: str | None = None) -> None:
    """Merge one adapter (or all) into the base weights."""
    merge(model, adapter, LoRALayer)


def unmerge_lora(model: nn.Module, adapter: str | None = None) -> None:
    unmerge(model, adapter, LoRALayer)


def remove_lora(model: nn.Module, adapter: str | None = None, *, keep_merged: bool = False) -> None:
    """Delete one adapter (or all); a layer left with none is replaced by its base layer again. With
    `keep_merged`, merged adapters stay in the base weights (what `lora merge` writes); otherwise they
    are unmerged first."""
    remove(model, adapter, keep_merged=keep_merged, kind=LoRALayer)


def lora_parameters(model: nn.Module, adapter: str | None = None) -> list[nn.Parameter]:
    return trainable(model, adapter, LoRALayer)


def lora_state_dict(model: nn.Module, adapter: str = DEFAULT_ADAPTER) -> dict[str, torch.Tensor]:
    """{"<module>.lora_A.weight": A, "<module>.lora_B.weight": B} of one adapter."""
    return adapter_state_dict(model, adapter, LoRALayer)


def lora_alphas(model: nn.Module, adapter: str = DEFAULT_ADAPTER) -> dict[str, float]:
    return {name: layer.alpha[adapter] for name, layer in layers_with(model, adapter, LoRALayer)}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter: str = DEFAULT_ADAPTER, *,
                         alphas: dict[str, float] | None = None, scale: float = 1.0,
                         dtype: torch.dtype | None = None) -> list[str]:
    """Add adapter `adapter` holding the weights in `state` (named as lora_state_dict names them) to the
    modules they name, with their ranks. Keys naming no module, A without B and shapes that do not fit
    W0 raise LatentlabError naming them; nothing is added then, nor after any other exception. alphas: per
    module (default alpha = r)."""
    modules = _by_module(state)
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


def _by_module(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {"lora_A": A, "lora_B": B}} from "<module>.lora_A.weight" keys; other keys and halves raise."""
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
        raise LatentlabError(f"{len(incomplete)} LoRA modules lack their A or B weight, "
                             f"e.g. {', '.join(incomplete[:3])}")
    return modules


def _fits(layer: nn.Module, A: torch.Tensor, B: torch.Tensor) -> bool:
    base = layer.base if isinstance(layer, LoRALayer) else layer
    r = A.shape[0]
    if isinstance(base, nn.Linear):
        return tuple(A.shape) == (r, base.in_features) and tuple(B.shape) == (base.out_features, r)
    return (tuple(A.shape) == (r, base.in_channels, *base.kernel_size)
            and tuple(B.shape) == (base.out_channels, r, 1, 1))


def load_lora_parts(parts: dict[str, nn.Module], states: dict[str, tuple[dict, dict]], adapter: str,
                    scale: float = 1.0) -> None:
    """Add one LoRA to several networks ({"unet": unet, "text_encoder": te}) from {part: (state dict, alphas)}
    (io/lora_files.py `lora_states`) as adapter `adapter` at multiplier `scale`, its weights in each network's
    dtype. All or nothing: if any part refuses it, every network is left as it was."""
    with unchanged_on_error([parts[p] for p in states], adapter):
        for p, (state, alphas) in states.items():
            load_lora_state_dict(parts[p], state, adapter, alphas=alphas, scale=scale, dtype=_dtype(parts[p]))


def free_name(models: Iterable[nn.Module], adapter: str | None, default: str) -> str:
    """`adapter`, refused if the models hold it already; None: `default`, made unique by a suffix
    (style, style_2, ...)."""
    check_adapter_name(adapter if adapter is not None else default, "LoRA")
    taken = {a for m in models for a in adapters_of(m)}
    if adapter is None:
        adapter = default
        for i in range(2, len(taken) + 3):
            if adapter not in taken:
                break
            adapter = f"{default}_{i}"
    elif adapter in taken:
        raise LatentlabError(f"a LoRA named {adapter!r} is already loaded; pass another name, or remove it first")
    return adapter


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
