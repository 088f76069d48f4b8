"""Training DALL-E 2's decoder (models/unclip.py) on the shapes world, from a trained text model.

The decoder starts as a text model (`image_model`: its text encoder, U-Net and autoencoder) with a new
image-embedding path. Each step renders a batch of captioned scenes, encodes the images to latents with the
frozen autoencoder and to unit embeddings with the frozen contrastive model, and minimises the text model's own
diffusion loss with the U-Net reading the embedding too. As DALL-E 2 trains its decoder (sec. 2.1), the embedding
is replaced by zeros with probability `p_drop_image` and the caption by the empty one with probability
`p_drop_text`, so one network is also the model of the embedding alone (variations), of neither (the
unconditional half of guidance), and of the text alone. The U-Net and the new path train; the text encoder stays
as it is, so the prior's text and the decoder's read the same captions as before.

As in training/diffusion.py, every random draw of a step is made for the whole global batch from generators seeded
by the run's seed, each process taking its slice: the same weights on 1 or N processes (torchrun); the checkpoint
holds everything a step reads, so a run killed and resumed (`resume=True`) ends as an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import fast
from ..contrastive_model import SHIPPED_CONTRASTIVE_MODEL, ContrastiveModel
from ..data.shapes import ShapesDataset
from ..diffusion import diffusion_loss
from ..errors import LatentlabError
from ..pipeline import DEFAULT_MODEL, Pipeline
from ..prior_model import PriorModel
from ..unclip_pipeline import UnCLIPPipeline
from .ema import EMA
from .loop import (FiniteCheck, adamw, autocast, check_numbers, join_world, learning_rate,
                   train_in_world)
from .state import Checkpointed, digest, load_module, prefixed


@dataclass
class UnCLIPTrainConfig:
    out: str  # the unCLIP model folder to write, with checkpoint.safetensors and log.csv
    image_model: str = DEFAULT_MODEL  # the text model the decoder starts from (a folder or a shipped name)
    clip: str = SHIPPED_CONTRASTIVE_MODEL  # the contrastive model whose image embeddings the decoder reads
    prior: str | None = None  # a prior folder (`latentlab train-prior`, on the same contrastive model) to bundle
    steps: int = 5_000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 64  # the global batch, over all processes
    lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    p_drop_image: float = 0.1  # the chance an image embedding is replaced by zeros (DALL-E 2: 10%)
    p_drop_text: float = 0.5  # the chance a caption is replaced by the empty one (DALL-E 2: 50%)
    p_two: float = 0.35  # fraction of two-object scenes
    tokens: int = 4  # context tokens made from the embedding
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500
    resume: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self):
        check_numbers(self)
        for name in ("p_drop_image", "p_drop_text", "p_two"):
            if not 0 <= getattr(self, name) <= 1:
                raise LatentlabError(f"{name} is a probability, got {getattr(self, name)}")
        if self.tokens < 1:
            raise LatentlabError(f"tokens must be a positive whole number, got {self.tokens}")


# what may differ between a run and the run it resumes (the models compare by their contents; the prior is only
# bundled into the folder written at the end)
RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "checkpoint_every", "out", "prior")


class TextAndImageToNoise(nn.Module):
    """What DDP wraps: the frozen text encoder, then the decoder."""

    def __init__(self, text_encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.text_encoder, self.decoder = text_encoder, decoder

    def forward(self, ids, mask, x_t, t, image_embed):
        with torch.no_grad():
            context = self.text_encoder(ids, mask)
        return self.decoder(x_t, t, context, mask, image_embed)


class UnCLIPTrainer(Checkpointed):
    """One run. `run()` trains to the end (or until stopped) and writes the unCLIP model folder."""

    resumable_changes = RESUMABLE_CHANGES

    def __init__(self, config: UnCLIPTrainConfig):
        self.config = c = config
        self.world = join_world(c)
        self.device = device = self.world.device
        self.world.shard(c.batch_size)  # refuses a batch that does not split over the processes
        self.out = Path(c.out)
        clip = ContrastiveModel.load(c.clip, device=str(device))
        clip.encoder.requires_grad_(False)
        self.prior = self.load_prior(clip)
        text = Pipeline.load(c.image_model, device=device)
        if clip.image_size != text.image_size:
            raise LatentlabError(f"the contrastive model reads {clip.image_size}px images, the text model draws "
                                 f"{text.image_size}px ones; give models of one image size")
        self.identity = {"image_model": digest(text.text_encoder, text.unet, text.vae), "clip": digest(clip.encoder)}
        self.pipe = UnCLIPPipeline.from_text_model(text, clip, c.clip, tokens=c.tokens, prior=self.prior)
        for module in (self.pipe.text_encoder, self.pipe.vae):
            module.eval().requires_grad_(False)
        self.decoder = self.pipe.unet.train()
        self.decoder.unet.enable_gradient_checkpointing(c.gradient_checkpointing)
        self.data = ShapesDataset(seed=c.seed, split="train", image_size=text.image_size, p_two=c.p_two)
        self.params = list(self.decoder.parameters())
        self.optimizer = adamw(self.params, c.lr, c.weight_decay, device)
        self.ema = EMA(self.decoder, c.ema_decay)
        fast.install(self.pipe.text_encoder, self.decoder, self.pipe.vae)
        network = TextAndImageToNoise(self.pipe.text_encoder, self.decoder)
        self.network = DistributedDataParallel(network) if self.world.size > 1 else network
        self.alphas_cumprod = self.pipe.diffusion.alphas_cumprod().to(device)
        self.noise = torch.Generator(device).manual_seed(c.seed)  # posterior noise, t and eps
        self.finite = FiniteCheck(self.params, device, lr=c.lr, checkpoint=self.checkpoint_path, world=self.world)
        self.step = 0

    def load_prior(self, clip: ContrastiveModel) -> PriorModel | None:
        """The prior to bundle, checked against the decoder's contrastive model before any training."""
        if self.config.prior is None:
            return None
        prior = PriorModel.load(self.config.prior, device=str(self.device))
        if digest(prior.clip.encoder) != digest(clip.encoder):
            raise LatentlabError(f"the prior {self.config.prior} was trained on the contrastive model "
                                 f"{prior.clip_name!r}, not on {self.config.clip!r}, whose embeddings the decoder "
                                 "reads; train the prior with --clip " + self.config.clip)
        prior.clip = clip  # one contrastive model for both
        return prior

    # ------------------------------------------------------------------ checkpoints

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return {**prefixed("decoder", self.decoder.state_dict()), **prefixed("ema", self.ema.model.state_dict())}

    def restore_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        load_module(self.decoder, "decoder", tensors, path)
        load_module(self.ema.model, "ema", tensors, path)

    def snapshot(self) -> UnCLIPPipeline:
        """The unCLIP model with the EMA's decoder."""
        p = self.pipe
        return UnCLIPPipeline(tokenizer=p.tokenizer, text_encoder=p.text_encoder, unet=self.ema.model, vae=p.vae,
                              diffusion=p.diffusion, image_size=p.image_size, clip=p.clip, clip_name=p.clip_name,
                              prior=p.prior)

    # ------------------------------------------------------------------ one step

    def draws(self, step: int):
        """The global batch's random draws: which captions and embeddings are dropped, posterior noise, t, eps."""
        c, B, device = self.config, self.config.batch_size, self.device
        drop = random.Random(c.seed * 1_000_003 + step)
        drop_text = [drop.random() < c.p_drop_text for _ in range(B)]
        drop_image = torch.tensor([drop.random() < c.p_drop_image for _ in range(B)], device=device)
        shape = (B, *self.pipe.latent_shape(self.pipe.image_size))
        posterior_noise = torch.randn(shape, device=device, generator=self.noise)
        t = torch.randint(0, self.pipe.diffusion.timesteps, (B,), device=device, generator=self.noise)
        eps = torch.randn(shape, device=device, generator=self.noise)
        return drop_text, drop_image, posterior_noise, t, eps

    def train_step(self, step: int) -> torch.Tensor:
        c, pipe = self.config, self.pipe
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        drop_text, drop_image, posterior_noise, t, eps = self.draws(step)
        part = self.world.shard(c.batch_size)
        images, captions, _ = self.data.batch(step * c.batch_size + part.start, part.stop - part.start, self.device)
        with torch.no_grad():
            z_0 = pipe.vae.encode(images, noise=posterior_noise[part])
            z_i = pipe.clip.encoder.encode_image(images).float()
        z_i = torch.where(drop_image[part, None], torch.zeros_like(z_i), z_i)
        captions = ["" if d else caption for d, caption in zip(drop_text[part], captions)]
        ids, mask = (x.to(self.device) for x in pipe.tokenizer(captions))
        with autocast(self.device):
            terms = diffusion_loss(lambda x_t, t_: self.network(ids, mask, x_t, t_, z_i), z_0, self.alphas_cumprod,
                                   pipe.diffusion, t=t[part], eps=eps[part])
        loss = terms.loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.decoder, step)
        return loss.detach()

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        """Train to the end (or a stop signal), then write the checkpoint and the model folder; the loss reported
        is the last step's, over the global batch."""
        return {**train_in_world(self, lambda: self.snapshot().save(self.out)), "prior": self.config.prior}


def train_unclip(config: UnCLIPTrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) an unCLIP decoder; returns the steps done, the last step's loss,
    and whether a signal stopped the run."""
    return UnCLIPTrainer(config).run()
