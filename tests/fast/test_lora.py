"""fast/lora.py: LoRA's training node and its stacked form compute plain LoRA's outputs and gradients, and
its compute copies follow the optimiser's steps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentlab import fast
from latentlab.adapters import LoRALayer, add_lora, lora_state_dict, set_lora_scale

# kind -> (layer, input shape): the layers LoRA's training node serves
LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), (3, 6)),
    "linear on tokens": (lambda: nn.Linear(6, 5), (2, 7, 6)),
    "conv 1x1 on tokens": (lambda: nn.Conv2d(6, 5, 1), (2, 7, 6)),  # SD's proj_in applied to (B, N, C)
}


class Net(nn.Module):
    """One layer to adapt, named `layer`."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if x.dim() == 3 and isinstance(layer, nn.Conv2d):  # a 1x1 convolution over tokens, as models/attention.py
            return F.linear(x, layer.weight.flatten(1), layer.bias)
        return layer(x)


def make(kind: str, seed: int = 0) -> tuple[Net, torch.Tensor]:
    torch.manual_seed(seed)
    layer, shape = LAYERS[kind]
    return Net(layer()), torch.randn(shape)


def adapt(net: Net, adapter: str = "default", rank: int = 3, alpha: float | None = 6.0, seed: int = 1) -> None:
    """An adapter with random, nonzero A and B (a trained one, not the identity a new one is)."""
    add_lora(net, adapter, rank=rank, alpha=alpha, targets=["layer"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (net.layer.lora_A[adapter].weight, net.layer.lora_B[adapter].weight):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


LINEAR_KINDS = ["linear", "linear on tokens", "conv 1x1 on tokens"]
pytestmark = pytest.mark.usefixtures("one_thread")


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu,
                                              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)  # on CUDA A's and B's gradients come out of the products in float32
@pytest.mark.parametrize("kind", LINEAR_KINDS)
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("scale", [0.7, 0.5])  # s alpha / r = 1.4, and 1
def test_training_node_gives_autograds_gradients(kind, autocast, scale, device):
    """A frozen linear layer trains its adapter through one node (_LoRALinear); its output and the
    gradients of x, A and B equal autograd's through the plain composition W0 x + s B A x."""
    net, x = make(kind)
    adapt(net)
    set_lora_scale(net, "default", scale)
    fast.install(net)
    net, x = net.to(device), x.to(device)
    layer = net.layer
    if autocast:
        layer.base.to(torch.bfloat16)
    x.requires_grad_(True)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    g = torch.randn(Net(layer.base)(x.to(layer.base.weight.dtype)).shape, device=device)

    def composed():
        dtype = torch.bfloat16 if autocast else torch.float32
        xc, s = x.to(dtype), layer.scaling("default")
        W, b = layer.base.weight.flatten(1).to(dtype), layer.base.bias.to(dtype)
        return F.linear(xc, W, b) + s * F.linear(F.linear(xc, A.flatten(1).to(dtype)), B.flatten(1).to(dtype))

    results = []
    for fn in (lambda: net(x), composed):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = fn()
        results.append([out.detach().float(), *torch.autograd.grad(out, [x, A, B], g.to(out.dtype))])
        assert results[-1][2].dtype == A.dtype
    assert type(net(x).grad_fn).__name__ == "_LoRALinearBackward"
    tol = 2e-2 if autocast else 1e-5
    for ours, want in zip(*results):
        torch.testing.assert_close(ours.float(), want.float(), atol=tol, rtol=tol)


def test_training_node_not_used_with_dropout_or_two_adapters():
    net, x = make("linear")
    add_lora(net, "a", rank=2, dropout=0.5, targets=["layer"])
    fast.install(net)
    assert type(net.train()(x).grad_fn).__name__ != "_LoRALinearBackward"
    net.eval()
    assert type(net(x).grad_fn).__name__ == "_LoRALinearBackward"
    net.layer.lora_dropout.train()  # as the trainer runs it: the base in eval mode, the adapters' dropout on
    assert type(net(x).grad_fn).__name__ != "_LoRALinearBackward"
    net.layer.lora_dropout.eval()
    add_lora(net, "b", rank=2, targets=["layer"])
    assert type(net(x).grad_fn).__name__ != "_LoRALinearBackward"


@pytest.mark.parametrize("fused", [False, True])
def test_training_through_compute_copies_follows_the_optimiser(fused):
    """Under bf16 autocast the training node reads A and B through bf16 copies cast once per optimiser step
    (fast/precision.py): three steps train the same adapter as the plain composition, which casts them
    where it reads them, with either AdamW (the fused one advances no version counter)."""
    nets = []
    for _ in range(2):
        net, x = make("linear on tokens")
        adapt(net)
        net.layer.base.to(torch.bfloat16)
        nets.append(net)
    fast.install(nets[0])
    g = torch.randn(2, 7, 5)

    def composed(layer, x):
        s, bf16 = layer.scaling("default"), torch.bfloat16
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        return F.linear(x, layer.base.weight, layer.base.bias) + s * F.linear(F.linear(x, A.to(bf16)), B.to(bf16))

    for net, forward in zip(nets, (lambda net, x: net(x), lambda net, x: composed(net.layer, x))):
        optimizer = fast.track(torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.05,
                                                 fused=fused))
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = forward(net, x)
            out.backward(g.to(out.dtype))
            optimizer.step()
            optimizer.zero_grad()
        if net is nets[0]:
            assert type(out.grad_fn).__name__ == "_LoRALinearBackward"
    for ours, want in zip(*(lora_state_dict(net).values() for net in nets)):
        torch.testing.assert_close(ours, want, atol=1e-3, rtol=1e-3)


def lora_nodes(out: torch.Tensor) -> int:
    """The `_LoRALinear` nodes in out's graph."""
    seen, stack, count = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ == "_LoRALinearBackward"
        stack.extend(next_node for next_node, _ in node.next_functions)
    return count


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_stacked_projections_train_as_separate_layers(device, cross, autocast, monkeypatch):
    """An attention's q, k and v (a cross-attention's k and v), read from one input, train through one
    stacked node ([W_q; W_k; W_v], [A_q; A_k; A_v], diag(B_q, B_k, B_v)): its output and the gradients of x
    and of every A and B equal those of the layers applied one by one."""
    from latentlab.models.attention import Attention

    torch.manual_seed(0)
    attn = Attention(16, context_dim=12 if cross else None, head_dim=4).to(device)
    add_lora(attn, rank=3, alpha=4.5, targets=["to_q", "to_k", "to_v", "to_out.0"])
    fast.install(attn)
    if autocast:
        for layer in attn.modules():
            if isinstance(layer, LoRALayer):
                layer.base.to(torch.bfloat16)
    params = [p for p in attn.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 5, 16, device=device, requires_grad=True)
    context = torch.randn(2, 7, 12, device=device) if cross else None
    g = torch.randn(2, 5, 16, device=device)

    def run() -> tuple[int, list[torch.Tensor]]:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = attn(x, context)
        return lora_nodes(out), [out.detach().float(), *torch.autograd.grad(out, [x, *params], g.to(out.dtype))]

    nodes, stacked = run()
    monkeypatch.setattr("latentlab.fast.modules.stacked", lambda layers, x: None)  # the projections one by one
    separate_nodes, separate = run()
    assert (nodes, separate_nodes) == (3 if cross else 2, 4)
    tol = 3e-2 if autocast else 1e-5
    for ours, want in zip(stacked, separate):
        assert ours.dtype == want.dtype
        torch.testing.assert_close(ours.float(), want.float(), atol=tol, rtol=tol)
