"""adapters/bottleneck.py: Houlsby adapter layers after the transformer blocks' sub-layers."""

import dataclasses

import pytest
import torch

from latentlab import fast
from latentlab.adapters.bottleneck import BottleneckLayer, add_bottleneck
from latentlab.adapters.inject import adapter_layers, remove, set_scale, trainable
from latentlab.errors import LatentlabError
from latentlab.models import TextEncoder, TextEncoderConfig, UNet
from latentlab.training.presets import preset

pytestmark = pytest.mark.usefixtures("one_thread")


def unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(dataclasses.replace(preset("tiny", "unet"), dropout=0.0)).eval()
    with torch.no_grad():  # the outputs start at zero (UNet._zero_init_outputs): no gradient would reach an adapter
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.05)
    return net


def run(net: UNet) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 64, generator=g)
    return net(x, torch.tensor([3, 900]), context)


def randomise(net, adapter: str = "default") -> None:
    with torch.no_grad():
        for p in trainable(net, adapter):
            p.normal_(std=0.2)


@pytest.mark.parametrize("placement, per_block", [(("self_attention",), 1), (("cross_attention",), 1),
                                                   (("feed_forward",), 1), (("self_attention", "feed_forward"), 2),
                                                   (("self_attention", "cross_attention", "feed_forward"), 3)])
def test_placed_after_each_sub_layer_asked_for(placement, per_block):
    net = unet()
    blocks = sum(1 for n, _ in net.named_modules() if n.endswith("transformer_blocks.0"))
    assert len(add_bottleneck(net, placement=placement, width=4)) == per_block * blocks


def test_a_new_adapter_is_the_identity_and_trains_from_its_up_projection():
    net = unet().requires_grad_(False)
    base = run(net)
    add_bottleneck(net, width=4)
    out = run(net)
    assert torch.equal(out, base)
    out.square().mean().backward()
    layers = [layer for _, layer in adapter_layers(net, BottleneckLayer)]
    assert all(layer.up["default"].weight.grad.abs().sum() > 0 for layer in layers)
    assert all(not layer.down["default"].weight.grad.any() for layer in layers)  # U = 0 stops D's gradient
    assert {p.requires_grad for n, p in net.named_parameters()} == {True, False}
    assert all(p.requires_grad == (".down." in n or ".up." in n) for n, p in net.named_parameters())


def test_adapters_apply_one_after_another_each_at_its_scale():
    torch.manual_seed(0)
    layer = BottleneckLayer(torch.nn.Linear(6, 5))
    layer.add("a", width=3), layer.add("b", width=2, activation="relu")
    randomise(layer, None)
    x = torch.randn(4, 6)
    y = layer.base(x)
    y = y + 0.5 * layer.up["a"](torch.nn.functional.gelu(layer.down["a"](y)))
    y = y + layer.up["b"](torch.relu(layer.down["b"](y)))
    layer.set_scale("a", 0.5)
    torch.testing.assert_close(layer(x), y)
    layer.set_scale("a", 0.0), layer.set_scale("b", 0.0)
    assert torch.equal(layer(x), layer.base(x))


def test_cannot_merge_and_removing_restores_the_network():
    net = unet()
    base = run(net)
    add_bottleneck(net, "style", width=4)
    randomise(net, "style")
    assert not torch.allclose(run(net), base)
    name, layer = next(adapter_layers(net, BottleneckLayer))
    with pytest.raises(LatentlabError, match="^BottleneckLayer adapters cannot be merged into the base weight$"):
        layer.merge("style")
    set_scale(net, "style", 0.0)
    assert torch.equal(run(net), base)
    remove(net, "style")
    assert not list(adapter_layers(net)) and torch.equal(run(net), base)


def test_the_text_encoder_takes_them_too():
    torch.manual_seed(0)
    encoder = TextEncoder(TextEncoderConfig(vocab_size=20, width=32, layers=2, head_dim=16))
    assert len(add_bottleneck(encoder, width=4, placement=("self_attention", "feed_forward"))) \
        == 2 * encoder.config.layers


@pytest.mark.parametrize("options, message", [
    (dict(width=0), "a bottleneck's width must be a positive integer, got 0"),
    (dict(activation="tanh"), "unknown activation 'tanh'; accepted: gelu, relu, silu"),
    (dict(placement=["middle"]), "unknown placement 'middle'; accepted: self_attention, cross_attention, "
                                 "feed_forward"),
])
def test_bad_options_are_one_line_errors_and_change_nothing(options, message):
    net = unet()
    with pytest.raises(LatentlabError, match=f"^{message}$"):
        add_bottleneck(net, **options)
    assert not list(adapter_layers(net))


def test_the_speed_wing_computes_the_same():
    net = unet().requires_grad_(False)
    add_bottleneck(net, width=4)
    randomise(net)
    params = trainable(net)
    plain = run(net)
    plain_grads = torch.autograd.grad(plain.square().mean(), params)
    fast.install(net)
    ours = run(net)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours.square().mean(), params), plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
