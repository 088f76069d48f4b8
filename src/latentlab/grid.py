"""Midjourney's loop: a grid of images, then act on one of them without retyping anything: vary it, redraw a
region of it, upscale it; each action writes a new grid, which the loop goes on from (an upscaled image is
varied at its new size, which a model trained at the small one draws less well).

`latentlab generate` writes grid.json beside its PNGs: the model and what was added to it (adapters and
embeddings, as absolute paths), and per image its file, prompt, seed and sampling settings. `Grid.load(folder)`
reads it back; `grid.pipeline()` loads the model as it drew, and `grid.source(n)` is image n as drawn.

    {"format": "latentlab-grid", "version": 1, "model": "/abs/path or a shipped name", "dtype": "float32",
     "adapters": [["/abs/style.safetensors", 0.8]], "embeddings": [],
     "images": [{"file": "000-a-red-circle.png", "prompt": "a red circle", "seed": 0,
                 "settings": {"steps": 50, "guidance": 4.0, "sampler": "ddim", "negative_prompt": "", "size": 32,
                              "variance": null, "eta": null, "spacing": null},
                 "from": null}]}

"from", for an image an action drew, names the grid, the image and the action it came from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LatentlabError
from .images import from_pil, open_image
from .io import atomic_write

RECORD = "grid.json"
VARY_STRENGTH = 0.6  # Midjourney's "strong" variation keeps the composition and redraws the details
FORMAT, VERSION = "latentlab-grid", 1
SETTINGS = ("steps", "guidance", "sampler", "negative_prompt", "size", "variance", "eta", "spacing")


@dataclass
class GridImage:
    file: str  # the PNG's name in the grid's folder
    prompt: str
    seed: int
    settings: dict  # SETTINGS: as Pipeline.sample takes them
    origin: dict | None = None  # the grid, image and action it was drawn from (an action's image)


@dataclass
class Grid:
    folder: Path
    model: str
    images: list[GridImage]
    dtype: str = "float32"
    adapters: list[tuple[str, float]] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    sequence: str | None = None  # a continual-learning sequence's folder (`generate --sequence`)

    @classmethod
    def load(cls, folder: str | Path) -> "Grid":
        """The grid `latentlab generate` (or an action) wrote to `folder`; LatentlabError where there is none."""
        folder = Path(folder)
        path = folder / RECORD
        if not folder.is_dir():
            raise LatentlabError(f"{folder} is not a folder; give a folder `latentlab generate` wrote")
        if not path.is_file():
            raise LatentlabError(f"{folder} holds no {RECORD}: give a folder `latentlab generate` wrote (grids from "
                                 "before the record existed cannot be acted on)")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("format") != FORMAT or record.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} record of version {VERSION}")
            images = [GridImage(file=i["file"], prompt=i["prompt"], seed=int(i["seed"]),
                                settings={k: i["settings"].get(k) for k in SETTINGS}, origin=i.get("from"))
                      for i in record["images"]]
            return cls(folder=folder, model=record["model"], images=images, dtype=record.get("dtype", "float32"),
                       adapters=[(str(p), float(s)) for p, s in record.get("adapters", [])],
                       embeddings=[str(p) for p in record.get("embeddings", [])], sequence=record.get("sequence"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LatentlabError(f"{path} is not a grid record that can be read ({e})") from None

    def save(self) -> None:
        images = [{"file": i.file, "prompt": i.prompt, "seed": i.seed, "settings": i.settings, "from": i.origin}
                  for i in self.images]
        record = {"format": FORMAT, "version": VERSION, "model": self.model, "dtype": self.dtype,
                  "adapters": [list(a) for a in self.adapters], "embeddings": self.embeddings,
                  "sequence": self.sequence, "images": images}
        atomic_write(self.folder / RECORD, json.dumps(record, indent=2) + "\n")

    def image(self, n: int) -> GridImage:
        """Image n, as its file's number says (000 is 0)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < len(self.images):
            raise LatentlabError(f"image {n!r}: the grid in {self.folder} has {len(self.images)} images, numbered 0 "
                                 f"to {len(self.images) - 1} as their files are")
        return self.images[n]

    def source(self, n: int) -> torch.Tensor:
        """Image n as drawn, (3, H, W) in [-1, 1], read from its PNG."""
        image = self.image(n)
        picture, _ = from_pil(open_image(self.folder / image.file), image.settings.get("size") or 32)
        return picture

    def pipeline(self, device: str = "auto"):
        """The model that drew the grid, with its adapters and embeddings."""
        from .unclip_pipeline import load_pipeline  # here: it imports the pipeline, which imports much

        pipe = load_pipeline(self.model, device=device, dtype=self.dtype)
        for path, scale in self.adapters:
            pipe.load_adapter(path, scale=scale)
        for path in self.embeddings:
            pipe.load_textual_inversion(path)
        if self.sequence is not None:
            from .evaluation.continual import load_sequence

            load_sequence(pipe, self.sequence)
        return pipe

    def child(self, folder: str | Path) -> "Grid":
        """An empty grid of the same model, for an action's images."""
        return Grid(folder=Path(folder), model=self.model, images=[], dtype=self.dtype, adapters=list(self.adapters),
                    embeddings=list(self.embeddings), sequence=self.sequence)

    def add(self, images: torch.Tensor, entries: list[GridImage]) -> None:
        """Write the images (B, 3, H, W) in [-1, 1] as the grid's next PNGs, named as `generate` names them, with
        their entries (whose `file` is set here)."""
        from .images import to_pil

        self.folder.mkdir(parents=True, exist_ok=True)
        for picture, entry in zip(to_pil(images), entries):
            entry.file = f"{len(self.images):03d}-{slug(entry.prompt)}.png"
            picture.save(self.folder / entry.file)
            self.images.append(entry)

    def vary(self, n: int, out: str | Path, *, count: int = 4, strength: float = VARY_STRENGTH,
             seed: int | None = None, region: tuple[int, int, int, int] | None = None, prompt: str | None = None,
             mask: torch.Tensor | None = None, pipe=None, device: str = "auto", callback=None, preview=None,
             action: str = "vary") -> "Grid":
        """Midjourney's V button: `count` new images of image n, each from its own seed (seed + i; by default
        the image's seed + 1 on), written as a new grid in `out`. A text model redraws the image with its prompt
        and settings at `strength` (img2img); an unCLIP model draws from its image embedding (variations).
        `region` (top, left, bottom, right, in pixels) redraws only that box (inpainting, its strength 1 unless
        given), from `prompt` (default: the image's); `mask` (1, H, W), 1 where to redraw, does so for any shape
        (a mask painted on the page). `pipe`: the grid's model, loaded (`pipeline()`); `callback(i, steps)` after
        each sampling step, `preview(z_0)` (as `Pipeline.sample` takes it); `action` names the action in the new
        images' origin (the page's img2img and inpaint are this one)."""
        entry, source = self.image(n), self.source(n)
        pipe = pipe or self.pipeline(device)
        prompt = entry.prompt if prompt is None else prompt
        seed = entry.seed + 1 if seed is None else seed
        options = {k: v for k, v in entry.settings.items() if k != "size" and v is not None}
        options.update({k: v for k, v in (("callback", callback), ("preview", preview)) if v is not None})
        origin = {"grid": str(self.folder.resolve()), "image": n, "action": action, "strength": strength,
                  "region": None if region is None else list(region)}
        sources, prompts = source[None].expand(count, -1, -1, -1), [prompt] * count
        if region is not None:
            from .data.masks import box_mask

            mask = box_mask(check_region(region, source.shape[-1]), source.shape[-1])
        if mask is not None:
            masks = mask[None].expand(count, -1, -1, -1)
            text_model = pipe.image_model() if hasattr(pipe, "variations") else pipe
            images = text_model.inpaint(sources, masks, prompts, strength=strength, seed=seed, **options)
        elif hasattr(pipe, "variations"):
            origin["strength"] = None
            text = {k: v for k, v in options.items() if k != "negative_prompt"}
            images = pipe.variations(source, count, seed=seed, **text)
        else:
            images = pipe.img2img(sources, prompts, strength=strength, seed=seed, **options)
        child = self.child(out)
        size = source.shape[-1]
        child.add(images, [GridImage("", prompt, seed + i, {**entry.settings, "size": size}, origin)
                           for i in range(count)])
        child.save()
        return child


    def upscale(self, n: int, out: str | Path, *, upscaler=None, model: str | None = None, steps: int = 50,
                sampler: str = "ddim", seed: int | None = None, noise_level: int | None = None,
                device: str = "auto", callback=None) -> "Grid":
        """Midjourney's U button: image n drawn again at the upscaler's size (upscaler_model.py), from its seed
        (default: the image's), written as a new grid of one image in `out`. `upscaler`: one loaded; else `model`
        (a folder, or the shipped upscaler when None) is loaded."""
        from .upscaler_model import SHIPPED_UPSCALER, UpscalerModel

        entry, source = self.image(n), self.source(n)
        upscaler = upscaler or UpscalerModel.load(model, device=device)
        seed = entry.seed if seed is None else seed
        image = upscaler.upscale(source[None], steps=steps, sampler=sampler, seed=seed, noise_level=noise_level,
                                 callback=callback)
        level = upscaler.config.noise_level if noise_level is None else noise_level
        origin = {"grid": str(self.folder.resolve()), "image": n, "action": "upscale",
                  "upscaler": model_reference(model or SHIPPED_UPSCALER), "noise_level": level, "steps": steps,
                  "sampler": sampler, "seed": seed}
        child = self.child(out)
        child.add(image, [GridImage("", entry.prompt, entry.seed, {**entry.settings, "size": image.shape[-1]}, origin)])
        child.save()
        return child


def slug(prompt: str) -> str:
    """The prompt as a file name's part: lower-case words joined by dashes."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "unconditional"


def model_reference(model: str | None) -> str:
    """How a grid names its model: the absolute path of a folder or file, or a shipped model's name."""
    if model is None:
        from .pipeline import DEFAULT_MODEL

        return DEFAULT_MODEL
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def settings_of(**options) -> dict:
    """The sampling settings a grid records, from Pipeline.sample's keyword arguments."""
    return {k: options.get(k) for k in SETTINGS}


def check_region(region, size: int) -> tuple[int, int, int, int]:
    """A box (top, left, bottom, right) in pixels that lies in a size x size image and covers some of it, but
    not all."""
    if len(region) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in region):
        raise LatentlabError(f"a region is four whole numbers, top, left, bottom, right, in pixels; got {region!r}")
    top, left, bottom, right = region
    if not (0 <= top < bottom <= size and 0 <= left < right <= size):
        raise LatentlabError(f"region {top},{left},{bottom},{right} is not a box within the {size}x{size} image: give "
                             f"0 <= top < bottom <= {size} and 0 <= left < right <= {size}")
    if (bottom - top) * (right - left) == size * size:
        raise LatentlabError(f"region {top},{left},{bottom},{right} is the whole image: vary it without --region")
    return top, left, bottom, right
