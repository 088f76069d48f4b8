"""Training the latent diffusion model: text encoder and U-Net together, the autoencoder frozen.

Each step: render a batch of captioned shapes, encode the images to latents, drop each caption to
the empty prompt with probability p_uncond (so the one network also learns the unconditional model
that classifier-free guidance needs), and minimise the diffusion loss: the squared error on the
network's target (eps, x_0 or v) with a uniform or min-SNR weighting, plus Improved DDPM's bound term
when the variance is learned, with timesteps uniform or importance-sampled.

Every random draw of a step (caption drops, the latents' posterior noise, t, eps) is made for the
whole global batch from generators seeded by the run's seed; each process of a distributed run
(training/distributed.py) and each micro-batch of gradient accumulation takes its slice. A run's
result is therefore the same on 1 or N processes and with any accumulation, up to the order of
floating-point sums. Checkpoints (training/state.py) hold every state that a step reads, so
`resume=True` continues exactly: a run killed and resumed ends with an uninterrupted run's weights.
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.masks import training_mask
from ..data.sources import caption_corpus_of, open_dataset
from ..diffusion import DiffusionConfig, ImportanceSampler, diffusion_loss
from .. import fast
from ..errors import CheckpointError, LatentlabError
from ..io import load_component
from ..io.convert import vae_translation
from ..models import AutoencoderKL, TextEncoder, TextEncoderConfig, Tokenizer, UNet, UNetConfig, VAEConfig
from ..models.bert import BertModel
from ..models.vae import DiagonalGaussian
from ..pipeline import Pipeline
from .distributed import close_world
from .ema import EMA
from .loop import (FiniteCheck, Progress, StopSignals, adamw, autocast, check_numbers, join_world, learning_rate,
                   run_steps)
from .monitor import MetricsLog, TensorBoard, sample_grid
from .state import (FILENAME, check_resumable, config_json, data_identity, digest, load_module, load_optimizer,
                    load_state, meta_field, optimizer_state, prefixed, rng_state, save_state, saved_step,
                    set_rng_state, unprefixed)


@dataclass
class DiffusionTrainConfig:
    vae: str  # folder of a trained autoencoder (or a model folder: its vae/ is used)
    out: str  # the model folder to write (and its checkpoint.safetensors)
    steps: int = 20_000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 128  # the global batch: over all processes and accumulated micro-batches
    grad_accum: int = 1  # micro-batches per step (and per process)
    lr: float = 3e-4
    warmup: int = 500
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # clip the gradients' global norm to this
    ema_decay: float = 0.999
    p_uncond: float = 0.1  # probability of training on the empty prompt (classifier-free guidance)
    data: str = "shapes"  # shapes, fashion-mnist, mnist, a folder of captioned images or of cached latents
    p_two: float = 0.35  # fraction of two-object scenes in the shapes data
    image_size: int = 32
    seed: int = 0
    device: str = "auto"
    save_every: int = 2000  # write the model folder (EMA weights) every N steps
    checkpoint_every: int = 500  # write the resumable checkpoint every N steps
    resume: bool = False  # continue from out/checkpoint.safetensors
    compile: bool = False  # torch.compile the U-Net
    sample_every: int = 1000  # draw a grid of samples from the EMA weights every N steps (0: never)
    eval_every: int = 0  # measure the EMA weights every N steps to OUT/metrics.csv (0: never): the judge's
    # accuracy on single-object prompts (shapes), or a classifier's class accuracy and Frechet distance
    eval_classifier: str | None = None  # the classifier for class-labelled data (default: the one shipped)
    init: str | None = None  # a model folder to continue from (tokenizer, text encoder, U-Net); None: from scratch
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(schedule="linear"))
    weighting: str = "uniform"  # loss weighting over timesteps: uniform or min_snr (Hang et al. 2023)
    snr_gamma: float = 5.0  # gamma of min_snr
    vlb_weight: float = 1e-3  # lambda of the hybrid loss L_simple + lambda L_vlb (learned variance only)
    importance_sampling: bool = False  # draw t by the bound terms' second moments (Nichol & Dhariwal 2021, 3.3)
    gradient_checkpointing: bool = False  # recompute the U-Net's activations in the backward pass: less memory
    channels_last: bool = False  # the U-Net's convolutions in NHWC memory layout (faster on tensor cores)
    text_encoder: str = "trained"  # trained: ours, from scratch; minilm (or a BERT folder): pretrained, frozen
    inpainting: bool = False  # the U-Net also reads a mask and the masked image's latents (data/masks.py); from
    # --init, its new input channels start at zero (as Stable Diffusion's inpainting model started)

    def __post_init__(self):
        check_numbers(self)
        if self.inpainting and self.data != "shapes":
            raise LatentlabError(f"--inpainting trains on the shapes world (its masks box the objects); got data "
                                 f"{self.data!r}")


# what may differ between a run and the run it resumes: how long it goes on, where it runs, and where its folder
# is (the checkpoint is in it). vae, data, init and text_encoder compare by their contents (`identity`).
RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "save_every", "checkpoint_every", "compile",
                     "sample_every", "eval_every", "eval_classifier", "out")


def load_vae(path: str | Path) -> AutoencoderKL:
    path = Path(path)
    if (path / "vae").is_dir():
        path = path / "vae"
    return load_component(path, AutoencoderKL, VAEConfig, translate=vae_translation)


def make_text_encoder(config: DiffusionTrainConfig, corpus: list[str]):
    """(tokenizer, text encoder) for a run from scratch: ours, fitted to `corpus` and trained with the
    U-Net ("trained"), or a pretrained BERT used frozen, its per-token states the context: "minilm" (the
    all-MiniLM-L6-v2 package) or a folder with a BERT's config.json, model.safetensors and tokenizer.json."""
    if config.text_encoder == "trained":
        tokenizer = Tokenizer.fit(corpus, max_length=config.text.max_length)
        return tokenizer, TextEncoder(dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size))
    from ..io.pretrained import load_minilm, minilm_path, minilm_tokenizer

    path = minilm_path() if config.text_encoder == "minilm" else Path(config.text_encoder)
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"text encoder {config.text_encoder!r} is neither 'trained', 'minilm' nor a folder "
                              "holding a BERT's config.json, model.safetensors and tokenizer.json")
    return minilm_tokenizer(config.text.max_length, path), load_minilm(path)


class TextToNoise(nn.Module):
    """The trained networks as one module (what DDP wraps): token ids and mask -> context -> U-Net output; an
    inpainting U-Net's further `inputs` (the mask and the masked image's latents) concatenated with x_t."""

    def __init__(self, text_encoder: nn.Module, unet: UNet, train_text: bool):
        super().__init__()
        self.text_encoder, self.unet, self.train_text = text_encoder, unet, train_text

    def forward(self, ids, mask, x_t, t, inputs=None):
        with torch.set_grad_enabled(self.train_text and torch.is_grad_enabled()):
            context = self.text_encoder(ids, mask)
        x = x_t if inputs is None else torch.cat([x_t, inputs.to(x_t.dtype)], dim=1)
        return self.unet(x, t, context, mask)


def with_mask_inputs(unet: UNet, latent: int) -> UNet:
    """An inpainting U-Net made from a text-to-image one over `latent` channels: the same weights, and conv_in
    reading a mask and the masked image's latents beside x_t through new input channels that start at zero
    (Rombach et al. 2022's inpainting model); the U-Net itself where it reads them already."""
    if unet.config.in_channels == 2 * latent + 1:
        return unet
    wide = UNet(dataclasses.replace(unet.config, in_channels=2 * latent + 1)).to(unet.conv_in.weight.device)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], latent + 1, *weight.shape[2:])], 1)
    wide.load_state_dict(state)
    return wide


class DiffusionTrainer:
    """One training run. `run()` trains to the end (or until stopped) and writes the model folder."""

    def __init__(self, config: DiffusionTrainConfig):
        self.config = c = config
        self.world = join_world(c)
        self.device = device = self.world.device
        if c.batch_size % (self.world.size * c.grad_accum):
            raise LatentlabError(f"batch size {c.batch_size} does not split into {self.world.size} processes x "
                                  f"{c.grad_accum} micro-batches; use a multiple of {self.world.size * c.grad_accum}")
        self.out = Path(c.out)
        self.vae = load_vae(c.vae)
        self.identity = {"vae": digest(self.vae), "init": c.init, "text_encoder": c.text_encoder}
        self.vae = self.vae.to(device).eval().requires_grad_(False)
        shapes = {"p_two": c.p_two} if c.data == "shapes" else {}
        self.data = open_dataset(c.data, image_size=c.image_size, seed=c.seed, split="train", **shapes)
        if getattr(self.data, "is_latent", False):
            self.data.check_vae(self.vae)
            if self.data.image_size != c.image_size:
                raise LatentlabError(f"the latent cache {c.data} holds {self.data.image_size}px images; "
                                     f"train with --image-size {self.data.image_size}")
        self.identity["data"] = data_identity(c.data, self.data)
        self.diffusion = c.diffusion
        if c.init is not None:  # continue: the tokenizer, networks and noise schedule of that model
            start = Pipeline.load(c.init, device=device)
            self.tokenizer, text_encoder, unet = start.tokenizer, start.text_encoder.train(), start.unet.train()
            self.diffusion = start.diffusion
            self.identity["init"] = digest(text_encoder, unet, dataclasses.asdict(self.diffusion))
            if c.inpainting:
                unet = with_mask_inputs(unet, self.vae.config.latent_channels).train()
        else:
            self.tokenizer, text_encoder = make_text_encoder(c, caption_corpus_of(c.data, self.data, seed=c.seed))
            if c.text_encoder not in ("trained", "minilm"):  # a BERT folder
                self.identity["text_encoder"] = digest(text_encoder)
            out_channels = self.vae.config.latent_channels * (2 if self.diffusion.learned_variance else 1)
            latent = self.vae.config.latent_channels
            unet = UNet(dataclasses.replace(c.unet, in_channels=2 * latent + 1 if c.inpainting else latent,
                                            out_channels=out_channels, context_dim=text_encoder.config.width))
        self.sample_prompts = caption_corpus_of(c.data, self.data, seed=c.seed + 7, n=8)[:8]
        self.memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        unet = unet.to(device, memory_format=self.memory_format).enable_gradient_checkpointing(c.gradient_checkpointing)
        text_encoder = text_encoder.to(device)
        self.train_text = not isinstance(text_encoder, BertModel)  # a pretrained encoder stays as it is
        if not self.train_text:
            text_encoder.eval().requires_grad_(False)
        self.text_encoder, self.unet = text_encoder, unet
        fast.install(text_encoder, unet, self.vae)  # the speed wing: same maths, faster (fast/install.py)
        self.params = [p for p in text_encoder.parameters() if p.requires_grad] + list(unet.parameters())
        self.optimizer = adamw(self.params, c.lr, c.weight_decay, device)
        self.ema_text, self.ema_unet = EMA(text_encoder, c.ema_decay), EMA(unet, c.ema_decay)
        network = TextToNoise(text_encoder, torch.compile(unet) if c.compile else unet, self.train_text)
        self.network = DistributedDataParallel(network) if self.world.size > 1 else network
        self.alphas_cumprod = self.diffusion.alphas_cumprod().to(device)
        self.noise = torch.Generator(device).manual_seed(c.seed)  # posterior noise, t and eps
        self.t_generator = torch.Generator().manual_seed(c.seed + 1)  # importance-sampled t
        self.importance = ImportanceSampler(self.diffusion.timesteps) if c.importance_sampling else None
        self.finite = FiniteCheck(self.params, device, lr=c.lr, checkpoint=self.checkpoint_path, world=self.world)
        self.step = 0

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out / FILENAME

    def save_checkpoint(self) -> None:
        """Everything the next step reads (written by the main process; every process holds the same)."""
        self.finite.check(self.step)  # every process: they decide together
        if not self.world.main:
            return
        tensors, meta = {}, {"step": self.step, "config": config_json(self.config), "identity": self.identity,
                             "tokenizer": self.tokenizer.to_json()}
        for name, module in (("text_encoder", self.text_encoder), ("unet", self.unet),
                             ("ema_text", self.ema_text.model), ("ema_unet", self.ema_unet.model)):
            tensors.update(prefixed(name, module.state_dict()))
        optimizer_tensors, meta["optimizer"] = optimizer_state(self.optimizer)
        random_tensors, meta["rng"] = rng_state({"noise": self.noise, "t": self.t_generator})
        tensors.update(optimizer_tensors)
        tensors.update(random_tensors)
        if self.importance is not None:
            tensors.update(prefixed("importance", self.importance.state_dict()))
        save_state(self.checkpoint_path, tensors, meta)

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path
        tensors, meta = load_state(path)
        step = saved_step(meta, path)
        check_resumable(meta, self.config, path, RESUMABLE_CHANGES, self.identity)
        if meta.get("tokenizer") != self.tokenizer.to_json():
            raise CheckpointError(f"{path}: its tokenizer differs from this run's")
        for name, module in (("text_encoder", self.text_encoder), ("unet", self.unet),
                             ("ema_text", self.ema_text.model), ("ema_unet", self.ema_unet.model)):
            load_module(module, name, tensors, path)
        load_optimizer(self.optimizer, tensors, meta_field(meta, "optimizer", dict, path), path)
        set_rng_state(tensors, meta_field(meta, "rng", dict, path), {"noise": self.noise, "t": self.t_generator}, path)
        if self.importance is not None:
            self.load_importance(tensors, path)
        self.step = step

    def load_importance(self, tensors: dict, path: Path) -> None:
        mine, saved = self.importance.state_dict(), unprefixed("importance", tensors)
        if saved.keys() != mine.keys() or any(saved[k].shape != v.shape for k, v in mine.items()):
            raise CheckpointError(f"{path}: its importance sampler's state does not fit this run's "
                                  f"({self.diffusion.timesteps} timesteps); restore the file, or start the run "
                                  "again without --resume")
        self.importance.load_state_dict({k: saved[k].to(v.dtype) for k, v in mine.items()})

    def snapshot(self) -> Pipeline:
        return Pipeline(tokenizer=self.tokenizer, text_encoder=self.ema_text.model, unet=self.ema_unet.model,
                        vae=self.vae, diffusion=self.diffusion, image_size=self.config.image_size)

    # ------------------------------------------------------------------ one step

    def draws(self, step: int):
        """The global batch's random draws: caption drops, posterior noise, t (and importance weights), eps; and
        for an inpainting run the masked images' posterior noise (None otherwise)."""
        c, B, device = self.config, self.config.batch_size, self.device
        drop = random.Random(c.seed * 1_000_003 + step)
        dropped = [drop.random() < c.p_uncond for _ in range(B)]
        side = c.image_size // self.vae.config.downsampling
        shape = (B, self.vae.config.latent_channels, side, side)
        posterior_noise = torch.randn(shape, device=device, generator=self.noise)
        if self.importance is not None:
            t, weights = self.importance.sample(B, device=device, generator=self.t_generator)
        else:
            t, weights = torch.randint(0, self.diffusion.timesteps, (B,), device=device, generator=self.noise), None
        eps = torch.randn(shape, device=device, generator=self.noise)
        masked_noise = torch.randn(shape, device=device, generator=self.noise) if c.inpainting else None
        return dropped, posterior_noise, t, weights, eps, masked_noise

    @torch.no_grad()
    def latents(self, start: int, n: int, noise: torch.Tensor, masked_noise: torch.Tensor | None = None):
        """(z_0, captions, inputs): scaled latents z_0 ~ q(z | x) of examples start .. start + n - 1 (encoded now,
        or read from a cache), with the given standard normal noise; their captions; and for an inpainting run
        what the U-Net reads beside x_t, each example's training mask (data/masks.py) at the latents' size and
        its masked image's latents (with `masked_noise`), else None."""
        inputs = None
        if getattr(self.data, "is_latent", False):
            mean, logvar, captions, _ = self.data.latent_batch(start, n, self.device)
            z = DiagonalGaussian(mean, logvar).sample(noise=noise) * self.vae.config.scale_factor
        else:
            images, captions, scenes = self.data.batch(start, n, self.device)
            z = self.vae.encode(images, noise=noise)
            if masked_noise is not None:
                size = self.config.image_size
                masks = torch.stack([training_mask(scene, size, random.Random(self.config.seed * 1_000_003 + start + i))
                                     for i, scene in enumerate(scenes)]).to(self.device)
                z_masked = self.vae.encode(images * (masks < 0.5), noise=masked_noise)
                inputs = torch.cat([F.interpolate(masks, size=z.shape[-2:]), z_masked], dim=1)
        return z.contiguous(memory_format=self.memory_format), captions, inputs

    def train_step(self, step: int) -> torch.Tensor:
        """One optimiser step over the global batch; returns the mean loss over this process's share."""
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        dropped, posterior_noise, t, weights, eps, masked_noise = self.draws(step)
        local = self.world.shard(c.batch_size)
        micro = (local.stop - local.start) // c.grad_accum
        total, measured = 0.0, []
        for k in range(c.grad_accum):
            part = slice(local.start + k * micro, local.start + (k + 1) * micro)
            z_0, captions, inputs = self.latents(step * c.batch_size + part.start, micro, posterior_noise[part],
                                                 None if masked_noise is None else masked_noise[part])
            captions = ["" if d else caption for d, caption in zip(dropped[part], captions)]
            ids, mask = (x.to(self.device) for x in self.tokenizer(captions))
            last = k == c.grad_accum - 1
            sync = self.network.no_sync() if self.world.size > 1 and not last else nullcontext()
            with sync:
                with autocast(self.device):
                    terms = diffusion_loss(lambda x_t, t_: self.network(ids, mask, x_t, t_, inputs), z_0,
                                           self.alphas_cumprod,
                                           self.diffusion, t=t[part], eps=eps[part], weighting=c.weighting,
                                           snr_gamma=c.snr_gamma, vlb_weight=c.vlb_weight)
                loss = terms.loss * (weights[part] if weights is not None else 1)
                (loss.mean() / c.grad_accum).backward()
            total = total + loss.detach().mean() / c.grad_accum
            if self.importance is not None:
                measured.append(terms.vlb if terms.vlb is not None else terms.mse)
        if self.importance is not None:  # every process records the whole global batch
            self.importance.update(t, self.world.all_gather(torch.cat(measured).detach()))
        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema_text.update(self.text_encoder, step)
        self.ema_unet.update(self.unet, step)
        return total

    # ------------------------------------------------------------------ measuring while training

    def evaluate(self) -> dict:
        """The EMA weights' quality now: the shapes judge's accuracy on 200 single-object prompts, or, on a
        class-labelled set, a classifier's class accuracy and Frechet distance over 50 samples per class."""
        from ..evaluation import prompt_adherence

        pipe = self.snapshot()
        modes = {m: m.training for m in (pipe.text_encoder, pipe.unet)}
        if self.config.data == "shapes":
            report = prompt_adherence(pipe, prompts=200, steps=50)
            result = {"single_object_accuracy": report["accuracy"]["all"]}
        else:
            from ..data.sources import open_dataset
            from ..evaluation.classifier import class_fidelity, load_classifier, shipped_classifier

            test = open_dataset(self.config.data, split="test", image_size=self.config.image_size)
            classifier = load_classifier(self.config.eval_classifier or shipped_classifier(self.config.data),
                                         self.device)
            report = class_fidelity(pipe, classifier, test, per_class=50, steps=50)
            result = {k: report[k] for k in ("class_accuracy", "frechet_distance", "frechet_floor")}
        for module, mode in modes.items():
            module.train(mode)
        return result

    # ------------------------------------------------------------------ the run

    def train_and_watch(self, step: int, progress: Progress, board: TensorBoard, metrics: MetricsLog | None) -> None:
        """Train step `step`, then log, draw samples, measure and save the model folder as the settings ask."""
        c = self.config
        loss = self.train_step(step)
        row = progress.log(step, loss)
        self.step += 1
        self.finite.record(self.step, loss)
        if row is not None:
            board.scalars(self.step, {"train/loss": row["loss"], "train/samples_per_s": row["samples_per_s"]})
        if c.sample_every and self.step % c.sample_every == 0 and self.world.main:
            grid = sample_grid(self.snapshot(), self.sample_prompts, self.out / "samples" / f"step-{self.step:06d}.png")
            board.image(self.step, "samples", grid)
        if metrics is not None and self.step % c.eval_every == 0:
            with metrics.paused():
                values = self.evaluate()
            metrics.write(self.step, values)
            board.scalars(self.step, {f"eval/{k}": v for k, v in values.items()})
        if self.step % c.save_every == 0:
            self.finite.check(self.step)  # every process: they decide together
            if self.world.main:
                self.snapshot().save(self.out)

    def run(self) -> dict:
        c = self.config
        if c.resume:
            self.load_checkpoint()
        progress = Progress(self.out, c.steps, c.minutes, c.batch_size, first_step=self.step,
                            enabled=self.world.main)
        board = TensorBoard(self.out, enabled=self.world.main)
        metrics = (MetricsLog(self.out / "metrics.csv", first_step=self.step) if c.eval_every and self.world.main
                   else None)
        with StopSignals() as stop:
            try:
                for step in run_steps(self, progress, stop, c.checkpoint_every):
                    self.train_and_watch(step, progress, board, metrics)
            finally:  # also when stopped by an error: the bar ends its line before the error is printed
                progress.close()
                board.close()
        self.save_checkpoint()
        if self.world.main:
            self.snapshot().save(self.out)
        self.world.barrier()
        close_world(self.world)
        return {"steps": self.step, "processes": self.world.size, "main": self.world.main,
                "interrupted": stop.requested, "signal": stop.signal_name}


def train_diffusion(config: DiffusionTrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) a run; returns {"steps", "processes", "main" (whether this is
    the main process), "interrupted", "signal"}."""
    return DiffusionTrainer(config).run()
