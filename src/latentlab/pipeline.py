"""Text to image: tokenizer -> text encoder -> sampler over the U-Net with guidance -> VAE decoder.

`Pipeline.load` also reads Stable Diffusion 1.x models (diffusers folders and original single
files, io/stable_diffusion.py); `Pipeline.save` writes any pipeline as a latentlab folder.

A model folder holds one sub-folder per component:

    model_index.json        {"format": "latentlab", "version": 3, "image_size": 32, "text_encoder": "latentlab",
                             "save_id": "<32 hex digits>"}
    tokenizer/tokenizer.json
    text_encoder/  unet/  vae/   config.json + model.safetensors each
    scheduler/config.json   the DiffusionConfig the U-Net was trained with

A save writes the networks' weights first, each carrying the save's id in its metadata, and
model_index.json, with the same id, last; so a save stopped midway (a kill) leaves weights whose id
is not the index's, and loading refuses the folder instead of mixing two models. Folders of older
saves carry no ids at all, and load as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from . import fast
from .adapters.textual_inversion import add_tokens
from .adapters import inject
from .adapters.lora import adapters_of, free_name, load_lora_parts
from .devices import resolve_device, resolve_dtype
from .diffusion import (DiffusionConfig, classifier_free_guidance, get_sampler, keep_known, make_denoiser, observed,
                        sampler_options, start_level, timesteps_for)
from .diffusion.reverse import check_variance
from .errors import CheckpointError, LatentlabError
from .images import to_pil
from .io import atomic_write, load_component, read_config, read_json, read_save_id, save_component
from .io.convert import blocks_from_latentlab_v1, blocks_from_latentlab_v2, vae_translation
from .io.adapter_files import AdapterFile, adapter_states, read_adapter, save_adapter
from .io.lora_files import LoRAFile, lora_states
from .io.textual_inversion import read_textual_inversion
from .io.stable_diffusion import is_diffusers_folder, load_diffusers_folder, load_single_file
from .models import (AutoencoderKL, CLIPTextConfig, CLIPTextModel, TextEncoder, TextEncoderConfig, Tokenizer, UNet,
                     UNetConfig, VAEConfig)
from .models.bert import BertConfig, BertModel
from .models.text_encoder import encode_prompts

# the text encoder architectures a model folder may hold, by the name model_index.json gives them
TEXT_ENCODERS = {"latentlab": (TextEncoder, TextEncoderConfig), "bert": (BertModel, BertConfig),
                 "clip": (CLIPTextModel, CLIPTextConfig)}

FORMAT, VERSION = "latentlab", 3  # formats 1 and 2: older module names, which io/convert.py translates
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
DEFAULT_MODEL = "shapes-default"
SHIPPED_MODELS = ("shapes-default", "fashion-mnist")  # in the package's weights/; Pipeline.load takes their names


def default_model_path(name: str = DEFAULT_MODEL) -> Path:
    """A model that ships inside the package (SHIPPED_MODELS), by default the shapes model."""
    return Path(str(resources.files("latentlab") / "weights" / name))


def apply_lora(parts: dict[str, nn.Module], lora: LoRAFile, adapter: str | None = None, scale: float = 1.0,
               check_base: bool = True) -> str:
    """Add a LoRA file's adapters to the networks in `parts` ({"unet": unet, "text_encoder": te}) as adapter
    `adapter` (default: the file's name, made unique) at multiplier `scale`, in each network's device and
    dtype; returns the adapter's name. All or nothing: a module the model lacks, a shape that does not fit,
    or (with `check_base`) another base model's fingerprint raises CheckpointError, and nothing is added;
    after any other exception too, the networks are left as they were."""
    adapter = free_name(parts.values(), adapter, lora.name)
    states = lora_states(parts, lora, check_base)  # io: the file's keys in the networks' module names
    try:
        load_lora_parts(parts, states, adapter, scale)  # adapters: the injection
    except LatentlabError as e:
        raise CheckpointError(f"{lora.path}: {e}") from None
    return adapter


def apply_adapter(parts: dict[str, nn.Module], file: LoRAFile | AdapterFile, adapter: str | None = None,
                  scale: float = 1.0, check_base: bool = True) -> str:
    """`apply_lora` for an adapter file of any kind (io/adapter_files.py `read_adapter`): a LoRA file is
    apply_lora's; the others are added as adapter `adapter` (default: the file's name, made unique) at
    multiplier `scale`, in each network's device and dtype; returns the adapter's name. All or nothing, as
    apply_lora: a module the model lacks, a shape that does not fit, or (with `check_base`) another base model's
    fingerprint raises CheckpointError naming the file, and nothing is added."""
    if isinstance(file, LoRAFile):
        return apply_lora(parts, file, adapter, scale, check_base)
    adapter = free_name(parts.values(), adapter, file.name)
    states = adapter_states(parts, file, check_base)  # io: the file's modules in the networks' names
    try:
        inject.load_adapter_parts(parts, states, adapter, scale)  # adapters: the injection
    except LatentlabError as e:
        raise CheckpointError(f"{file.path}: {e}") from None
    return adapter


@dataclass
class ImageInput:
    """Images to start from, one per prompt (`Pipeline.img2img`, `Pipeline.inpaint`): `images` (B, 3, H, W) in
    [-1, 1]; `strength` in [0, 1], the share of the sampler's steps that run; for inpainting, `masks` (B, 1, H, W),
    1 where to draw, and whether the result keeps the source's pixels outside them."""

    images: torch.Tensor
    strength: float
    masks: torch.Tensor | None = None
    keep_unmasked: bool = True

    def __getitem__(self, part: slice) -> "ImageInput":
        masks = None if self.masks is None else self.masks[part]
        return ImageInput(self.images[part], self.strength, masks, self.keep_unmasked)

    def check(self, count: int) -> int:
        """Refuse what cannot be drawn from (LatentlabError); returns the images' size."""
        images, masks, strength = self.images, self.masks, self.strength
        if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 <= strength <= 1:
            raise LatentlabError(f"strength must be a number from 0 to 1, got {strength!r}")
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or \
                images.shape[2] != images.shape[3] or len(images) != count:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise LatentlabError(f"give {count} square RGB images (B, 3, H, H) in [-1, 1], one per prompt; got "
                                 f"{shape}")
        if not torch.isfinite(images).all():
            raise LatentlabError("the images hold NaN or infinite values")
        if masks is not None:
            size = images.shape[-1]
            if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (count, 1, size, size):
                shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
                raise LatentlabError(f"give one mask (B, 1, H, W) per image, of the image's size: ({count}, 1, {size}, "
                                     f"{size}); got {shape}")
            drawn = (masks >= 0.5).flatten(1).float().mean(1)
            for i, share in enumerate(drawn.tolist()):
                if share in (0, 1):
                    what = "empty: nothing to redraw" if share == 0 else "full: nothing to keep (generate draws anew)"
                    raise LatentlabError(f"mask {i} is {what}; mark the region to redraw in white, the rest black")
        return images.shape[-1]

    def composite(self, drawn: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """The drawn images, with the source's pixels outside the (binarised) masks where they are to be kept."""
        if masks is None or not self.keep_unmasked:
            return drawn
        return masks * drawn + (1 - masks) * self.images.to(drawn.device, drawn.dtype)


class Pipeline:
    """Generates images from text prompts with a latent diffusion model."""

    def __init__(self, *, tokenizer: Tokenizer, text_encoder: TextEncoder, unet: UNet, vae: AutoencoderKL,
                 diffusion: DiffusionConfig, image_size: int):
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        self.diffusion, self.image_size = diffusion, image_size
        self.alphas_cumprod = diffusion.alphas_cumprod()
        fast.install(text_encoder, unet, vae)  # the speed wing: same maths, faster (fast/install.py)

    # ------------------------------------------------------------------ files

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str | torch.device = "auto",
             dtype: str | torch.dtype | None = None, channels_last: bool = False) -> "Pipeline":
        """A pipeline from a latentlab model folder, a diffusers Stable Diffusion folder or an original
        Stable Diffusion 1.x single file (.safetensors); `None` is the default model shipped in the package, and
        the name of one of SHIPPED_MODELS ("fashion-mnist") that model.
        `dtype` and `channels_last` as for `to`."""
        if path is None or (str(path) in SHIPPED_MODELS and not Path(path).exists()):
            path = default_model_path(DEFAULT_MODEL if path is None else str(path))
        path = Path(path)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(f"{path} is a pickle ({path.suffix}), which can run code when read; latentlab never "
                                  "unpickles files. Convert it to safetensors where you trust it, e.g. "
                                  "safetensors.torch.save_file(torch.load(f, weights_only=True)['state_dict'], out)")
        if path.is_file() and path.suffix.lower() == ".safetensors":
            parts = load_single_file(path)
        elif is_diffusers_folder(path):
            parts = load_diffusers_folder(path)
        elif path.is_dir():
            parts = cls._read_folder(path)
        else:
            raise CheckpointError(f"model {path} does not exist or is not a model; accepted: a folder written by "
                                  "`latentlab train` or Pipeline.save, a diffusers Stable Diffusion folder, or a "
                                  "Stable Diffusion 1.x .safetensors file")
        pipe = cls(**parts)
        latent = pipe.vae.config.latent_channels
        if pipe.unet.config.in_channels not in (latent, 2 * latent + 1):
            raise CheckpointError(f"{path / 'unet'} takes {pipe.unet.config.in_channels} channels, but the "
                                  f"autoencoder's latents have {latent}; accepted: a U-Net whose input is the latents "
                                  f"alone ({latent}, text to image) or the latents, a mask and the masked image's "
                                  f"latents ({2 * latent + 1}, inpainting)")
        channels = pipe.vae.config.latent_channels * (2 if pipe.diffusion.learned_variance else 1)
        if pipe.unet.config.out_channels != channels:
            raise CheckpointError(f"{path / 'unet'} outputs {pipe.unet.config.out_channels} channels, but the scheduler "
                                  f"config needs {channels} ({pipe.vae.config.latent_channels} latent channels"
                                  f"{', times 2 for the learned variance' if pipe.diffusion.learned_variance else ''})")
        return pipe.to(resolve_device(device), dtype=dtype, channels_last=channels_last)

    @staticmethod
    def _read_folder(path: Path) -> dict:
        """The parts of a latentlab model folder, of any format version."""
        index = read_json(path / "model_index.json")
        version = index.get("version")
        if index.get("format") != FORMAT or type(version) is not int or version not in range(1, VERSION + 1):
            raise CheckpointError(f"{path / 'model_index.json'} is not a latentlab model index "
                                  f"(need format {FORMAT!r}, version 1 to {VERSION})")
        image_size = index.get("image_size", 32)
        if type(image_size) is not int or image_size < 1:
            raise CheckpointError(f"{path / 'model_index.json'}: image_size is {image_size!r}; accepted: a positive "
                                  "integer")
        Pipeline._check_save_id(path, index.get("save_id"))
        old_blocks = {1: lambda state, _: blocks_from_latentlab_v1(state),
                      2: lambda state, _: blocks_from_latentlab_v2(state)}.get(version)
        try:
            tokenizer = Tokenizer.load(path / "tokenizer" / "tokenizer.json")
        except Exception as e:  # the tokenizers library raises its own exception types
            raise CheckpointError(f"{path / 'tokenizer' / 'tokenizer.json'} is not a readable tokenizer ({e})") from None
        kind = index.get("text_encoder", "latentlab")
        if not isinstance(kind, str) or kind not in TEXT_ENCODERS:
            raise CheckpointError(f"{path / 'model_index.json'} names text encoder {kind!r}; accepted: "
                                  f"{', '.join(TEXT_ENCODERS)}")
        return dict(
            tokenizer=tokenizer,
            text_encoder=load_component(path / "text_encoder", *TEXT_ENCODERS[kind], translate=old_blocks),
            unet=load_component(path / "unet", UNet, UNetConfig, translate=old_blocks),
            vae=load_component(path / "vae", AutoencoderKL, VAEConfig, translate=vae_translation),
            diffusion=read_config(path / "scheduler" / "config.json", DiffusionConfig),
            image_size=image_size,
        )

    @staticmethod
    def _check_save_id(path: Path, save_id, parts: tuple[str, ...] = ("text_encoder", "unet", "vae")) -> None:
        """Every network's weights were written by the save that wrote model_index.json (see the module's doc)."""
        if save_id is not None and not isinstance(save_id, str):
            raise CheckpointError(f"{path / 'model_index.json'}: save_id is {save_id!r}; accepted: a string")
        for part in parts:
            weights = path / part / "model.safetensors"
            if read_save_id(weights) != save_id:
                raise CheckpointError(f"{weights} was written by another save than {path / 'model_index.json'}: the "
                                      "save was interrupted, and the folder mixes two models; save it again (a "
                                      "training run's folder: continue the run with --resume, which writes it again)")

    def save(self, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
        """Write the model folder; `dtype` (e.g. torch.float16) casts the stored weights. The networks come
        first, model_index.json last, all stamped with a new save id (see the module's doc)."""
        path = Path(path)
        save_id = uuid.uuid4().hex
        for name, module in self.components().items():
            save_component(path / name, module, dtype=dtype, save_id=save_id)
        atomic_write(path / "tokenizer" / "tokenizer.json", self.tokenizer.to_json())
        atomic_write(path / "scheduler" / "config.json", json.dumps(dataclasses.asdict(self.diffusion), indent=2) + "\n")
        atomic_write(path / "model_index.json", json.dumps(self.index(save_id), indent=2) + "\n")

    def components(self) -> dict[str, nn.Module]:
        """The networks a model folder stores, by sub-folder; each has a `config`."""
        return {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae}

    def index(self, save_id: str) -> dict:
        """model_index.json's contents for a save."""
        kind = next(name for name, (module, _) in TEXT_ENCODERS.items() if isinstance(self.text_encoder, module))
        return {"format": FORMAT, "version": VERSION, "image_size": self.image_size, "text_encoder": kind,
                "save_id": save_id}

    def to(self, device: str | torch.device, *, dtype: str | torch.dtype | None = None,
           channels_last: bool = False) -> "Pipeline":
        """Move the networks to `device`; `dtype` (float32, float16, bfloat16) casts their weights, while the
        sampler's arithmetic stays in float32 or wider. `channels_last` stores the U-Net's and the
        autoencoder's feature maps pixel-major (NHWC), the layout GPU convolutions run in natively."""
        dtype = resolve_dtype(dtype)
        for module in (self.text_encoder, self.unet, self.vae):
            module.to(device, dtype).eval()
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ------------------------------------------------------------------ LoRA and the other adapters

    def lora_parts(self) -> dict[str, nn.Module]:
        """The networks a LoRA (or another adapter) adapts, by the names adapter files give them."""
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def _holding(self, name: str | None) -> list[nn.Module]:
        """The networks holding adapter `name` (None: any adapter); an unknown name raises."""
        held = [m for m in self.lora_parts().values() if (name in adapters_of(m) if name else adapters_of(m))]
        if name is not None and not held:
            raise LatentlabError(f"no LoRA named {name!r} is loaded; loaded: {', '.join(self.loras) or 'none'}")
        return held

    @property
    def adapters(self) -> list[str]:
        """The names of the loaded adapters of every kind (LoRA, DoRA, LoHa, LoKr, bottleneck, prefix)."""
        return list(dict.fromkeys(a for m in self.lora_parts().values() for a in adapters_of(m)))

    @property
    def loras(self) -> list[str]:
        """The names of the loaded LoRAs, and of the other kinds' adapters: `adapters`."""
        return self.adapters

    def load_adapter(self, path: str | Path, scale: float = 1.0, name: str | None = None, *,
                     check_base: bool = True) -> str:
        """Add the adapter file `path`, of any kind and format (io/adapter_files.py `read_adapter`: LoRA, DoRA,
        LoHa, LoKr also as LyCORIS and peft write them, bottleneck adapters, prefixes), as adapter `name`
        (default: the file's name) at multiplier `scale`, on the pipeline's device and in its dtype; returns
        the name. `check_base`: refuse a file whose base-model fingerprint is not this model's."""
        name = apply_adapter(self.lora_parts(), read_adapter(path), name, scale, check_base)
        fast.install(*self.lora_parts().values())  # the new adapter layers too
        return name

    def load_lora(self, path: str | Path, scale: float = 1.0, name: str | None = None, *,
                  check_base: bool = True) -> str:
        """Add the LoRA file `path` (latentlab, kohya, diffusers or peft; io/lora_files.py) as LoRA `name`
        (default: the file's name) at multiplier `scale` (W = W0 + scale alpha / r B A), on the pipeline's
        device and in its dtype; returns the name. Several LoRAs can be loaded, each with its own scale.
        `check_base`: refuse a file whose base-model fingerprint is not this model's. A file of another
        adapter kind loads too (`load_adapter`)."""
        return self.load_adapter(path, scale, name, check_base=check_base)

    def set_lora_scale(self, name: str, scale: float) -> None:
        """Adapter `name`'s multiplier (0: as if not loaded), merged or not."""
        for module in self._holding(name):
            inject.set_scale(module, name, scale)

    def merge_lora(self, name: str | None = None) -> None:
        """Fold adapter `name` (None: all) into the base weights: no extra work per step until unmerged.
        Bottleneck adapters and prefixes are no weights: merging one raises."""
        for module in self._holding(name):
            inject.merge(module, name)

    def unmerge_lora(self, name: str | None = None) -> None:
        for module in self._holding(name):
            inject.unmerge(module, name)

    def remove_lora(self, name: str | None = None, *, keep_merged: bool = False) -> None:
        """Drop adapter `name` (None: all); with `keep_merged`, merged ones stay in the base weights."""
        for module in self._holding(name):
            inject.remove(module, name, keep_merged=keep_merged)

    def save_adapter(self, path: str | Path, name: str, *, format: str = "latentlab",
                     metadata: dict | None = None) -> None:
        """Write adapter `name`, of any kind, as a file of `format` (latentlab: every kind; kohya: LoRA, DoRA, LoHa,
        LoKr as LyCORIS writes them; peft: a folder; diffusers: LoRA); a prefix is saved frozen, as its keys
        and values now."""
        save_adapter(path, self.lora_parts(), name, format=format, metadata=metadata)

    def save_lora(self, path: str | Path, name: str, *, format: str = "latentlab",
                  metadata: dict | None = None) -> None:
        """Write LoRA `name` as a file of `format` (latentlab, kohya, diffusers, or peft: a folder); another
        kind's adapter as `save_adapter` writes it."""
        self.save_adapter(path, name, format=format, metadata=metadata)

    def load_textual_inversion(self, path: str | Path, token: str | None = None) -> str:
        """Add the textual-inversion embedding in `path` (diffusers' or A1111's safetensors layout,
        io/textual_inversion.py) as token `token` (default: the file's), for prompts to use; returns the token.
        An embedding of n vectors adds TOKEN_1 .. TOKEN_{n-1} too, and TOKEN in a prompt stands for them all."""
        token, vectors = read_textual_inversion(path, token)
        try:
            add_tokens(self.tokenizer, self.text_encoder, token, vectors)
        except LatentlabError as e:
            raise CheckpointError(f"{path}: {e}") from None
        return token

    # ------------------------------------------------------------------ generation

    MAX_SEED = 2**32 - 1  # torch's CPU generator keeps a seed's low 32 bits: 2^32 would draw what 0 draws

    @classmethod
    def check_seed(cls, seed: int, count: int = 1) -> int:
        """`seed` as an int; image i of `count` starts from noise seeded by seed + i, which must stay within
        0 .. MAX_SEED."""
        try:
            seed = operator.index(seed)
        except TypeError:
            raise LatentlabError(f"seed must be a whole number, got {seed!r}") from None
        if not 0 <= seed <= cls.MAX_SEED - (count - 1):
            last = f"; image i uses seed + i, so {count} images need a seed of at most {cls.MAX_SEED - count + 1}"
            raise LatentlabError(f"seed {seed} is not accepted: the generator tells apart seeds from 0 to "
                                 f"{cls.MAX_SEED}{last if count > 1 else ''}")
        return seed

    @staticmethod
    def check_prompt(text: str, what: str = "prompt") -> None:
        """Refuse a prompt that is not text in valid Unicode: Python reads command-line bytes that are not
        UTF-8 as lone surrogates, which the tokenizer cannot take."""
        if not isinstance(text, str):
            raise LatentlabError(f"{what} {text!r} is not text")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            try:
                shown = str(text.encode("utf-8", "surrogateescape"))[2:-1]  # the bytes as given: caf\xe9
            except UnicodeEncodeError:
                shown = ascii(text)[1:-1]
            raise LatentlabError(f"{what} \"{shown}\" is not valid UTF-8; give prompts as UTF-8 text") from None

    def check_size(self, size: int) -> None:
        step = self.vae.config.downsampling * 2 ** (len(self.unet.config.channels) - 1)
        if size % step or not step <= size <= 1024:
            raise LatentlabError(f"image size {size} is not accepted: use a multiple of {step} from {step} to 1024 "
                                 f"(this model was trained at {self.image_size})")

    def denoiser(self, context: torch.Tensor, mask: torch.Tensor | None, uncond: torch.Tensor,
                 uncond_mask: torch.Tensor | None, guidance: float, *, cuda_graph: bool = False,
                 extra: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        """denoise(x_t, t, alpha_bar) -> Denoised: the U-Net, in its own dtype, under classifier-free guidance;
        with `cuda_graph`, its kernels recorded on the first step and replayed on the others (CUDA only).
        `extra`: conditions the U-Net takes by keyword beside the text, {name: (conditional, unconditional)};
        "inputs" are concatenated with x_t along the channels (an inpainting model's mask and masked image)."""
        dtype = self.dtype

        def unet(x_t, t, context, mask, inputs=None, **extra):
            x = x_t if inputs is None else torch.cat([x_t, inputs.to(x_t.dtype)], dim=1)  # inputs beside x_t
            extra = {name: value.to(dtype) for name, value in extra.items()}
            return self.unet(x.to(dtype), t, context.to(dtype), mask, **extra).float()

        network = classifier_free_guidance(unet, context, mask, uncond, uncond_mask, guidance, extra)
        return make_denoiser(fast.CUDAGraphed(network) if cuda_graph else network, self.diffusion.prediction)

    def check_sampler(self, sampler: str, steps: int | None = None, **options) -> dict:
        """The options for `sampler`, with ddpm's variance defaulting to the learned one where there is one;
        bad names, options or step counts raise LatentlabError."""
        if steps is not None and not 1 <= steps <= self.diffusion.timesteps:
            raise LatentlabError(f"steps must be between 1 and the model's {self.diffusion.timesteps} noise levels, "
                                 f"got {steps}")
        try:
            get_sampler(sampler)
            if sampler == "ddpm" and options.get("variance") is None:
                options["variance"] = "learned" if self.diffusion.learned_variance else "small"
            options = sampler_options(sampler, **options)
            if "eta" in options and not math.isfinite(options["eta"]):
                raise LatentlabError(f"eta must be a finite number, got {options['eta']}")
            if "variance" in options:
                check_variance(options["variance"], self.diffusion.learned_variance)
            if "spacing" in options and steps is not None:
                timesteps_for(self.diffusion.timesteps, steps, options["spacing"])
            return options
        except ValueError as e:
            raise LatentlabError(str(e)) from None

    def check_sample(self, count: int, *, steps: int, guidance: float, seed: int, sampler: str,
                     size: int | None = None, batch_size: int | None = None, cuda_graph: bool = False,
                     **options) -> tuple[int, int, dict]:
        """`sample`'s arguments for `count` prompts, checked before any work: (seed, size, sampler options),
        the size and the options with their defaults filled in; bad ones raise LatentlabError. `sample` calls
        it, and so does the command line, before it writes anything."""
        if not math.isfinite(guidance):
            raise LatentlabError(f"guidance must be a finite number, got {guidance}")
        seed = self.check_seed(seed, count)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise LatentlabError(f"batch_size must be a positive whole number, got {batch_size!r}")
        if cuda_graph and self.device.type != "cuda":
            raise LatentlabError(f"cuda_graph needs the pipeline on a CUDA GPU; it is on {self.device}")
        size = size or self.image_size
        self.check_size(size)
        return seed, size, self.check_sampler(sampler, steps, **options)

    @torch.no_grad()
    def sample(self, prompts: list[str], *, steps: int = 50, guidance: float = 4.0, seed: int = 0,
               sampler: str = "ddim", negative_prompt: str = "", size: int | None = None,
               variance: str | None = None, eta: float | None = None, spacing: str | None = None,
               cuda_graph: bool = False, batch_size: int | None = None,
               callback: Callable[[int, int], None] | None = None, start: ImageInput | None = None,
               preview: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1], one per prompt.

        Image i draws its noise (x_T, and what ddpm and ddim with eta > 0 add at each step) from a generator
        seeded by `seed + i` (0 to MAX_SEED), so a prompt's image does not depend on the other prompts.
        `guidance` is the classifier-free guidance scale (1: off).
        `sampler` is one of diffusion.SAMPLERS; `variance` (ddpm: small, large or learned), `eta`
        (ddim) and `spacing` (ddpm, ddim, dpmpp_2m: linspace, leading or trailing) are its options.
        `cuda_graph` replays the U-Net's recorded kernels from the second step on (CUDA only; the same
        images, faster where launching kernels is the bottleneck, as at small batches).
        `batch_size` prompts are sampled at a time (default: all): the same images whatever the batch size.
        `callback(i, steps)` is called after each step of each batch.
        `start`: images to start from, one per prompt (`img2img`, `inpaint`).
        `preview(z_0)` is given each step's estimate of the batch's final latents (`decode` makes them images).
        """
        prompts = list(prompts)
        if not prompts:
            raise LatentlabError("no prompts given; pass at least one prompt")
        for text in prompts:
            self.check_prompt(text)
        self.check_prompt(negative_prompt, "negative prompt")
        if start is not None:
            size = start.check(len(prompts))
        seed, size, options = self.check_sample(len(prompts), steps=steps, guidance=guidance, seed=seed,
                                                sampler=sampler, size=size, batch_size=batch_size,
                                                cuda_graph=cuda_graph, variance=variance, eta=eta, spacing=spacing)
        uncond = encode_prompts(self.tokenizer, self.text_encoder, [negative_prompt])  # once, for all
        batch_size = batch_size or len(prompts)
        parts = [slice(i, min(i + batch_size, len(prompts))) for i in range(0, len(prompts), batch_size)]
        return torch.cat([self._sample_batch(prompts[part], uncond, range(seed + part.start, seed + part.stop), size,
                                             steps, guidance, sampler, options, cuda_graph, callback,
                                             None if start is None else start[part], preview=preview)
                          for part in parts])

    def img2img(self, images: torch.Tensor, prompts: list[str], *, strength: float = 0.8, **options) -> torch.Tensor:
        """Image-to-image (SDEdit, Meng et al. 2022): each image (B, 3, H, W) in [-1, 1] is encoded, noised to the
        level its sampler reaches after 1 - `strength` of its steps, and denoised from there with its prompt, as
        diffusers' StableDiffusionImg2ImgPipeline does: int(steps * strength) steps run, so strength 1 starts
        from (almost) pure noise and 0 returns the image's autoencoder round trip. Image i's generator (seed + i)
        draws its latent from the encoder's posterior, then the noise. Options as for `sample`."""
        return self.sample(prompts, start=ImageInput(images, strength), **options)

    def inpaint(self, images: torch.Tensor, masks: torch.Tensor, prompts: list[str], *, strength: float = 1.0,
                keep_unmasked: bool = True, **options) -> torch.Tensor:
        """Redraw the region of each image (B, 3, H, W) in [-1, 1] where its mask (B, 1, H, W) is 1 (masks are
        binarised at 0.5), from its prompt. A model with inpainting input channels (`takes_masks`: Stable
        Diffusion's inpainting layout, the latents, the mask and the masked image's latents concatenated) reads
        the masked image at every step, as diffusers' StableDiffusionInpaintPipeline runs it; any other model
        keeps the rest by replacing its x_0 estimate there with the image's latents at every step
        (diffusion/inpainting.py, whose limits that module states). `strength` as for `img2img` (1: the region
        is drawn anew). `keep_unmasked`: the result's pixels outside the mask are the source's, not their
        autoencoder round trip. Options as for `sample`."""
        return self.sample(prompts, start=ImageInput(images, strength, masks, keep_unmasked), **options)

    @property
    def takes_masks(self) -> bool:
        """Whether the U-Net reads a mask and the masked image's latents beside x_t (an inpainting model)."""
        return self.unet.config.in_channels == 2 * self.vae.config.latent_channels + 1

    def _sample_batch(self, prompts: list[str], uncond: tuple, seeds, size: int, steps: int, guidance: float,
                      sampler: str, options: dict, cuda_graph: bool, callback, start: ImageInput | None = None,
                      extra: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, preview=None) -> torch.Tensor:
        """`sample` for one batch of checked arguments: prompt i's noise seeded by seeds[i]; `uncond` the negative
        prompt's encoding; `extra` further conditions of the U-Net, as
        `denoiser` takes them (an unCLIP decoder's image embeddings)."""
        context, mask = encode_prompts(self.tokenizer, self.text_encoder, prompts)
        uncond, uncond_mask = uncond
        uncond = uncond.expand(len(prompts), -1, -1)
        uncond_mask = None if uncond_mask is None else uncond_mask.expand(len(prompts), -1)

        def denoiser(inputs: dict):
            return self.denoiser(context, mask, uncond, uncond_mask, guidance, cuda_graph=cuda_graph,
                                 extra={**(extra or {}), **inputs})

        return self.draw(denoiser, seeds, size, steps, sampler, options, callback, start, preview=preview)

    def draw(self, denoiser, seeds, size: int, steps: int, sampler: str, options: dict, callback,
             start: ImageInput | None = None, *, preview=None) -> torch.Tensor:
        """One image per seed, decoded, sampled with `denoiser(inputs)` (the denoiser, given what the U-Net reads
        beside x_t by name, as `Pipeline.denoiser`'s `extra` takes it); image i's own generator, seeded by seeds[i], draws, in
        diffusers' order: the start image's latent from the encoder's posterior (where one is read), x_T, the
        masked image's latent (a model that `takes_masks`), then the noise that ddpm and ddim (eta > 0) add at
        each step. From a `start`, x_T is its latent noised to the level of the grid's step
        steps - int(steps * strength); but inpainting at strength 1 starts from the noise alone."""
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        shape, n = self.latent_shape(size), len(generators)
        first, z_start, inputs = 0, None, {}
        masks = None if start is None or start.masks is None else (start.masks >= 0.5).float().to(self.device)
        # as diffusers: img2img always starts from the noised image; inpainting at strength 1 from pure noise
        pure_noise = start is None or (masks is not None and start.strength == 1)
        if start is not None and (not pure_noise or not self.takes_masks):
            z_start = self.encode(start.images, [torch.randn(shape, generator=g) for g in generators])
        if start is not None:
            first = steps - int(steps * start.strength)
            if first == steps:  # nothing to denoise
                return start.composite(self.decode(z_start), masks)
        x_T = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        if self.takes_masks:  # what it reads beside x_t: the mask and the masked image's latents
            if masks is None:  # no start image: everything is to be drawn
                masks, images = torch.ones(n, 1, size, size, device=self.device), torch.zeros(n, 3, size, size)
            else:
                images = start.images
            masked = images.to(self.device) * (masks < 0.5)
            z_masked = self.encode(masked, [torch.randn(shape, generator=g) for g in generators])
            both = torch.cat([F.interpolate(masks, size=shape[-2:]), z_masked], dim=1)
            inputs = {"inputs": (both, both)}
        if not pure_noise:
            alpha_bar = start_level(sampler, self.alphas_cumprod, steps, first, **options).to(self.device)
            x_T = (alpha_bar.sqrt() * z_start.double() + (1 - alpha_bar).sqrt() * x_T.double()).float()
        denoise = denoiser(inputs)
        if masks is not None and not self.takes_masks:
            denoise = keep_known(denoise, z_start, F.interpolate(masks, size=shape[-2:]))
        if preview is not None:
            denoise = observed(denoise, preview)
        z_0 = get_sampler(sampler)(denoise, x_T, self.alphas_cumprod, steps, start=first, generator=generators,
                                   callback=callback, **options)
        return self.decode(z_0) if start is None else start.composite(self.decode(z_0), masks)

    def encode(self, images: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] to scaled latents, float32: samples of the encoder's posterior, with the
        given standard normal noise for each."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(self.device, dtype), noise=torch.stack(noise).to(self.device, dtype)).float()

    def latent_shape(self, size: int) -> tuple[int, ...]:
        """The shape of one sample's latents: (C, h, w) for an image."""
        side = size // self.vae.config.downsampling
        return self.vae.config.latent_channels, side, side

    def decode(self, z_0: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) to images (B, 3, H, W) in [-1, 1], float32."""
        return self.vae.decode(z_0.to(next(self.vae.parameters()).dtype)).float().clamp(-1, 1)

    def __call__(self, prompts: list[str] | str, **kwargs) -> list[Image.Image]:
        """PIL images, one per prompt; keyword arguments as for `sample`."""
        return to_pil(self.sample([prompts] if isinstance(prompts, str) else prompts, **kwargs))
