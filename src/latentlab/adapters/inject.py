"""Adapters in a model: wrap its layers by name, and act on every adapted layer at once.

A pattern names the modules whose dotted name ends with it ("to_q" matches
"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"); patterns are regular expressions. The
functions here serve every adapter kind (adapters/base.py `AdapterLayer`); `kind` narrows them to one.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

from ..errors import LatentlabError
from .base import AdapterLayer, check_adapter_name


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(rf"(?:^|\.)(?:{p})$", name) for p in patterns)


def adapter_layers(model: nn.Module, kind: type = AdapterLayer) -> Iterator[tuple[str, AdapterLayer]]:
    """(name, layer) of every adapted layer of `kind` (`is_kind`), named as the layer it wraps."""
    for name, module in model.named_modules():
        if is_kind(module, kind):
            yield name, module


def is_kind(module: nn.Module, kind: type) -> bool:
    """Whether `module` is an adapter layer of `kind`. A subclass with a label of its own is another kind (DoRA
    is not LoRA, though it reuses LoRA's code); one that keeps its class's label is the same kind (the speed
    wing's fast LoRA layer). AdapterLayer: every kind."""
    return isinstance(module, kind) and (kind is AdapterLayer or module.label == kind.label)


def adapters_of(model: nn.Module, kind: type = AdapterLayer) -> list[str]:
    names: dict[str, None] = {}
    for _, layer in adapter_layers(model, kind):
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def target_modules(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """The linear layers and convolutions whose names match `targets` (wrapped ones included)."""
    targets = list(targets)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            if matches(name, targets):
                found.append(name)
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and matches(name, targets) and not _inside_adapter(name):
            found.append(name)
    return found


def _inside_adapter(name: str) -> bool:
    """Whether a module name is an adapted layer's own part: its base, or an adapter's weights."""
    return name.endswith(".base") or ".lora_" in name


def put(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule `name` by `module`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child.isdigit():
        parent[int(child)] = module
    else:
        setattr(parent, child, module)


def wrap(model: nn.Module, name: str, kind: type) -> AdapterLayer:
    """The layer `name` wrapped in an adapter layer of `kind` (itself when it is one already), its base frozen
    (`freeze`)."""
    module = model.get_submodule(name)
    if isinstance(module, AdapterLayer):
        if not is_kind(module, kind):
            raise LatentlabError(f"{name} already holds {type(module).__name__} adapters; one kind per layer")
        return module
    layer = kind(module)
    put(model, name, layer)
    freeze(layer.base)
    return layer


def freeze(module: nn.Module) -> None:
    """Freeze a module's own weights, leaving those of the adapters inside it (LoRA within an attention that
    takes a prefix) as they are."""
    if isinstance(module, AdapterLayer):
        freeze(module.base)
        return
    for p in module.parameters(recurse=False):
        p.requires_grad_(False)
    for child in module.children():
        freeze(child)


@contextmanager
def unchanged_on_error(models: Iterable[nn.Module], adapter: str):
    """For a block that adds adapter `adapter` to `models`: if it raises (whatever the exception), the
    adapter is removed where the block added it, the layers it wrapped are unwrapped and requires_grad
    flags are restored, leaving the models as they were."""
    models = list(models)
    before = [(m, {id(layer) for _, layer in adapter_layers(m)}, {p: p.requires_grad for p in m.parameters()})
              for m in models]
    held = {id(layer) for m in models for _, layer in adapter_layers(m) if adapter in layer.adapters}
    try:
        yield
    except BaseException:
        for model, wrapped, grads in before:
            for name, layer in reversed(list(adapter_layers(model))):  # innermost first: each name stays valid
                if adapter in layer.adapters and id(layer) not in held:
                    layer.remove(adapter)
                if id(layer) not in wrapped:
                    put(model, name, layer.base)
            for p, grad in grads.items():
                p.requires_grad_(grad)
        raise


def add_adapter(model: nn.Module, kind: type, adapter: str, targets: Iterable[str], **options) -> list[str]:
    """Add adapter `adapter` of `kind` (an AdapterLayer subclass; `options` are its `create` keywords) to every
    linear layer and convolution of `model` named by `targets` (patterns), their weights frozen. Returns the
    module names. All or nothing: if any layer refuses the adapter, the model is left as it was."""
    check_adapter_name(adapter, kind.label)
    targets = list(targets)
    names = target_modules(model, targets)
    if not names:
        raise LatentlabError(f"no linear layer or convolution of this model matches the {kind.label} targets {targets}")
    with unchanged_on_error([model], adapter):
        for name in names:
            wrap(model, name, kind).add(adapter, **options)
    return names


def layers_with(model: nn.Module, adapter: str | None, kind: type = AdapterLayer) -> list[tuple[str, AdapterLayer]]:
    """The adapted layers holding `adapter` (None: any); an adapter no layer holds raises."""
    layers = [(n, l) for n, l in adapter_layers(model, kind) if adapter is None or adapter in l.adapters]
    if adapter is not None and not layers:
        raise LatentlabError(f"this model has no {kind.label} adapter named {adapter!r}; it has: "
                             f"{', '.join(adapters_of(model, kind)) or 'none'}")
    return layers


def each(model: nn.Module, adapter: str | None, kind: type = AdapterLayer):
    """(layer, adapter name) for `adapter` (None: every adapter) in each layer holding it."""
    for _, layer in layers_with(model, adapter, kind):
        for name in ([adapter] if adapter is not None else layer.adapters):
            yield layer, name


def set_scale(model: nn.Module, adapter: str, scale: float, kind: type = AdapterLayer) -> None:
    """The adapter's multiplier s (0: the base model exactly); no reloading, merged or not."""
    for layer, name in each(model, adapter, kind):
        layer.set_scale(name, scale)


def merge(model: nn.Module, adapter: str | None = None, kind: type = AdapterLayer) -> None:
    """Merge one adapter (or all) into the base weights."""
    for layer, name in each(model, adapter, kind):
        layer.merge(name)


def unmerge(model: nn.Module, adapter: str | None = None, kind: type = AdapterLayer) -> None:
    for layer, name in each(model, adapter, kind):
        layer.unmerge(name)


def remove(model: nn.Module, adapter: str | None = None, *, keep_merged: bool = False,
           kind: type = AdapterLayer) -> None:
    """Delete one adapter (or all); a layer left with none is replaced by its base layer again. With
    `keep_merged`, merged adapters stay in the base weights; otherwise they are unmerged first."""
    for name, layer in layers_with(model, adapter, kind):
        for a in [adapter] if adapter is not None else layer.adapters:
            layer.remove(a, keep_merged)
        if not layer.adapters:
            put(model, name, layer.base)


def trainable(model: nn.Module, adapter: str | None = None, kind: type = AdapterLayer) -> list[nn.Parameter]:
    """The tensors that adapter `adapter` (None: every adapter) trains."""
    return [p for layer, name in each(model, adapter, kind) for p in layer.trainable(name)]


def adapter_state_dict(model: nn.Module, adapter: str, kind: type = AdapterLayer) -> dict[str, torch.Tensor]:
    """{"<module>.<key>": tensor} of one adapter, with each layer's keys (LoRA: lora_A.weight, lora_B.weight)."""
    return {f"{name}.{key}": t for name, layer in layers_with(model, adapter, kind)
            for key, t in layer.adapter_state_dict(adapter).items()}


def load_adapter_parts(parts: dict[str, nn.Module], states: dict[str, dict[str, tuple[type, dict, dict]]],
                       adapter: str, scale: float = 1.0) -> None:
    """Add adapter `adapter` at multiplier `scale` to several networks ({"unet": unet, "text_encoder": te}) from
    {part: {module: (kind, options, tensors)}} (io/adapter_files.py `adapter_states`): each module wrapped in
    `kind` (an AdapterLayer subclass), the adapter made by `create(**options)` in the network's dtype, then
    given `tensors`, keyed as its `adapter_state_dict`. A tensor may differ from the layer's own by axes of
    size 1 (a 1x1 convolution's weights stored as a linear layer's, a magnitude as (out,) or (out, 1)); a
    prefix stored frozen (`prefix.kv`) is frozen before it takes them. All or nothing: weights that do not fit
    raise LatentlabError naming the modules, and every network is left as it was, whatever the exception."""

    def take(own: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> bool:
        """Copy `stored` into the adapter's own tensors (views of its parameters) if every key and shape fits."""
        if own.keys() != stored.keys():
            return False
        fitted = {}
        for key, t in stored.items():
            if t.shape != own[key].shape and [n for n in t.shape if n != 1] != [n for n in own[key].shape if n != 1]:
                return False
            fitted[key] = t.reshape(own[key].shape)
        for key, t in fitted.items():
            own[key].copy_(t)
        return True

    with unchanged_on_error([parts[p] for p in states], adapter), torch.no_grad():
        for p, modules in states.items():
            dtype = next((q.dtype for q in parts[p].parameters() if q.is_floating_point()), torch.float32)
            bad: dict[str, str] = {}
            for name, (kind, options, tensors) in modules.items():
                layer = wrap(parts[p], name, kind)
                layer.add(adapter, **options, dtype=dtype)
                if "prefix.kv" in tensors:
                    layer.prefix[adapter].freeze()
                if not take(layer.adapter_state_dict(adapter), tensors):
                    bad[name] = kind.label
                layer.set_scale(adapter, scale)
            if bad:
                label = next(iter(bad.values())) if len(set(bad.values())) == 1 else "adapter"
                raise LatentlabError(f"{len(bad)} {label} weights do not fit their layers' shapes (another base model, "
                                     f"or a wrong rank?), e.g. {', '.join(sorted(bad)[:3])}")
