"""Fine-tuning the autoencoder's decoder on video: only its temporal layers learn (Blattmann et al. 2023, sec.
3.1.1; models/video_decoder.py).

The encoder and the decoder's spatial layers stay frozen. Each step takes `batch_size` clips of the video world
(data/video.py), encodes every frame to the frozen encoder's mean latents, decodes all the frames of each clip
together with the video decoder, and minimises

    L = mean |x_hat - x|  +  temporal_weight * mean |(x_hat_{t+1} - x_hat_t) - (x_{t+1} - x_t)|

over pixels (and frame pairs): the L1 reconstruction of each frame, as the autoencoder was trained with
(training/vae.py), and the L1 error of the frame-to-frame differences, which is what flicker is: an error that
changes from frame to frame. The paper trains with the autoencoder's losses and a video discriminator of 3D
convolutions; the difference term is this project's simpler stand-in for the latter. The default
`temporal_weight` is 1: the difference term is at most twice the L1 term (triangle inequality), so an error that
stays the same from frame to frame costs its L1 alone, and one of the same size whose sign flips at every frame
three times as much.

A step's clips are the data set's clips step * batch_size onwards and its latents are the encoder's means: no
random draw, so the checkpoint (the temporal layers, the optimiser, the step) is all a step reads, and a run
killed and resumed (`resume=True`) ends with an uninterrupted run's weights. The run writes out/vae_temporal/
(config.json, model.safetensors), the component a video model folder holds (video_pipeline.py); `write_into`
makes a copy of a video model folder with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import fast
from ..data.video import VideoDataset
from ..errors import LatentlabError
from ..io import read_json, save_component
from ..io.checkpoint import remove_stale_temporaries
from ..models.video_decoder import VideoDecoder, VideoDecoderConfig
from ..pipeline import Pipeline
from ..video_pipeline import VideoPipeline, read_video_decoder
from .loop import FiniteCheck, adamw, autocast, check_numbers, learning_rate, setup, train
from .state import (FILENAME, check_resumable, config_json, digest, load_module, load_optimizer, load_state,
                    meta_field, optimizer_state, prefixed, rng_state, save_state, saved_step, set_rng_state)

COMPONENT = "vae_temporal"  # the sub-folder of out (and of a video model folder) with the temporal layers


@dataclass
class VideoDecoderTrainConfig:
    model: str  # a video model folder, or an image model (a folder, or a shipped name): its autoencoder is tuned
    out: str  # folder for vae_temporal/, checkpoint.safetensors and log.csv
    steps: int = 2_000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 8  # clips a step
    frames: int = 16  # frames a clip: 8 or 16
    lr: float = 3e-4  # Adam moves each alpha by at most about lr a step
    warmup: int = 100
    weight_decay: float = 0.0  # AdamW's; it would pull each alpha towards 0, the temporal layer alone
    grad_clip: float = 1.0  # clip the gradients' global norm to this
    temporal_weight: float = 1.0  # the weight of the frame-difference term of the loss (see the module's doc)
    kernel: int = 3  # frames each temporal convolution sees (VideoDecoderConfig)
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500  # write the resumable checkpoint every N steps
    resume: bool = False  # continue from out/checkpoint.safetensors

    def __post_init__(self):
        check_numbers(self)
        if self.temporal_weight < 0:
            raise LatentlabError(f"temporal_weight must be 0 or more, got {self.temporal_weight}")
        VideoDecoderConfig(kernel=self.kernel)


# what may differ between a run and the run it resumes (the model compares by its autoencoder's contents)
RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "checkpoint_every", "out")


def frame_differences(x: torch.Tensor) -> torch.Tensor:
    """x_{t+1} - x_t of clips (B, T, ...): (B, T - 1, ...)."""
    return x[:, 1:] - x[:, :-1]


def flicker(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mean |(x_hat_{t+1} - x_hat_t) - (x_{t+1} - x_t)| of clips (B, T, 3, H, W): how much more (or less) the
    reconstruction changes from frame to frame than the clip does; 0 where its error is the same at every frame."""
    return (frame_differences(x_hat) - frame_differences(x)).abs().mean()


def video_reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, temporal_weight: float) -> dict[str, torch.Tensor]:
    """The loss of the module's doc on clips (B, T, 3, H, W): {"loss", "l1", "flicker"}."""
    l1 = (x_hat - x).abs().mean()
    temporal = flicker(x_hat, x)
    return {"loss": l1 + temporal_weight * temporal, "l1": l1, "flicker": temporal}


class VideoDecoderTrainer:
    """One run. `run()` trains to the end (or until stopped) and writes out/vae_temporal/."""

    def __init__(self, config: VideoDecoderTrainConfig):
        self.config = c = config
        self.device = device = setup(c.seed, c.device)
        remove_stale_temporaries(c.out)
        self.out = Path(c.out)
        image = Pipeline.load(c.model, device=device)  # a video model folder reads as its image model
        self.vae = image.vae.eval().requires_grad_(False)
        self.identity = {"model": digest(self.vae)}
        self.data = VideoDataset(seed=c.seed, split="train", frames=c.frames, image_size=image.image_size)
        self.decoder = VideoDecoder(self.vae.decoder, VideoDecoderConfig(kernel=c.kernel)).to(device).freeze_spatial()
        self.temporal = self.decoder.temporal.train()
        fast.install(self.decoder)
        self.params = list(self.temporal.parameters())
        self.optimizer = adamw(self.params, c.lr, c.weight_decay, device)
        self.finite = FiniteCheck(self.params, device, lr=c.lr, checkpoint=self.checkpoint_path)
        self.step = 0

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out / FILENAME

    def save_checkpoint(self) -> None:
        self.finite.check(self.step)
        meta = {"step": self.step, "config": config_json(self.config), "identity": self.identity}
        optimizer_tensors, meta["optimizer"] = optimizer_state(self.optimizer)
        random_tensors, meta["rng"] = rng_state({})
        save_state(self.checkpoint_path, {**prefixed("temporal", self.temporal.state_dict()), **optimizer_tensors,
                                          **random_tensors}, meta)

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path
        tensors, meta = load_state(path)
        step = saved_step(meta, path)
        check_resumable(meta, self.config, path, RESUMABLE_CHANGES, self.identity)
        load_module(self.temporal, "temporal", tensors, path)
        load_optimizer(self.optimizer, tensors, meta_field(meta, "optimizer", dict, path), path)
        set_rng_state(tensors, meta_field(meta, "rng", dict, path), {}, path)
        self.step = step

    # ------------------------------------------------------------------ one step

    def train_step(self, step: int) -> torch.Tensor:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        x, _, _ = self.data.batch(step * c.batch_size, c.batch_size, self.device)  # (B, T, 3, H, W) in [-1, 1]
        with torch.no_grad():
            z = self.vae.encode(x.flatten(0, 1), sample=False)  # the frozen encoder's means, (B * T, C, h, w)
        with autocast(self.device):
            x_hat = self.decoder.decode(self.vae, z, c.frames).view_as(x)
        terms = video_reconstruction_loss(x_hat.float(), x, c.temporal_weight)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return terms["loss"].detach()

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        """Train to the end (or a stop signal), then write the checkpoint and out/vae_temporal/."""
        loss, stop = train(self)
        save_component(self.out / COMPONENT, self.temporal)
        alphas = torch.stack([mix.alpha.detach().float().cpu() for mix in self.temporal.values()])
        return {"steps": self.step, "loss": loss, "alpha_min": alphas.min().item(),
                "alpha_max": alphas.max().item(), "interrupted": stop.requested, "signal": stop.signal_name}


def train_video_decoder(config: VideoDecoderTrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) a video decoder; returns the steps done, the last step's loss,
    the temporal layers' smallest and largest alpha (alpha is not bounded, as in models/temporal.py), and whether a signal stopped the run."""
    return VideoDecoderTrainer(config).run()


# ------------------------------------------------------------------ into a video model folder


def check_into(model: str | Path, into: str | Path) -> None:
    """`write_into`'s checks, before any work: `model` is a video model folder and `into` a new (or empty) folder
    that is not `model`."""
    model, into = Path(model), Path(into)
    index = read_json(model / "model_index.json") if (model / "model_index.json").is_file() else None
    if not isinstance(index, dict) or not isinstance(index.get("video"), dict):
        raise LatentlabError(f"--into needs --model to be a video model folder (written by `latentlab train-video`); "
                             f"{model} is not one")
    if os.path.realpath(model) == os.path.realpath(into):
        raise LatentlabError(f"--into {into} is the --model folder; give a new folder, for the video model with the "
                             "temporal decoder (the input folder is never changed)")
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise LatentlabError(f"--into {into} exists and is not an empty folder; give a new folder")


def write_into(model: str | Path, decoder: str | Path, into: str | Path) -> None:
    """A copy of the video model folder `model`, with the video decoder whose temporal layers are in `decoder` (a
    vae_temporal/ folder, as a run writes it), saved as a new video model folder `into`."""
    check_into(model, into)
    pipe = VideoPipeline.load(model, device="cpu")
    pipe.video_decoder = read_video_decoder(decoder, pipe.vae)
    pipe.save(into)
