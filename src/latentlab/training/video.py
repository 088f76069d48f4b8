"""Training a video model from an image model: only the temporal layers learn (Blattmann et al. 2023).

The image model's text encoder, U-Net and autoencoder stay frozen; the temporal layers between the U-Net's
spatial layers (models/video_unet.py) start as the identity and are trained on captioned clips of the video
world (data/video.py) with the image model's own diffusion loss, over latents of T frames.

As in training/diffusion.py, every random draw of a step is made for the whole global batch from generators
seeded by the run's seed, each process and micro-batch taking its slice: the result is the same on 1 or N
processes (torchrun) and with any accumulation, up to the order of floating-point sums; and the checkpoint holds
everything a step reads, so a run killed and resumed (`resume=True`) ends with an uninterrupted run's weights.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import fast
from ..data.video import VideoDataset
from ..diffusion import diffusion_loss
from ..errors import LatentlabError
from ..io.checkpoint import remove_stale_temporaries
from ..models.temporal import to_clips
from ..models.video_unet import TemporalConfig, VideoUNet
from ..pipeline import Pipeline
from ..video_pipeline import VideoPipeline
from .distributed import close_world, init_world
from .ema import EMA
from .loop import (FiniteCheck, Progress, StopSignals, adamw, autocast, check_numbers, learning_rate, run_steps,
                   setup)
from .state import (FILENAME, check_resumable, config_json, digest, load_module, load_optimizer, load_state,
                    meta_field, optimizer_state, prefixed, rng_state, save_state, saved_step, set_rng_state)


@dataclass
class VideoTrainConfig:
    image_model: str  # the image model whose spatial layers the video model keeps (a folder, or a shipped name)
    out: str  # the video model folder to write (and its checkpoint.safetensors)
    steps: int = 5_000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 32  # clips in the global batch: over all processes and accumulated micro-batches
    grad_accum: int = 1  # micro-batches per step (and per process)
    frames: int = 16  # frames per clip: 8 or 16
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # clip the gradients' global norm to this
    ema_decay: float = 0.999
    p_uncond: float = 0.1  # probability of training on the empty prompt (classifier-free guidance)
    p_two: float = 0.35  # fraction of two-object clips
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500  # write the resumable checkpoint every N steps
    resume: bool = False  # continue from out/checkpoint.safetensors
    gradient_checkpointing: bool = False  # recompute the activations in the backward pass: less memory
    temporal: TemporalConfig = field(default_factory=TemporalConfig)

    def __post_init__(self):
        check_numbers(self)


# what may differ between a run and the run it resumes (the image model compares by its contents)
RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "checkpoint_every", "out")


class TextToNoise(nn.Module):
    """What DDP wraps: the frozen text encoder, then the video U-Net."""

    def __init__(self, text_encoder: nn.Module, unet: nn.Module):
        super().__init__()
        self.text_encoder, self.unet = text_encoder, unet

    def forward(self, ids, mask, x_t, t):
        with torch.no_grad():
            context = self.text_encoder(ids, mask)
        return self.unet(x_t, t, context, mask)


class VideoTrainer:
    """One run. `run()` trains to the end (or until stopped) and writes the video model folder."""

    def __init__(self, config: VideoTrainConfig):
        self.config = c = config
        self.world = init_world(setup(c.seed, c.device))
        if self.world.main:
            remove_stale_temporaries(c.out)
        self.device = device = self.world.device
        if c.batch_size % (self.world.size * c.grad_accum):
            raise LatentlabError(f"batch size {c.batch_size} does not split into {self.world.size} processes x "
                                 f"{c.grad_accum} micro-batches; use a multiple of {self.world.size * c.grad_accum}")
        self.out = Path(c.out)
        image = Pipeline.load(c.image_model, device=device)
        self.identity = {"image_model": digest(image.text_encoder, image.unet, image.vae)}
        self.data = VideoDataset(seed=c.seed, split="train", frames=c.frames, image_size=image.image_size,
                                 p_two=c.p_two)
        self.pipe = VideoPipeline.from_image(image, c.temporal, frames=c.frames)
        for module in (image.text_encoder, image.vae):
            module.eval().requires_grad_(False)
        self.unet = self.pipe.unet.freeze_spatial().enable_gradient_checkpointing(c.gradient_checkpointing)
        self.unet.unet.eval()  # the spatial layers run as at inference (no dropout)
        self.temporal = self.unet.temporal.train()
        fast.install(image.text_encoder, self.unet, image.vae)
        self.params = list(self.temporal.parameters())
        self.optimizer = adamw(self.params, c.lr, c.weight_decay, device)
        self.ema = EMA(self.temporal, c.ema_decay)
        network = TextToNoise(image.text_encoder, self.unet)
        self.network = DistributedDataParallel(network) if self.world.size > 1 else network
        self.alphas_cumprod = self.pipe.diffusion.alphas_cumprod().to(device)
        self.noise = torch.Generator(device).manual_seed(c.seed)  # posterior noise, t and eps
        self.finite = FiniteCheck(self.params, device, lr=c.lr, checkpoint=self.checkpoint_path, world=self.world)
        self.step = 0

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out / FILENAME

    def save_checkpoint(self) -> None:
        self.finite.check(self.step)
        if not self.world.main:
            return
        meta = {"step": self.step, "config": config_json(self.config), "identity": self.identity}
        tensors = {**prefixed("temporal", self.temporal.state_dict()), **prefixed("ema", self.ema.model.state_dict())}
        optimizer_tensors, meta["optimizer"] = optimizer_state(self.optimizer)
        random_tensors, meta["rng"] = rng_state({"noise": self.noise})
        save_state(self.checkpoint_path, {**tensors, **optimizer_tensors, **random_tensors}, meta)

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path
        tensors, meta = load_state(path)
        step = saved_step(meta, path)
        check_resumable(meta, self.config, path, RESUMABLE_CHANGES, self.identity)
        load_module(self.temporal, "temporal", tensors, path)
        load_module(self.ema.model, "ema", tensors, path)
        load_optimizer(self.optimizer, tensors, meta_field(meta, "optimizer", dict, path), path)
        set_rng_state(tensors, meta_field(meta, "rng", dict, path), {"noise": self.noise}, path)
        self.step = step

    def snapshot(self) -> VideoPipeline:
        """The video model with the EMA's temporal layers."""
        p = self.pipe
        return VideoPipeline(tokenizer=p.tokenizer, text_encoder=p.text_encoder, vae=p.vae, diffusion=p.diffusion,
                             image_size=p.image_size, frames=p.frames, unet=VideoUNet(self.unet.unet, self.ema.model))

    # ------------------------------------------------------------------ one step

    def draws(self, step: int):
        """The global batch's random draws: caption drops, posterior noise, t, eps."""
        c, B, device = self.config, self.config.batch_size, self.device
        drop = random.Random(c.seed * 1_000_003 + step)
        dropped = [drop.random() < c.p_uncond for _ in range(B)]
        shape = (B, *self.pipe.latent_shape(self.pipe.image_size))
        posterior_noise = torch.randn(shape, device=device, generator=self.noise)
        t = torch.randint(0, self.pipe.diffusion.timesteps, (B,), device=device, generator=self.noise)
        eps = torch.randn(shape, device=device, generator=self.noise)
        return dropped, posterior_noise, t, eps

    @torch.no_grad()
    def latents(self, start: int, n: int, noise: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Scaled latents (n, C, T, h, w) of clips start .. start + n - 1, each frame encoded by the autoencoder
        with the given noise; and their captions."""
        videos, captions, _ = self.data.batch(start, n, self.device)  # (n, T, 3, H, W)
        frames = noise.transpose(1, 2).flatten(0, 1)  # the noise of each frame, (n * T, C, h, w)
        z = self.pipe.vae.encode(videos.flatten(0, 1), noise=frames)
        return to_clips(z, videos.shape[1]), captions

    def train_step(self, step: int) -> torch.Tensor:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        dropped, posterior_noise, t, eps = self.draws(step)
        local = self.world.shard(c.batch_size)
        micro = (local.stop - local.start) // c.grad_accum
        total = 0.0
        for k in range(c.grad_accum):
            part = slice(local.start + k * micro, local.start + (k + 1) * micro)
            z_0, captions = self.latents(step * c.batch_size + part.start, micro, posterior_noise[part])
            captions = ["" if d else caption for d, caption in zip(dropped[part], captions)]
            ids, mask = (x.to(self.device) for x in self.pipe.tokenizer(captions))
            last = k == c.grad_accum - 1
            with self.network.no_sync() if self.world.size > 1 and not last else nullcontext():
                with autocast(self.device):
                    terms = diffusion_loss(lambda x_t, t_: self.network(ids, mask, x_t, t_), z_0, self.alphas_cumprod,
                                           self.pipe.diffusion, t=t[part], eps=eps[part])
                (terms.loss.mean() / c.grad_accum).backward()
            total = total + terms.loss.detach().mean() / c.grad_accum
        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.temporal, step)
        return total

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        """Train to the end (or a stop signal), then write the checkpoint and the video model folder; the loss
        reported is the last step's, over the global batch."""
        c, loss = self.config, None
        if c.resume:
            self.load_checkpoint()
        progress = Progress(self.out, c.steps, c.minutes, c.batch_size, first_step=self.step,
                            enabled=self.world.main)  # one bar and one log.csv, from the main process
        with StopSignals() as stop:
            try:
                for step in run_steps(self, progress, stop, c.checkpoint_every):
                    loss = self.train_step(step)
                    progress.log(step, loss)
                    self.step += 1
                    self.finite.record(self.step, loss)
            finally:  # also when stopped by an error: the bar ends its line before the error is printed
                progress.close()
        self.save_checkpoint()
        if loss is not None:
            loss = self.world.all_gather(loss.detach().float().view(1)).mean().item()  # each process's share
        if self.world.main:
            self.snapshot().save(self.out)
        self.world.barrier()
        close_world(self.world)
        return {"steps": self.step, "loss": loss, "processes": self.world.size, "main": self.world.main,
                "interrupted": stop.requested, "signal": stop.signal_name}


def train_video(config: VideoTrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) a video run; returns as `train_diffusion` does, and the last
    step's "loss"."""
    return VideoTrainer(config).run()
