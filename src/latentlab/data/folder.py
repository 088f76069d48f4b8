"""A folder of captioned images, as users bring them, read into memory once.

Images are found recursively (.png .jpg .jpeg .webp .bmp .gif, any case) and sorted by relative path.
Captions come from `metadata.jsonl` at the root (the Hugging Face imagefolder convention: one
`{"file_name": "sub/a.png", "text": "a caption"}` a line, "caption" accepted for "text"), else from a
`<stem>.txt` beside the image; an image with neither trains unconditional (caption "").

Every image is fully decoded at construction. One that cannot be used (truncated, not an image, an
unsupported or 16/32-bit mode, too large, zero size) is reported as `skipped PATH: REASON` and left
out; it never stops the run. The rest are converted to RGB (alpha over white), resized so the shorter
side is `image_size` (bicubic), centre-cropped, and kept as one uint8 array (n, S, S, 3).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import LatentlabError
from .dataset import FiniteDataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
METADATA = "metadata.jsonl"
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")  # 8-bit modes we convert to RGB
HIGH_DEPTH_MODES = ("I", "F")  # plus every "I;16..." variant


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def read_metadata(path: Path) -> dict[str, str]:
    """file_name -> caption from a metadata.jsonl; a malformed line raises, naming file and line."""
    captions: dict[str, str] = {}
    lines: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LatentlabError(f"{where}: not JSON ({e.msg}); expected "
                                     '{"file_name": "relative/path.png", "text": "a caption"}') from None
            if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
                raise LatentlabError(f'{where}: expected an object with a "file_name" string, got {line.strip()[:80]}')
            text = record.get("text", record.get("caption"))
            if not isinstance(text, str):
                raise LatentlabError(f'{where}: expected a "text" (or "caption") string, got {text!r}')
            name = Path(record["file_name"].replace("\\", "/")).as_posix()
            if name in lines:
                raise LatentlabError(f"{where}: {name} is listed again (first at line {lines[name]})")
            captions[name], lines[name] = text.strip(), number
    return captions


def _check_size(image: Image.Image, max_pixels: int) -> str | None:
    width, height = image.size
    if width == 0 or height == 0:
        return f"zero-size image ({width}x{height})"
    if width * height > max_pixels:
        return f"too large: {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}"
    return None


def _check_mode(mode: str) -> str | None:
    if mode in HIGH_DEPTH_MODES or mode.startswith("I;16"):
        return f"16-bit or 32-bit pixels (mode {mode}); save it as 8-bit"
    if mode not in MODES:
        return f"unsupported mode {mode} (accepted: {', '.join(MODES)})"
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """An image of an accepted mode -> RGB, any transparency composited on white."""
    if image.mode in ("LA", "PA", "RGBA") or "transparency" in image.info:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def fit(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (bicubic) and centre-crop: uint8 (size, size, 3)."""
    width, height = image.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)


def load_image(path: Path, size: int, max_pixels: int) -> np.ndarray | str:
    """Pixels (size, size, 3) of one image file, or the reason it cannot be used. Never raises an Exception."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if reason := _check_size(image, max_pixels):
                    return reason
                image.load()  # full decode: catches truncation
                if reason := _check_mode(image.mode):
                    return reason
                image = ImageOps.exif_transpose(image)  # photos stored sideways with an orientation tag
                return fit(to_rgb(image), size)
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify the file)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"too large for PIL's decompression-bomb limit ({e})"
    except (OSError, SyntaxError, ValueError) as e:
        return f"cannot decode: {type(e).__name__}: {e}"
    except Exception as e:  # a broken file must not stop the run, whatever PIL raises for it
        return f"cannot read: {type(e).__name__}: {e}"


class ImageFolder(FiniteDataset):
    """Captioned images from a folder; labels are the images' paths relative to the root."""

    def __init__(self, root: str | Path, *, image_size: int = 32, seed: int = 0,
                 max_pixels: int = 64_000_000, log: Callable[[str], None] = _stderr):
        root = Path(root)
        if not root.is_dir():
            raise LatentlabError(f"no image folder at {root}")
        if image_size < 1:
            raise LatentlabError(f"image_size must be a positive number of pixels, got {image_size}")
        self.root, self.image_size = root, image_size
        files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                       if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not files:
            raise LatentlabError(f"no images in {root}: looked for {' '.join(EXTENSIONS)} files (any case), "
                                 "recursively")
        metadata = read_metadata(root / METADATA) if (root / METADATA).is_file() else {}

        # decode and preprocess every image
        self.skipped: list[tuple[str, str]] = []
        self.paths: list[str] = []
        self.captions: list[str] = []
        pixels = np.empty((len(files), image_size, image_size, 3), np.uint8)  # (N, S, S, 3)
        for name, path in files:
            result = load_image(path, image_size, max_pixels)
            if isinstance(result, str):
                self._skip(name, result, log)
                continue
            caption = metadata.get(name)
            if caption is None and (text := path.with_suffix(".txt")).is_file():
                try:
                    caption = text.read_text(encoding="utf-8-sig").strip()
                except (OSError, UnicodeDecodeError) as e:
                    self._skip(name, f"cannot read its caption {text.name}: {e}", log)
                    continue
            pixels[len(self.paths)] = result
            self.paths.append(name)
            self.captions.append(caption or "")
        known = {name for name, _ in files}
        for name in metadata.keys() - known:
            self._skip(name, f"listed in {METADATA}, but there is no such image", log)

        n = len(self.paths)
        self.pixels = pixels[:n] if n == len(files) else pixels[:n].copy()  # (n, S, S, 3)
        self.uncaptioned = sum(not c for c in self.captions)
        log(f"{n} images read, {len(self.skipped)} skipped")
        if self.uncaptioned:
            log(f"{self.uncaptioned} images have no caption; they train unconditional")
        if n == 0:
            first = "; ".join(f"{p}: {r}" for p, r in self.skipped[:3])
            raise LatentlabError(f"none of the {len(files)} images in {root} could be read ({first})")
        super().__init__(n, seed)

    def _skip(self, name: str, reason: str, log: Callable[[str], None]) -> None:
        self.skipped.append((name, reason))
        log(f"skipped {name}: {reason}")

    def items(self, indices: list[int]) -> tuple[np.ndarray, list[str], list[str]]:
        """(uint8 pixels (n, S, S, 3), captions, relative paths) of the given items."""
        return self.pixels[indices], [self.captions[i] for i in indices], [self.paths[i] for i in indices]
