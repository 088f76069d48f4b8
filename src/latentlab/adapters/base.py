"""The interface every adapter implements: a frozen base layer plus any number of named adapters.

    h = base(x) + sum_a delta_a(x)

An `AdapterLayer` wraps one layer of a network (`base`, frozen: a linear layer or a convolution for the
weight adapters, an attention for prefixes) and holds adapters by name, each with a multiplier s_a (0
removes it exactly, 1 is as trained). A variant says how an adapter is made (`create`, `destroy`), what
it adds to the output (`delta`), which of its tensors train (`trainable`) and how they are named in a
state dict (`adapter_state_dict`); where its term is linear in x it can be folded into the base weight
(`delta_weight`) and taken out again (`merge`, `unmerge`).
Everything else (names, scales, merging, which adapters add to the output now) lives here once, so a new
variant is a small subclass. LoRA (adapters/lora.py) is the first.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Iterator

import torch
from torch import nn

from ..errors import LatentlabError


def check_float32(what: str, value: float) -> None:
    """A multiplier of float32 weights: finite, and within float32's range."""
    if not math.isfinite(value) or abs(value) > torch.finfo(torch.float32).max:
        raise LatentlabError(f"{what} must be a finite number that float32 holds, got {value}")


def check_adapter_name(name, kind: str = "adapter") -> None:
    """An adapter's name is any non-empty string without "." (a module path's separator)."""
    if not isinstance(name, str) or not name or "." in name:
        raise LatentlabError(f"{kind} name {name!r} must be non-empty and hold no '.'")


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


class AdapterLayer(nn.Module):
    """A frozen base layer (`base`: a linear layer or convolution for most kinds) plus named adapters; see the
    module docstring.

    Subclasses implement `create`, `destroy`, `delta`, `trainable` and `adapter_state_dict`, and, when
    `mergeable`, `delta_weight`."""

    label = "such"  # the kind's name in messages ("LoRA")
    mergeable = True  # whether an adapter's term is a weight added to W0 (then merge and unmerge apply)

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self._scale: dict[str, float] = {}  # the user's multiplier s_a, by adapter, in the order added
        self._merged: dict[str, float] = {}  # adapter -> the factor it was merged into W0 with
        self._active: list[str] | None = None  # active(), until an adapter changes

    scale = property(lambda self: MappingProxyType(self._scale), doc="adapter -> the user's multiplier s")
    merged = property(lambda self: MappingProxyType(self._merged),
                      doc="adapter -> the factor it was merged into W0 with")

    @property
    def adapters(self) -> list[str]:
        return list(self._scale)

    # ------------------------------------------------------------------ what a variant defines

    def create(self, name: str, **options) -> None:
        """Make adapter `name`'s modules (its term starts at zero, so the output is unchanged)."""
        raise NotImplementedError

    def destroy(self, name: str) -> None:
        """Delete adapter `name`'s modules."""
        raise NotImplementedError

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Adapter `name`'s term of the output for input x, at its scale."""
        raise NotImplementedError

    def trainable(self, name: str) -> list[nn.Parameter]:
        """The tensors adapter `name` trains."""
        raise NotImplementedError

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter `name`'s tensors by their keys relative to the layer (LoRA: "lora_A.weight", ...)."""
        raise NotImplementedError

    def merge_factor(self, name: str) -> float:
        """The factor `delta_weight` is taken at when adapter `name` is merged (its scale, unless a variant
        folds more into it)."""
        return self._scale[name]

    def delta_weight(self, name: str, factor: float) -> torch.Tensor:
        """The weight that adds adapter `name`'s term to W0 at `factor`, in W0's shape, in float32."""
        raise NotImplementedError

    # ------------------------------------------------------------------ names and scales

    def add(self, name: str, **options) -> None:
        check_adapter_name(name)
        if name in self._scale:
            raise LatentlabError(f"this layer already holds an adapter named {name!r}")
        self.create(name, **options)
        self._scale[name] = 1.0
        self._active = None

    def remove(self, name: str, keep_merged: bool = False) -> None:
        """Delete the adapter; a merged one is unmerged first, unless `keep_merged` (it then stays in W0)."""
        if keep_merged:
            self._merged.pop(name, None)
        self.unmerge(name)
        self.destroy(name)
        del self._scale[name]
        self._active = None

    def set_scale(self, name: str, scale: float) -> None:
        """Change an adapter's multiplier; a merged adapter is re-merged with it."""
        check_float32("an adapter's scale", scale)
        merged = name in self._merged
        self.unmerge(name)
        self._scale[name] = float(scale)
        self._active = None
        if merged:
            self.merge(name)

    def active(self) -> list[str]:
        """The adapters that add to the output now: unmerged, at a nonzero scale (remembered until one changes)."""
        if self._active is None:
            self._active = [n for n in self._scale if n not in self._merged and self.merge_factor(n) != 0]
        return self._active

    # ------------------------------------------------------------------ merging

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """W0 <- W0 + delta: the adapter costs nothing at inference until unmerged."""
        if name in self._merged:
            return
        if not self.mergeable:
            raise LatentlabError(f"{type(self).__name__} adapters cannot be merged into the base weight")
        factor = self.merge_factor(name)
        self._add_to_base(self.delta_weight(name, factor))
        self._merged[name] = factor
        self._active = None

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self._merged:
            return
        self._add_to_base(-self.delta_weight(name, self._merged.pop(name)))
        self._active = None

    def _add_to_base(self, delta: torch.Tensor) -> None:
        weight = self.base.weight
        weight.copy_((weight.float() + delta).to(weight.dtype))  # summed in float32 whatever W0's dtype

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for name in self.active():  # (scale 0 is exactly the base layer)
            out = out + self.delta(name, x)
        return out
