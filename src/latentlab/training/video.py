"""Training a video model from an image model: only the temporal layers learn (Blattmann et al. 2023).

The image model's text encoder, U-Net and autoencoder stay frozen; the temporal layers between the U-Net's
spatial layers (models/video_unet.py) start as the identity and are trained on captioned clips of the video
world (data/video.py) with the image model's own diffusion loss, over latents of T frames.

A motion LoRA (Hu et al. 2021) teaches a trained video model a new motion from a few clips: from a video model
(`init`), on clips of a motion no split draws (`motion`, data/video.py NEW_MOTIONS; a fixed set of
`concept_count`), everything stays frozen and only a LoRA of rank `lora_rank` in the temporal layers' linear
layers matching `lora_targets` (default: the temporal transformers' attention projections, self- and
cross-attention: the new motion comes with a new caption word, which only the cross-attention reads) trains.
The run writes OUT/motion-lora.safetensors (Pipeline.save_adapter; its part "temporal"), which
`VideoPipeline.load_adapter` and `latentlab generate-video --adapter` load, in place of a model folder. `init`
without `lora_rank` trains all the temporal layers on from that model's; `motion` without it, on the concept
clips alone.

As in training/diffusion.py, every random draw of a step is made for the whole global batch from generators
seeded by the run's seed, each process and micro-batch taking its slice: the result is the same on 1 or N
processes (torchrun) and with any accumulation, up to the order of floating-point sums; and the checkpoint holds
everything a step reads (for a LoRA run: the LoRA's weights, the optimiser, the generators), so a run killed and
resumed (`resume=True`) ends with an uninterrupted run's weights.
"""

from __future__ import annotations

import copy
import json
import random
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import fast
from ..adapters.inject import adapter_state_dict
from ..adapters.lora import UNET_ATTENTION, add_lora, lora_parameters
from ..data.video import NEW_MOTIONS, MotionConcept, VideoDataset
from ..diffusion import diffusion_loss
from ..errors import CheckpointError, LatentlabError
from ..models.temporal import to_clips
from ..models.video_unet import TemporalConfig, VideoUNet
from ..pipeline import Pipeline
from ..video_pipeline import VideoPipeline, check_frames
from .ema import EMA
from .loop import (FiniteCheck, adamw, autocast, check_numbers, join_world, learning_rate,
                   train_in_world)
from .state import Checkpointed, digest, load_module, prefixed, unprefixed

ADAPTER = "motion"  # the LoRA's name while it trains
LORA_FILENAME = "motion-lora.safetensors"
TEMPORAL_ATTENTION = UNET_ATTENTION  # in the temporal layers: their transformers' attention projections (q, k, v, out)


@dataclass
class VideoTrainConfig:
    out: str  # the video model folder to write (and its checkpoint.safetensors); a LoRA run's folder
    image_model: str | None = None  # the image model whose spatial layers the video model keeps (a folder, or a
    # shipped name); None with `init`, whose image model it is
    init: str | None = None  # a video model folder to start from, instead of new temporal layers
    motion: str | None = None  # train on clips of this new motion (data/video.py NEW_MOTIONS), not the video world
    concept_count: int = 50  # how many clips of the motion (cycled)
    lora_rank: int | None = None  # train only a LoRA of this rank in the temporal layers (needs `init`)
    lora_targets: tuple[str, ...] = TEMPORAL_ATTENTION  # module-name patterns of the temporal layers it adapts
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
    temporal: TemporalConfig = field(default_factory=TemporalConfig)  # new temporal layers' (not with `init`)

    def __post_init__(self):
        check_numbers(self)
        check_modes(self)


def check_modes(c: VideoTrainConfig) -> None:
    """One model to start from, a known new motion, and no setting that the run's mode would ignore."""
    if c.image_model is None and c.init is None:
        raise LatentlabError("the following arguments are required: --image-model (or --init, a video model to "
                             "start from)")
    if c.image_model is not None and c.init is not None:
        raise LatentlabError("give --image-model or --init, not both: --init's video model brings its image model")
    if c.motion is not None and c.motion not in NEW_MOTIONS:
        raise LatentlabError(f"unknown motion {c.motion!r}; accepted: {', '.join(NEW_MOTIONS)} (the motions no split "
                             "of the video world draws)")
    defaults = VideoTrainConfig.__dataclass_fields__
    refused = [(c.lora_rank is not None and c.init is None, "--lora-rank needs --init: a LoRA adapts a trained "
                "video model's temporal layers (new ones are the identity)"),
               (c.lora_rank is not None and c.lora_rank < 1, f"lora_rank must be a positive integer, got "
                f"{c.lora_rank}"),
               (c.concept_count < 1, f"concept_count must be a positive integer, got {c.concept_count}"),
               (c.lora_rank is None and tuple(c.lora_targets) != TEMPORAL_ATTENTION,
                "--lora-target is an option of a LoRA run: give --lora-rank too"),
               (c.lora_rank is not None and not c.lora_targets, "give at least one --lora-target"),
               (c.lora_rank is not None and c.ema_decay != defaults["ema_decay"].default,
                "ema_decay is not a setting of a LoRA run (its result is the LoRA as trained)"),
               (c.motion is None and c.concept_count != defaults["concept_count"].default,
                "--concept-count is an option of a --motion run"),
               (c.motion is not None and c.p_two != defaults["p_two"].default,
                "--p-two is not an option of a --motion run (its clips show one object)"),
               (c.init is not None and c.temporal != TemporalConfig(),
                "the temporal layers' options are not options of an --init run: its video model brings its own")]
    for wrong, message in refused:
        if wrong:
            raise LatentlabError(message)
    for pattern in c.lora_targets:
        try:
            re.compile(pattern)
        except re.error as e:
            raise LatentlabError(f"LoRA target {pattern!r} is not a regular expression ({e})") from None


def start_model(c: VideoTrainConfig, device: torch.device) -> VideoPipeline:
    """The video model a run starts from, made for c.frames frames: c.init's, or c.image_model's networks with
    new temporal layers (the identity)."""
    if c.init is None:
        return VideoPipeline.from_image(Pipeline.load(c.image_model, device=device), c.temporal, frames=c.frames)
    return with_unet(VideoPipeline.load(c.init, device=device), frames=c.frames)


def with_unet(p: VideoPipeline, unet: VideoUNet | None = None, *, frames: int | None = None) -> VideoPipeline:
    """The video model `p` with another video U-Net, or made for another number of frames; its other networks
    (a video decoder's too) shared."""
    q = copy.copy(p)
    q.unet, q.frames = unet or p.unet, check_frames(p.frames if frames is None else frames)
    return q


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


class VideoTrainer(Checkpointed):
    """One run. `run()` trains to the end (or until stopped) and writes the video model folder, or a LoRA run's
    LoRA file."""

    resumable_changes = RESUMABLE_CHANGES

    def __init__(self, config: VideoTrainConfig):
        self.config = c = config
        self.world = join_world(c)
        self.device = device = self.world.device
        if c.batch_size % (self.world.size * c.grad_accum):
            raise LatentlabError(f"batch size {c.batch_size} does not split into {self.world.size} processes x "
                                 f"{c.grad_accum} micro-batches; use a multiple of {self.world.size * c.grad_accum}")
        self.out = Path(c.out)
        self.pipe = pipe = start_model(c, device)
        self.identity = {"image_model": digest(pipe.text_encoder, pipe.unet.unet, pipe.vae)}
        if c.init is not None:
            self.identity["init"] = digest(pipe.unet.temporal)
        self.data = self.open_data(pipe.image_size)
        for module in (pipe.text_encoder, pipe.vae):
            module.eval().requires_grad_(False)
        self.unet = pipe.unet.freeze_spatial().enable_gradient_checkpointing(c.gradient_checkpointing)
        self.unet.unet.eval()  # the spatial layers run as at inference (no dropout)
        self.temporal = self.unet.temporal
        if self.lora:  # everything is frozen but the LoRA, the result
            self.temporal.eval().requires_grad_(False)
            add_lora(self.temporal, ADAPTER, rank=c.lora_rank, targets=c.lora_targets, dtype=torch.float32)
            self.params = lora_parameters(self.temporal, ADAPTER)
        else:  # the temporal layers train, and their EMA is the result
            self.params = list(self.temporal.train().parameters())
        fast.install(pipe.text_encoder, self.unet, pipe.vae)
        self.optimizer = adamw(self.params, c.lr, c.weight_decay, device)
        self.ema = None if self.lora else EMA(self.temporal, c.ema_decay)
        network = TextToNoise(pipe.text_encoder, self.unet)
        self.network = DistributedDataParallel(network) if self.world.size > 1 else network
        self.alphas_cumprod = self.pipe.diffusion.alphas_cumprod().to(device)
        self.noise = torch.Generator(device).manual_seed(c.seed)  # posterior noise, t and eps
        self.finite = FiniteCheck(self.params, device, lr=c.lr, checkpoint=self.checkpoint_path, world=self.world)
        self.step = 0

    def open_data(self, image_size: int) -> VideoDataset:
        """The training clips: the video world's, or the fixed set of a new motion's (data/video.py)."""
        c = self.config
        if c.motion is not None:
            return MotionConcept(motion=c.motion, seed=c.seed, split="train", count=c.concept_count,
                                 frames=c.frames, image_size=image_size)
        return VideoDataset(seed=c.seed, split="train", frames=c.frames, image_size=image_size, p_two=c.p_two)

    @property
    def lora(self) -> bool:
        """Whether the run trains a LoRA alone."""
        return self.config.lora_rank is not None

    # ------------------------------------------------------------------ checkpoints

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """What the checkpoint keeps of the networks: the temporal layers and their EMA; a LoRA run's LoRA."""
        if self.lora:
            return prefixed("lora", adapter_state_dict(self.temporal, ADAPTER))
        return {**prefixed("temporal", self.temporal.state_dict()), **prefixed("ema", self.ema.model.state_dict())}

    @torch.no_grad()
    def restore_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        """`trained_tensors` back from a checkpoint's `tensors`."""
        if not self.lora:
            load_module(self.temporal, "temporal", tensors, path)
            load_module(self.ema.model, "ema", tensors, path)
            return
        mine, saved = adapter_state_dict(self.temporal, ADAPTER), unprefixed("lora", tensors)
        if mine.keys() != saved.keys() or any(saved[k].shape != v.shape for k, v in mine.items()):
            raise CheckpointError(f"{path}: its LoRA does not fit this run's")
        for key, value in mine.items():
            value.copy_(saved[key])

    def snapshot(self) -> VideoPipeline:
        """The video model with the EMA's temporal layers."""
        return with_unet(self.pipe, VideoUNet(self.unet.unet, self.ema.model))

    def save_lora(self) -> Path:
        """OUT/motion-lora.safetensors: the LoRA (its part "temporal"), with what it was trained on in its
        metadata."""
        c, path = self.config, self.out / LORA_FILENAME
        data = f"{c.concept_count} clips of the motion {c.motion}" if c.motion else "the video world"
        metadata = {"base_model": str(c.init), "steps": str(self.step), "data": data, "frames": str(c.frames),
                    "target_patterns": json.dumps({"temporal": list(c.lora_targets)})}
        self.pipe.save_adapter(path, ADAPTER, metadata=metadata)
        return path

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
        if self.ema is not None:
            self.ema.update(self.temporal, step)
        return total

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        """Train to the end (or a stop signal), then write the checkpoint and the video model folder (a LoRA
        run: OUT/motion-lora.safetensors, its path the report's "lora"); the loss reported is the last step's,
        over the global batch."""
        return train_in_world(self, self.save)

    def save(self) -> dict:
        """The main process's output: the LoRA file (its path the report's "lora"), or the video model folder."""
        if self.lora:
            return {"lora": str(self.save_lora())}
        self.snapshot().save(self.out)
        return {}


def train_video(config: VideoTrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) a video run; returns as `train_diffusion` does, and the last
    step's "loss"."""
    return VideoTrainer(config).run()
