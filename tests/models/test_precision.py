"""models/precision.py: compute copies of float32 weights, cast once per change."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from latentlab.models.precision import compute_copy


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
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 5)) for _ in range(n)]


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
    for w in ws:
        w.grad = torch.ones_like(w)
    torch.optim.AdamW(ws, lr=0.1, fused=True).step()  # the fused step advances no version counter
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
