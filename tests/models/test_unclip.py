"""DALL-E 2's decoder network: the U-Net reading an image embedding through its timestep embedding and extra
context tokens; and classifier-free guidance over the embedding beside the text."""

import pytest
import torch

from latentlab.diffusion import classifier_free_guidance
from latentlab.models import UNet
from latentlab.models.unclip import ImageConditioning, ImageConditioningConfig, UnCLIPDecoder
from latentlab.training.presets import preset

pytestmark = pytest.mark.usefixtures("one_thread")


def decoder(seed=0, zero_time=True):
    torch.manual_seed(seed)
    unet = UNet(preset("tiny", "unet"))
    for p in unet.parameters():  # undo the zero initialisation, so that every input reaches the output
        torch.nn.init.normal_(p, std=0.05)
    conditioning = ImageConditioning(ImageConditioningConfig.for_unet(unet, 16, tokens=3))
    if not zero_time:
        torch.nn.init.normal_(conditioning.to_time.weight, std=0.1)
    return UnCLIPDecoder(unet, conditioning).eval()


def inputs(B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    context, mask = torch.randn(B, 5, 64, generator=g), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]][:B]).bool()
    z_i = torch.nn.functional.normalize(torch.randn(B, 16, generator=g), dim=-1)
    return torch.randn(B, 4, 8, 8, generator=g), torch.tensor([10, 90])[:B], context, mask, z_i


def test_the_embedding_reaches_the_output_through_both_paths():
    x, t, context, mask, z_i = inputs()
    for net in (decoder(), decoder(zero_time=False)):
        out = net(x, t, context, mask, z_i)
        assert out.shape == x.shape
        assert (net(x, t, context, mask, z_i.flip(0)) - out).abs().max() > 1e-4
    net = decoder(zero_time=False)
    with torch.no_grad():
        net.conditioning.to_tokens.weight.zero_(), net.conditioning.to_tokens.bias.zero_()
    assert (net(x, t, context, mask, z_i.flip(0)) - net(x, t, context, mask, z_i)).abs().max() > 1e-4


def test_a_new_path_adds_nothing_to_the_timestep_embedding():
    to_time, tokens = decoder().conditioning(inputs()[-1])
    assert torch.equal(to_time, torch.zeros_like(to_time)) and tokens.shape == (2, 3, 64)


def test_it_is_the_u_net_with_the_tokens_appended_to_the_context():
    net = decoder(zero_time=False)
    x, t, context, mask, z_i = inputs()
    to_time, tokens = net.conditioning(z_i)
    emb = net.unet.embed(t, context, mask, x.dtype) + to_time
    full_mask = torch.cat([mask, torch.ones(2, 3, dtype=torch.bool)], dim=1)
    expected = net.unet.traverse(x, emb, torch.cat([context, tokens], dim=1), full_mask, net.unet._layer)
    torch.testing.assert_close(net(x, t, context, mask, z_i), expected)
    padded = context.clone()
    padded[~mask] = 7.0  # padding stays masked out
    torch.testing.assert_close(net(x, t, padded, mask, z_i), net(x, t, context, mask, z_i), atol=1e-5, rtol=1e-5)


def test_the_embedding_is_required_and_must_fit_the_u_net():
    x, t, context, mask, _ = inputs()
    with pytest.raises(ValueError, match="needs image_embed"):
        decoder()(x, t, context, mask)
    with pytest.raises(ValueError, match="does not fit a U-Net"):
        UnCLIPDecoder(UNet(preset("tiny", "unet")), ImageConditioning(ImageConditioningConfig(16, 96, 64)))
    with pytest.raises(ValueError, match="tokens must be positive"):
        ImageConditioningConfig(tokens=0)


def test_guidance_runs_both_halves_with_their_own_embedding():
    net = decoder(zero_time=False)
    x, t, context, mask, z_i = inputs()
    uncond, uncond_mask = torch.zeros_like(context), torch.ones_like(mask)
    guided = classifier_free_guidance(net, context, mask, uncond, uncond_mask, 3.0,
                                      extra={"image_embed": (z_i, torch.zeros_like(z_i))})(x, t)
    cond_out = net(x, t, context, mask, z_i)
    uncond_out = net(x, t, uncond, uncond_mask, torch.zeros_like(z_i))
    torch.testing.assert_close(guided, uncond_out + 3.0 * (cond_out - uncond_out), atol=1e-5, rtol=1e-4)
    alone = classifier_free_guidance(net, context, mask, uncond, uncond_mask, 1.0,
                                     extra={"image_embed": (z_i, torch.zeros_like(z_i))})(x, t)
    torch.testing.assert_close(alone, cond_out)
