"""Training a LoRA (Hu et al. 2021), or another adapter, on a frozen latent diffusion model.

Every weight of the base model (U-Net, text encoder, autoencoder) stays as it is; only the adapters are
trained, so the result is a small file. `method` picks the adapter kind (adapters/, `METHODS`): LoRA's
low-rank updates W = W0 + (alpha / r) B A (the default), DoRA's, LoHa's or LoKr's weight updates, Houlsby
bottleneck layers after the transformers' sub-layers, or prefixes of the attentions' keys and values. On
CUDA the frozen base is cast to bfloat16 and runs under bf16 autocast: it gets no gradient, so it needs no
float32 master copy; the adapters stay float32 and are the only parameters AdamW holds. On the CPU
everything is float32.

Each step: a batch of captioned images (the data set's epoch order), encoded by the autoencoder under
no_grad, each caption dropped to the empty prompt with probability p_uncond (so guidance keeps
working), and the base model's own diffusion loss (its DiffusionConfig) through the adapted networks.
With prior preservation (DreamBooth, Ruiz et al. 2023, eq. 2) the base model first draws
`prior_images` images of the class prompts with its own sampler, cached in OUT/prior as PNG + .txt;
each step then adds as many of them to the batch, and the loss is
L_instance + prior_weight * L_prior.

The run folder `out` holds METHOD.safetensors (the result, written at the end and when stopped:
lora.safetensors for LoRA), checkpoint.safetensors (adapters, optimiser, random generators, step, config:
`resume=True` continues exactly), log.csv and prior/. A prefix is trained through its reparameterising MLP
and frozen to plain keys and values in the result; the checkpoint keeps the MLP, so a resumed run trains on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import fast
from ..adapters.bottleneck import ACTIVATIONS, PLACEMENTS, add_bottleneck
from ..adapters.dora import add_dora
from ..adapters.inject import adapter_layers, adapter_state_dict, trainable
from ..adapters.loha import add_loha
from ..adapters.lokr import add_lokr
from ..adapters.lora import DEFAULT_ADAPTER, TEXT_ENCODER, UNET_ATTENTION, UNET_CONVOLUTIONS, LoRALayer, add_lora
from ..adapters.prefix import TARGETS as PREFIX_TARGETS
from ..adapters.prefix import add_prefix
from ..data.sources import NAMED, open_dataset
from ..errors import CheckpointError, LatentlabError
from ..io import atomic_write
from ..io.checkpoint import remove_stale_temporaries
from ..models.text_encoder import encode_prompts
from ..models.vae import DiagonalGaussian
from ..pipeline import Pipeline
from .loop import FiniteCheck, adamw, autocast, check_numbers, learning_rate, setup, train
from .state import Checkpointed, data_identity, digest, prefixed, unprefixed

LORA_FILENAME = "lora.safetensors"
PRIOR_FOLDER = "prior"


@dataclass
class LoRATrainConfig:
    data: str  # a folder of captioned images (.txt beside each image, or metadata.jsonl), or what `train --data` takes
    out: str  # the run folder: METHOD.safetensors (the result), checkpoint.safetensors, log.csv, prior/
    model: str = "shapes-default"  # the base model: anything Pipeline.load takes (folder, SD file, shipped name)
    method: str = "lora"  # the adapter kind: lora, dora, loha, lokr, bottleneck, prefix (METHODS)
    # lora, dora, loha, lokr: weight updates of the layers `targets` names
    rank: int = 4  # r: LoRA's A is r x in, B is out x r; LoHa's and LoKr's factors' rank
    alpha: float | None = None  # the update is scaled by alpha / r; None: alpha = r (scale 1)
    dropout: float = 0.0  # dropout on the adapters' input (lora, dora)
    targets: tuple[str, ...] = UNET_ATTENTION  # module-name patterns of the U-Net layers to adapt
    unet_convolutions: bool = False  # also adapt the U-Net's convolutions (UNET_CONVOLUTIONS)
    tucker: bool = False  # loha, lokr: a kxk convolution's update from a Tucker core (adapters/loha.py)
    lokr_factor: int = -1  # lokr: split each dimension as (factor, rest) where it divides; -1: nearest the root
    lokr_decompose_both: bool = False  # lokr: the small factor w1 as a rank-r product too
    # bottleneck (Houlsby et al. 2019): y + U f(D y) after the transformers' sub-layers
    width: int = 16  # m, D's and U's inner width
    placement: tuple[str, ...] = tuple(PLACEMENTS)  # after which sub-layers (PLACEMENTS)
    activation: str = "gelu"  # f (ACTIVATIONS)
    # prefix (Li & Liang 2021): learned keys and values in every attention
    prefix_length: int = 8  # P keys and values per attention
    prefix_hidden: int = 64  # e, the width of the MLP that reparameterises them while training
    text_encoder_lora: bool = False  # also adapt the text encoder (its attention and feed-forward layers)
    steps: int = 1000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 8  # images of the data per step (plus as many prior images with prior preservation)
    lr: float = 1e-4
    warmup: int = 50  # linear learning-rate warm-up over this many steps
    weight_decay: float = 1e-2
    grad_clip: float = 1.0  # clip the adapters' gradient norm to this
    p_uncond: float = 0.1  # probability of training on the empty prompt (keeps classifier-free guidance working)
    image_size: int | None = None  # None: the base model's
    seed: int = 0
    device: str = "auto"
    prior_prompts: tuple[str, ...] = ()  # class prompts for prior preservation (DreamBooth); empty: off
    prior_images: int = 100  # images the base model draws of them (cycling through the prompts)
    prior_weight: float = 1.0  # lambda: loss = L_instance + lambda L_prior
    prior_steps: int = 50  # sampler steps (ddim) for the prior images
    prior_guidance: float = 4.0  # their classifier-free guidance scale
    gradient_checkpointing: bool = False  # recompute the U-Net's activations in the backward pass: less memory
    channels_last: bool = False  # the U-Net's feature maps in NHWC, the GPU convolutions' own layout (compiled: +5%)
    compile: bool = False  # torch.compile the U-Net
    compile_mode: str = "default"  # torch.compile's mode; "reduce-overhead" replays CUDA graphs (COMPILE_MODES)
    checkpoint_every: int = 500  # write the resumable checkpoint every N steps (SIGTERM and Ctrl-C too)
    resume: bool = False  # continue from out/checkpoint.safetensors

    def __post_init__(self):
        check_numbers(self)


# method -> (add_<kind>, {config field: its keyword}); the weight kinds (those with a rank) also take `targets`
WEIGHT_OPTIONS = {"rank": "rank", "alpha": "alpha"}
METHODS = {
    "lora": (add_lora, {**WEIGHT_OPTIONS, "dropout": "dropout"}),
    "dora": (add_dora, {**WEIGHT_OPTIONS, "dropout": "dropout"}),
    "loha": (add_loha, {**WEIGHT_OPTIONS, "tucker": "tucker"}),
    "lokr": (add_lokr, {**WEIGHT_OPTIONS, "tucker": "tucker", "lokr_factor": "factor",
                        "lokr_decompose_both": "decompose_both"}),
    "bottleneck": (add_bottleneck, {"width": "width", "placement": "placement", "activation": "activation"}),
    "prefix": (add_prefix, {"prefix_length": "length", "prefix_hidden": "hidden"}),
}
TARGET_OPTIONS = ("targets", "unet_convolutions")  # the weight kinds', beside their keywords

# what may differ between a run and the run it resumes; also where its folder is (the checkpoint is in it).
# model and data compare by their contents (`identity`).
RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "checkpoint_every", "compile", "compile_mode",
                     "channels_last", "out")
# torch.compile's modes: "reduce-overhead" records the step's kernels as CUDA graphs and replays them, which takes
# the host out of the step (1.6x eager at SD 1.5's size on an H100: docs/lora.md)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def is_weight_method(method: str) -> bool:
    """Whether `method` adapts the layers `targets` names (lora, dora, loha, lokr), not sub-layers or attentions."""
    return "rank" in METHODS[method][1]


def check_method(c: LoRATrainConfig) -> None:
    """A known method, and no option of another method set: it would be ignored."""
    if c.method not in METHODS:
        raise LatentlabError(f"unknown method {c.method!r}; accepted: {', '.join(METHODS)}")
    mine = {*METHODS[c.method][1], *(TARGET_OPTIONS if is_weight_method(c.method) else ())}
    for field in dataclasses.fields(c):
        owners = [m for m, (_, options) in METHODS.items()
                  if field.name in options or field.name in TARGET_OPTIONS and is_weight_method(m)]
        value = getattr(c, field.name)
        if owners and field.name not in mine and (tuple(value) if isinstance(value, list) else value) != field.default:
            raise LatentlabError(f"{field.name} is an option of method {', '.join(owners)}, not {c.method}")
    checks = [(c.width >= 1, f"width must be a positive integer, got {c.width}"),
              (c.prefix_length >= 1 and c.prefix_hidden >= 1, "prefix_length and prefix_hidden must be positive"),
              (c.lokr_factor == -1 or c.lokr_factor >= 1, f"lokr_factor must be -1 or positive, got {c.lokr_factor}"),
              (bool(c.placement) and set(c.placement) <= set(PLACEMENTS),
               f"unknown placement {list(c.placement)}; accepted: {', '.join(PLACEMENTS)}"),
              (c.activation in ACTIVATIONS,
               f"unknown activation {c.activation!r}; accepted: {', '.join(ACTIVATIONS)}"),
              (not c.text_encoder_lora or set(c.placement) != {"cross_attention"},
               "the text encoder has no cross-attention: add a placement it has (self_attention, feed_forward)")]
    for ok, message in checks:
        if not ok:
            raise LatentlabError(message)


def check_config(c: LoRATrainConfig) -> LoRATrainConfig:
    """Bad settings raise LatentlabError before any model is loaded."""
    check_method(c)
    checks = [(c.rank >= 1, f"rank must be a positive integer, got {c.rank}"),
              (c.alpha is None or c.alpha > 0, f"alpha must be greater than 0, got {c.alpha}"),
              (0 <= c.dropout < 1, f"dropout must be in [0, 1), got {c.dropout}"),
              (0 <= c.p_uncond <= 1, f"p_uncond must be in [0, 1], got {c.p_uncond}"),
              (c.steps >= 1 and c.batch_size >= 1 and c.checkpoint_every >= 1,
               "steps, batch_size and checkpoint_every must be positive"),
              (not c.prior_prompts or c.prior_images >= 1, "prior preservation needs prior_images >= 1"),
              (c.prior_weight >= 0, f"prior_weight must be >= 0, got {c.prior_weight}"),
              (bool(c.targets) or c.unet_convolutions, "give at least one LoRA target"),
              (c.compile_mode in COMPILE_MODES,
               f"unknown compile mode {c.compile_mode!r}; accepted: {', '.join(COMPILE_MODES)}")]
    for ok, message in checks:
        if not ok:
            raise LatentlabError(message)
    for pattern in c.targets:
        try:
            re.compile(pattern)
        except re.error as e:
            raise LatentlabError(f"LoRA target {pattern!r} is not a regular expression ({e})") from None
    if c.data not in NAMED and not Path(c.data).is_dir():
        raise LatentlabError(f"no image folder at {c.data}; --data takes a folder of captioned images (a .txt beside "
                             f"each image, or metadata.jsonl), a latent cache, or {', '.join(NAMED)}")
    return c


def open_data(c: LoRATrainConfig, image_size: int, vae: nn.Module):
    """The instance data; a latent cache must come from this model's autoencoder (checked in float32)."""
    data = open_dataset(c.data, image_size=image_size, seed=c.seed, split="train")
    if getattr(data, "is_latent", False):
        data.check_vae(vae)
        if data.image_size != image_size:
            raise LatentlabError(f"the latent cache {c.data} holds {data.image_size}px images; train with "
                                 f"--image-size {data.image_size}")
    return data


def frozen_dtype(device: torch.device) -> torch.dtype:
    """The frozen base's weights: bfloat16 on CUDA (no gradient, so no float32 master copy), else float32."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def frozen_base(c, device: torch.device) -> tuple[Pipeline, int, object, dict]:
    """(the base model c.model on `device`, frozen, in its training dtype; the image size; the data; their
    identity, compared by content when a run resumes) for a trainer of a frozen model (LoRA's, textual
    inversion's)."""
    pipe = Pipeline.load(c.model, device="cpu")  # float32 on the host; cast once on the way to the device
    image_size = c.image_size or pipe.image_size
    pipe.check_size(image_size)
    data = open_data(c, image_size, pipe.vae)
    identity = {"model": digest(pipe.text_encoder, pipe.unet, pipe.vae, dataclasses.asdict(pipe.diffusion)),
                "data": data_identity(c.data, data)}
    pipe = pipe.to(device, dtype=frozen_dtype(device))
    for module in (pipe.text_encoder, pipe.unet, pipe.vae):
        module.requires_grad_(False)
    return pipe, image_size, data, identity


class LoRATrainer(Checkpointed):
    """One adapter training run. `run()` trains to the end (or until stopped) and writes OUT/METHOD.safetensors."""

    resumable_changes = RESUMABLE_CHANGES

    def __init__(self, config: LoRATrainConfig):
        self.config = c = check_config(config)
        remove_stale_temporaries(c.out)  # before anything is written
        self.device = device = setup(c.seed, c.device)
        self.out = Path(c.out)
        self.pipe, self.image_size, self.data, self.identity = frozen_base(c, device)
        pipe = self.pipe
        self.prior = self.prior_data() if c.prior_prompts else None  # drawn by the base model, before the adapters
        self.memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        if c.channels_last:  # the frozen base only: the adapters, added next, and their optimiser state stay
            pipe.unet.to(memory_format=torch.channels_last)  # contiguous, as a resumed run loads them
        self.parts = self.add_adapters()
        fast.install(*self.parts.values())  # the new adapter layers: LoRA's training nodes (fast/lora.py)
        self.params = self.trainable_tensors()
        self.optimizer = adamw(self.param_groups(), c.lr, c.weight_decay, device)
        pipe.unet.enable_gradient_checkpointing(c.gradient_checkpointing)
        self.unet = torch.compile(pipe.unet, mode=c.compile_mode) if c.compile else pipe.unet
        self.alphas_cumprod = pipe.diffusion.alphas_cumprod().to(device)
        self.noise = torch.Generator(device).manual_seed(c.seed)  # posterior noise, t and eps
        self.finite = FiniteCheck(self.params, device, lr=c.lr, checkpoint=self.checkpoint_path)
        self.step = 0

    def add_adapters(self) -> dict[str, nn.Module]:
        """Adapter "default" (float32) of the method's kind in the U-Net, and in the text encoder if asked;
        returns the adapted networks by the names the adapter file gives them."""
        c = self.config
        add, options = METHODS[c.method]
        keywords = {keyword: getattr(c, field) for field, keyword in options.items()}
        parts = {"unet": self.pipe.unet}
        if c.text_encoder_lora:
            parts["text_encoder"] = self.pipe.text_encoder
        for name, part in parts.items():
            targets = {"targets": self.target_patterns()[name]} if is_weight_method(c.method) else {}
            add(part, DEFAULT_ADAPTER, dtype=torch.float32, **keywords, **targets)
            for _, layer in adapter_layers(part, LoRALayer):  # the base stays in eval mode; the adapters' dropout
                layer.lora_dropout.train()  # trains (LoRA's and DoRA's)
        return parts

    def target_patterns(self) -> dict[str, list[str]]:
        """The module-name patterns the adapters went to, by network (the weight kinds' targets, the
        bottleneck's placements, the prefix's attentions)."""
        c = self.config
        if c.method == "bottleneck":
            patterns = [p for key in c.placement for p in PLACEMENTS[key]]
            return {"unet": patterns, "text_encoder": patterns}
        if c.method == "prefix":
            return {"unet": list(PREFIX_TARGETS), "text_encoder": list(PREFIX_TARGETS)}
        return {"unet": list(c.targets) + (list(UNET_CONVOLUTIONS) if c.unet_convolutions else []),
                "text_encoder": list(TEXT_ENCODER)}

    def trainable_tensors(self) -> list[nn.Parameter]:
        """What the optimiser steps: the new adapters' tensors."""
        return [p for part in self.parts.values() for p in trainable(part, DEFAULT_ADAPTER)]

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups, each with its peak learning rate (`base_lr`): one, at lr."""
        return [{"params": self.params, "base_lr": self.config.lr}]

    @property
    def text_trains(self) -> bool:
        """Whether a gradient flows through the text encoder (it holds something trained)."""
        return "text_encoder" in self.parts

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    # ------------------------------------------------------------------ prior preservation

    def prior_data(self):
        """The class images for prior preservation, drawn by the base model once and cached in OUT/prior
        (image i of prompt i mod P, from noise seeded by seed + i): a resumed run reads them back."""
        from ..data.folder import ImageFolder

        c, folder = self.config, self.out / PRIOR_FOLDER
        settings = {"model": self.identity["model"], "prompts": list(c.prior_prompts), "steps": c.prior_steps,
                    "guidance": c.prior_guidance, "seed": c.seed, "image_size": self.image_size}
        settings_file = folder / "settings.json"
        fresh = not settings_file.is_file() or json.loads(settings_file.read_text()) != settings
        for index, path in _numbered(folder):  # drawn with other settings, or beyond the count
            if fresh or index >= c.prior_images:
                path.unlink()
        if fresh:
            atomic_write(settings_file, json.dumps(settings, indent=2) + "\n")
        missing = [i for i in range(c.prior_images) if not (folder / f"{i:06d}.png").is_file()]
        self.draw_prior(folder, missing)
        return ImageFolder(folder, image_size=self.image_size, seed=c.seed + 1)

    def draw_prior(self, folder: Path, missing: list[int]) -> None:
        from tqdm import tqdm

        from ..images import to_pil

        c = self.config
        if not missing:
            return
        bar = tqdm(total=len(missing), desc="prior images", unit="image")
        for start, count in _runs(missing, c.batch_size):
            prompts = [c.prior_prompts[i % len(c.prior_prompts)] for i in range(start, start + count)]
            images = to_pil(self.pipe.sample(prompts, steps=c.prior_steps, guidance=c.prior_guidance,
                                             seed=c.seed + start, size=self.image_size))
            for i, (prompt, image) in enumerate(zip(prompts, images), start=start):
                png = io.BytesIO()
                image.save(png, format="PNG")
                atomic_write(folder / f"{i:06d}.txt", prompt + "\n")
                atomic_write(folder / f"{i:06d}.png", png.getvalue())  # last: a PNG means the pair is whole
            bar.update(count)
        bar.close()

    # ------------------------------------------------------------------ checkpoints

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """The checkpoint's trained tensors: each network's new adapters (a prefix's with its MLP: not frozen yet)."""
        tensors = {}
        for name, part in self.parts.items():
            tensors.update(prefixed(name, adapter_state_dict(part, DEFAULT_ADAPTER)))
        return tensors

    @torch.no_grad()
    def restore_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        """`trained_tensors` back from a checkpoint's `tensors`."""
        for name, part in self.parts.items():
            mine, saved = adapter_state_dict(part, DEFAULT_ADAPTER), unprefixed(name, tensors)
            if mine.keys() != saved.keys() or any(saved[k].shape != v.shape for k, v in mine.items()):
                raise CheckpointError(f"{path}: its {name} adapters do not fit this run's")
            for key, value in mine.items():
                value.copy_(saved[key])

    # ------------------------------------------------------------------ one step

    def draws(self, n: int):
        """Posterior noise, t and eps for n examples, from the run's generator."""
        vae = self.pipe.vae.config
        side = self.image_size // vae.downsampling
        shape = (n, vae.latent_channels, side, side)  # (B, C, h, w)
        posterior_noise = torch.randn(shape, device=self.device, generator=self.noise)
        t = torch.randint(0, self.pipe.diffusion.timesteps, (n,), device=self.device, generator=self.noise)
        eps = torch.randn(shape, device=self.device, generator=self.noise)
        return posterior_noise, t, eps

    @torch.no_grad()
    def latents(self, data, start: int, n: int, noise: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Scaled latents z_0 ~ q(z | x) (float32) of examples start .. start + n - 1, and their captions."""
        vae = self.pipe.vae
        if getattr(data, "is_latent", False):
            mean, logvar, captions, _ = data.latent_batch(start, n, self.device)
            return DiagonalGaussian(mean, logvar).sample(noise=noise) * vae.config.scale_factor, captions
        images, captions, _ = data.batch(start, n, self.device)
        dtype = next(vae.parameters()).dtype
        return vae.encode(images.to(dtype), noise=noise.to(dtype)).float(), captions

    def batch(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
        """The step's (z_0, captions, t, eps): batch_size examples of the data (captions dropped with p_uncond),
        then as many prior images, if any."""
        c, B = self.config, self.config.batch_size
        n = B * (2 if self.prior is not None else 1)
        posterior_noise, t, eps = self.draws(n)
        z_0, captions = self.latents(self.data, step * B, B, posterior_noise[:B])
        drop = random.Random(c.seed * 1_000_003 + step)
        captions = ["" if drop.random() < c.p_uncond else caption for caption in captions]
        if self.prior is not None:
            z_prior, prior_captions = self.latents(self.prior, step * B, B, posterior_noise[B:])
            z_0, captions = torch.cat([z_0, z_prior]), captions + prior_captions
        return z_0, captions, t, eps

    def loss(self, z_0: torch.Tensor, captions: list[str], t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """L_instance + prior_weight * L_prior (the second half of the batch is the prior's, if any)."""
        from ..diffusion import diffusion_loss

        pipe, dtype = self.pipe, self.pipe.dtype
        with autocast(self.device):
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.text_trains):
                context, mask = encode_prompts(pipe.tokenizer, pipe.text_encoder, captions)
            terms = diffusion_loss(lambda x_t, t_: self.unet(x_t.to(dtype, memory_format=self.memory_format), t_,
                                                             context.to(dtype), mask),
                                   z_0, self.alphas_cumprod, pipe.diffusion, t=t, eps=eps)
        if self.prior is None:
            return terms.loss.mean()
        instance, prior = terms.loss.chunk(2)  # (B,), (B,)
        return instance.mean() + self.config.prior_weight * prior.mean()

    def train_step(self, step: int) -> torch.Tensor:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, group.get("base_lr", c.lr), c.warmup)
        torch.compiler.cudagraph_mark_step_begin()  # a new step for CUDA graphs (reduce-overhead); else nothing
        loss = self.loss(*self.batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # ------------------------------------------------------------------ the run

    @property
    def result_path(self) -> Path:
        """OUT/METHOD.safetensors: lora.safetensors for LoRA."""
        return self.out / f"{self.config.method}.safetensors"

    def save_result(self) -> Path:
        """The trained adapter, with what it was trained on in its metadata: LoRA in its own format
        (io/lora_files.py), the other kinds as Pipeline.save_adapter writes them (a prefix frozen to its keys and
        values, the networks' own prefix and the checkpoint keeping the MLP)."""
        from ..io.lora_files import save_lora

        c = self.config
        patterns = self.target_patterns()
        metadata = {"base_model": str(c.model), "steps": str(self.step), "data": str(c.data),
                    "target_patterns": json.dumps({name: patterns[name] for name in self.parts})}
        path = self.result_path
        if c.method == "lora":  # rank, alpha and the adapted modules are in the file's own header
            save_lora(path, self.parts, DEFAULT_ADAPTER, format="latentlab", metadata=metadata)
            return path
        self.pipe.save_adapter(path, DEFAULT_ADAPTER, metadata=metadata)
        return path

    def run(self) -> dict:
        loss, stop = train(self)
        path = self.save_result()
        return {"steps": self.step, "loss": loss, "lora": str(path),
                "trainable_parameters": self.trainable_parameters, "file_bytes": path.stat().st_size,
                "interrupted": stop.requested, "signal": stop.signal_name}


def train_lora(config: LoRATrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) a LoRA, or the adapter `config.method` names; returns {"steps",
    "loss" (the last step's), "lora" (the result file's path), "trainable_parameters", "file_bytes", "interrupted",
    "signal"}."""
    return LoRATrainer(config).run()


def _numbered(folder: Path):
    """(i, path) of the prior images and captions in `folder`: 000000.png, 000000.txt, ..."""
    for path in sorted(folder.glob("*")) if folder.is_dir() else ():
        if re.fullmatch(r"\d{6}\.(png|txt)", path.name):
            yield int(path.stem), path


def _runs(indices: list[int], longest: int):
    """(start, count) of the runs of consecutive indices, each at most `longest` long."""
    start = count = None
    for i in indices:
        if count is not None and i == start + count and count < longest:
            count += 1
            continue
        if count is not None:
            yield start, count
        start, count = i, 1
    if count is not None:
        yield start, count
