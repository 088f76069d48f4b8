"""Training the diffusion upscaler (models/upscaler.py, upscaler_model.py) on the shapes world, from scratch.

Each step renders a batch of scenes at both sizes: the high-resolution image x_0 (64x64) is what is diffused,
the low-resolution one y (32x32, rendered as the world's images and the text models' are) is upsampled, noised
to a level s drawn uniformly from 0 .. `max_noise_level` and read beside x_t (noise conditioning augmentation).
The loss is the image models' diffusion loss in pixel space.

As in training/diffusion.py, every random draw of a step is made for the whole global batch from a generator
seeded by the run's seed, each process taking its slice: the same weights on 1 or N processes (torchrun); the
checkpoint holds everything a step reads, so a run killed and resumed (`resume=True`) ends as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import fast
from ..data.shapes import ShapesDataset, render
from ..diffusion import DiffusionConfig, diffusion_loss
from ..errors import LatentlabError
from ..models.unet import UNetConfig
from ..upscaler_model import UpscalerConfig, UpscalerModel, augment, upsample
from .ema import EMA
from .loop import (FiniteCheck, adamw, autocast, check_numbers, join_world, learning_rate,
                   train_in_world)
from .state import Checkpointed, load_module, prefixed


@dataclass
class UpscalerTrainConfig:
    out: str  # the upscaler folder to write, with checkpoint.safetensors and log.csv
    steps: int = 20_000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 64  # the global batch, over all processes
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    channels: tuple[int, ...] = (64, 128, 128)  # the U-Net's level widths (64, 32 and 16 pixels)
    blocks_per_level: int = 2
    schedule: str = "cosine"
    prediction: str = "v"
    max_noise_level: int = 250  # the augmentation's levels s: 0 .. this
    noise_level: int = 20  # the level the written model samples at by default
    p_two: float = 0.35  # fraction of two-object scenes
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 1000
    resume: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self):
        check_numbers(self)
        self.channels = tuple(self.channels)
        if not 0 <= self.p_two <= 1:
            raise LatentlabError(f"p_two is a probability, got {self.p_two}")
        try:  # the architecture's and the process's own checks
            self.unet_config(), self.diffusion_config()
            if not self.max_noise_level < self.diffusion_config().timesteps:
                raise ValueError(f"max_noise_level {self.max_noise_level} is not a timestep (0 .. 999)")
            self.upscaler_config()
        except ValueError as e:
            raise LatentlabError(str(e)) from None

    def unet_config(self) -> UNetConfig:
        return UNetConfig(in_channels=6, out_channels=3, channels=self.channels, blocks_per_level=self.blocks_per_level,
                          attention_levels=(False,) * len(self.channels), head_dim=min(32, self.channels[-1]),
                          context_dim=32, pooled_text=False)

    def diffusion_config(self) -> DiffusionConfig:
        return DiffusionConfig(schedule=self.schedule, prediction=self.prediction)

    def upscaler_config(self) -> UpscalerConfig:
        return UpscalerConfig(low_size=32, scale=2, max_noise_level=self.max_noise_level, noise_level=self.noise_level)


RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "checkpoint_every", "out", "noise_level")


class UpscalerTrainer(Checkpointed):
    """One run. `run()` trains to the end (or until stopped) and writes the upscaler folder."""

    resumable_changes = RESUMABLE_CHANGES

    def __init__(self, config: UpscalerTrainConfig):
        self.config = c = config
        self.world = join_world(c)
        self.device = device = self.world.device
        self.world.shard(c.batch_size)  # refuses a batch that does not split over the processes
        self.out = Path(c.out)
        self.model = UpscalerModel.new(c.unet_config(), c.diffusion_config(), c.upscaler_config())
        self.upscaler = self.model.network.to(device).train()
        self.upscaler.unet.enable_gradient_checkpointing(c.gradient_checkpointing)
        fast.install(self.upscaler)
        self.network = DistributedDataParallel(self.upscaler) if self.world.size > 1 else self.upscaler
        self.data = ShapesDataset(seed=c.seed, split="train", image_size=self.model.config.size, p_two=c.p_two)
        self.identity = {}
        self.params = list(self.upscaler.parameters())
        self.optimizer = adamw(self.params, c.lr, c.weight_decay, device)
        self.ema = EMA(self.upscaler, c.ema_decay)
        self.alphas_cumprod = self.model.diffusion.alphas_cumprod().to(device)
        self.noise = torch.Generator(device).manual_seed(c.seed)  # t, eps, the levels s and their noise
        self.finite = FiniteCheck(self.params, device, lr=c.lr, checkpoint=self.checkpoint_path, world=self.world)
        self.step = 0

    # ------------------------------------------------------------------ checkpoints

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return {**prefixed("upscaler", self.upscaler.state_dict()), **prefixed("ema", self.ema.model.state_dict())}

    def restore_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        load_module(self.upscaler, "upscaler", tensors, path)
        load_module(self.ema.model, "ema", tensors, path)

    def snapshot(self) -> UpscalerModel:
        """The upscaler with the EMA's weights."""
        return UpscalerModel(self.ema.model.eval(), self.model.diffusion, self.model.config)

    # ------------------------------------------------------------------ one step

    def draws(self):
        """The global batch's random draws: t, eps, the augmentation's levels s and noise e."""
        c, B, size = self.config, self.config.batch_size, self.model.config.size
        shape = (B, 3, size, size)
        t = torch.randint(0, self.model.diffusion.timesteps, (B,), device=self.device, generator=self.noise)
        eps = torch.randn(shape, device=self.device, generator=self.noise)
        s = torch.randint(0, c.max_noise_level + 1, (B,), device=self.device, generator=self.noise)
        e = torch.randn(shape, device=self.device, generator=self.noise)
        return t, eps, s, e

    def train_step(self, step: int) -> torch.Tensor:
        c, size = self.config, self.model.config.size
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        t, eps, s, e = self.draws()
        part = self.world.shard(c.batch_size)
        x_0, _, scenes = self.data.batch(step * c.batch_size + part.start, part.stop - part.start, self.device)
        y = render(scenes, self.model.config.low_size, self.device)
        y_s = augment(upsample(y, size), s[part], e[part], self.alphas_cumprod)
        with autocast(self.device):
            terms = diffusion_loss(lambda x_t, t_: self.network(x_t, t_, y_s, s[part]), x_0, self.alphas_cumprod,
                                   self.model.diffusion, t=t[part], eps=eps[part])
        loss = terms.loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.upscaler, step)
        return loss.detach()

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        """Train to the end (or a stop signal), then write the checkpoint and the upscaler folder; the loss
        reported is the last step's, over the global batch."""
        return train_in_world(self, lambda: self.snapshot().save(self.out))


def train_upscaler(config: UpscalerTrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) an upscaler; returns the steps done, the last step's loss, and
    whether a signal stopped the run."""
    return UpscalerTrainer(config).run()
