"""DALL-E 2 as a user holds it (Ramesh et al. 2022, "unCLIP"):

    caption -> the prior (prior_model.py) -> an image embedding -> the decoder (models/unclip.py) -> an image
    image -> the contrastive encoder (contrastive_model.py) -> its embedding -> the decoder, fresh noise -> variations
    two images -> their embeddings, slerped -> the decoder, one noise -> an interpolation strip

    pipe = UnCLIPPipeline.load("unclip")                  # the shipped shapes-unclip, or a folder
    pipe.sample(["a small red circle on the left"])       # text -> prior -> decoder, (B, 3, H, W) in [-1, 1]
    pipe.variations(image, count=4)                       # image (3, H, W) in [-1, 1] -> (4, 3, H, W)
    pipe.interpolate(image_a, image_b, frames=8)          # (8, 3, H, W)

A model folder is the text model's folder its decoder was made from (so `Pipeline.load` reads it as that text
model, with the decoder's U-Net) plus:

    model_index.json        the text model's index, with "unclip": {"clip": "<the contrastive model's name or path>"}
    image_conditioning/     config.json, model.safetensors: the decoder's image-embedding path
    prior/                  a prior folder (prior_model.py); without one, variations and interpolation only
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .contrastive_model import ContrastiveModel
from .devices import resolve_device
from .errors import CheckpointError, LatentlabError
from .io import read_json
from .io.checkpoint import load_component
from .models.text_encoder import encode_prompts
from .models.unclip import ImageConditioning, ImageConditioningConfig, UnCLIPDecoder
from .pipeline import Pipeline, default_model_path
from .prior_model import PriorModel

SHIPPED_UNCLIP_MODEL = "shapes-unclip"  # in the package's weights/; "unclip" names it too
UNCLIP_NAMES = (SHIPPED_UNCLIP_MODEL, "unclip")
PRIOR = "prior"


def unclip_path(path: str | Path | None) -> Path | None:
    """The folder of the unCLIP model `path` names (a folder, or the shipped model's names), or None where it
    names no unCLIP model."""
    if path is not None and str(path) in UNCLIP_NAMES and not Path(path).exists():
        path = default_model_path(SHIPPED_UNCLIP_MODEL)
    if path is None or not Path(path).is_dir() or not (Path(path) / "model_index.json").is_file():
        return None
    index = read_json(Path(path) / "model_index.json")
    return Path(path) if isinstance(index, dict) and "unclip" in index else None


def load_pipeline(path: str | Path | None, **options) -> Pipeline:
    """The model `path` names, as the pipeline of its kind: an unCLIP model's UnCLIPPipeline (text through its
    prior), any other's Pipeline. `options` as Pipeline.load takes them."""
    return (UnCLIPPipeline if unclip_path(path) is not None else Pipeline).load(path, **options)


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors a and b (E,) at weights w (N,) -> (N, E) unit vectors."""
    theta = torch.arccos((a * b).sum().clamp(-1, 1))
    w = w[:, None]
    if theta < 1e-4:  # (nearly) the same direction
        return F.normalize(torch.lerp(a, b, w), dim=-1)
    return (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)


class UnCLIPPipeline(Pipeline):
    """Generates images from text through an image embedding, and varies and blends images, with an unCLIP
    decoder (its `unet`), a contrastive image-text model (`clip`) and, optionally, a diffusion prior."""

    def __init__(self, *, clip: ContrastiveModel, clip_name: str, prior: PriorModel | None = None, **parts):
        if not isinstance(parts.get("unet"), UnCLIPDecoder):
            raise TypeError("an UnCLIPPipeline's unet is an UnCLIPDecoder; UnCLIPPipeline.from_text_model makes one "
                            "from a text model")
        super().__init__(**parts)
        embed_dim = clip.encoder.config.embed_dim
        if self.unet.conditioning.config.embed_dim != embed_dim:
            raise ValueError(f"the decoder reads {self.unet.conditioning.config.embed_dim}-wide image embeddings; "
                             f"the contrastive model {clip_name} makes {embed_dim}-wide ones")
        if prior is not None and prior.prior.config.embed_dim != embed_dim:
            raise ValueError(f"the prior draws {prior.prior.config.embed_dim}-wide embeddings; the decoder reads "
                             f"{embed_dim}-wide ones")
        self.clip, self.clip_name, self.prior = clip, clip_name, prior

    @classmethod
    def from_text_model(cls, pipe: Pipeline, clip: ContrastiveModel, clip_name: str, *, tokens: int = 4,
                        prior: PriorModel | None = None) -> "UnCLIPPipeline":
        """A decoder made from a text model: its networks, shared, and a new image-embedding path whose timestep
        part starts at zero, on the same device."""
        config = ImageConditioningConfig.for_unet(pipe.unet, clip.encoder.config.embed_dim, tokens=tokens)
        decoder = UnCLIPDecoder(pipe.unet, ImageConditioning(config).to(pipe.device))
        return cls(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=decoder, vae=pipe.vae,
                   diffusion=pipe.diffusion, image_size=pipe.image_size, clip=clip, clip_name=clip_name, prior=prior)

    # ------------------------------------------------------------------ files

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str | torch.device = "auto",
             dtype: str | torch.dtype | None = None, channels_last: bool = False) -> "UnCLIPPipeline":
        """An unCLIP model folder (written by `latentlab train-unclip` or `save`); None, "unclip" or
        "shapes-unclip" is the one shipped in the package."""
        folder = unclip_path(SHIPPED_UNCLIP_MODEL if path is None else path)
        if folder is None:
            raise CheckpointError(f"{path} is not an unCLIP model; accepted: a folder written by `latentlab "
                                  f"train-unclip`, or the shipped {SHIPPED_UNCLIP_MODEL!r} (also named 'unclip')")
        text = Pipeline.load(folder, device="cpu")
        index = read_json(folder / "model_index.json")
        Pipeline._check_save_id(folder, index.get("save_id"), ("image_conditioning",))
        clip_name = (index.get("unclip") or {}).get("clip") if isinstance(index.get("unclip"), dict) else None
        if not isinstance(clip_name, str):
            raise CheckpointError(f"{folder / 'model_index.json'}: \"unclip\" names no contrastive model (its "
                                  "\"clip\" field)")
        conditioning = load_component(folder / "image_conditioning", ImageConditioning, ImageConditioningConfig)
        prior = PriorModel.load(folder / PRIOR, device="cpu") if (folder / PRIOR).is_dir() else None
        clip = prior.clip if prior is not None else ContrastiveModel.load(clip_name, device="cpu")
        if prior is not None and prior.clip_name != clip_name:
            raise CheckpointError(f"{folder / PRIOR} draws embeddings of contrastive model {prior.clip_name!r}; the "
                                  f"decoder reads {clip_name!r}'s")
        pipe = cls(tokenizer=text.tokenizer, text_encoder=text.text_encoder,
                   unet=UnCLIPDecoder(text.unet, conditioning), vae=text.vae, diffusion=text.diffusion,
                   image_size=text.image_size, clip=clip, clip_name=clip_name, prior=prior)
        return pipe.to(resolve_device(device), dtype=dtype, channels_last=channels_last)

    def save(self, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
        """The prior's folder first (if any), then the decoder's networks, model_index.json last; `dtype` (e.g.
        torch.float16) casts the stored weights of all."""
        if self.prior is not None:
            self.prior.save(Path(path) / PRIOR, dtype=dtype)
        super().save(path, dtype=dtype)

    def components(self) -> dict[str, nn.Module]:
        return {**super().components(), "unet": self.unet.unet, "image_conditioning": self.unet.conditioning}

    def index(self, save_id: str) -> dict:
        return {**super().index(save_id), "unclip": {"clip": self.clip_name}}

    def to(self, device: str | torch.device, *, dtype: str | torch.dtype | None = None,
           channels_last: bool = False) -> "UnCLIPPipeline":
        """As `Pipeline.to`; the contrastive model and the prior move too, and stay in float32."""
        super().to(device, dtype=dtype, channels_last=channels_last)
        self.clip.encoder.to(device)
        if self.prior is not None:
            self.prior.prior.to(device)
        return self

    def image_model(self) -> Pipeline:
        """The text model the decoder was made from (its networks, shared): text to image without the embedding."""
        return Pipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, unet=self.unet.unet, vae=self.vae,
                        diffusion=self.diffusion, image_size=self.image_size)

    def lora_parts(self) -> dict[str, nn.Module]:
        return {"unet": self.unet.unet, "text_encoder": self.text_encoder}

    # ------------------------------------------------------------------ generation

    def check_prior(self) -> None:
        """Text to image needs the prior; say so where the model has none."""
        if self.prior is None:
            raise LatentlabError("this unCLIP model has no prior: it makes variations and interpolations of images; "
                                 "text to image needs a model trained with `latentlab train-unclip --prior`")

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1], at the contrastive model's size -> unit embeddings (B, E), on the CPU."""
        size = self.clip.image_size
        if images.dim() != 4 or images.shape[1:] != (3, size, size):
            raise LatentlabError(f"images of shape {tuple(images.shape)} given; the contrastive model reads "
                                 f"(B, 3, {size}, {size}) in [-1, 1] (images.from_pil converts a PIL image)")
        return self.clip.encode_images(images)

    @torch.no_grad()
    def sample(self, prompts: list[str], *, prior_steps: int = 50, prior_guidance: float = 1.0,
               decoder_text: bool = True, seed: int = 0, **options) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1], one per prompt: the prior draws each prompt's image embedding (DDIM,
        `prior_steps`, guidance `prior_guidance`), the decoder draws the image from it, and from the prompt as
        well unless `decoder_text` is False. The rest as for `Pipeline.sample` (image i's noise seeded by seed + i,
        the prior's too)."""
        self.check_prior()
        prompts = list(prompts)
        if not prompts:
            raise LatentlabError("no prompts given; pass at least one prompt")
        for text in prompts:
            self.check_prompt(text)
        T = self.prior.diffusion.timesteps  # the prior's own noise levels, not the decoder's
        if isinstance(prior_steps, bool) or not isinstance(prior_steps, int) or not 1 <= prior_steps <= T:
            raise LatentlabError(f"prior_steps must be between 1 and the prior's {T} noise levels, got {prior_steps!r}")
        if not math.isfinite(prior_guidance):
            raise LatentlabError(f"prior_guidance must be a finite number, got {prior_guidance}")
        self.check_seed(seed, len(prompts))
        z_i = self.prior.sample(prompts, steps=prior_steps, guidance=prior_guidance, seed=seed)
        return self.decode_embeddings(z_i, prompts if decoder_text else None, seed=seed, **options)

    @torch.no_grad()
    def decode_embeddings(self, image_embeds: torch.Tensor, prompts: list[str] | None = None, *, steps: int = 50,
                          guidance: float = 4.0, seed: int = 0, same_noise: bool = False, sampler: str = "ddim",
                          negative_prompt: str = "", size: int | None = None, batch_size: int | None = None,
                          cuda_graph: bool = False, callback=None, preview=None, **options) -> torch.Tensor:
        """The decoder alone: image embeddings (B, E) -> images (B, 3, H, W) in [-1, 1]; with each its prompt, or
        none (the empty prompt). Guidance runs the decoder with the embedding and with none (zeros) beside it
        (and with `negative_prompt` for the text). Image i's noise is seeded by seed + i, or by seed for every
        image with `same_noise` (what an interpolation holds fixed); the rest as for `Pipeline.sample`."""
        n = len(image_embeds)
        prompts = [""] * n if prompts is None else list(prompts)
        if n == 0 or len(prompts) != n:
            raise LatentlabError(f"{n} image embeddings for {len(prompts)} prompts; give one prompt per embedding")
        for text in [*prompts, negative_prompt]:
            self.check_prompt(text)
        seed, size, options = self.check_sample(1 if same_noise else n, steps=steps, guidance=guidance, seed=seed,
                                                sampler=sampler, size=size, batch_size=batch_size,
                                                cuda_graph=cuda_graph, **options)
        uncond = encode_prompts(self.tokenizer, self.text_encoder, [negative_prompt])
        batch_size = batch_size or n
        images = []
        for start in range(0, n, batch_size):
            z = image_embeds[start:start + batch_size].to(self.device, torch.float32)
            seeds = [seed] * len(z) if same_noise else range(seed + start, seed + start + len(z))
            images.append(self._sample_batch(prompts[start:start + batch_size], uncond, seeds, size, steps, guidance,
                                             sampler, options, cuda_graph, callback,
                                             extra={"image_embed": (z, torch.zeros_like(z))}, preview=preview))
        return torch.cat(images)

    def img2img(self, images: torch.Tensor, prompts: list[str], **options) -> torch.Tensor:
        raise LatentlabError("img2img takes a text-to-image model; an unCLIP model redraws an image with `variations` "
                             "(its text model, `image_model()`, does img2img)")

    def inpaint(self, images: torch.Tensor, masks: torch.Tensor, prompts: list[str], **options) -> torch.Tensor:
        raise LatentlabError("inpaint takes a text-to-image model; an unCLIP model's text model, `image_model()`, "
                             "inpaints")

    def variations(self, image: torch.Tensor, count: int = 4, *, prompt: str = "", **options) -> torch.Tensor:
        """`count` images (count, 3, H, W) drawn from the embedding of `image` (3, H, W) in [-1, 1], each from its
        own noise (seed + i); `prompt` (default none) is given to the decoder too. Options as for
        `decode_embeddings`."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise LatentlabError(f"count must be a positive whole number, got {count!r}")
        z = self.embed_images(image[None]).expand(count, -1)
        return self.decode_embeddings(z, [prompt] * count, **options)

    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, frames: int = 8,
                    **options) -> torch.Tensor:
        """`frames` images (frames, 3, H, W) from image_a's embedding to image_b's, spherically interpolated, all
        drawn from the same noise (seeded by `seed`), as DALL-E 2 shows them. Options as for `decode_embeddings`."""
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
            raise LatentlabError(f"frames must be a whole number of at least 2, got {frames!r}")
        a, b = self.embed_images(torch.stack([image_a, image_b]))
        return self.decode_embeddings(slerp(a, b, torch.linspace(0, 1, frames)), same_noise=True, **options)
