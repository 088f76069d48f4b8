"""adapters/lora.py: the properties every adapted layer must have (one table row per layer kind), and
parity with peft's LoRA layers on the same A, B, alpha and rank."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from latentlab.adapters import (LoRALayer, adapters_of, add_lora, load_lora_state_dict, lora_state_dict, merge_lora,
                                remove_lora, set_lora_scale, unmerge_lora)
from latentlab.errors import LatentlabError

# kind -> (layer, input shape): linear layers and convolutions as the U-Net and text encoders use them
LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), (3, 6)),
    "linear on tokens": (lambda: nn.Linear(6, 5), (2, 7, 6)),
    "conv 3x3": (lambda: nn.Conv2d(4, 5, 3, padding=1), (2, 4, 8, 8)),
    "conv 3x3 stride 2": (lambda: nn.Conv2d(4, 5, 3, stride=2, padding=1), (2, 4, 9, 9)),
    "conv 1x1 on tokens": (lambda: nn.Conv2d(6, 5, 1), (2, 7, 6)),  # SD's proj_in applied to (B, N, C)
}
KINDS = list(LAYERS)


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


def delta(net: Net, x: torch.Tensor, adapter: str) -> torch.Tensor:
    """scale alpha / r B A x, computed apart from the layer, from W = B A."""
    layer = net.layer
    W = layer.delta_weight(adapter)
    if isinstance(layer.base, nn.Linear) or x.dim() == 3:
        return F.linear(x, W.flatten(1))
    return F.conv2d(x, W, None, layer.base.stride, layer.base.padding)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", KINDS)
def test_new_adapter_is_the_identity(kind):
    net, x = make(kind)
    want = net(x)
    add_lora(net, rank=3, targets=["layer"])
    assert isinstance(net.layer, LoRALayer) and torch.equal(net(x), want)


@pytest.mark.parametrize("kind", KINDS)
def test_scale_zero_is_exactly_the_base(kind):
    net, x = make(kind)
    want = net(x)
    adapt(net)
    assert not torch.allclose(net(x), want)
    set_lora_scale(net, "default", 0.0)
    assert torch.equal(net(x), want)


@pytest.mark.parametrize("kind", KINDS)
def test_output_is_base_plus_scaled_update(kind):
    net, x = make(kind)
    base = net(x)
    adapt(net, rank=3, alpha=6.0)
    set_lora_scale(net, "default", 0.5)
    assert net.layer.scaling("default") == 0.5 * 6.0 / 3
    torch.testing.assert_close(net(x), base + delta(net, x, "default"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_merged_gives_the_unmerged_output_and_unmerging_restores_W0(kind):
    net, x = make(kind)
    W0 = net.layer.weight.clone()
    adapt(net)
    want = net(x)
    merge_lora(net)
    assert net.layer.merged and not torch.equal(net.layer.base.weight, W0)
    torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)
    unmerge_lora(net)
    torch.testing.assert_close(net.layer.base.weight, W0, atol=1e-6, rtol=0)
    torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_two_adapters_merged_then_unmerged_restore_the_base(kind):
    net, x = make(kind)
    W0, base = net.layer.weight.clone(), net(x)
    adapt(net, "a", seed=1)
    adapt(net, "b", rank=2, alpha=1.0, seed=2)
    assert adapters_of(net) == ["a", "b"]
    both = net(x)
    torch.testing.assert_close(both, base + delta(net, x, "a") + delta(net, x, "b"), atol=1e-5, rtol=1e-5)
    merge_lora(net, "a")
    torch.testing.assert_close(net(x), both, atol=1e-5, rtol=1e-5)  # one merged, one not
    merge_lora(net)
    torch.testing.assert_close(net(x), both, atol=1e-5, rtol=1e-5)
    unmerge_lora(net, "a")
    unmerge_lora(net, "b")
    torch.testing.assert_close(net.layer.base.weight, W0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_set_scale_on_a_merged_adapter(kind):
    net, x = make(kind)
    base = net(x)
    adapt(net)
    set_lora_scale(net, "default", 0.25)
    want = net(x)
    set_lora_scale(net, "default", 1.0)
    merge_lora(net)
    set_lora_scale(net, "default", 0.25)  # re-merged with the new scale
    assert net.layer.merged["default"] == net.layer.scaling("default")
    torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)
    set_lora_scale(net, "default", 0.0)
    torch.testing.assert_close(net(x), base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["linear", "conv 3x3 stride 2", "conv 1x1 on tokens"])
def test_low_precision_base(kind, dtype):
    net, x = make(kind)
    adapt(net)
    want = net(x)  # float32
    net.to(dtype)
    x = x.to(dtype)
    out = net(x)
    assert out.dtype == dtype and net.layer.lora_A["default"].weight.dtype == dtype
    torch.testing.assert_close(out.float(), want, atol=3e-2, rtol=3e-2)
    W0 = net.layer.base.weight.clone()
    merge_lora(net)
    torch.testing.assert_close(net(x).float(), want, atol=3e-2, rtol=3e-2)
    unmerge_lora(net)
    torch.testing.assert_close(net.layer.base.weight.float(), W0.float(), atol=1e-2, rtol=0)
    set_lora_scale(net, "default", 0.0)
    base = Net(net.layer.base)(x)
    assert torch.equal(net(x), base)


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_adapter_trains(kind):
    net, x = make(kind)
    adapt(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"layer.lora_A.default.weight", "layer.lora_B.default.weight"}
    net(x).square().sum().backward()
    assert net.layer.base.weight.grad is None and net.layer.base.bias.grad is None
    assert net.layer.lora_A["default"].weight.grad.abs().sum() > 0
    assert net.layer.lora_B["default"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_remove_restores_the_plain_module(kind):
    net, x = make(kind)
    keys, kind_of, want = list(net.state_dict()), type(net.layer), net(x)
    adapt(net, "a")
    adapt(net, "b", seed=2)
    merge_lora(net, "a")
    remove_lora(net, "a")  # unmerged first
    assert isinstance(net.layer, LoRALayer) and adapters_of(net) == ["b"]
    remove_lora(net)
    assert type(net.layer) is kind_of and list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), want, atol=1e-6, rtol=0)


def test_remove_keeping_merged_weights():
    net, x = make("linear")
    adapt(net)
    want = net(x)
    merge_lora(net)
    remove_lora(net, keep_merged=True)
    assert type(net.layer) is nn.Linear
    torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip():
    net, x = make("conv 3x3 stride 2")
    adapt(net, rank=2, alpha=5.0)
    want, state = net(x), lora_state_dict(net)
    assert set(state) == {"layer.lora_A.weight", "layer.lora_B.weight"}
    other, _ = make("conv 3x3 stride 2")
    load_lora_state_dict(other, state, alphas={"layer": 5.0})
    torch.testing.assert_close(other(x), want)


def test_errors_name_the_problem():
    net, _ = make("linear")
    with pytest.raises(LatentlabError, match=r"no linear layer or convolution .* matches the LoRA targets \['to_q'\]"):
        add_lora(net, targets=["to_q"])
    A, B = torch.zeros(2, 6), torch.zeros(5, 2)
    with pytest.raises(LatentlabError, match="1 LoRA modules are not in this model .*e.g. decoder.fc"):
        load_lora_state_dict(net, {"decoder.fc.lora_A.weight": A, "decoder.fc.lora_B.weight": B})
    with pytest.raises(LatentlabError, match="do not fit their layers' shapes .*e.g. layer"):
        load_lora_state_dict(net, {"layer.lora_A.weight": A, "layer.lora_B.weight": torch.zeros(5, 3)})
    with pytest.raises(LatentlabError, match="lack their A or B weight, e.g. layer"):
        load_lora_state_dict(net, {"layer.lora_A.weight": A})
    with pytest.raises(LatentlabError, match="no LoRA adapter named 'style'"):
        merge_lora(net, "style")
    assert adapters_of(net) == [] and type(net.layer) is nn.Linear  # nothing half-loaded


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("kind", ["linear", "linear on tokens", "conv 3x3", "conv 3x3 stride 2"])
def test_parity_with_peft(kind, rslora):
    """peft's lora.Linear / lora.Conv2d and ours, same A, B, alpha and rank: the same output."""
    net, x = make(kind)
    theirs = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=6, target_modules=["layer"], use_rslora=rslora),
                                      copy.deepcopy(net))
    alpha = 6 * 4 ** 0.5 if rslora else 6.0  # rsLoRA scales by lora_alpha / sqrt(r) = (lora_alpha sqrt(r)) / r
    adapt(net, rank=4, alpha=alpha)
    with torch.no_grad():
        theirs.layer.lora_A["default"].weight.copy_(net.layer.lora_A["default"].weight)
        theirs.layer.lora_B["default"].weight.copy_(net.layer.lora_B["default"].weight)
    torch.testing.assert_close(net(x), theirs(x), atol=1e-6, rtol=1e-6)


LINEAR_KINDS = ["linear", "linear on tokens", "conv 1x1 on tokens"]


def test_adapter_tables_are_read_only_and_the_output_follows_every_change():
    """scale, alpha and merged are views: a write raises rather than bypass the layer, which remembers its
    active adapters between calls until a method changes them."""
    net, x = make("linear")
    adapt(net)
    for table in (net.layer.scale, net.layer.alpha, net.layer.merged):
        with pytest.raises(TypeError):
            table["default"] = 2.0
    base = net.layer.base(x)
    full = net(x)
    net.layer.set_scale("default", 0.0)
    torch.testing.assert_close(net(x), base, atol=0, rtol=0)
    net.layer.set_scale("default", 1.0)
    net.layer.merge("default")
    torch.testing.assert_close(net(x), full, atol=1e-5, rtol=1e-5)
    net.layer.unmerge("default")
    adapt(net, "second")
    assert not torch.allclose(net(x), full)
    net.layer.remove("second")
    torch.testing.assert_close(net(x), full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["train", "to", "half", "eval", "update", "keys", "training", "_modules", "~train",
                                  "~~x"])
def test_an_adapter_may_be_named_like_a_module_attribute(name):
    """Names that nn.ModuleDict refuses as keys (its attributes) are kept escaped; others keep their keys."""
    net, x = make("conv 3x3")
    adapt(net, "default")
    adapt(net, name, seed=2)
    assert net.layer.adapters == ["default", name] and name in net.layer.lora_A and "~" + name not in net.layer.lora_A
    assert {"layer.lora_A.default.weight", "layer.lora_B.default.weight"} <= set(net.state_dict())
    want = net(x)
    torch.testing.assert_close(want - net.layer.base(x), delta(net, x, "default") + delta(net, x, name))
    state = lora_state_dict(net, name)
    assert set(state) == {"layer.lora_A.weight", "layer.lora_B.weight"}
    other, _ = make("conv 3x3")
    adapt(other, "default")
    add_lora(other, name, rank=3, alpha=6.0, targets=["layer"])
    other.load_state_dict(net.state_dict())  # the escaped keys round-trip
    torch.testing.assert_close(other(x), want)
    merge_lora(net, name)
    unmerge_lora(net, name)
    remove_lora(net, name)
    assert net.layer.adapters == ["default"] and list(net.layer.lora_A.keys()) == ["default"]


@pytest.mark.parametrize("name", ["", "a.b", 3, None])
def test_an_adapter_name_that_cannot_work_is_refused_in_one_line(name):
    net, _ = make("linear")
    with pytest.raises(LatentlabError, match=r"^LoRA name .* must be non-empty and hold no '\.'$"):
        add_lora(net, name, targets=["layer"])
    assert type(net.layer) is nn.Linear


def test_add_lora_refused_by_one_layer_changes_nothing():
    """A rank refused by the last of three layers: the two layers wrapped before are unwrapped again."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    add_lora(net, "kept", rank={"0": 2})
    net[1].weight.requires_grad_(True)
    types, grads = [type(m) for m in net], [p.requires_grad for p in net.parameters()]
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(LatentlabError, match="LoRA rank must be a positive integer, got 0"):
        add_lora(net, "new", rank={"0": 2, "1": 2, "2": 0})
    assert [type(m) for m in net] == types and [p.requires_grad for p in net.parameters()] == grads
    assert net.state_dict().keys() == state.keys() and all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    assert adapters_of(net) == ["kept"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300])
def test_a_non_finite_scale_or_alpha_is_refused_and_changes_nothing(value):
    layer = LoRALayer(nn.Linear(6, 4))
    layer.add("a", rank=2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(LatentlabError, match="finite"):
        layer.set_scale("a", value)
    with pytest.raises(LatentlabError, match="finite"):
        layer.add("b", rank=2, alpha=value)
    assert layer.scale["a"] == 1.0 and layer.adapters == ["a"]
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())
