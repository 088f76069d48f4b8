"""Training the autoencoder on the shapes world: L1 reconstruction + beta * KL (Rombach et al. 2022).

The adversarial patch loss of the paper comes with the training issue; here the images are flat
colours, which L1 reconstructs sharply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.shapes import ShapesDataset
from ..io import save_component
from ..models import AutoencoderKL, VAEConfig
from .loop import Progress, autocast, learning_rate, setup


@dataclass
class VAETrainConfig:
    out: str  # folder for config.json + model.safetensors (+ log.csv)
    steps: int = 4000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 64
    lr: float = 2e-4
    warmup: int = 200
    kl_weight: float = 1e-3  # beta, on the KL summed over latents and divided by the pixel count
    image_size: int = 32
    seed: int = 0
    device: str = "auto"
    model: VAEConfig = field(default_factory=VAEConfig)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1]."""
    mse = F.mse_loss((x.clamp(-1, 1) + 1) / 2, (y + 1) / 2)
    return float(10 * torch.log10(1 / mse))


@torch.no_grad()
def measure_scale_factor(vae: AutoencoderKL, data: ShapesDataset, n: int = 1024, batch: int = 256) -> float:
    """1 / std of sampled latents, so that the diffusion model sees unit-variance data."""
    device = next(vae.parameters()).device
    latents = [vae.posterior(data.batch(i, min(batch, n - i), device)[0]).sample() for i in range(0, n, batch)]
    return float(1 / torch.cat(latents).float().std())


def train_vae(config: VAETrainConfig) -> dict[str, float]:
    """Train, set the latent scale factor, save; returns PSNR on fresh test images."""
    device = setup(config.seed, config.device)
    out = Path(config.out)
    vae = AutoencoderKL(dataclasses.replace(config.model, scale_factor=1.0)).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0)
    data = ShapesDataset(seed=config.seed, split="train", image_size=config.image_size)
    generator = torch.Generator(device).manual_seed(config.seed)
    pixels = 3 * config.image_size**2
    progress = Progress(out, config.steps, config.minutes, config.batch_size)
    step = 0
    while not progress.done(step):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.lr, config.warmup)
        x = data.batch(step * config.batch_size, config.batch_size, device)[0]
        with autocast(device):
            reconstruction, posterior = vae(x, generator)
            loss = F.l1_loss(reconstruction.float(), x) + config.kl_weight * posterior.kl().float().mean() / pixels
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        progress.log(step, loss)
        step += 1
    progress.close()

    vae.eval()
    vae.config.scale_factor = measure_scale_factor(vae, data)
    save_component(out, vae)
    test = ShapesDataset(seed=config.seed, split="test", image_size=config.image_size)
    with torch.no_grad():
        x = test.batch(0, 256, device)[0]
        quality = psnr(vae.decode(vae.encode(x, sample=False)), x)
    return {"steps": step, "psnr_db": quality, "scale_factor": vae.config.scale_factor}
