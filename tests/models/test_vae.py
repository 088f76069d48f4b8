import dataclasses

import pytest
import torch

from latentlab.models import AutoencoderKL, VAEConfig
from latentlab.training.presets import preset


def test_shapes_and_downsampling():
    vae = AutoencoderKL(preset("tiny", "vae")).eval()
    x = torch.randn(2, 3, 32, 32)
    z = vae.encode(x)
    assert z.shape == (2, 4, 8, 8) and vae.config.downsampling == 4
    assert vae.decode(z).shape == x.shape


def test_scale_factor_is_owned_by_encode_and_decode():
    torch.manual_seed(0)
    vae = AutoencoderKL(preset("tiny", "vae")).eval()
    scaled = AutoencoderKL(dataclasses.replace(preset("tiny", "vae"), scale_factor=0.25)).eval()
    scaled.load_state_dict(vae.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        z, z_scaled = vae.encode(x, sample=False), scaled.encode(x, sample=False)
        assert torch.allclose(z_scaled, 0.25 * z)
        assert torch.allclose(scaled.decode(z_scaled), vae.decode(z), atol=1e-5)


def test_posterior_sampling_and_kl():
    vae = AutoencoderKL(preset("tiny", "vae"))
    q = vae.posterior(torch.randn(3, 3, 32, 32))
    g = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(q.sample(g()), q.sample(g()))
    assert (q.kl() >= 0).all() and q.kl().shape == (3,)


# ------------------------------------------------------------------ Stable Diffusion's layout

SD_LIKE = dict(quant_conv=True, downsample_padding="asymmetric", attention_bias=True)


@pytest.mark.parametrize("channels, blocks", [((32, 64), 1), ((32, 32, 64), 2)])
def test_matches_diffusers_autoencoder_kl(channels, blocks):
    """diffusers' AutoencoderKL at a tiny SD-shaped configuration, random weights: its state dict loads
    into ours with no renaming, and the posterior and the decoding agree."""
    from diffusers import AutoencoderKL as DiffusersVAE

    torch.manual_seed(0)
    n = len(channels)
    theirs = DiffusersVAE(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=channels,
                          layers_per_block=blocks, norm_num_groups=32,
                          down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n).eval()
    ours = AutoencoderKL(VAEConfig(channels=channels, blocks_per_level=blocks, groups=32, **SD_LIKE)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = theirs.encode(x).latent_dist
        got = ours.posterior(x)
        assert torch.allclose(got.mean, want.mean, atol=1e-5) and torch.allclose(got.logvar, want.logvar, atol=1e-5)
        z = want.mean
        assert torch.allclose(ours.reconstruct(z), theirs.decode(z).sample, atol=1e-5)


def test_the_first_format_is_read_by_translation(tmp_path):
    """The shipped model's autoencoder was written with flat levels; it loads into the current layout."""
    from safetensors.torch import load_file

    from latentlab.io import load_component
    from latentlab.io.convert import vae_translation
    from latentlab.pipeline import default_model_path

    folder = default_model_path() / "vae"
    assert any(k.startswith("encoder.down.") for k in load_file(str(folder / "model.safetensors")))
    vae = load_component(folder, AutoencoderKL, VAEConfig, translate=vae_translation)
    assert "encoder.down_blocks.0.resnets.0.conv1.weight" in vae.state_dict()
    with pytest.raises(Exception, match="missing keys"):
        load_component(folder, AutoencoderKL, VAEConfig)  # without translation the names do not fit


def test_bad_padding_name():
    with pytest.raises(ValueError, match="accepted: symmetric, asymmetric"):
        VAEConfig(downsample_padding="same")


@pytest.mark.parametrize("changes, message", [
    ({"groups": 0}, "groups must be positive"), ({"latent_channels": 0}, "latent_channels must be positive"),
    ({"scale_factor": 0.0}, "scale_factor must be a positive number"),
    ({"scale_factor": float("nan")}, "scale_factor must be a positive number"),
])
def test_config_refuses_values_no_network_has(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(preset("tiny", "vae"), **changes)
