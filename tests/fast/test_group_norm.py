"""group_norm_act: the F.group_norm fallback (CPU, always) and the channels-last Triton kernels (CUDA)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentlab.fast import group_norm as gn
from latentlab.fast.group_norm import group_norm_act, uses_triton

TINY = [(2, 16, 8, 4, 4), (1, 48, 16, 5, 7), (3, 48, 16, 1, 9)]  # (B, C, G, H, W)
SD = [(2, 320, 32, 64, 64), (2, 640, 32, 32, 32), (2, 960, 32, 8, 8), (2, 1280, 32, 16, 16),
      (2, 1920, 32, 8, 8), (16, 2560, 32, 8, 8), (16, 320, 32, 32, 32)]


def make_norm(C: int, G: int, dtype=torch.float32, device="cpu", affine: bool = True) -> nn.GroupNorm:
    """A GroupNorm with non-trivial weights and Stable Diffusion's eps."""
    norm = nn.GroupNorm(G, C, eps=1e-5, affine=affine).to(device=device, dtype=dtype)
    if affine:
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.5)
            norm.bias.normal_(0.0, 0.5)
    return norm


def make_input(B, C, H, W, dtype=torch.float32, device="cpu", channels_last=True) -> torch.Tensor:
    """Activations with a per-channel mean offset of about 10 standard deviations."""
    x = torch.randn(B, C, H, W, device=device) * 0.5 + 5.0 * torch.rand(1, C, 1, 1, device=device).add(0.5)
    x = x.to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x.contiguous()


def reference(x: torch.Tensor, norm: nn.GroupNorm, silu: bool) -> torch.Tensor:
    """silu(group_norm(x)) in float64 on the same (rounded) input."""
    w = norm.weight.double() if norm.weight is not None else None
    b = norm.bias.double() if norm.bias is not None else None
    h = F.group_norm(x.double(), norm.num_groups, w, b, norm.eps)
    return F.silu(h) if silu else h


# -- CPU: the fallback ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", TINY)
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fallback_equals_nn_group_norm(shape, silu, channels_last):
    torch.manual_seed(0)
    B, C, G, H, W = shape
    norm = make_norm(C, G)
    x = make_input(B, C, H, W, channels_last=channels_last)
    with torch.no_grad():
        expected = nn.SiLU()(norm(x)) if silu else norm(x)
        torch.testing.assert_close(group_norm_act(x, norm, silu=silu), expected)


def test_fallback_without_affine_and_with_autograd():
    norm = make_norm(16, 4, affine=False)
    x = make_input(2, 16, 3, 3).requires_grad_()
    y = group_norm_act(x, norm)
    torch.testing.assert_close(y, F.silu(F.group_norm(x, 4, eps=1e-5)))
    y.sum().backward()
    assert x.grad is not None


def test_dispatch_never_chooses_triton_on_cpu():
    norm = make_norm(16, 8)
    x = make_input(2, 16, 4, 4)
    with torch.no_grad():
        assert not uses_triton(x, norm)
        assert not uses_triton(x.to(torch.bfloat16), norm.to(torch.bfloat16))


# -- CUDA: the Triton kernels -----------------------------------------------------------------------

def cuda(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available() or gn.triton is None,
                                              reason="needs a CUDA device and Triton")(test))


@pytest.fixture
def triton_calls(monkeypatch):
    """Counts the calls group_norm_act makes to the Triton path."""
    calls = []
    launch = gn.group_norm_act_triton

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return launch(*args, **kwargs)

    monkeypatch.setattr(gn, "group_norm_act_triton", counted)
    return calls


def check_close(y: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype):
    """float32: 1e-5; half precision: the rounding of the output, ~2e-2 at outputs of size ~1."""
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1.6e-2)
    torch.testing.assert_close(y.double(), expected, **tol)


@cuda
@pytest.mark.parametrize("shape", TINY + SD)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_equals_group_norm(shape, dtype, triton_calls):
    torch.manual_seed(0)
    B, C, G, H, W = shape
    norm = make_norm(C, G, dtype, "cuda")
    x = make_input(B, C, H, W, dtype, "cuda")
    with torch.no_grad():
        y = group_norm_act(x, norm)
    assert len(triton_calls) == 1
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    check_close(y, reference(x, norm, silu=True), dtype)


@cuda
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_triton_options(silu, affine, dtype, triton_calls):
    torch.manual_seed(1)
    norm = make_norm(48, 16, dtype, "cuda", affine=affine)
    x = make_input(2, 48, 5, 7, dtype, "cuda")
    with torch.inference_mode():
        y = group_norm_act(x, norm, silu=silu)
    assert len(triton_calls) == 1
    check_close(y, reference(x, norm, silu), dtype)


@cuda
@pytest.mark.parametrize("shape", [(2, 48, 16, 5, 7), (2, 320, 32, 16, 16), (3, 2560, 32, 9, 7)])
@pytest.mark.parametrize("config", [dict(mode="fused"), dict(mode="fused", BLOCK_G=4, tile=512), dict(mode="split"),
                                    dict(mode="split", tile=256, waves=8.0), dict(mode="split", waves=0.1)])
def test_triton_modes(shape, config):
    """Each mode, with the partial statistics of several pixel chunks merged."""
    torch.manual_seed(2)
    B, C, G, H, W = shape
    norm = make_norm(C, G, torch.float32, "cuda")
    x = make_input(B, C, H, W, torch.float32, "cuda")
    y = gn.group_norm_act_triton(x, G, norm.weight.detach(), norm.bias.detach(), norm.eps, **config)
    check_close(y, reference(x, norm, silu=True), torch.float32)


@cuda
def test_triton_dispatch(triton_calls):
    norm = make_norm(320, 32, torch.bfloat16, "cuda")
    x = make_input(2, 320, 8, 8, torch.bfloat16, "cuda")
    assert not uses_triton(x, norm)  # grad enabled and the weights require grad
    y = group_norm_act(x.requires_grad_(), norm)
    y.float().sum().backward()
    assert x.grad is not None and norm.weight.grad is not None
    with torch.no_grad():
        assert uses_triton(x, norm)  # the same tensors, nothing to record
        assert not uses_triton(x.contiguous(), norm)  # NCHW: PyTorch's own kernel
        assert not uses_triton(make_input(2, 320, 1, 1, torch.bfloat16, "cuda"), norm)  # both layouts
        assert not uses_triton(x.double(), norm)
        gn.USE_TRITON = False
        try:
            assert not uses_triton(x, norm)
        finally:
            gn.USE_TRITON = True
        norm.requires_grad_(False)
    assert uses_triton(x.detach(), norm)  # grad enabled, but nothing requires it
    assert not triton_calls
