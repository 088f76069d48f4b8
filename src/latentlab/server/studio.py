"""What a job does: draw a grid from a prompt, vary or upscale an image of a grid, redraw one (img2img) or paint
part of it (inpaint), each written as a new grid in the outputs folder (grid.py), so the history holds every
image with its settings and any one can be drawn again or acted on after a restart.

The model stays loaded between jobs: `Studio` keeps the last pipeline (with its adapters) and the upscaler.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import LatentlabError
from ..grid import VARY_STRENGTH, Grid, GridImage, model_reference, settings_of
from ..images import to_pil
from ..pipeline import Pipeline
from .jobs import Job
from .library import Library

PREVIEW_EVERY = 5  # steps between previews of the image so far


class Studio:
    def __init__(self, library: Library, device: str = "auto"):
        self.library, self.device = library, device
        self.loaded: tuple | None = None  # (model, adapters) of `pipe`
        self.pipe = None
        self.upscaler_model = None

    # ------------------------------------------------------------------ models, kept loaded

    def pipeline(self, model: str, adapters: list[tuple[str, float]]):
        """The model (what Pipeline.load takes) with its adapters (absolute paths and scales), loaded once."""
        key = (model, tuple(adapters))
        if self.loaded != key:
            from ..unclip_pipeline import load_pipeline

            self.pipe, self.loaded = None, None  # free the last one first
            pipe = load_pipeline(model, device=self.device)
            for path, scale in adapters:
                pipe.load_adapter(path, scale=scale)
            self.pipe, self.loaded = pipe, key
        return self.pipe

    def upscaler(self):
        if self.upscaler_model is None:
            from ..upscaler_model import UpscalerModel

            self.upscaler_model = UpscalerModel.load(device=self.device)
        return self.upscaler_model

    # ------------------------------------------------------------------ jobs

    def run(self, job: Job) -> dict:
        out = self.library.folder(job.id)
        grid = getattr(self, job.kind)(job, out)
        return {"id": job.id, "images": [i.file for i in grid.images]}

    def generate(self, job: Job, out: Path) -> Grid:
        p = job.params
        model = self.library.model(p["model"])
        adapters = [(self.library.adapter(name), float(scale)) for name, scale in p.get("adapters", [])]
        pipe = self.pipeline(model, adapters)
        seed = random.randint(0, Pipeline.MAX_SEED - p["count"]) if p.get("seed") is None else p["seed"]
        prompts = [p["prompt"]] * p["count"]
        options = {"steps": p["steps"], "guidance": p["guidance"], "sampler": p["sampler"],
                   "negative_prompt": p.get("negative_prompt", ""), "size": p.get("size") or pipe.image_size}
        images = pipe.sample(prompts, seed=seed, callback=job.progress, preview=self.previewer(job, pipe), **options)
        grid = Grid(folder=out, model=model_reference(model), images=[], adapters=adapters)
        grid.add(images, [GridImage("", prompt, seed + i, settings_of(**options)) for i, prompt in enumerate(prompts)])
        grid.save()
        return grid

    def vary(self, job: Job, out: Path, *, count: int = 4, mask: torch.Tensor | None = None) -> Grid:
        """Grid.vary on image n of a listed grid: V (four variations), or as the page's img2img and inpaint, one
        image from the prompt at the strength asked (default: a variation's, 1 where a mask is painted)."""
        p, source = job.params, self.library.grid(job.params["grid"])
        pipe = self.pipeline(source.model, source.adapters)
        strength = p.get("strength") or (1.0 if mask is not None else VARY_STRENGTH)
        return source.vary(p["n"], out, count=count, strength=strength, prompt=p.get("prompt"), mask=mask, pipe=pipe,
                           callback=job.progress, preview=self.previewer(job, pipe), action=job.kind)

    def upscale(self, job: Job, out: Path) -> Grid:
        p, source = job.params, self.library.grid(job.params["grid"])
        return source.upscale(p["n"], out, upscaler=self.upscaler(), callback=job.progress)

    def img2img(self, job: Job, out: Path) -> Grid:
        return self.vary(job, out, count=1)

    def inpaint(self, job: Job, out: Path) -> Grid:
        p, source = job.params, self.library.grid(job.params["grid"])
        return self.vary(job, out, count=1, mask=read_mask(p["mask"], source.source(p["n"]).shape[-1]))

    def previewer(self, job: Job, pipe):
        """A `preview` for Pipeline.sample: every PREVIEW_EVERY steps, the first image's current estimate as PNG."""
        calls = iter(range(10 ** 9))

        def preview(z_0: torch.Tensor) -> None:
            if next(calls) % PREVIEW_EVERY == 0:
                job.show(png(pipe.decode(z_0[:1].float())[0]))

        return preview


def png(image: torch.Tensor) -> bytes:
    """An image (3, H, W) in [-1, 1] as PNG bytes."""
    buffer = io.BytesIO()
    to_pil(image[None])[0].save(buffer, format="PNG")
    return buffer.getvalue()


def read_mask(data: bytes, size: int) -> torch.Tensor:
    """A painted mask (an image file, white where to redraw) as (1, size, size) in {0, 1}."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            mask = image.convert("L").resize((size, size), Image.NEAREST)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise LatentlabError(f"the mask is not an image Pillow reads ({e})") from None
    mask = (torch.from_numpy(np.asarray(mask, dtype=np.float32)) >= 128).float()[None]
    if mask.sum() == 0:
        raise LatentlabError("the mask is empty: paint where the image should be redrawn")
    return mask
