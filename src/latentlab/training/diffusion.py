"""Training the latent diffusion model: text encoder and U-Net together, the autoencoder frozen.

Each step: render a batch of captioned shapes, encode the images to latents, drop each caption to
the empty prompt with probability p_uncond (so the one network also learns the unconditional model
that classifier-free guidance needs), and minimise the diffusion loss: the squared error on the
network's target (eps, x_0 or v) with a uniform or min-SNR weighting, plus Improved DDPM's bound term
when the variance is learned, with timesteps uniform or importance-sampled.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.shapes import ShapesDataset, caption_corpus
from ..diffusion import DiffusionConfig, ImportanceSampler, diffusion_loss
from ..errors import CheckpointError
from ..io import load_component
from ..models import AutoencoderKL, TextEncoder, TextEncoderConfig, Tokenizer, UNet, UNetConfig, VAEConfig
from ..models.bert import BertModel
from ..pipeline import Pipeline, vae_translation
from .ema import EMA
from .loop import Progress, autocast, learning_rate, setup


@dataclass
class DiffusionTrainConfig:
    vae: str  # folder of a trained autoencoder (or a model folder: its vae/ is used)
    out: str  # the model folder to write
    steps: int = 20_000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 128
    lr: float = 3e-4
    warmup: int = 500
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    p_uncond: float = 0.1  # probability of training on the empty prompt (classifier-free guidance)
    p_two: float = 0.35  # fraction of two-object scenes in the data
    image_size: int = 32
    seed: int = 0
    device: str = "auto"
    save_every: int = 2000
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


def load_vae(path: str | Path) -> AutoencoderKL:
    path = Path(path)
    if (path / "vae").is_dir():
        path = path / "vae"
    return load_component(path, AutoencoderKL, VAEConfig, translate=vae_translation)


def make_text_encoder(config: DiffusionTrainConfig):
    """(tokenizer, text encoder) for a run from scratch: ours, fitted to the captions and trained with the
    U-Net ("trained"), or a pretrained BERT used frozen, its per-token states the context: "minilm" (the
    all-MiniLM-L6-v2 package) or a folder with a BERT's config.json, model.safetensors and tokenizer.json."""
    if config.text_encoder == "trained":
        tokenizer = Tokenizer.fit(caption_corpus(seed=config.seed), max_length=config.text.max_length)
        return tokenizer, TextEncoder(dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size))
    from ..models.pretrained import load_minilm, minilm_path, minilm_tokenizer

    path = minilm_path() if config.text_encoder == "minilm" else Path(config.text_encoder)
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"text encoder {config.text_encoder!r} is neither 'trained', 'minilm' nor a folder "
                              "holding a BERT's config.json, model.safetensors and tokenizer.json")
    return minilm_tokenizer(config.text.max_length, path), load_minilm(path)


def train_diffusion(config: DiffusionTrainConfig) -> dict[str, float]:
    device = setup(config.seed, config.device)
    out = Path(config.out)
    vae = load_vae(config.vae).to(device).eval().requires_grad_(False)
    diffusion = config.diffusion
    if config.init is not None:  # continue: the tokenizer, networks and noise schedule of that model
        start = Pipeline.load(config.init, device=device)
        tokenizer, text_encoder, unet = start.tokenizer, start.text_encoder.train(), start.unet.train()
        diffusion = start.diffusion
    else:
        tokenizer, text_encoder = make_text_encoder(config)
        text_encoder = text_encoder.to(device)
        out_channels = vae.config.latent_channels * (2 if diffusion.learned_variance else 1)
        unet = UNet(dataclasses.replace(config.unet, in_channels=vae.config.latent_channels,
                                        out_channels=out_channels, context_dim=text_encoder.config.width))
        unet = unet.to(device)
    unet.enable_gradient_checkpointing(config.gradient_checkpointing)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    unet = unet.to(memory_format=memory_format)
    frozen_text = isinstance(text_encoder, BertModel)  # a pretrained encoder stays as it is
    if frozen_text:
        text_encoder.eval().requires_grad_(False)
    params = [p for p in text_encoder.parameters() if p.requires_grad] + list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    ema_text, ema_unet = EMA(text_encoder, config.ema_decay), EMA(unet, config.ema_decay)
    alphas_cumprod = diffusion.alphas_cumprod().to(device)
    data = ShapesDataset(seed=config.seed, split="train", image_size=config.image_size, p_two=config.p_two)
    generator = torch.Generator(device).manual_seed(config.seed)
    importance = ImportanceSampler(diffusion.timesteps) if config.importance_sampling else None
    t_generator = torch.Generator().manual_seed(config.seed + 1)

    def make_batch(step: int):
        """Images, token ids and mask of step `step`; each caption dropped to "" with p_uncond."""
        images, captions, _ = data.batch(step * config.batch_size, config.batch_size, device)
        drop = random.Random(config.seed * 1_000_003 + step)
        captions = ["" if drop.random() < config.p_uncond else c for c in captions]
        ids, mask = tokenizer(captions)
        return images, ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)

    def snapshot() -> Pipeline:
        return Pipeline(tokenizer=tokenizer, text_encoder=ema_text.model, unet=ema_unet.model, vae=vae,
                        diffusion=diffusion, image_size=config.image_size)

    progress = Progress(out, config.steps, config.minutes, config.batch_size)
    step = 0
    while not progress.done(step):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.lr, config.warmup)
        images, ids, mask = make_batch(step)
        with torch.no_grad():
            z_0 = vae.encode(images, generator=generator).contiguous(memory_format=memory_format)
        t, weights = None, None
        if importance is not None:
            t, weights = importance.sample(z_0.shape[0], device=device, generator=t_generator)
        with autocast(device):
            with torch.set_grad_enabled(not frozen_text):
                context = text_encoder(ids, mask)
            terms = diffusion_loss(lambda x_t, t: unet(x_t, t, context, mask), z_0, alphas_cumprod, diffusion, t=t,
                                   weighting=config.weighting, snr_gamma=config.snr_gamma,
                                   vlb_weight=config.vlb_weight, generator=generator)
        if importance is not None:
            importance.update(t, terms.vlb if terms.vlb is not None else terms.mse)
            loss = (terms.loss * weights).mean()
        else:
            loss = terms.loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_text.update(text_encoder, step)
        ema_unet.update(unet, step)
        progress.log(step, loss)
        step += 1
        if step % config.save_every == 0:
            snapshot().save(out)
    progress.close()
    snapshot().save(out)
    return {"steps": step}
