"""Text to video: the image pipeline with a video U-Net (models/video_unet.py) and latents of T frames.

A video model folder is its image model's folder plus the temporal layers:

    model_index.json        the image model's index, with "video": {"frames": 16}
    tokenizer/ text_encoder/ unet/ vae/ scheduler/     the image model's, unchanged (its spatial layers are frozen)
    temporal/config.json    the TemporalConfig; temporal/model.safetensors, the temporal layers' weights
    vae_temporal/           optional: the temporal layers of a video decoder (models/video_decoder.py), trained
                            by `latentlab train-video-decoder`; config.json and model.safetensors

so `Pipeline.load` reads a video folder as the image model it was made from, and `VideoPipeline.load` as the video
model. Every sampler and classifier-free guidance work on clips as they do on images: the latents of a clip are
(C, T, h, w), channels first; each frame is decoded by the image model's autoencoder, or, in a folder with
vae_temporal/, all the frames of a clip together by the video decoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import fast
from .devices import resolve_device, resolve_dtype
from .errors import CheckpointError, LatentlabError
from .io import read_config, read_json
from .io.checkpoint import load_weights, read_safetensors
from .models.temporal import to_frames
from .models.vae import AutoencoderKL
from .models.video_decoder import DecoderTemporalLayers, VideoDecoder, VideoDecoderConfig
from .models.video_unet import TemporalConfig, TemporalLayers, VideoUNet
from .pipeline import Pipeline, default_model_path

SHIPPED_VIDEO_MODEL = "shapes-video"  # in the package's weights/, beside the image models


def check_frames(frames) -> int:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise LatentlabError(f"frames must be a positive whole number, got {frames!r}")
    return frames


def read_video_decoder(folder: str | Path, vae: AutoencoderKL) -> VideoDecoder:
    """The video decoder whose temporal layers are in `folder` (a vae_temporal/ folder: config.json and
    model.safetensors), around `vae`'s decoder."""
    folder = Path(folder)
    config = read_config(folder / "config.json", VideoDecoderConfig)
    temporal = load_weights(DecoderTemporalLayers(vae.decoder, config), read_safetensors(folder / "model.safetensors"),
                            f"{folder / 'model.safetensors'} (with {folder / 'config.json'})")
    return VideoDecoder(vae.decoder, temporal)


class VideoPipeline(Pipeline):
    """Generates clips from text prompts with a video latent diffusion model."""

    def __init__(self, *, frames: int, video_decoder: VideoDecoder | None = None, **parts):
        """`video_decoder`: decodes the frames of each clip together (around `vae`'s decoder); None, each frame
        alone by the autoencoder."""
        if not isinstance(parts.get("unet"), VideoUNet):
            raise TypeError("a VideoPipeline's unet is a VideoUNet; VideoPipeline.from_image makes one from an image "
                            "model")
        if video_decoder is not None and video_decoder.decoder is not parts.get("vae").decoder:
            raise ValueError("a VideoPipeline's video_decoder is made around its vae's decoder")
        super().__init__(**parts)
        self.frames = check_frames(frames)
        self.video_decoder = video_decoder
        if video_decoder is not None:
            fast.install(video_decoder)

    @classmethod
    def from_image(cls, pipe: Pipeline, temporal: TemporalConfig | None = None, *, frames: int = 16) -> "VideoPipeline":
        """A video model made from an image model: its networks, shared, and new temporal layers that start as
        the identity (the image model, frame by frame), on the same device."""
        unet = VideoUNet(pipe.unet, temporal).to(pipe.device)
        return cls(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=unet, vae=pipe.vae,
                   diffusion=pipe.diffusion, image_size=pipe.image_size, frames=frames)

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str | torch.device = "auto",
             dtype: str | torch.dtype | None = None, channels_last: bool = False) -> "VideoPipeline":
        """A video model folder (written by `latentlab train-video` or `save`); `None` or "shapes-video" is the
        video model shipped in the package."""
        if path is None or (str(path) == SHIPPED_VIDEO_MODEL and not Path(path).exists()):
            path = default_model_path(SHIPPED_VIDEO_MODEL)
        path = Path(path)
        index = read_json(path / "model_index.json") if path.is_dir() else None
        video = index.get("video") if isinstance(index, dict) else None
        if not isinstance(video, dict):
            raise CheckpointError(f"{path} is not a video model; accepted: a folder written by `latentlab "
                                  "train-video` (an image model becomes one by training its temporal layers)")
        image = Pipeline.load(path, device="cpu")
        has_decoder = (path / "vae_temporal").is_dir()  # a video decoder, trained by `latentlab train-video-decoder`
        Pipeline._check_save_id(path, index.get("save_id"), ("temporal", "vae_temporal") if has_decoder else
                                ("temporal",))
        config = read_config(path / "temporal" / "config.json", TemporalConfig)
        temporal = load_weights(TemporalLayers(image.unet, config), read_safetensors(path / "temporal" / "model.safetensors"),
                                f"{path / 'temporal' / 'model.safetensors'} (with {path / 'temporal' / 'config.json'})")
        frames = video.get("frames")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise CheckpointError(f"{path / 'model_index.json'}: video frames is {frames!r}; accepted: a positive "
                                  "whole number")
        video_decoder = read_video_decoder(path / "vae_temporal", image.vae) if has_decoder else None
        pipe = cls(tokenizer=image.tokenizer, text_encoder=image.text_encoder, unet=VideoUNet(image.unet, temporal),
                   vae=image.vae, diffusion=image.diffusion, image_size=image.image_size, frames=frames,
                   video_decoder=video_decoder)
        return pipe.to(resolve_device(device), dtype=dtype, channels_last=channels_last)

    def to(self, device: str | torch.device, *, dtype: str | torch.dtype | None = None,
           channels_last: bool = False) -> "VideoPipeline":
        """As `Pipeline.to`, the video decoder's temporal layers too."""
        super().to(device, dtype=dtype, channels_last=channels_last)
        if self.video_decoder is not None:
            self.video_decoder.temporal.to(device, resolve_dtype(dtype)).eval()
        return self

    def image_model(self) -> Pipeline:
        """The image model the video model was made from: its networks, shared."""
        return Pipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, unet=self.unet.unet, vae=self.vae,
                        diffusion=self.diffusion, image_size=self.image_size)

    def lora_parts(self) -> dict[str, nn.Module]:
        """The networks adapters go into: an image model's ("unet", the spatial layers: an image LoRA loads as it
        is) and the temporal layers ("temporal": a motion LoRA)."""
        return {"unet": self.unet.unet, "temporal": self.unet.temporal, "text_encoder": self.text_encoder}

    def components(self) -> dict[str, nn.Module]:
        decoder = {} if self.video_decoder is None else {"vae_temporal": self.video_decoder.temporal}
        return {**super().components(), "unet": self.unet.unet, "temporal": self.unet.temporal, **decoder}

    def index(self, save_id: str) -> dict:
        return {**super().index(save_id), "video": {"frames": self.frames}}

    def latent_shape(self, size: int) -> tuple[int, ...]:
        """(C, T, h, w): a clip's latents, channels first."""
        channels, h, w = super().latent_shape(size)
        return channels, self.frames, h, w

    def decode(self, z_0: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, T, h, w) to clips (B, T, 3, H, W) in [-1, 1], float32: by the video decoder, all the
        frames of each clip together, where the model has one; else each frame alone by the image autoencoder."""
        B, T = z_0.shape[0], z_0.shape[2]
        if self.video_decoder is None:
            frames = super().decode(to_frames(z_0))
        else:
            z = to_frames(z_0).to(next(self.vae.parameters()).dtype)  # (B * T, C, h, w)
            frames = self.video_decoder.decode(self.vae, z, T).float().clamp(-1, 1)
        return frames.view(B, T, *frames.shape[1:])

    @torch.no_grad()
    def sample(self, prompts: list[str], *, frames: int | None = None, **options) -> torch.Tensor:
        """Clips (B, T, 3, H, W) in [-1, 1], one per prompt; `frames` (default: the model's) and the rest as for
        `Pipeline.sample` (clip i's noise is seeded by `seed + i`)."""
        saved, self.frames = self.frames, check_frames(self.frames if frames is None else frames)
        try:
            return super().sample(prompts, **options)
        finally:
            self.frames = saved

    def img2img(self, images: torch.Tensor, prompts: list[str], **options) -> torch.Tensor:
        raise LatentlabError("img2img takes an image model; a video model's is `image_model()`")

    def inpaint(self, images: torch.Tensor, masks: torch.Tensor, prompts: list[str], **options) -> torch.Tensor:
        raise LatentlabError("inpaint takes an image model; a video model's is `image_model()`")

    def __call__(self, prompts: list[str] | str, **kwargs) -> list[list]:
        """Each prompt's clip as a list of PIL frames; keyword arguments as for `sample`."""
        from .images import to_pil

        clips = self.sample([prompts] if isinstance(prompts, str) else prompts, **kwargs)
        return [to_pil(clip) for clip in clips]

