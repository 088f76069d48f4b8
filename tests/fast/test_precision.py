"""fast/precision.py: compute copies of float32 weights, cast once per change."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from latentlab.fast import precision
from latentlab.fast.precision import compute_copy, stacked_copy


@pytest.fixture(autouse=True)
def no_other_copies(monkeypatch):
    """Only this test's copies: other tests' would be refreshed in the same batched casts."""
    monkeypatch.setattr(precision, "_copies", {})


class CountCasts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.batched = self.single = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.batched += name == "_foreach_copy_"
        self.single += name in ("_to_copy", "copy_")
        return func(*args, **(kwargs or {}))


def weights(n: int = 3) -> list[torch.nn.Parameter]:
    """n trained weights, registered with the speed wing through their optimiser (`step(ws)` steps it)."""
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(4, 5)) for _ in range(n)]
    precision.track(torch.optim.SGD(ws, lr=0.5))
    return ws


def step(ws: list[torch.nn.Parameter], optimizer=torch.optim.SGD, **options) -> None:
    """One step of a tracked optimiser over ws, with unit gradients."""
    for w in ws:
        w.grad = torch.ones_like(w)
    precision.track(optimizer(ws, **{"lr": 0.5, **options})).step()


def test_copy_holds_the_weight_in_the_dtype_and_is_reused():
    w = weights(1)[0]
    copy = compute_copy(w, torch.bfloat16)
    assert copy.dtype == torch.bfloat16 and not copy.requires_grad
    torch.testing.assert_close(copy, w.detach().bfloat16(), atol=0, rtol=0)
    with CountCasts() as casts:
        assert compute_copy(w, torch.bfloat16) is copy
    assert casts.batched == casts.single == 0


def test_the_weights_own_dtype_is_the_weight_itself():
    w = weights(1)[0]
    same = compute_copy(w, torch.float32)
    assert not same.requires_grad and same.data_ptr() == w.data_ptr()


def test_after_an_optimiser_step_every_stale_copy_is_recast_in_one_batched_cast():
    ws = weights()
    copies = [compute_copy(w, torch.bfloat16) for w in ws]
    step(ws, torch.optim.AdamW, lr=0.1, fused=True)  # the fused step advances no version counter
    with CountCasts() as casts:
        fresh = [compute_copy(w, torch.bfloat16) for w in ws]
    assert casts.batched == 1 and casts.single == 0
    for w, copy, new in zip(ws, copies, fresh):
        assert new is copy
        torch.testing.assert_close(new, w.detach().bfloat16(), atol=0, rtol=0)


def test_an_in_place_write_makes_the_copy_stale():
    w = weights(1)[0]
    compute_copy(w, torch.bfloat16)
    with torch.no_grad():
        w.mul_(2)
    torch.testing.assert_close(compute_copy(w, torch.bfloat16), w.detach().bfloat16(), atol=0, rtol=0)
    w.data = torch.zeros(4, 5)  # another tensor's data: the copy follows it too
    assert compute_copy(w, torch.bfloat16).abs().sum() == 0


def test_a_diagonal_stack_holds_its_blocks_and_follows_them():
    """diag(B_1, B_2, B_3) in bf16, zero off the blocks, and current after the blocks change."""
    bs = weights()
    diag = stacked_copy(tuple(bs), torch.bfloat16, diagonal=True)
    torch.testing.assert_close(diag, torch.block_diag(*bs).bfloat16(), atol=0, rtol=0)
    step(bs)
    assert stacked_copy(tuple(bs), torch.bfloat16, diagonal=True) is diag
    torch.testing.assert_close(diag, torch.block_diag(*bs).detach().bfloat16(), atol=0, rtol=0)


def test_each_batched_cast_can_take_the_one_kernel_route(monkeypatch):
    """PyTorch's CUDA _foreach_copy_ copies tensor by tensor unless every pair has the same strides and the
    sources one dtype: the refresh groups its pairs so that each call qualifies, a diagonal included."""
    calls = []
    foreach_copy = torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda dst, src: calls.append((dst, src)) or foreach_copy(dst, src))
    ws, bs = weights(), weights()
    frozen = torch.randn(6, 5)
    stacked_copy(tuple(ws), torch.bfloat16)
    stacked_copy(tuple(bs), torch.bfloat16, diagonal=True)
    compute_copy(frozen, torch.bfloat16)
    step(ws + bs)
    calls.clear()
    stacked_copy(tuple(ws), torch.bfloat16)
    assert len(calls) == 1 and len(calls[0][0]) == 6  # the frozen weight did not change: not copied again
    for dst, src in calls:
        assert len({t.dtype for t in src}) == len({t.dtype for t in dst}) == 1
        assert all(d.stride() == s.stride() for d, s in zip(dst, src))


def test_a_trained_weight_no_tracked_optimiser_steps_is_cast_where_it_is_read():
    """Its changes could not be seen (a fused step advances no version counter): no copy is kept."""
    w = torch.nn.Parameter(torch.randn(4, 5))
    first = compute_copy(w, torch.bfloat16)
    w.grad = torch.ones_like(w)
    torch.optim.AdamW([w], lr=0.1, fused=True).step()
    fresh = compute_copy(w, torch.bfloat16)
    assert fresh is not first and not precision._copies
    torch.testing.assert_close(fresh, w.detach().bfloat16(), atol=0, rtol=0)
    torch.testing.assert_close(stacked_copy((w, w), torch.bfloat16), torch.cat([w, w]).detach().bfloat16())
