import dataclasses

import torch

from latentlab.models import AutoencoderKL
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
