"""adapters/prefix.py: learned key/value prefixes in the U-Net's attentions and the text encoders'."""

import dataclasses
import math

import pytest
import torch

from latentlab import fast
from latentlab.adapters import add_lora
from latentlab.adapters.inject import adapter_layers, remove, set_scale, trainable
from latentlab.adapters.prefix import CLIPPrefixLayer, PrefixLayer, add_prefix, freeze_prefixes
from latentlab.errors import LatentlabError
from latentlab.models import CLIPTextConfig, CLIPTextModel, TextEncoder, TextEncoderConfig, UNet
from latentlab.models.attention import Attention
from latentlab.training.presets import preset

pytestmark = pytest.mark.usefixtures("one_thread")


def unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(dataclasses.replace(preset("tiny", "unet"), dropout=0.0)).eval()
    with torch.no_grad():  # the outputs start at zero (UNet._zero_init_outputs): nothing would reach an adapter
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.05)
    return net


def run(net: UNet, mask: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 64, generator=g)
    keep = torch.tensor([[True] * 6, [True, True, False, False, False, False]]) if mask else None
    return net(x, torch.tensor([3, 900]), context, keep)


def test_attention_over_the_prefix_and_the_unmasked_context():
    """softmax over [P_k; K] with the padded keys hidden, against the formula written out."""
    torch.manual_seed(0)
    layer = PrefixLayer(Attention(8, context_dim=6, head_dim=8))
    layer.add("p", length=3, hidden=5)
    layer.set_scale("p", 0.5)
    x, context = torch.randn(2, 4, 8), torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    attn, (pk, pv) = layer.base, layer.prefix["p"]()
    want = []
    for b in range(2):
        keep = mask[b]
        k = torch.cat([pk, attn.to_k(context[b])[keep]])
        v = torch.cat([0.5 * pv, attn.to_v(context[b])[keep]])
        weights = torch.softmax(attn.to_q(x[b]) @ k.T / math.sqrt(8), dim=-1)
        want.append(attn.to_out[0](weights @ v))
    torch.testing.assert_close(layer(x, context, mask), torch.stack(want), rtol=1e-5, atol=1e-6)


def test_placed_in_every_attention_trains_and_scale_zero_is_the_base():
    net = unet()
    base = run(net, mask=True)
    names = add_prefix(net, length=4, hidden=8)
    assert len(names) == 2 * sum(1 for n, _ in net.named_modules() if n.endswith("transformer_blocks.0"))
    out = run(net, mask=True)
    assert not torch.allclose(out, base)  # a prefix's keys take part of the softmax from the start
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable(net))
    assert all(p.requires_grad == (".prefix." in n) for n, p in net.named_parameters() if ".attn" in n)
    set_scale(net, "default", 0.0)
    assert torch.equal(run(net, mask=True), base)
    remove(net)
    assert not list(adapter_layers(net)) and torch.equal(run(net, mask=True), base)


def test_freezing_drops_the_mlp_and_keeps_the_output():
    net = unet()
    add_prefix(net, length=4, hidden=8)
    before, params = run(net), sum(p.numel() for p in trainable(net))
    freeze_prefixes(net)
    torch.testing.assert_close(run(net), before, rtol=0, atol=0)
    layers = [layer for _, layer in adapter_layers(net, PrefixLayer)]
    assert sum(p.numel() for p in trainable(net)) == sum(2 * 4 * layer.width for layer in layers) < params
    assert all(set(layer.adapter_state_dict("default")) == {"prefix.kv"} for layer in layers)


def test_lora_inside_a_prefixed_attention_keeps_training():
    net = unet().requires_grad_(False)
    add_lora(net, targets=["to_q"])
    add_prefix(net, length=2, hidden=4)
    assert all(p.requires_grad for n, p in net.named_parameters() if ".lora_" in n)


@pytest.mark.parametrize("kind", ["ours", "clip"])
def test_text_encoders_take_prefixes_and_keep_their_masks(kind):
    """A prefix adds keys and values, not tokens: one longer than the encoder's whole context (7 positions)
    leaves every prompt token its position, so no prefix is too long for the context."""
    torch.manual_seed(0)
    if kind == "ours":
        encoder = TextEncoder(TextEncoderConfig(vocab_size=20, width=32, layers=2, head_dim=16))
        ids, mask = torch.randint(0, 20, (2, 7)), torch.tensor([[1] * 7, [1] * 4 + [0] * 3]).bool()
        encode = lambda: encoder(ids, mask)  # noqa: E731
    else:
        encoder = CLIPTextModel(CLIPTextConfig(vocab_size=20, width=32, layers=2, heads=2, mlp_width=64,
                                               max_positions=7, eos_token_id=19))
        ids = torch.cat([torch.randint(0, 19, (2, 6)), torch.full((2, 1), 19)], dim=1)
        encode = lambda: encoder(ids)[0]  # noqa: E731
    base = encode()
    add_prefix(encoder, length=10, hidden=8)
    assert {type(layer) for _, layer in adapter_layers(encoder)} == {PrefixLayer if kind == "ours" else CLIPPrefixLayer}
    out = encode()
    assert out.shape == base.shape and not torch.allclose(out, base)
    set_scale(encoder, "default", 0.0)
    assert torch.equal(encode(), base)


def test_the_speed_wing_computes_the_same():
    net = unet().requires_grad_(False)
    add_prefix(net, length=4, hidden=8)
    params = trainable(net)
    plain = run(net, mask=True)
    plain_grads = torch.autograd.grad(plain.square().mean(), params)
    fast.install(net)
    ours = run(net, mask=True)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours.square().mean(), params), plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("options, message", [
    (dict(length=0), "a prefix's length must be a positive integer, got 0"),
    (dict(hidden=2.5), "a prefix's hidden width must be a positive integer, got 2.5"),
    (dict(targets=["nowhere"]), r"no attention of this model matches the prefix targets \['nowhere'\]"),
])
def test_bad_options_are_one_line_errors_and_change_nothing(options, message):
    net = unet()
    with pytest.raises(LatentlabError, match=f"^{message}$"):
        add_prefix(net, **options)
    assert not list(adapter_layers(net)) and all(p.requires_grad for p in net.parameters())


def test_a_refused_prefix_leaves_lora_inside_the_attentions_as_it_was():
    net = unet().requires_grad_(False)
    add_lora(net, targets=["to_k"])
    before = {n: type(m) for n, m in net.named_modules()}
    with pytest.raises(LatentlabError, match="length must be a positive integer"):
        add_prefix(net, length=-1)
    assert {n: type(m) for n, m in net.named_modules()} == before
    assert all(p.requires_grad == (".lora_" in n) for n, p in net.named_parameters())
