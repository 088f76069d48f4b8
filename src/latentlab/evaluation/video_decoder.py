"""How well a video decoder reconstructs clips, against the frozen image decoder applied frame by frame.

The clips of a split of the video world (data/video.py) are encoded frame by frame to the autoencoder's mean
latents, and decoded twice from the same latents: by the image decoder, each frame alone, and by the video
decoder (models/video_decoder.py), the frames of a clip together. For each, three figures:

- `psnr_db`: the peak signal-to-noise ratio of the reconstructions, in dB (one mean squared error over every
  pixel of every frame, intensities in [0, 1]); higher is closer;
- `l1`: the mean absolute error per pixel and channel, intensities in [0, 1];
- `flicker`: the mean absolute difference between the reconstruction's frame-to-frame changes and the clip's,
  |(x_hat_{t+1} - x_hat_t) - (x_{t+1} - x_t)|, per pixel and channel, intensities in [0, 1]; lower is steadier.
  An error that stays the same from frame to frame does not count; one that comes and goes does. It is at most
  twice `l1`: a decoder that is closer on every frame flickers less too, so flicker / l1 tells how much of the
  error comes and goes.
"""

from __future__ import annotations

import math

import torch

from ..data.video import VideoDataset
from ..models.video_decoder import VideoDecoder
from ..pipeline import Pipeline
from ..training.video_decoder import flicker


@torch.no_grad()
def reconstruction_figures(pipe: Pipeline, video_decoder: VideoDecoder | None = None, *, clips: int = 200,
                           frames: int = 16, split: str = "test", batch_size: int = 25, data_seed: int = 0) -> dict:
    """{"frozen": figures, "temporal": figures} of the module's doc for `clips` clips of `split` (clips 0 ..
    clips - 1 of the data set seeded by `data_seed`). `pipe` is an image or video model: its autoencoder and image
    size; `video_decoder` the video decoder around its decoder (default: the pipeline's own, for a video model
    that has one; without any, the figures are the frozen decoder's alone)."""
    video_decoder = video_decoder if video_decoder is not None else getattr(pipe, "video_decoder", None)
    vae, device = pipe.vae, next(pipe.vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    data = VideoDataset(seed=data_seed, split=split, frames=frames, image_size=pipe.image_size)
    decoders = {"frozen": vae.decode}
    if video_decoder is not None:
        decoders["temporal"] = lambda z: video_decoder.decode(vae, z, frames)
    sums = {name: {"squared_error": 0.0, "absolute_error": 0.0, "flicker": 0.0} for name in decoders}
    for start in range(0, clips, batch_size):
        x, _, _ = data.batch(start, min(batch_size, clips - start), device)  # (n, T, 3, H, W) in [-1, 1]
        z = vae.encode(x.flatten(0, 1).to(dtype), sample=False)  # (n * T, C, h, w), the encoder's means
        for name, decode in decoders.items():
            x_hat = decode(z).float().clamp(-1, 1).view_as(x)
            error = (x_hat - x) / 2  # in [0, 1] intensities
            sums[name]["squared_error"] += error.square().sum().item()
            sums[name]["absolute_error"] += error.abs().sum().item()
            sums[name]["flicker"] += flicker(x_hat / 2, x / 2).item() * len(x)
    values = clips * frames * 3 * pipe.image_size ** 2  # every channel of every pixel of every frame
    return {name: {"decoder": "frozen, frame by frame" if name == "frozen" else "temporal, clip by clip",
                   "psnr_db": 10 * math.log10(values / s["squared_error"]), "l1": s["absolute_error"] / values,
                   "flicker": s["flicker"] / clips, "clips": clips, "frames": frames, "split": split}
            for name, s in sums.items()}
