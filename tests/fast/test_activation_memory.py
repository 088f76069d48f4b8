"""The lean layers give the plain layers' values and gradients, and save less for the backward pass."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentlab import fast
from latentlab.fast import activation_memory
from latentlab.fast.activation_memory import Conv2d, LayerNorm, geglu, group_norm_act

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """The lean layers take the tests' small tensors too."""
    monkeypatch.setattr(activation_memory, "MIN_ELEMENTS", 0)


def saved_bytes(fn, *inputs) -> int:
    """Bytes of the distinct tensors autograd saves while fn runs, parameters excluded."""
    seen = {}

    def pack(t):
        if isinstance(t, nn.Parameter):
            return t
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(seen.values())


def grads(fn, tensors, seed=0):
    """Output and the gradients of a fixed random projection of it with respect to `tensors`."""
    out = fn()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return [out.detach()] + list(torch.autograd.grad(out, tensors, g))


def close(a, b, tol):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        torch.testing.assert_close(x.float(), y.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("kernel,stride,padding,bias", [(3, 1, 1, True), (3, 2, 1, True), (1, 1, 0, False),
                                                       (3, 2, 0, True)])
def test_frozen_conv_matches_and_saves_no_input(kernel, stride, padding, bias):
    torch.manual_seed(0)
    lean = Conv2d(6, 8, kernel, stride, padding, bias=bias).requires_grad_(False)
    plain = nn.Conv2d(6, 8, kernel, stride, padding, bias=bias).requires_grad_(False)
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    close(grads(lambda: lean(x), [x]), grads(lambda: plain(x), [x]), 1e-5)
    assert saved_bytes(plain, x) >= x.numel() * 4 and saved_bytes(lean, x) == 0


def test_trainable_conv_is_nn_conv2d():
    torch.manual_seed(0)
    lean, x = Conv2d(4, 4, 3, padding=1), torch.randn(1, 4, 5, 5, requires_grad=True)
    plain = nn.Conv2d(4, 4, 3, padding=1)
    plain.load_state_dict(lean.state_dict())
    close(grads(lambda: lean(x), [x, lean.weight, lean.bias]), grads(lambda: plain(x), [x, plain.weight, plain.bias]),
          0)


def test_frozen_conv_under_autocast_returns_autocast_dtype():
    torch.manual_seed(0)
    conv = Conv2d(4, 4, 3, padding=1).requires_grad_(False)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ref = conv(x), nn.Conv2d.forward(conv, x)
    assert y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("trainable", [True, False])
def test_group_norm_act_matches(silu, trainable):
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 8, eps=1e-6).requires_grad_(trainable)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3), norm.bias.normal_(0, 0.3)
    x = (3 + 2 * torch.randn(2, 8, 5, 7)).requires_grad_()
    params = [x] + ([norm.weight, norm.bias] if trainable else [])

    def plain():
        y = F.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
        return F.silu(y) if silu else y

    close(grads(lambda: group_norm_act(x, norm, silu), params), grads(plain, params), 1e-5)


def test_group_norm_act_saves_its_bf16_input_alone():
    norm = nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 16, 16, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = group_norm_act(x, norm, True)
    assert y.dtype == torch.bfloat16
    stats = 2 * 2 * 4 * 4  # mean and 1/std per (sample, group), float32
    assert saved_bytes(lambda: group_norm_act(x, norm, True)) == x.numel() * 2 + stats


@pytest.mark.parametrize("trainable", [True, False])
def test_layer_norm_matches(trainable):
    torch.manual_seed(0)
    lean = LayerNorm(16).requires_grad_(trainable)
    with torch.no_grad():
        lean.weight.normal_(1, 0.3), lean.bias.normal_(0, 0.3)
    x = (1 + torch.randn(3, 5, 16)).requires_grad_()
    params = [x] + ([lean.weight, lean.bias] if trainable else [])
    close(grads(lambda: lean(x), params), grads(lambda: nn.LayerNorm.forward(lean, x), params), 1e-5)


def test_layer_norm_under_autocast_saves_bf16():
    lean = LayerNorm(32)
    x = torch.randn(2, 64, 32, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lean(x).dtype == torch.bfloat16
        assert saved_bytes(lean, x) == x.numel() * 2 + 2 * 2 * 64 * 4  # x, and mean, 1/std in float32
        torch.testing.assert_close(lean(x), nn.LayerNorm.forward(lean, x).to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_geglu_matches_and_saves_two_tensors(dtype):
    torch.manual_seed(0)
    a = torch.randn(4, 10, dtype=dtype, requires_grad=True)
    gate = torch.randn(4, 10, dtype=dtype, requires_grad=True)
    close(grads(lambda: geglu(a, gate), [a, gate]), grads(lambda: a * F.gelu(gate), [a, gate]),
          1e-5 if dtype == torch.float32 else 1e-2)
    assert saved_bytes(geglu, a, gate) == 2 * a.numel() * a.element_size()
    assert saved_bytes(lambda a, g: a * F.gelu(g), a, gate) == 3 * a.numel() * a.element_size()


def test_nothing_recorded_at_inference():
    conv, norm = Conv2d(4, 4, 3, padding=1).requires_grad_(False), LayerNorm(4)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        assert conv(x).grad_fn is None and norm(x.permute(0, 2, 3, 1)).grad_fn is None


@pytest.mark.parametrize("layer", ["group norm + silu", "layer norm"])
def test_bf16_weights_compute_in_bf16_close_to_float32(layer):
    """A frozen bf16 base normalises in bf16 (float32 accumulation): near the float32 result."""
    torch.manual_seed(0)
    if layer == "layer norm":
        lean, x = LayerNorm(16), (2 + torch.randn(3, 5, 16))
        run = lambda m, x: m(x)
    else:
        lean, x = nn.GroupNorm(4, 8), (2 + torch.randn(2, 8, 6, 6))
        run = lambda m, x: group_norm_act(x, m, True)
    with torch.no_grad():
        lean.weight.normal_(1, 0.3), lean.bias.normal_(0, 0.3)
    exact = grads(lambda: run(lean, x.requires_grad_()), [x])
    low = lean.requires_grad_(False).to(torch.bfloat16)
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = grads(lambda: run(low, xb), [xb])
    assert all(t.dtype == torch.bfloat16 for t in ours)
    for a, b in zip(ours, exact):
        torch.testing.assert_close(a.float(), b, atol=0.05, rtol=0.05)


def test_channels_last_tensors_and_gradients():
    """cuDNN returns channels-last gradients; the normalisations read NCHW memory."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    ours = torch.autograd.grad(group_norm_act(x, norm, True), x, g)[0]
    want = torch.autograd.grad(F.silu(F.group_norm(x, 4, norm.weight, norm.bias, norm.eps)), x, g)[0]
    torch.testing.assert_close(ours, want)
    ln, t = LayerNorm(8), torch.randn(2, 8, 6).transpose(1, 2).requires_grad_()  # (2, 6, 8), not contiguous
    gt = torch.randn(2, 8, 6).transpose(1, 2)
    torch.testing.assert_close(torch.autograd.grad(ln(t), t, gt)[0],
                               torch.autograd.grad(nn.LayerNorm.forward(ln, t), t, gt)[0])


@pytest.mark.parametrize("silu", [True, False])
def test_gradient_of_tokens_view(silu):
    """A transformer reads a normalised map as tokens, map.flatten(2).transpose(1, 2): the gradient that comes
    back has the map's shape and the tokens' memory. (CPU kernels given such strides computed wrong numbers
    without an error: LoRA training diverged.)"""
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    g = torch.randn(2, 16, 8)

    def tokens(y):
        return (y.flatten(2).transpose(1, 2) * g).sum()

    ours = torch.autograd.grad(tokens(group_norm_act(x, norm, silu)), x)[0]
    y = F.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
    want = torch.autograd.grad(tokens(F.silu(y) if silu else y), x)[0]
    torch.testing.assert_close(ours, want)


def test_small_activations_take_pytorchs_layers(monkeypatch):
    monkeypatch.setattr(activation_memory, "MIN_ELEMENTS", 1000)
    conv = Conv2d(4, 4, 3, padding=1).requires_grad_(False)
    small, large = torch.randn(1, 4, 5, 5, requires_grad=True), torch.randn(1, 4, 16, 16, requires_grad=True)
    assert type(conv(small).grad_fn).__name__ == "ConvolutionBackward0"
    assert type(conv(large).grad_fn).__name__ == "_FrozenConv2dBackward"


def graph_nodes(out: torch.Tensor) -> int:
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("channels", [(8, 8), (8, 16)])  # the identity shortcut, and a 1x1 convolution
@pytest.mark.parametrize("embedding", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: a frozen bf16 base under autocast
def test_frozen_res_block_is_one_node_with_the_blocks_values_and_input_gradient(channels, embedding, dtype,
                                                                                  monkeypatch):
    """A frozen residual block trains (passes gradients to its input) as one node, with the output and the
    input's gradient of its layers one by one, and saves no more than they do."""
    from latentlab.models.blocks import ResBlock

    torch.manual_seed(0)
    block = ResBlock(*channels, embed_dim=12 if embedding else None, groups=4, eps=1e-5,
                     time_conditioning="additive").requires_grad_(False).to(dtype)
    fast.install(block)
    x = torch.randn(2, channels[0], 6, 6, requires_grad=True)
    emb = torch.randn(2, 12)
    autocast = dtype == torch.bfloat16

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return block(x, emb if embedding else None)

    nodes, ours = graph_nodes(run()), grads(run, [x])
    saved = saved_bytes(run)
    monkeypatch.setattr(activation_memory, "frozen_res_block", lambda *args: None)
    monkeypatch.setattr("latentlab.fast.modules.frozen_res_block", lambda *args: None)
    layers, layers_saved = grads(run, [x]), saved_bytes(run)
    assert nodes == 1 + 1 and graph_nodes(run()) > 5  # ours, and x's AccumulateGrad
    close(ours, layers, 2e-2 if autocast else 1e-5)
    assert saved <= layers_saved


def test_frozen_res_block_steps_aside_for_a_trained_weight():
    from latentlab.adapters import add_lora
    from latentlab.models.blocks import ResBlock

    block = ResBlock(8, 8, groups=4, time_conditioning="additive").requires_grad_(False)
    fast.install(block)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert activation_memory.frozen_res_block(block, x, None) is not None
    block.norm1.weight.requires_grad_(True)
    assert activation_memory.frozen_res_block(block, x, None) is None
    block.norm1.weight.requires_grad_(False)
    add_lora(block, rank=2, targets=["conv2"])
    assert activation_memory.frozen_res_block(block, x, None) is None

