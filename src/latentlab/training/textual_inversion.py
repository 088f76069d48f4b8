"""Textual inversion (Gal et al. 2023): a new token's embedding learned on a frozen latent diffusion model.

The token (e.g. "<diamond>", n vectors: "<diamond>", "<diamond>_1", ...) joins the tokenizer, its rows the
text encoder's token embedding, each starting as the mean embedding of an initializer word's tokens
(adapters/textual_inversion.py). Only those n x D numbers train:
v* = argmin_v E[||eps - eps_theta(z_t, t, c_theta(y_v))||^2] (the paper's eq. 2), the base model's own
diffusion loss with its U-Net, text encoder and autoencoder frozen.
On CUDA the frozen base is bfloat16 under bf16 autocast and the vectors float32, as in training/lora.py.

The captions name the concept by a word ("a red diamond on the left", the folders data/concept.py writes),
which each step replaces by the token ("a red <diamond> on the left"): `word`, by default the word a concept
folder's concept.json names. Captions that already hold the token are used as they are.

The run folder `out` holds learned_embeds.safetensors (the result, diffusers' layout and name:
io/textual_inversion.py; written at the end and when stopped), checkpoint.safetensors (the vectors,
optimiser, random generators, step, config: `resume=True` continues exactly) and log.csv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters.textual_inversion import add_tokens, check_token, initial_vectors, train_rows
from ..data.concept import MANIFEST
from ..data.sources import NAMED
from ..errors import CheckpointError, LatentlabError
from ..io import read_json
from ..io.checkpoint import remove_stale_temporaries
from ..io.textual_inversion import save_textual_inversion
from ..models.text_encoder import encode_prompts
from ..models.vae import DiagonalGaussian
from .lora import frozen_base
from .loop import FiniteCheck, adamw, autocast, check_numbers, learning_rate, setup, train
from .state import (FILENAME, check_resumable, config_json, load_optimizer, load_state, meta_field, optimizer_state,
                    rng_state, save_state, saved_step, set_rng_state)

EMBEDDING_FILENAME = "learned_embeds.safetensors"  # diffusers' name: load_textual_inversion(OUT) finds it


@dataclass
class TextualInversionConfig:
    data: str  # a folder of captioned images of the concept (python -m latentlab.data.concept writes one), ...
    out: str  # the run folder: learned_embeds.safetensors (the result), checkpoint.safetensors, log.csv
    token: str  # the new token, e.g. "<diamond>"; with vectors > 1 also <diamond>_1, ...
    initializer: str  # the word(s) whose token embeddings' mean each vector starts from, e.g. "square"
    word: str | None = None  # the captions' word for the concept, replaced by the token; None: concept.json's
    vectors: int = 1  # n: embedding vectors the token stands for
    model: str = "shapes-default"  # the frozen model: anything Pipeline.load takes (folder, SD file, shipped name)
    steps: int = 1000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 8
    lr: float = 5e-3  # AUTOMATIC1111's default for embeddings
    warmup: int = 0  # linear learning-rate warm-up over this many steps
    weight_decay: float = 0.0  # AdamW's; it would pull the vectors towards 0, away from the other tokens'
    grad_clip: float = 1.0  # clip the vectors' gradient norm to this
    image_size: int | None = None  # None: the model's
    seed: int = 0
    device: str = "auto"
    gradient_checkpointing: bool = False  # recompute the U-Net's activations in the backward pass: less memory
    checkpoint_every: int = 500  # write the resumable checkpoint every N steps (SIGTERM and Ctrl-C too)
    resume: bool = False  # continue from out/checkpoint.safetensors

    def __post_init__(self):
        check_numbers(self)


# what may differ between a run and the run it resumes (model and data compare by their contents)
RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "checkpoint_every", "out")


def check_config(c: TextualInversionConfig) -> TextualInversionConfig:
    """Bad settings raise LatentlabError before any model is loaded."""
    checks = [(c.vectors >= 1, f"vectors must be a positive integer, got {c.vectors}"),
              (c.steps >= 1 and c.batch_size >= 1 and c.checkpoint_every >= 1,
               "steps, batch_size and checkpoint_every must be positive"),
              (c.lr > 0 and c.grad_clip > 0, "lr and grad_clip must be greater than 0"),
              (c.warmup >= 0 and c.weight_decay >= 0, "warmup and weight_decay must be >= 0"),
              (bool(c.initializer.strip()), "give an initializer word, e.g. square"),
              (c.word is None or re.fullmatch(r"\S+", c.word) is not None,
               f"the caption word must be one word, got {c.word!r}")]
    for ok, message in checks:
        if not ok:
            raise LatentlabError(message)
    check_token(c.token)
    if c.data not in NAMED and not Path(c.data).is_dir():
        raise LatentlabError(f"no image folder at {c.data}; --data takes a folder of captioned images (a .txt beside "
                             f"each image, or metadata.jsonl), a latent cache, or {', '.join(NAMED)}")
    return c


def caption_word(c: TextualInversionConfig) -> str | None:
    """The captions' word for the concept: `word`, else the word a concept folder's concept.json names."""
    if c.word is not None or c.data in NAMED:
        return c.word
    return manifest_word(Path(c.data))


def manifest_word(folder: Path) -> str | None:
    """The concept word the concept.json of `folder` names (data/concept.py writes it); None without one."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    word = read_json(manifest).get("word")
    if not isinstance(word, str) or not word:
        raise CheckpointError(f"{manifest}: its 'word' is {word!r}; expected the concept's word in the captions")
    return word


def with_token(text: str, word: str, token: str) -> str:
    """`text` with the whole word `word` replaced by `token` wherever it stands."""
    return re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", lambda _: token, text)


class TextualInversionTrainer:
    """One run. `run()` trains to the end (or until stopped) and writes OUT/learned_embeds.safetensors."""

    def __init__(self, config: TextualInversionConfig):
        self.config = c = check_config(config)
        remove_stale_temporaries(c.out)  # before anything is written
        self.device = device = setup(c.seed, c.device)
        self.out = Path(c.out)
        self.pipe, self.image_size, self.data, self.identity = frozen_base(c, device)
        pipe = self.pipe
        self.word = caption_word(c)
        self.check_captions()
        vectors = initial_vectors(pipe.tokenizer, pipe.text_encoder, c.initializer, c.vectors)
        self.ids = add_tokens(pipe.tokenizer, pipe.text_encoder, c.token, vectors)
        self.vectors = train_rows(pipe.text_encoder, self.ids)  # (n, D) float32: the only trained parameter
        self.optimizer = adamw([self.vectors], c.lr, c.weight_decay, device)
        pipe.unet.enable_gradient_checkpointing(c.gradient_checkpointing)
        self.alphas_cumprod = pipe.diffusion.alphas_cumprod().to(device)
        self.noise = torch.Generator(device).manual_seed(c.seed)  # posterior noise, t and eps
        self.finite = FiniteCheck([self.vectors], device, lr=c.lr, checkpoint=self.checkpoint_path)
        self.step = 0

    def caption(self, text: str) -> str:
        """A caption with the concept's word replaced by the token."""
        return text if self.word is None else with_token(text, self.word, self.config.token)

    def check_captions(self) -> None:
        """Refuse data none of whose captions would hold the token: its vectors would get no gradient."""
        captions = getattr(self.data, "captions", None)
        if captions is not None and not any(self.config.token in self.caption(text) for text in captions):
            c = self.config
            raise LatentlabError(f"no caption of {c.data} holds {c.token}" + (f" or {self.word}" if self.word else "")
                                 + "; give the captions' word for the concept with --word")

    @property
    def trainable_parameters(self) -> int:
        return self.vectors.numel()

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out / FILENAME

    def save_checkpoint(self) -> None:
        self.finite.check(self.step)
        optimizer_tensors, optimizer_meta = optimizer_state(self.optimizer)
        random_tensors, random_meta = rng_state({"noise": self.noise})
        meta = {"step": self.step, "config": config_json(self.config), "identity": self.identity,
                "optimizer": optimizer_meta, "rng": random_meta}
        save_state(self.checkpoint_path, {"vectors": self.vectors, **optimizer_tensors, **random_tensors}, meta)

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path
        tensors, meta = load_state(path)
        step = saved_step(meta, path)
        check_resumable(meta, self.config, path, RESUMABLE_CHANGES, self.identity)
        saved = tensors.get("vectors")
        if saved is None or saved.shape != self.vectors.shape:
            raise CheckpointError(f"{path}: its vectors do not fit this run's {tuple(self.vectors.shape)}")
        with torch.no_grad():
            self.vectors.copy_(saved)
        load_optimizer(self.optimizer, tensors, meta_field(meta, "optimizer", dict, path), path)
        set_rng_state(tensors, meta_field(meta, "rng", dict, path), {"noise": self.noise}, path)
        self.step = step

    # ------------------------------------------------------------------ one step

    def batch(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
        """The step's (scaled latents z_0 ~ q(z | x) float32, captions with the token, t, eps)."""
        B, vae = self.config.batch_size, self.pipe.vae
        side = self.image_size // vae.config.downsampling
        shape = (B, vae.config.latent_channels, side, side)  # (B, C, h, w)
        posterior_noise = torch.randn(shape, device=self.device, generator=self.noise)
        t = torch.randint(0, self.pipe.diffusion.timesteps, (B,), device=self.device, generator=self.noise)
        eps = torch.randn(shape, device=self.device, generator=self.noise)
        with torch.no_grad():
            if getattr(self.data, "is_latent", False):
                mean, logvar, captions, _ = self.data.latent_batch(step * B, B, self.device)
                z_0 = DiagonalGaussian(mean, logvar).sample(noise=posterior_noise) * vae.config.scale_factor
            else:
                images, captions, _ = self.data.batch(step * B, B, self.device)
                dtype = next(vae.parameters()).dtype
                z_0 = vae.encode(images.to(dtype), noise=posterior_noise.to(dtype)).float()
        return z_0, [self.caption(text) for text in captions], t, eps

    def loss(self, z_0: torch.Tensor, captions: list[str], t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        from ..diffusion import diffusion_loss

        pipe, dtype = self.pipe, self.pipe.dtype
        with autocast(self.device):
            context, mask = encode_prompts(pipe.tokenizer, pipe.text_encoder, captions)  # the gradient's way in
            terms = diffusion_loss(lambda x_t, t_: pipe.unet(x_t.to(dtype), t_, context.to(dtype), mask),
                                   z_0, self.alphas_cumprod, pipe.diffusion, t=t, eps=eps)
        return terms.loss.mean()

    def train_step(self, step: int) -> torch.Tensor:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        loss = self.loss(*self.batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([self.vectors], c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # ------------------------------------------------------------------ the run

    def save_embedding(self) -> Path:
        """OUT/learned_embeds.safetensors, with what it was trained on in its metadata."""
        c, path = self.config, self.out / EMBEDDING_FILENAME
        self.finite.check(self.step)
        metadata = {"base_model": str(c.model), "steps": str(self.step), "data": str(c.data),
                    "initializer": c.initializer}
        save_textual_inversion(path, c.token, self.vectors, metadata)
        return path

    def run(self) -> dict:
        loss, stop = train(self)
        path = self.save_embedding()
        return {"steps": self.step, "loss": loss, "embedding": str(path),
                "token": self.config.token, "trainable_parameters": self.trainable_parameters,
                "file_bytes": path.stat().st_size, "interrupted": stop.requested, "signal": stop.signal_name}


def train_textual_inversion(config: TextualInversionConfig) -> dict:
    """Train (or, with `config.resume`, continue) a token's embedding; returns {"steps", "loss" (the last
    step's), "embedding" (the file's path), "token", "trainable_parameters", "file_bytes", "interrupted",
    "signal"}."""
    return TextualInversionTrainer(config).run()
