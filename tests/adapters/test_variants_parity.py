"""adapters/dora.py, loha.py, lokr.py: each against peft's implementation of the same method on the same
weights (one table row per method and option, one per layer kind), and the properties every adapted layer
must have (a new adapter is the identity, scale 0 is the base exactly, merging changes nothing and
unmerging restores W0, removing unwraps)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoHaConfig, LoKrConfig, LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft import set_peft_model_state_dict
from peft.tuners.lokr.layer import factorization as peft_factorization
from torch import nn

from latentlab import fast
from latentlab.adapters import (DoRALayer, LoHaLayer, LoKrLayer, LoRALayer, add_dora, add_loha, add_lokr, add_lora,
                                adapters_of)
from latentlab.adapters.inject import adapter_state_dict, merge, remove, set_scale, trainable, unmerge
from latentlab.adapters.lokr import factorization
from latentlab.errors import LatentlabError

# method -> (ours: add it to `layer`, peft's config of the same method): rank 2 (LoKr: 1 decomposes w1 and
# w2 of these widths, 4 keeps both whole), alpha 3
METHODS = {
    "DoRA": (lambda net, name: add_dora(net, name, rank=2, alpha=3.0, targets=["layer"]),
             lambda: LoraConfig(r=2, lora_alpha=3, target_modules=["layer"], use_dora=True)),
    "LoHa": (lambda net, name: add_loha(net, name, rank=2, alpha=3.0, targets=["layer"]),
             lambda: LoHaConfig(r=2, alpha=3, target_modules=["layer"])),
    "LoHa tucker": (lambda net, name: add_loha(net, name, rank=2, alpha=3.0, tucker=True, targets=["layer"]),
                    lambda: LoHaConfig(r=2, alpha=3, target_modules=["layer"], use_effective_conv2d=True)),
    "LoKr decompose both": (lambda net, name: add_lokr(net, name, rank=1, alpha=3.0, decompose_both=True,
                                                       targets=["layer"]),
                            lambda: LoKrConfig(r=1, alpha=3, target_modules=["layer"], decompose_both=True)),
    "LoKr tucker": (lambda net, name: add_lokr(net, name, rank=1, alpha=3.0, tucker=True, targets=["layer"]),
                    lambda: LoKrConfig(r=1, alpha=3, target_modules=["layer"], use_effective_conv2d=True)),
    "LoKr whole factors": (lambda net, name: add_lokr(net, name, rank=4, alpha=3.0, targets=["layer"]),
                           lambda: LoKrConfig(r=4, alpha=3, target_modules=["layer"])),
    "LoKr factor 2": (lambda net, name: add_lokr(net, name, rank=1, alpha=3.0, factor=2, targets=["layer"]),
                      lambda: LoKrConfig(r=1, alpha=3, target_modules=["layer"], decompose_factor=2)),
}
KIND = {"DoRA": DoRALayer, "LoHa": LoHaLayer, "LoKr": LoKrLayer}

# layer -> (layer, input shape); widths 8 -> 12 give LoKr splits 2 x 4 and 3 x 4
LAYERS = {
    "linear": (lambda: nn.Linear(8, 12), (3, 8)),
    "conv 3x3": (lambda: nn.Conv2d(8, 12, 3, padding=1), (2, 8, 6, 6)),
    "conv 3x3 stride 2": (lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1), (2, 8, 9, 9)),
    "conv 1x1": (lambda: nn.Conv2d(8, 12, 1), (2, 8, 5, 5)),
}
TOKENS = {"linear on tokens": (lambda: nn.Linear(8, 12), (2, 7, 8)),
          "conv 1x1 on tokens": (lambda: nn.Conv2d(8, 12, 1), (2, 7, 8))}  # SD's proj_in on (B, N, C)
PEFT_LAYERS = ["linear", "conv 3x3 stride 2", "conv 1x1"]
FEW = ["DoRA", "LoHa tucker", "LoKr decompose both"]  # the rows that the slower property tests run


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
    layer, shape = {**LAYERS, **TOKENS}[kind]
    return Net(layer()), torch.randn(shape)


def adapt(net: Net, method: str, adapter: str = "default", seed: int = 1) -> None:
    """The method's adapter, every trained tensor moved off its initial value (a trained adapter, not the
    identity a new one is)."""
    METHODS[method][0](net, adapter)
    train(net, adapter, seed)


def train(net: Net, adapter: str = "default", seed: int = 1) -> None:
    """Move every tensor the adapter trains by N(0, 0.3^2) noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.layer.trainable(adapter):
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def kind_of(method: str) -> type:
    return KIND[method.split()[0]]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- parity with peft


@pytest.mark.parametrize("kind", PEFT_LAYERS)
@pytest.mark.parametrize("method", METHODS)
def test_output_and_merged_weight_equal_peft(method, kind):
    """peft's layer of the same method holds our adapter_state_dict under its own keys (loaded by peft's
    set_peft_model_state_dict, no key left over either side) and gives the same output and merged weight."""
    net, x = make(kind)
    theirs = inject_adapter_in_model(METHODS[method][1](), copy.deepcopy(net))
    adapt(net, method)
    state = adapter_state_dict(net, "default")
    assert state.keys() == get_peft_model_state_dict(theirs).keys()
    assert not set_peft_model_state_dict(theirs, state).unexpected_keys
    torch.testing.assert_close(net(x), theirs(x), atol=1e-5, rtol=1e-5)
    merge(net)
    theirs.layer.merge()
    torch.testing.assert_close(net.layer.base.weight, theirs.layer.base_layer.weight, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", PEFT_LAYERS)
def test_dora_magnitude_starts_at_the_weight_norm_and_gradients_equal_peft(kind):
    """m = ||W0||_c per output as peft makes it, and the norm is a constant to the gradient as in peft (and
    section 4.3 of the paper): the same gradients of A, B and m."""
    net, x = make(kind)
    theirs = inject_adapter_in_model(METHODS["DoRA"][1](), copy.deepcopy(net))
    add_dora(net, rank=2, alpha=3.0, targets=["layer"])
    m, W0 = net.layer.magnitude("default"), net.layer.base.weight
    torch.testing.assert_close(m.flatten(), W0.flatten(1).norm(dim=1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m, theirs.layer.lora_magnitude_vector["default"].weight, atol=1e-6, rtol=1e-6)
    train(net, seed=3)
    set_peft_model_state_dict(theirs, adapter_state_dict(net, "default"))
    net(x).square().sum().backward()
    theirs(x).square().sum().backward()
    peft_names = {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B",
                  "lora_magnitude_vector": "lora_magnitude_vector"}
    ours = dict(zip(net.layer.adapter_state_dict("default"), net.layer.trainable("default")))
    for key, p in ours.items():
        other = getattr(theirs.layer, peft_names[key])["default"].weight
        torch.testing.assert_close(p.grad, other.grad, atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.parametrize("kind", ["linear", "conv 3x3 stride 2"])
def test_dora_dropout_in_training_equals_peft(kind):
    """In training, dropout applies to the input of the whole DoRA term (W0 x's part too), as in peft: with the
    same random state, the same mask and output."""
    net, x = make(kind)
    theirs = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=3, lora_dropout=0.5, target_modules=["layer"],
                                                use_dora=True), copy.deepcopy(net))
    add_dora(net, rank=2, alpha=3.0, dropout=0.5, targets=["layer"])
    train(net)
    set_peft_model_state_dict(theirs, adapter_state_dict(net, "default"))
    torch.manual_seed(5)
    ours = net(x)
    torch.manual_seed(5)
    torch.testing.assert_close(ours, theirs(x), atol=1e-5, rtol=1e-5)
    net.eval()
    assert not torch.allclose(net(x), ours)


def test_lokr_splits_widths_as_peft():
    assert all(factorization(n, f) == peft_factorization(n, f)
               for n in range(1, 260) for f in (-1, 0, 1, 2, 3, 4, 8, 16)), "a split differs from peft's"
    assert factorization(320) == (16, 20) and factorization(768, 8) == (8, 96)


# ---------------------------------------------------------------------- properties


@pytest.mark.parametrize("kind", [*LAYERS, *TOKENS])
@pytest.mark.parametrize("method", METHODS)
def test_new_adapter_is_the_identity_and_scale_zero_the_base(method, kind):
    net, x = make(kind)
    want = net(x)
    METHODS[method][0](net, "default")
    assert type(net.layer) is kind_of(method) and torch.equal(net(x), want)
    train(net)
    assert not torch.allclose(net(x), want)
    set_scale(net, "default", 0.0)
    assert torch.equal(net(x), want)


@pytest.mark.parametrize("kind", [*LAYERS, *TOKENS])
@pytest.mark.parametrize("method", METHODS)
def test_merged_gives_the_unmerged_output_and_unmerging_restores_W0(method, kind):
    """Also the output at a multiplier s: W0 x + s (W - W0) x, what merging at s adds to W0."""
    net, x = make(kind)
    W0, base = net.layer.weight.clone(), net(x)
    adapt(net, method)
    full = net(x)
    set_scale(net, "default", 0.5)
    half = net(x)
    torch.testing.assert_close(half, base + 0.5 * (full - base), atol=1e-5, rtol=1e-5)
    merge(net)
    assert net.layer.merged and not torch.equal(net.layer.base.weight, W0)
    torch.testing.assert_close(net(x), half, atol=1e-5, rtol=1e-5)
    unmerge(net)
    torch.testing.assert_close(net.layer.base.weight, W0, atol=1e-6, rtol=0)
    torch.testing.assert_close(net(x), half, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv 3x3 stride 2", "conv 1x1 on tokens"])
@pytest.mark.parametrize("method", FEW)
def test_two_adapters_add_up_merged_or_not_in_any_order(method, kind):
    """Each adapter's term is relative to W0 (DoRA's too: merged adapters are taken out of the weight it
    normalises), so any mix of merged and unmerged adapters gives one output, and unmerging in either order
    restores W0."""
    net, x = make(kind)
    W0, base = net.layer.weight.clone(), net(x)
    adapt(net, method, "a", seed=1)
    a = net(x) - base
    adapt(net, method, "b", seed=2)
    assert adapters_of(net) == ["a", "b"]
    both = net(x)
    set_scale(net, "a", 0.0)
    torch.testing.assert_close(both, base + a + (net(x) - base), atol=1e-5, rtol=1e-5)
    set_scale(net, "a", 1.0)
    merge(net, "a")
    torch.testing.assert_close(net(x), both, atol=1e-5, rtol=1e-5)  # one merged, one not
    merge(net)
    torch.testing.assert_close(net(x), both, atol=1e-5, rtol=1e-5)
    unmerge(net, "a")  # the first merged first
    torch.testing.assert_close(net(x), both, atol=1e-5, rtol=1e-5)
    unmerge(net, "b")
    torch.testing.assert_close(net.layer.base.weight, W0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "conv 3x3 stride 2"])
@pytest.mark.parametrize("method", METHODS)
def test_only_the_adapter_trains(method, kind):
    net, x = make(kind)
    adapt(net, method)
    trained = [p for p in net.parameters() if p.requires_grad]
    assert {id(p) for p in trained} == {id(p) for p in trainable(net)} and len(trained) >= 2
    net(x).square().sum().backward()
    assert net.layer.base.weight.grad is None and net.layer.base.bias.grad is None
    assert all(p.grad.abs().sum() > 0 for p in trained)


@pytest.mark.parametrize("method", FEW)
def test_remove_restores_the_plain_module_and_state_round_trips(method):
    net, x = make("conv 3x3 stride 2")
    keys, want = list(net.state_dict()), net(x)
    adapt(net, method, "a")
    adapt(net, method, "train", seed=2)  # a name nn.ModuleDict keeps escaped
    out = net(x)
    other, _ = make("conv 3x3 stride 2")
    METHODS[method][0](other, "a")
    METHODS[method][0](other, "train")
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x), out)
    merge(net, "a")
    remove(net, "a")  # unmerged first
    assert isinstance(net.layer, kind_of(method)) and adapters_of(net) == ["train"]
    remove(net)
    assert type(net.layer) is nn.Conv2d and list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", FEW)
def test_remove_keeping_merged_weights(method):
    net, x = make("linear")
    adapt(net, method)
    want = net(x)
    merge(net)
    remove(net, keep_merged=True)
    assert type(net.layer) is nn.Linear
    torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", FEW)
def test_low_precision_base(method):
    net, x = make("conv 3x3 stride 2")
    adapt(net, method)
    want = net(x)
    net.to(torch.bfloat16)
    out = net(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, atol=5e-2, rtol=5e-2)


def test_errors_name_the_problem():
    net, x = make("conv 3x3")
    with pytest.raises(LatentlabError, match=r"^no linear layer or convolution .* the LoHa targets \['to_q'\]$"):
        add_loha(net, targets=["to_q"])
    with pytest.raises(LatentlabError, match="^LoKr rank must be a positive integer, got 0$"):
        add_lokr(net, rank=0, targets=["layer"])
    with pytest.raises(LatentlabError, match=r"^DoRA name 'a\.b' must be non-empty"):
        add_dora(net, "a.b", targets=["layer"])
    assert type(net.layer) is nn.Conv2d  # nothing half-added
    add_loha(net, targets=["layer"])
    with pytest.raises(LatentlabError, match="^layer already holds LoHaLayer adapters; one kind per layer$"):
        add_dora(net, targets=["layer"])
    with pytest.raises(LatentlabError, match=r"^a \(3, 3\) convolution cannot be applied to tokens$"):
        net.layer(torch.randn(1, 4, 8))


# ---------------------------------------------------------------------- the speed wing


def test_the_speed_wing_leaves_dora_as_it_is():
    """fast.install swaps plain LoRA for its fused layer but leaves DoRA (a LoRALayer subclass with its own
    maths) alone: forward and gradients as without it."""
    torch.manual_seed(0)
    net, x = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 4)), torch.randn(5, 6)
    add_dora(net, rank=2, alpha=3.0, targets=["0"])
    add_lora(net, rank=2, alpha=3.0, targets=["2"])
    with torch.no_grad():
        for p in trainable(net):
            p.add_(torch.randn_like(p) * 0.3)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = net(x)
        return out, torch.autograd.grad(out.square().sum(), trainable(net))

    plain, plain_grads = run()
    fast.install(net)
    assert type(net[0]) is DoRALayer and type(net[2]) is not LoRALayer and isinstance(net[2], LoRALayer)
    out, grads = run()
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=1e-6)
    for g, want in zip(grads, plain_grads):
        torch.testing.assert_close(g, want, atol=1e-6, rtol=1e-6)


def test_lokr_with_a_tucker_kernel_runs_on_a_3x3_convolution():
    """The Tucker kernel comes out of einsum strided; kron needs it contiguous."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1))
    add_lokr(net, rank=2, targets=["0"], tucker=True)
    with torch.no_grad():
        for p in net[0].parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
    x = torch.randn(2, 8, 5, 5)
    out = net(x)
    net[0].merge("default")
    torch.testing.assert_close(net(x), out, rtol=1e-4, atol=1e-5)
