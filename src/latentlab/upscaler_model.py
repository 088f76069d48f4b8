"""The upscaler as a user holds it: a diffusion super-resolution model in pixel space (models/upscaler.py) with
its diffusion process and settings.

    upscaler = UpscalerModel.load("shapes-upscaler")
    high = upscaler.upscale(images, seed=0)        # (B, 3, 32, 32) in [-1, 1] -> (B, 3, 64, 64)

A folder holds unet/ and noise_level/ (config.json, model.safetensors each), diffusion.json (the process) and
upscaler.json (`UpscalerConfig`: the sizes and the noise levels).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .devices import resolve_device
from .diffusion import DiffusionConfig, get_sampler, make_denoiser, q_sample, sampler_options
from .errors import CheckpointError, LatentlabError
from .io import atomic_write
from .io.checkpoint import load_component, read_config, save_component
from .models.unet import UNet, UNetConfig
from .models.upscaler import NoiseLevelConfig, NoiseLevelEmbedding, Upscaler

SHIPPED_UPSCALER = "shapes-upscaler"
UNET, LEVEL, DIFFUSION, INDEX = "unet", "noise_level", "diffusion.json", "upscaler.json"


@dataclass
class UpscalerConfig:
    low_size: int = 32  # the side of the images it takes
    scale: int = 2  # ... and how many times larger it draws them
    max_noise_level: int = 250  # training draws the augmentation's level s from 0 .. this (of the T timesteps)
    noise_level: int = 20  # s at sampling, unless asked otherwise (SD's x4 upscaler: 20)

    def __post_init__(self):
        if self.low_size < 1 or self.scale < 2:
            raise ValueError(f"low_size must be positive and scale at least 2, got {self.low_size} and {self.scale}")
        if not 0 <= self.noise_level <= self.max_noise_level:
            raise ValueError(f"noise_level {self.noise_level} is outside 0 .. max_noise_level {self.max_noise_level}")

    @property
    def size(self) -> int:
        return self.low_size * self.scale


def upsample(y: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic upsampling of images (B, 3, h, w) in [-1, 1] to size x size (the baseline, and what the network
    reads)."""
    return F.interpolate(y.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def augment(y_up: torch.Tensor, s: torch.Tensor, e: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """y_s = sqrt(abar_s) y + sqrt(1 - abar_s) e at level s (B,); s = 0 is abar_0, nearly y itself."""
    return q_sample(y_up, s, e, alphas_cumprod)


def upscaler_path(name: str | Path | None) -> Path:
    """A folder, or None / the shipped name for the shipped upscaler."""
    if name is None or (str(name) == SHIPPED_UPSCALER and not Path(name).exists()):
        from .pipeline import default_model_path

        return default_model_path(SHIPPED_UPSCALER)
    return Path(name)


class UpscalerModel:
    def __init__(self, network: Upscaler, diffusion: DiffusionConfig, config: UpscalerConfig):
        self.network, self.diffusion, self.config = network, diffusion, config

    @classmethod
    def new(cls, unet: UNetConfig, diffusion: DiffusionConfig, config: UpscalerConfig) -> "UpscalerModel":
        """An untrained upscaler."""
        net = UNet(unet)
        return cls(Upscaler(net, NoiseLevelEmbedding(NoiseLevelConfig.for_unet(net))), diffusion, config)

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str | torch.device = "auto") -> "UpscalerModel":
        path = upscaler_path(path)
        if not (path / INDEX).is_file():
            raise CheckpointError(f"{path} is not an upscaler folder (no {INDEX}); train one with `latentlab "
                                  f"train-upscaler`, or use the shipped {SHIPPED_UPSCALER!r}")
        unet = load_component(path / UNET, UNet, UNetConfig)
        level = load_component(path / LEVEL, NoiseLevelEmbedding, NoiseLevelConfig)
        try:
            network = Upscaler(unet, level)
        except ValueError as e:
            raise CheckpointError(f"{path / UNET}: {e}") from None
        device = resolve_device(device)
        return cls(network.eval().to(device), read_config(path / DIFFUSION, DiffusionConfig),
                   read_config(path / INDEX, UpscalerConfig))

    def save(self, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
        """Write the upscaler folder; `dtype` (e.g. torch.float16) casts the stored weights."""
        path = Path(path)
        save_component(path / UNET, self.network.unet, dtype=dtype)
        save_component(path / LEVEL, self.network.level, dtype=dtype)
        atomic_write(path / DIFFUSION, json.dumps(dataclasses.asdict(self.diffusion), indent=2) + "\n")
        atomic_write(path / INDEX, json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def check_images(self, images: torch.Tensor) -> None:
        low = self.config.low_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (low, low):
            raise LatentlabError(f"the upscaler takes {low}x{low} RGB images (B, 3, {low}, {low}), the size it was "
                                 f"trained on; got {tuple(images.shape)}")

    def check_noise_level(self, noise_level: int) -> int:
        top = self.diffusion.timesteps - 1
        if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level <= top:
            raise LatentlabError(f"noise level {noise_level!r} is not a timestep: give a whole number from 0 to {top} "
                                 f"(trained on 0 to {self.config.max_noise_level}; default {self.config.noise_level})")
        return noise_level

    @torch.no_grad()
    def upscale(self, images: torch.Tensor, *, steps: int = 50, sampler: str = "ddim", seed: int = 0,
                noise_level: int | None = None, batch_size: int = 64, callback=None, **options) -> torch.Tensor:
        """Images (B, 3, low, low) in [-1, 1] -> (B, 3, size, size) in [-1, 1] on the CPU; image i's noise (the
        start and the augmentation's) from seed + i."""
        self.check_images(images)
        s = self.check_noise_level(self.config.noise_level if noise_level is None else noise_level)
        options = sampler_options(sampler, **options)
        return torch.cat([self._upscale(images[i:i + batch_size], steps, sampler, seed + i, s, callback, options)
                          for i in range(0, len(images), batch_size)])

    def _upscale(self, y: torch.Tensor, steps: int, sampler: str, seed: int, s: int, callback, options) -> torch.Tensor:
        device, size = self.device, self.config.size
        dtype = next(self.network.parameters()).dtype
        noise = torch.stack([torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + i))
                             for i in range(len(y))]).to(device)
        x_T, e = noise[:, 0], noise[:, 1]  # the start, and the augmentation's noise
        alphas_cumprod = self.diffusion.alphas_cumprod().to(device)
        level = torch.full((len(y),), s, device=device)
        y_s = augment(upsample(y.to(device), size), level, e, alphas_cumprod).to(dtype)

        def network(x_t, t):
            return self.network(x_t.to(dtype), t, y_s, level).float()

        generator = torch.Generator(device=device).manual_seed(seed)
        x_0 = get_sampler(sampler)(make_denoiser(network, self.diffusion.prediction), x_T, alphas_cumprod, steps,
                                   generator=generator, callback=callback, **options)
        return x_0.float().clamp(-1, 1).cpu()
