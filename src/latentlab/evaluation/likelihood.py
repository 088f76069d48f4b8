"""Bits per dimension of a latent diffusion model on held-out shapes images.

Two figures, both upper bounds on a negative log-likelihood:

  latent   the diffusion model's variational bound on -log p(z | caption), z the (scaled) latent of an
           image: a density on continuous latents, so it can fall below zero. Comparable between
           models that share an autoencoder.
  pixel    a bound on -log p(x | caption) for the 8-bit image x, through the autoencoder:
             -log p(x) <= E_q(z|x)[ -log p(x | z) - log p(z) + log q(z | x) ]
           with p(x | z) the discretised Gaussian around the decoder's output (one scale for all
           pixels, fitted by maximum likelihood on separate images), -log p(z) the diffusion bound
           moved to unscaled latents, and q(z | x) the encoder's posterior; one z per image.
"""

from __future__ import annotations

import math

import torch

from ..data.shapes import ShapesDataset
from ..diffusion import discretized_gaussian_log_likelihood, gaussian_log_likelihood, make_denoiser, nll_bits
from ..models.text_encoder import encode_prompts
from ..pipeline import Pipeline

LN2 = math.log(2)


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] rounded to the 256 levels of an 8-bit image."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


@torch.no_grad()
def decoder_log_scale(pipe: Pipeline, images: torch.Tensor) -> float:
    """log sigma_x of p(x | z): the maximum-likelihood Gaussian scale of the reconstruction error."""
    reconstruction = pipe.vae.reconstruct(pipe.vae.posterior(images).mean)
    return 0.5 * math.log((reconstruction - images).pow(2).mean().item())


@torch.no_grad()
def bits_per_dim(pipe: Pipeline, *, images: int = 256, batch_size: int = 128, variance: str | None = None,
                 split: str = "test", seed: int = 0, callback=None) -> dict:
    """The latent and pixel bounds, in bits per dimension, averaged over `images` captioned test images."""
    variance = variance or ("learned" if pipe.diffusion.learned_variance else "small")
    pipe.check_seed(seed, 2)  # the images' stream and, from seed + 1, the decoder's fitting images
    pipe.check_sampler("ddpm", variance=variance)
    device, vae = pipe.device, pipe.vae
    data = ShapesDataset(seed=seed, split=split, image_size=pipe.image_size)
    fit_images, _, _ = ShapesDataset(seed=seed + 1, split=split, image_size=pipe.image_size).batch(0, 256, device)
    log_sigma_x = decoder_log_scale(pipe, quantise(fit_images))
    s = vae.config.scale_factor
    alphas_cumprod = pipe.alphas_cumprod.to(device)
    generator = torch.Generator(device).manual_seed(seed)
    sums = {"latent": 0.0, "latent_prior": 0.0, "latent_decoder": 0.0, "pixel": 0.0, "pixel_reconstruction": 0.0}
    for start in range(0, images, batch_size):
        n = min(batch_size, images - start)
        x, captions, _ = data.batch(start, n, device)
        x = quantise(x)
        q = vae.posterior(x)
        z = q.sample(generator)  # unscaled latent
        context, mask = encode_prompts(pipe.tokenizer, pipe.text_encoder, captions)
        network = lambda x_t, t: pipe.unet(x_t.float(), t, context, mask)
        bound = nll_bits(make_denoiser(network, pipe.diffusion.prediction), z * s, alphas_cumprod,
                         variance=variance, generator=generator,
                         callback=None if callback is None else lambda i, total: callback(start + n * i // total, images))
        latent_dims, pixel_dims = z[0].numel(), x[0].numel()
        # nats per image: -log p(x|z), -log p(z) (unscaled: the Jacobian of z -> s z), log q(z|x)
        reconstruction = -discretized_gaussian_log_likelihood(x.double(), vae.reconstruct(z).double(),
                                                              torch.tensor(log_sigma_x)).flatten(1).sum(1)
        prior = bound["total"] * latent_dims * LN2 - latent_dims * math.log(s)
        posterior = gaussian_log_likelihood(z.double(), q.mean.double(), 0.5 * q.logvar.double()).flatten(1).sum(1)
        pixel = (reconstruction + prior + posterior) / (pixel_dims * LN2)
        sums["latent"] += bound["total"].sum().item()
        sums["latent_prior"] += bound["prior"].sum().item()
        sums["latent_decoder"] += bound["decoder"].sum().item()
        sums["pixel"] += pixel.sum().item()
        sums["pixel_reconstruction"] += (reconstruction / (pixel_dims * LN2)).sum().item()
    result = {key: value / images for key, value in sums.items()}
    return {"images": images, "split": split, "variance": variance, "seed": seed,
            "decoder_log_scale": log_sigma_x, "bits_per_dim": result}
