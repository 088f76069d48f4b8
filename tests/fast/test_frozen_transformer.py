"""fast/frozen_transformer.py: a frozen transformer block trained through its adapters runs as one node
with the modules' values and gradients, in every case a trainer meets, and steps aside where it does not
apply."""

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from latentlab import fast
from latentlab.adapters import add_lora
from latentlab.fast import activation_memory, frozen_transformer
from latentlab.models import UNet
from latentlab.models.attention import SpatialTransformer, TransformerBlock
from latentlab.training.presets import preset

pytestmark = pytest.mark.usefixtures("one_thread")

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
EVERYTHING = ATTENTION + ["ff.net.0.proj", "ff.net.2"]
NODE = "_FrozenTransformerBlockBackward"


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    monkeypatch.setattr(activation_memory, "MIN_ELEMENTS", 0)


def lora_block(targets, dtype=torch.float64, base_dtype=None):
    """The same block whatever the dtypes: made in float64, then the base cast to base_dtype and the
    adapters to dtype."""
    torch.manual_seed(0)
    block = TransformerBlock(32, 16, head_dim=8).eval().double().requires_grad_(False)
    if targets:
        add_lora(block, rank=2, alpha=3, targets=targets, dtype=torch.float64)
    for name, p in block.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
        p.data = p.data.to(dtype if "lora_" in name else base_dtype or dtype)
    fast.install(block)
    return block


def run(block, x, context, mask, fused, monkeypatch, autocast=False):
    """(output, its grad_fn's name, gradients of x, context (where they train) and the trained parameters), with
    the speed wing (`fused`) or the plain modules."""
    (fast.install if fused else fast.uninstall)(block)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = block(x, context, mask)
    inputs = [t for t in (x, context) if t.requires_grad] + [p for p in block.parameters() if p.requires_grad]
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(out.dtype)
    return out, type(out.grad_fn).__name__, torch.autograd.grad(out, inputs, g)


def inputs(dtype=torch.float64, x_grad=True, context_grad=False, masked=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 32, generator=g, dtype=torch.float64).to(dtype).requires_grad_(x_grad)
    context = torch.randn(2, 5, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_(context_grad)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]]) if masked else None
    return x, context, mask


@pytest.mark.parametrize("targets, x_grad, context_grad, masked", [
    (targets, *flags) for targets in (ATTENTION, EVERYTHING, ["ff.net.2"], ["to_out.0"], [])
    for flags in itertools.product([True, False], [True, False], [False, True])])
def test_one_node_with_the_modules_values_and_gradients(targets, x_grad, context_grad, masked, monkeypatch):
    """float64, so any difference is a wrong formula: the output and every gradient (the tokens', the
    text's, each adapter's A and B) agree with the modules' to rounding."""
    block = lora_block(targets)
    x, context, mask = inputs(x_grad=x_grad, context_grad=context_grad, masked=masked)
    if not (targets or x_grad or context_grad):
        return  # nothing to differentiate: the block runs its modules (test_steps_aside_...)
    fused, name, fused_grads = run(block, x, context, mask, True, monkeypatch)
    plain, plain_name, plain_grads = run(block, x, context, mask, False, monkeypatch)
    assert name == NODE and plain_name != NODE
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
    assert len(fused_grads) == len(plain_grads) > 0
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_bf16_autocast_is_as_accurate_as_the_modules(monkeypatch):
    """A bf16 base with float32 adapters under bf16 autocast, as LoRA trains: both paths' gradients are
    compared with the same block in float64; the node's error is no larger than the modules'."""
    exact = run(lora_block(EVERYTHING), *inputs(), True, monkeypatch)[2]
    errors = []
    for fused in (True, False):
        block = lora_block(EVERYTHING, torch.float32, torch.bfloat16)
        x, context, mask = inputs(torch.bfloat16)
        out, name, grads = run(block, x, context, mask, fused, monkeypatch, autocast=True)
        assert out.dtype == torch.bfloat16 and (name == NODE) == fused
        assert all(g.dtype == p.dtype for g, p in zip(grads[1:], (p for p in block.parameters() if p.requires_grad)))
        error = torch.cat([(g.double() - e).flatten() for g, e in zip(grads, exact)]).norm()
        errors.append(error / torch.cat([e.flatten() for e in exact]).norm())
    assert errors[0] < 0.01 and errors[0] <= 1.2 * errors[1]


@pytest.mark.parametrize("case", ["dropout", "lora dropout", "trained norm", "trained base", "mixed stack",
                                  "small map", "no_grad", "saved-tensor hooks", "nothing trains", "disabled"])
def test_steps_aside_where_it_does_not_apply(case, monkeypatch):
    """The modules run instead, with their own values."""
    block = lora_block(["to_q"] if case == "mixed stack" else [] if case == "nothing trains" else ATTENTION)
    x, context, mask = inputs(x_grad=case != "nothing trains")
    if case == "dropout":
        block.attn1.to_out[1].p = 0.1
        block.train()
    elif case == "lora dropout":
        block.requires_grad_(False)
        add_lora(block, "other", rank=2, dropout=0.1, targets=["ff.net.2"], dtype=torch.float64)
        block.ff.net[2].train()
    elif case == "trained norm":
        block.norm2.requires_grad_(True)
    elif case == "trained base":
        block.ff.net[2].requires_grad_(True)
    elif case == "small map":
        monkeypatch.setattr(activation_memory, "MIN_ELEMENTS", x.numel() + 1)
    elif case == "disabled":
        monkeypatch.setattr(activation_memory, "ENABLED", False)
    if case == "no_grad":
        with torch.no_grad():
            assert block(x, context).grad_fn is None
        return
    torch.manual_seed(5)  # the same dropout draws in both runs
    if case == "saved-tensor hooks":
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            out = block(x, context)
    else:
        out = block(x, context)
    assert type(out.grad_fn).__name__ != NODE
    monkeypatch.setattr(frozen_transformer, "ENABLED", False)
    torch.manual_seed(5)
    torch.testing.assert_close(out, block(x, context), rtol=0, atol=0)


@pytest.mark.parametrize("linear_projection, depth, targets, x_grad, context_grad", [
    (True, 1, ATTENTION, True, False), (False, 1, ATTENTION, True, True), (False, 2, EVERYTHING, False, True),
    (True, 2, ATTENTION, False, False), (False, 1, ATTENTION + ["proj_in"], True, False)])
def test_spatial_transformer_is_one_node_with_the_modules_gradients(linear_projection, depth, targets, x_grad,
                                                                     context_grad, monkeypatch):
    """Inside a SpatialTransformer (linear or 1x1-convolution projections, an adapter on one, one or two
    blocks) each block is a node, and the gradients are the modules'."""
    torch.manual_seed(0)
    st = SpatialTransformer(32, 16, depth=depth, head_dim=8, linear_projection=linear_projection).double().eval()
    st.requires_grad_(False)
    add_lora(st, rank=2, alpha=3, targets=targets, dtype=torch.float64)
    for name, p in st.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 32, 3, 4, generator=g, dtype=torch.float64).requires_grad_(x_grad)
    context = torch.randn(2, 5, 16, generator=g, dtype=torch.float64).requires_grad_(context_grad)
    results = []
    for fused in (True, False):
        (fast.install if fused else fast.uninstall)(st)
        out = st(x, context)
        trained = [t for t in (x, context) if t.requires_grad] + [p for p in st.parameters() if p.requires_grad]
        results.append((out, graph_nodes(out), torch.autograd.grad(out.square().sum(), trained)))
    (out, nodes, grads), (plain, plain_nodes, plain_grads) = results
    assert nodes.count(NODE) == depth and NODE not in plain_nodes
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-12)
    for a, b in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def graph_nodes(out: torch.Tensor) -> list[str]:
    """The type names of the nodes in out's graph."""
    seen, stack, names = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def unet_grads(fused: bool, checkpointing: bool, monkeypatch) -> dict[str, torch.Tensor]:
    """The adapters' gradients with the speed wing (`fused`) or the plain modules."""
    torch.manual_seed(0)
    unet = UNet(dataclasses.replace(preset("tiny", "unet"), dropout=0.0)).double().train()
    unet.requires_grad_(False)
    with torch.no_grad():  # the outputs start at zero (UNet._zero_init_outputs), which would stop every gradient
        for p in unet.parameters():
            if not p.any():
                p.normal_(std=0.05)
    add_lora(unet, rank=2, alpha=2, targets=ATTENTION, dtype=torch.float64)
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.05)
    unet.enable_gradient_checkpointing(checkpointing)
    if fused:
        fast.install(unet)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=g).double(), torch.randn(2, 6, 64, generator=g).double()
    out = unet(x, torch.tensor([3, 900]), context)
    if not checkpointing:
        assert (NODE in graph_nodes(out)) == fused
    out.square().mean().backward()
    return {n: p.grad for n, p in unet.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_unet_lora_gradients_are_the_modules(checkpointing, monkeypatch):
    """The whole U-Net (its first block's input carries no gradient), with and without gradient
    checkpointing, whose recomputation runs the node."""
    fused, plain = unet_grads(True, checkpointing, monkeypatch), unet_grads(False, checkpointing, monkeypatch)
    assert fused.keys() == plain.keys() and len(fused) > 0 and all(g.abs().sum() > 0 for g in plain.values())
    for name in fused:
        torch.testing.assert_close(fused[name], plain[name], rtol=0, atol=1e-12, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_bf16_matches_the_modules_to_rounding(monkeypatch):
    """PyTorch's CUDA attention kernels, differentiated from within the node."""
    grads = []
    for fused in (True, False):
        block = lora_block(EVERYTHING, torch.float32, torch.bfloat16).cuda()
        x, context, mask = (t if t is None else t.cuda() for t in inputs(torch.bfloat16, masked=True))
        (fast.install if fused else fast.uninstall)(block)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = block(x, context, mask)
        assert (type(out.grad_fn).__name__ == NODE) == fused
        trained = [x] + [p for p in block.parameters() if p.requires_grad]
        grads.append(torch.cat([g.float().flatten() for g in torch.autograd.grad(out.float().square().sum(), trained)]))
    assert (grads[0] - grads[1]).norm() < 0.01 * grads[1].norm()
