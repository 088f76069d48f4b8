"""Mixed precision: cast once what several products read.

Under torch.autocast each matrix product casts its float32 input to bf16 (or fp16) itself, and
autograd keeps each cast for the backward pass. An activation read by several products (the
normalised tokens that q, k and v project, or a LoRA layer's input, read by W0 and by A) is then cast
and stored several times. Casting it once here makes one bf16 tensor that they all read and save.
Likewise a float32 weight read in bf16 step after step: `compute_copy` casts it once per change.
"""

from __future__ import annotations

import weakref

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product of x runs in: autocast's when it is on for x's device and x is floating
    point, else x's own."""
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def to_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """x in autocast's dtype when autocast is on for x's device and x is floating point; else x."""
    return x.to(compute_dtype(x))


# ---------------------------------------------------------------------- compute copies of float32 weights
#
# A trained adapter keeps its weights in float32 (the optimiser's precision) while its products run in
# bf16. Casting each weight where it is read costs two kernels per adapted layer per forward pass, 256
# for SD's attention LoRA, each launched from Python. `compute_copy` keeps one bf16 copy per weight and
# recasts all the stale ones together, in one batched cast (torch._foreach_copy_), the first time one is
# read after it changed: after an optimiser step (any torch.optim optimiser; fused ones do not advance
# version counters, so a step hook tells; weights that need no gradient are not stepped) or an in-place
# write (which advances the weight's version counter). Only the steps of optimisers registered with
# `track(optimizer)` are seen (the trainers register theirs): a trained weight no tracked optimiser steps is
# cast where it is read, never cached. Writes through `.data` are seen by neither: step an optimiser or
# write under torch.no_grad() instead.
# `stacked_copy` keeps several matrices that one product reads together (the projections that read the
# same input) in one buffer, by rows or along the diagonal, refreshed the same way; for frozen weights
# already in the compute dtype that is a second copy (0.1 GiB for SD 1.5's stacked q, k and v).
# The batched cast runs as one kernel per dtype pair on CUDA only where each target has its weight's
# strides (else PyTorch copies them one by one: 300 kernels per step for SD's attention LoRA); a diagonal
# block does not, so its weights are cast into a packed (n, rows, cols) buffer, and each diagonal is
# written from it with one more copy.


class _Copy:
    """Weights arranged in one buffer of a dtype: `targets[i]` is the view of `buffer` that holds weights[i],
    or for a diagonal, of `packed`, whose blocks `unpack` writes onto the diagonal."""

    __slots__ = ("weights", "buffer", "targets", "stamps", "packed")

    def __init__(self, weights: tuple[torch.Tensor, ...], dtype: torch.dtype, diagonal: bool):
        self.weights = [weakref.ref(w) for w in weights]
        self.stamps: list[tuple | None] = [None] * len(weights)
        self.packed = None
        if len(weights) == 1:
            self.buffer = torch.empty_like(weights[0], dtype=dtype, requires_grad=False)
            self.targets = [self.buffer]
            return
        rows = sum(w.shape[0] for w in weights)
        cols = sum(w.shape[1] for w in weights) if diagonal else weights[0].shape[1]
        self.buffer = torch.zeros(rows, cols, dtype=dtype, device=weights[0].device)
        if diagonal and len({w.shape for w in weights}) == 1:
            self.packed = torch.empty(len(weights), *weights[0].shape, dtype=dtype, device=weights[0].device)
            self.targets = list(self.packed.unbind(0))
            return
        self.targets, row, col = [], 0, 0
        for w in weights:
            self.targets.append(self.buffer[row:row + w.shape[0], col:col + w.shape[1]])
            row, col = row + w.shape[0], col + w.shape[1] * diagonal

    def unpack(self) -> None:
        """Write the packed blocks (n, rows, cols) onto the buffer's diagonal, in one copy."""
        n, rows, cols = self.packed.shape
        self.buffer.view(n, rows, n, cols).diagonal(dim1=0, dim2=2).copy_(self.packed.permute(1, 2, 0))

    def fits(self, weights: tuple[torch.Tensor, ...]) -> bool:
        return all(ref() is w and t.shape == w.shape and t.device == w.device
                   for ref, w, t in zip(self.weights, weights, self.targets))

    def stale(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """(target, weight, index) of each weight that changed since it was copied."""
        out = []
        for i, (ref, target) in enumerate(zip(self.weights, self.targets)):
            w = ref()
            if w is not None and self.stamps[i] != _stamp(w):
                out.append((target, w, i))
        return out


def _stamp(w: torch.Tensor) -> tuple[int, int, int]:
    """What changes when w does: its version counter, its storage, and (for a weight that trains) the
    optimiser steps taken."""
    return w._version, _optimizer_steps if w.requires_grad else -1, w.data_ptr()


_copies: dict[tuple, _Copy] = {}
_optimizer_steps = 0
_tracked: dict[int, weakref.ref] = {}  # id -> the weights tracked optimisers step (tensors compare by value)


def track(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Register an optimiser whose steps change weights read through compute copies: after each of its
    steps the copies of the weights it trains are recast when next read. Returns the optimiser."""
    optimizer.register_step_post_hook(_count_step)
    for group in optimizer.param_groups:
        for p in group["params"]:
            _tracked[id(p)] = weakref.ref(p)
            weakref.finalize(p, _tracked.pop, id(p), None)
    return optimizer


def _untracked(w: torch.Tensor) -> bool:
    """A trained weight that no tracked optimiser steps: its changes cannot be seen."""
    ref = _tracked.get(id(w))
    return w.requires_grad and (ref is None or ref() is not w)


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def compute_copy(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype`, detached (the caller routes its gradient to `weight`): a cached copy, current
    with the weight's values; reading a stale one refreshes every stale copy on the weight's device. A
    trained weight that no tracked optimiser steps is cast afresh (its changes could not be seen)."""
    if weight.dtype == dtype:
        return weight.detach()
    if _untracked(weight):
        return weight.detach().to(dtype)
    return _cached((weight,), dtype, False)


def stacked_copy(weights: tuple[torch.Tensor, ...], dtype: torch.dtype, diagonal: bool = False) -> torch.Tensor:
    """Matrices in `dtype` in one cached buffer: stacked by rows ([W1; W2; ...], for one product of an input
    with them all), or along the diagonal of a zero matrix (diag(B1, B2, ...)). Refreshed as compute_copy's."""
    if len(weights) == 1:
        return compute_copy(weights[0], dtype)
    if any(map(_untracked, weights)):
        return _stack(weights, dtype, diagonal)
    return _cached(tuple(weights), dtype, diagonal)


def _stack(weights: tuple[torch.Tensor, ...], dtype: torch.dtype, diagonal: bool) -> torch.Tensor:
    """stacked_copy's matrix built afresh."""
    weights = [w.detach().to(dtype) for w in weights]
    return torch.block_diag(*weights) if diagonal else torch.cat(weights)


def _cached(weights: tuple[torch.Tensor, ...], dtype: torch.dtype, diagonal: bool) -> torch.Tensor:
    key = (*map(id, weights), dtype, diagonal)
    entry = _copies.get(key)
    if entry is None or not entry.fits(weights):
        entry = _copies[key] = _Copy(weights, dtype, diagonal)
        for w in weights:
            weakref.finalize(w, _copies.pop, key, None)
    if any(stamp != _stamp(w) for stamp, w in zip(entry.stamps, weights)):
        _refresh(weights[0].device)
    return entry.buffer


@torch.no_grad()
def _refresh(device: torch.device) -> None:
    """Copy every changed weight on `device` into its buffers: one batched copy per (dtype, dtype, whether
    the target has the weight's strides), then the diagonals that changed."""
    stale = [(entry, *item) for entry in _copies.values() if entry.buffer.device == device for item in entry.stale()]
    groups: dict[tuple, list] = {}
    for entry, target, w, i in stale:
        groups.setdefault((w.dtype, target.dtype, target.stride() == w.stride()), []).append((target, w))
    for pairs in groups.values():
        torch._foreach_copy_([target for target, _ in pairs], [w for _, w in pairs])
    for entry in {id(entry): entry for entry, _, _, _ in stale if entry.packed is not None}.values():
        entry.unpack()
    for entry, _, w, i in stale:
        entry.stamps[i] = _stamp(w)
