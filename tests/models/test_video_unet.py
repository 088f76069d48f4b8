"""The video U-Net: temporal layers between an image U-Net's frozen spatial ones (Blattmann et al. 2023)."""

import pytest
import torch

from latentlab import fast
from latentlab.models.temporal import ALPHA_START, TemporalAttention, TemporalConv, TemporalMix, to_clips, to_frames
from latentlab.models.unet import UNet, UNetConfig
from latentlab.models.video_unet import TemporalConfig, TemporalLayers, VideoUNet

CONFIG = UNetConfig(channels=(16, 32), head_dim=8, context_dim=12, groups=4)


def video_unet(seed=0, temporal=None, alpha=None):
    """A tiny video U-Net with every weight random (the zero-initialised outputs too), alpha set if given."""
    torch.manual_seed(seed)
    net = VideoUNet(UNet(CONFIG), temporal)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim():
                p.normal_(0, 0.1)
        if alpha is not None:
            for mix in net.temporal.values():
                mix.alpha.fill_(alpha)
    return net


def inputs(B=2, T=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 4, T, 8, 8, generator=g), torch.tensor([3, 700])[:B], torch.randn(B, 3, 12, generator=g),
            torch.tensor([[True, True, False]] * B))


def per_frame(net, x, t, context, mask):
    """The image U-Net applied to each frame alone."""
    return torch.stack([net.unet(x[:, :, k], t, context, mask) for k in range(x.shape[2])], dim=2)


@pytest.mark.parametrize("alpha", [None, 1.0])
def test_a_new_video_unet_is_the_image_unet_frame_by_frame(alpha):
    """New temporal layers (each the identity) at their own alpha, or random ones at alpha = 1."""
    net = video_unet(alpha=alpha)
    if alpha is None:
        net.temporal = TemporalLayers(net.unet)  # as constructed, beside a random U-Net
    x, t, context, mask = inputs()
    out = net(x, t, context, mask)
    assert out.shape == x.shape
    torch.testing.assert_close(out, per_frame(net, x, t, context, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: TemporalConv(8, groups=4), lambda: TemporalAttention(8, head_dim=4, groups=4)])
def test_a_new_mix_and_a_mix_at_alpha_one_return_the_spatial_output_exactly(make):
    z = torch.randn(6, 8, 4, 4)
    mix = TemporalMix(make())
    assert mix.alpha.item() == ALPHA_START and torch.equal(mix.layer(z, 3), z)  # a new layer is the identity
    assert torch.equal(mix(z, 3), z)
    with torch.no_grad():
        for p in mix.layer.parameters():
            p.normal_(0, 0.1)
        mix.alpha.fill_(1.0)
    assert not torch.equal(mix.layer(z, 3), z) and torch.equal(mix(z, 3), z)  # 1 * z + 0 * l(z): exact
    with torch.no_grad():
        mix.alpha.fill_(0.25)
    torch.testing.assert_close(mix(z, 3), 0.25 * z + 0.75 * mix.layer(z, 3))


def test_new_temporal_layers_learn_from_the_first_step():
    """The start that alpha = 1 would give freezes: no gradient reaches the layers, and alpha's own is zero
    while they are random (z - l(z) uncorrelated with the loss). New layers, each the identity at alpha = 1/2,
    take gradient in their last projection from the first step."""
    net = video_unet()
    net.temporal = TemporalLayers(net.unet)
    net.freeze_spatial()
    x, t, context, mask = inputs()
    net(x, t, context, mask).square().mean().backward()
    for mix in net.temporal.values():
        last = mix.layer.conv2 if isinstance(mix.layer, TemporalConv) else mix.layer.proj_out
        assert last.weight.grad.abs().max() > 0


def test_clips_and_frames_round_trip():
    x = torch.randn(2, 3, 5, 4, 4)
    frames = to_frames(x)
    assert frames.shape == (10, 3, 4, 4)
    assert torch.equal(frames[1], x[0, :, 1]) and torch.equal(frames[5], x[1, :, 0])
    assert torch.equal(to_clips(frames, 5), x)


def test_the_temporal_layers_mix_frames_once_alpha_moves():
    net = video_unet(alpha=0.5)
    x, t, context, mask = inputs()
    out = net(x, t, context, mask)
    assert (out - per_frame(net, x, t, context, mask)).abs().max() > 1e-3
    # a change to the last frame reaches the first one
    y = x.clone()
    y[:, :, -1] += 1
    assert (net(y, t, context, mask)[:, :, 0] - out[:, :, 0]).abs().max() > 1e-4


def test_frame_positions_make_order_matter():
    """Reversing the frames does not just reverse the output: temporal attention knows each frame's index."""
    net = video_unet(alpha=0.0, temporal=TemporalConfig(convolutions=False))
    x, t, context, mask = inputs()
    out = net(x, t, context, mask)
    reversed_out = net(x.flip(2), t, context, mask).flip(2)
    assert (out - reversed_out).abs().max() > 1e-4


@pytest.mark.parametrize("temporal, kinds", [
    (TemporalConfig(), {TemporalConv, TemporalAttention}),
    (TemporalConfig(attention=False), {TemporalConv}),
    (TemporalConfig(convolutions=False), {TemporalAttention}),
])
def test_one_temporal_layer_after_each_spatial_layer(temporal, kinds):
    net = video_unet(temporal=temporal)
    resnets = sum(len(level.resnets) for level in [*net.unet.down_blocks, net.unet.mid_block, *net.unet.up_blocks])
    transformers = sum(1 for m in net.unet.modules() if type(m).__name__ == "SpatialTransformer")
    expected = (resnets if temporal.convolutions else 0) + (transformers if temporal.attention else 0)
    assert len(net.temporal) == expected
    assert {type(m.layer) for m in net.temporal.values()} == kinds
    assert all(isinstance(m, TemporalMix) for m in net.temporal.values())


def test_state_dict_is_the_image_unets_and_the_temporal_layers():
    net = video_unet()
    image = UNet(CONFIG)
    net.unet.load_state_dict(image.state_dict())  # an image model's weights load as they are
    keys = net.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "temporal"}
    assert {k.removeprefix("unet.") for k in keys if k.startswith("unet.")} == set(image.state_dict())


def test_only_the_temporal_layers_train():
    net = video_unet(alpha=0.7).freeze_spatial()
    x, t, context, mask = inputs()
    net(x, t, context, mask).square().mean().backward()
    assert all(p.grad is None for p in net.unet.parameters())
    assert all(p.grad is not None for p in net.temporal.parameters())


def gradients(net, *args):
    net.zero_grad()
    out = net(*args)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in net.temporal.parameters()]


def test_gradient_checkpointing_and_the_speed_wing_change_no_number():
    x, t, context, mask = inputs()
    plain = video_unet(alpha=0.6).freeze_spatial()
    out, grads = gradients(plain, x, t, context, mask)
    for variant in ("checkpointing", "fast"):
        other = video_unet(alpha=0.6).freeze_spatial()
        if variant == "checkpointing":
            other.enable_gradient_checkpointing()
        else:
            fast.install(other)
        out2, grads2 = gradients(other, x, t, context, mask)
        torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-4)
        for a, b in zip(grads2, grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_temporal_layers_build_from_the_unet_alone():
    net = video_unet()
    layers = TemporalLayers(net.unet, TemporalConfig(kernel=5))
    assert set(layers) == set(net.temporal)
    assert layers["down_blocks_0_resnets_0"].layer.conv1.kernel_size == (5, 1, 1)


@pytest.mark.parametrize("options, message", [
    ({"kernel": 2}, "positive odd"),
    ({"kernel": 0}, "positive odd"),
    ({"convolutions": False, "attention": False}, "needs temporal"),
    ({"head_dim": 0}, "head_dim"),
])
def test_bad_temporal_configs(options, message):
    with pytest.raises(ValueError, match=message):
        TemporalConfig(**options)


def test_temporal_attention_reads_each_clips_text():
    torch.manual_seed(0)
    layer = TemporalAttention(8, context_dim=6, head_dim=4, groups=4)
    torch.nn.init.normal_(layer.proj_out.weight)  # a trained layer's: a new one adds nothing
    z, context = torch.randn(2 * 3, 8, 4, 4), torch.randn(2, 5, 6).repeat_interleave(3, dim=0)  # 2 clips of 3 frames
    out = layer(z, 3, context)
    other = context.clone()
    other[3:] += 1  # the second clip's text
    changed = layer(z, 3, other)
    torch.testing.assert_close(changed[:3], out[:3])
    assert (changed[3:] - out[3:]).abs().max() > 1e-4
    mask = torch.tensor([[True, True, False, False, False]]).repeat(6, 1)
    masked = context.clone()
    masked[:, 2:] = 7.0  # hidden tokens do not count
    torch.testing.assert_close(layer(z, 3, masked, mask), layer(z, 3, context, mask))


def CUDA(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


@CUDA
@pytest.mark.parametrize("checkpointing", [False, True])
def test_on_the_gpu_in_bf16_with_the_speed_wing_the_step_matches_the_cpus(checkpointing):
    """The training step as train-video runs it on a GPU (bf16 autocast, the speed wing, optionally gradient
    checkpointing) against float32 on the CPU: outputs within bf16's error; the temporal layers' gradients, all
    together, within 5%, and each one pointing the same way (a tensor whose gradient is 1e-4 carries bf16's
    rounding of the larger ones: 8% of its own norm on an H100)."""
    x, t, context, mask = inputs()
    reference, grads = gradients(video_unet(alpha=0.6).freeze_spatial(), x, t, context, mask)
    net = video_unet(alpha=0.6).freeze_spatial().cuda().enable_gradient_checkpointing(checkpointing)
    fast.install(net)
    net.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x.cuda(), t.cuda(), context.cuda(), mask.cuda())
    out.float().square().mean().backward()
    scale = reference.abs().max()
    assert (out.float().cpu() - reference).abs().max() < 0.03 * scale
    got = [p.grad.float().cpu() for p in net.temporal.parameters()]
    flat, want = torch.cat([g.flatten() for g in got]), torch.cat([g.flatten() for g in grads])
    assert (flat - want).norm() <= 0.05 * want.norm()
    for a, b in zip(got, grads):  # the cosine by hand: torch's clamps norms below 1e-8, and some are 1e-10
        a, b = a.double().flatten(), b.double().flatten()
        assert a @ b > 0.98 * a.norm() * b.norm()
