"""adapters/base.py: what every adapter gets from the interface, shown on a variant that is not LoRA (a
learned bias per output), injected and driven by adapters/inject.py's functions."""

import pytest
import torch
from torch import nn

from latentlab.adapters import LoRALayer, add_lora
from latentlab.adapters.base import AdapterLayer
from latentlab.adapters.inject import adapter_layers, adapter_state_dict, adapters_of, remove, set_scale, trainable, wrap
from latentlab.errors import LatentlabError


class BiasAdapter(AdapterLayer):
    """h = W0 x + s b: a learned bias per output (not a weight, so it does not merge)."""

    label = "bias"
    mergeable = False

    def __init__(self, base: nn.Linear):
        super().__init__(base)
        self.bias = nn.ParameterDict()

    def create(self, name: str) -> None:
        self.bias[name] = nn.Parameter(torch.zeros(self.base.out_features))

    def destroy(self, name: str) -> None:
        del self.bias[name]

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.scale[name] * self.bias[name]

    def trainable(self, name: str) -> list[nn.Parameter]:
        return [self.bias[name]]

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {f"bias.{name}": self.bias[name].detach()}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 5)

    def forward(self, x):
        return self.layer(x)


def adapted(*names: str) -> tuple[Net, torch.Tensor]:
    torch.manual_seed(0)
    net, x = Net(), torch.randn(3, 6)
    for name in names:
        wrap(net, "layer", BiasAdapter).add(name)
    return net, x


def test_a_new_adapter_adds_nothing_and_the_base_is_frozen():
    net, x = adapted("a")
    assert torch.equal(net(x), net.layer.base(x))
    assert not any(p.requires_grad for p in net.layer.base.parameters())
    assert trainable(net) == [net.layer.bias["a"]]


def test_named_adapters_add_up_each_at_its_scale():
    net, x = adapted("a", "b")
    with torch.no_grad():
        net.layer.bias["a"].fill_(1.0), net.layer.bias["b"].fill_(10.0)
    set_scale(net, "b", 0.5)
    torch.testing.assert_close(net(x), net.layer.base(x) + 6.0)
    set_scale(net, "a", 0.0)
    torch.testing.assert_close(net(x), net.layer.base(x) + 5.0)
    assert adapters_of(net) == ["a", "b"] and net.layer.active() == ["b"]
    assert adapter_state_dict(net, "b").keys() == {"layer.bias.b"}


def test_removing_every_adapter_gives_back_the_base_layer():
    net, x = adapted("a", "b")
    base = net.layer.base
    remove(net, "a")
    assert isinstance(net.layer, BiasAdapter) and adapters_of(net) == ["b"]
    remove(net)
    assert net.layer is base


def test_what_the_maths_does_not_allow_is_refused_in_one_line():
    net, _ = adapted("a")
    with pytest.raises(LatentlabError, match="^BiasAdapter adapters cannot be merged into the base weight$"):
        net.layer.merge("a")
    with pytest.raises(LatentlabError, match="already holds an adapter named 'a'"):
        net.layer.add("a")
    with pytest.raises(LatentlabError, match="^layer already holds BiasAdapter adapters; one kind per layer$"):
        add_lora(net, targets=["layer"])
    with pytest.raises(LatentlabError, match="no bias adapter named 'z'"):
        set_scale(net, "z", 1.0, BiasAdapter)
    assert [type(layer) for _, layer in adapter_layers(net)] == [BiasAdapter]
    assert not any(isinstance(m, LoRALayer) for m in net.modules())


def test_a_subclass_with_a_label_of_its_own_is_another_kind():
    """DoRA reuses LoRA's code but is not LoRA: LoRA's functions (and LoRA files) do not take it for one."""
    from latentlab import fast
    from latentlab.adapters import add_dora, lora_layers, lora_state_dict

    net = Net()
    add_dora(net, targets=["layer"])
    assert not list(lora_layers(net)) and [type(m).__name__ for _, m in adapter_layers(net)] == ["DoRALayer"]
    with pytest.raises(LatentlabError, match="no LoRA adapter named 'default'"):
        lora_state_dict(net)
    with pytest.raises(LatentlabError, match="^layer already holds DoRALayer adapters; one kind per layer$"):
        add_lora(net, "other", targets=["layer"])
    fast.install(net)  # the fast LoRA layer keeps LoRA's label: still LoRA
    other = Net()
    add_lora(other, targets=["layer"])
    fast.install(other)
    assert [type(m).__name__ for _, m in lora_layers(other)] == ["FastLoRALayer"]


def test_a_base_models_fingerprint_ignores_adapters_of_every_kind():
    """LoRA files carry their base model's fingerprint (io/lora_files.py): prefixes, bottlenecks, DoRA and LoRA
    inside a prefixed attention, merged or not, leave it as it was."""
    import dataclasses

    from latentlab.adapters import add_dora
    from latentlab.adapters.bottleneck import add_bottleneck
    from latentlab.adapters.prefix import add_prefix
    from latentlab.io.lora_files import base_fingerprint
    from latentlab.models import UNet
    from latentlab.training.presets import preset

    torch.manual_seed(0)
    net = UNet(dataclasses.replace(preset("tiny", "unet"), dropout=0.0))
    before = base_fingerprint(net)
    add_lora(net, targets=["to_q"])
    add_dora(net, "d", targets=["to_k"])
    add_prefix(net, "p", length=2, hidden=4)
    add_bottleneck(net, "b", width=2, placement=["feed_forward"])
    with torch.no_grad():
        for p in trainable(net):
            p.normal_(std=0.1)
    for _, layer in adapter_layers(net):
        if layer.mergeable:
            layer.merge(layer.adapters[0])
    assert base_fingerprint(net) == before
