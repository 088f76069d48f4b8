"""fast/checkpointing.py: the recomputed block gives the gradients of the block run once, in every
case a trainer meets (trained inputs or only trained parameters, LoRA on a frozen U-Net, autocast,
dropout, torch.autograd.grad from outside) and saves nothing but its inputs."""

import dataclasses

import pytest
import torch
from torch import nn

from latentlab.adapters import add_lora
from latentlab.fast import activation_memory
from latentlab.models import UNet
from latentlab.fast.checkpointing import checkpoint, first_pass
from latentlab.training.presets import preset


def block():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 8))


def both(net, x, **options):
    """(gradients of x and of net's trained parameters) run plainly, then checkpointed."""
    results = []
    for checkpointed in (False, True):
        state = torch.get_rng_state()
        xi = x.detach().requires_grad_(x.requires_grad)
        y = checkpoint(lambda h: net(h), xi, parameters=list(net.parameters()), **options) if checkpointed else net(xi)
        torch.set_rng_state(state)
        trained = [p for p in net.parameters() if p.requires_grad] + ([xi] if xi.requires_grad else [])
        results.append((y.detach(), torch.autograd.grad(y.square().sum(), trained)))
    return results


@pytest.mark.parametrize("input_grad", [True, False])
def test_gradients_match_the_plain_block(input_grad):
    net = block().eval()
    (y0, g0), (y1, g1) = both(net, torch.randn(4, 8), preserve_rng_state=False)
    assert torch.equal(y0, y1)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))


def test_only_the_parameters_trained():
    """No input carries a gradient (a frozen stem feeds the block): the node still joins the graph."""
    net = block().eval()
    net[0].requires_grad_(False)
    (_, g0), (_, g1) = both(net, torch.randn(4, 8))
    assert len(g1) == 2 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))


def test_dropout_is_replayed_when_asked():
    net = block().train()
    x = torch.randn(64, 8)
    torch.manual_seed(1)
    (y0, g0), (y1, g1) = both(net, x, preserve_rng_state=True)
    assert torch.equal(y0, y1)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))


def test_autocast_state_is_restored_for_the_recomputation():
    net = block().eval()
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = checkpoint(net, x, parameters=list(net.parameters()))
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()  # the recomputation outside autocast would give float32: a mismatch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.autograd.grad(net(x).float().square().sum(), x)[0]
    assert torch.equal(x.grad, want)


def test_saves_only_the_inputs():
    net = block().eval()
    x = torch.randn(4, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        checkpoint(lambda h, scale: net(h) * scale, x, 3.0, parameters=list(net.parameters()))
    assert len(saved) == 1 and saved[0] is x


def CUDA(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


def unet_grads(enabled: bool, lora: bool, compile_backend: str | None = None, bf16: bool = False,
               device: str = "cpu", dropout: float | None = None):
    torch.manual_seed(0)
    dropout = (0.0 if bf16 else 0.1) if dropout is None else dropout
    unet = UNet(dataclasses.replace(preset("tiny", "unet"), dropout=dropout)).train()
    for p in unet.parameters():
        nn.init.normal_(p, std=0.05)
    if lora:
        unet.requires_grad_(False).to(torch.bfloat16 if bf16 else torch.float32)
        add_lora(unet, rank=2, alpha=2, targets=["to_q", "to_k", "to_v", "to_out.0"], dtype=torch.float32)
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p, std=0.05)
    unet.to(device).enable_gradient_checkpointing(enabled)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=g).to(device), torch.randn(2, 6, 64, generator=g).to(device)
    torch.manual_seed(2)
    network = torch.compile(unet, backend=compile_backend) if compile_backend else unet
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        out = network(x, torch.tensor([3, 900], device=device), context)
    out.float().square().mean().backward()
    return {n: p.grad for n, p in unet.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [False, True])
def test_unet_gradients_with_and_without_checkpointing(lora):
    """Dropout on: the recomputation replays the first pass's draws. With LoRA the first block's input
    carries no gradient, and its adapters still get theirs."""
    plain, checkpointed = unet_grads(False, lora), unet_grads(True, lora)
    assert plain.keys() == checkpointed.keys() and all(g is not None for g in checkpointed.values())
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_bf16_first_pass_differs_by_rounding_only(monkeypatch):
    """The first pass runs under no_grad, where the lean layers of fast/activation_memory.py take their
    inference paths (LoRA's training node does not: it is asked for by first_pass()): in bf16 its
    activations differ from the recomputation's by rounding, and so do the gradients (0.02% of their norm
    here; 0.3% before LoRA's node ran in the first pass too)."""
    monkeypatch.setattr(activation_memory, "MIN_ELEMENTS", 0)  # the lean layers at this tiny size too
    plain, checkpointed = unet_grads(False, lora=True, bf16=True), unet_grads(True, lora=True, bf16=True)
    a, b = (torch.cat([g[name].flatten() for name in plain]) for g in (plain, checkpointed))
    assert (a - b).norm() < 0.002 * a.norm()


def test_under_torch_compile_it_hands_over_to_torch_checkpoint():
    """torch.compile traces torch.utils.checkpoint; the compiled U-Net's gradients are the eager ones."""
    eager = unet_grads(True, lora=True)
    torch._dynamo.reset()
    compiled = unet_grads(True, lora=True, compile_backend="aot_eager")
    for name in eager:
        assert torch.allclose(eager[name], compiled[name], atol=1e-5), name


def test_first_pass_is_only_the_no_grad_pass():
    seen = []

    def block(h):
        seen.append((first_pass(), torch.is_grad_enabled()))
        return h * 2

    x = torch.randn(3, requires_grad=True)
    checkpoint(block, x, parameters=[]).sum().backward()
    assert seen == [(True, False), (False, True)] and not first_pass()


@CUDA
def test_on_cuda_dropout_is_replayed_and_bf16_differs_by_rounding():
    plain, checkpointed = unet_grads(False, lora=True, device="cuda"), unet_grads(True, lora=True, device="cuda")
    for name in plain:  # float32, dropout 0.1: the CUDA generator's draws replayed
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5), name
    plain, checkpointed = (unet_grads(enabled, lora=True, bf16=True, device="cuda") for enabled in (False, True))
    a, b = (torch.cat([g[name].flatten() for name in plain]) for g in (plain, checkpointed))
    assert (a - b).norm() < 0.01 * a.norm()
