import dataclasses

import pytest
import torch

from latentlab.models import UNet, UNetConfig
from latentlab.models.attention import Attention
from latentlab.training.presets import preset


def make(**changes) -> UNet:
    torch.manual_seed(0)
    unet = UNet(dataclasses.replace(preset("tiny", "unet"), **changes))
    for p in unet.parameters():  # leave the zero initialisation so every path carries signal
        torch.nn.init.normal_(p, std=0.05)
    return unet.eval()


def inputs(B=2, L=6, D=64, size=8):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False
    return torch.randn(B, 4, size, size, generator=g), torch.tensor([0, 999])[:B], torch.randn(B, L, D, generator=g), mask


@pytest.mark.parametrize("changes", [{}, {"channels": (32, 64, 64), "attention_levels": (False, True, True)},
                                     {"blocks_per_level": 2, "transformer_depth": 2}])
def test_output_has_the_input_shape(changes):
    x, t, context, mask = inputs()
    assert make(**changes)(x, t, context, mask).shape == x.shape


def test_runs_at_other_sizes():
    x, t, context, mask = inputs(size=16)
    assert make()(x, t, context, mask).shape == (2, 4, 16, 16)


def test_fresh_network_predicts_zero():
    """Output convolution and residual branches start at zero (improved-diffusion's zero_module)."""
    x, t, context, mask = inputs()
    assert UNet(preset("tiny", "unet"))(x, t, context, mask).abs().max() == 0


def test_padded_context_tokens_are_ignored():
    unet = make()
    x, t, context, mask = inputs()
    changed = context.clone()
    changed[0, 3:] = 100.0  # where the mask is False
    with torch.no_grad():
        assert torch.allclose(unet(x, t, context, mask), unet(x, t, changed, mask), atol=1e-5)


def test_output_depends_on_text_and_time():
    unet = make()
    x, t, context, mask = inputs()
    with torch.no_grad():
        base = unet(x, t, context, mask)
        assert not torch.allclose(base, unet(x, t, context + 1, mask))
        assert not torch.allclose(base, unet(x, t.flip(0), context, mask))


def test_every_parameter_gets_a_gradient():
    unet = make()
    x, t, context, mask = inputs()
    unet(x, t, context, mask).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())


def test_config_checks_level_lists():
    with pytest.raises(ValueError, match="one per level"):
        UNetConfig(channels=(32, 64), attention_levels=(True,))


def test_attention_gates_weigh_the_skip_connections():
    """Attention U-Net: each decoder block's skip features pass a gate alpha in (0, 1) per pixel."""
    plain, gated = make(), make(attention_gates=True)
    n_gates = sum(len(level.gates) for level in gated.up_blocks)
    assert n_gates == sum(len(level.resnets) for level in gated.up_blocks)
    assert all(level.gates is None for level in plain.up_blocks)
    x, t, context, mask = inputs()
    out = gated(x, t, context, mask)
    assert out.shape == x.shape and not torch.allclose(out, plain(x, t, context, mask))
    alphas = []
    hooks = [g.psi.register_forward_hook(lambda m, i, o: alphas.append(torch.sigmoid(o))) for lv in gated.up_blocks for g in lv.gates]
    gated(x, t, context, mask)
    for hook in hooks:
        hook.remove()
    assert len(alphas) == n_gates and all(((a > 0) & (a < 1)).all() and a.shape[1] == 1 for a in alphas)
    out.sum().backward()
    assert all(p.grad is not None for lv in gated.up_blocks for g in lv.gates for p in g.parameters())


def test_a_gated_unet_round_trips(tmp_path):
    from latentlab.io import load_component, save_component

    gated = make(attention_gates=True)
    save_component(tmp_path / "unet", gated)
    loaded = load_component(tmp_path / "unet", UNet, UNetConfig).eval()
    x, t, context, mask = inputs()
    assert loaded.config.attention_gates and torch.equal(loaded(x, t, context, mask), gated(x, t, context, mask))


def test_heads_fix_the_number_of_heads_at_every_width():
    unet = make(heads=4)
    heads = {m.heads for m in unet.modules() if isinstance(m, Attention)}
    assert heads == {4}
    with pytest.raises(ValueError, match="not a multiple of its 5 heads"):
        UNetConfig(channels=(32, 64), heads=5)


def test_heads_and_depth_per_level():
    unet = make(channels=(32, 64), heads=(2, 4), transformer_depth=(1, 2))
    assert {len(t.transformer_blocks) for t in unet.down_blocks[1].attentions} == {2}
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.heads == 2
    assert unet.mid_block.attentions[0].transformer_blocks[0].attn2.heads == 4  # the middle takes the last level's
    x, t, context, mask = inputs()
    assert unet(x, t, context, mask).shape == x.shape
    with pytest.raises(ValueError, match="transformer_depth has 3 entries"):
        UNetConfig(channels=(32, 64), transformer_depth=(1, 1, 1))


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, context, mask = inputs()
    grads = []
    for enabled in (False, True):
        unet = make().train().enable_gradient_checkpointing(enabled)
        unet(x, t, context, mask).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_channels_last_gives_the_same_output():
    x, t, context, mask = inputs()
    unet = make()
    want = unet(x, t, context, mask)
    unet = unet.to(memory_format=torch.channels_last)
    got = unet(x.contiguous(memory_format=torch.channels_last), t, context, mask)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("changes, message", [
    ({"head_dim": 0}, "head_dim must be positive"), ({"heads": 0}, "heads must be positive"),
    ({"heads": (4, 0)}, "heads must be positive"), ({"groups": 0}, "groups must be positive"),
    ({"transformer_depth": 0}, "transformer_depth must be positive"), ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"norm_eps": 0.0}, "norm_eps must be positive"), ({"in_channels": 0}, "in_channels must be positive"),
])
def test_config_refuses_values_no_network_has(changes, message):
    """Out-of-range values are a ValueError naming the field, not a ZeroDivisionError or a broken module."""
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(preset("tiny", "unet"), **changes)
