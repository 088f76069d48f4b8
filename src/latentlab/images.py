"""Images out of the networks: tensors in [-1, 1] -> PIL images, and many images as one grid."""

from __future__ import annotations

import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def image_grid(images: list[Image.Image], columns: int | None = None, scale: int = 1) -> Image.Image:
    """Images side by side in rows of `columns`, each enlarged `scale` times (nearest neighbour)."""
    columns = columns or len(images)
    w, h = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * w * scale, rows * h * scale))
    for i, image in enumerate(images):
        grid.paste(image.resize((w * scale, h * scale), Image.NEAREST), ((i % columns) * w * scale, (i // columns) * h * scale))
    return grid


def from_pil(image: Image.Image, size: int) -> tuple[torch.Tensor, list[str]]:
    """A PIL image -> (3, size, size) in [-1, 1], converted to RGB and resized (bicubic) where it is not already;
    and a note for each change made."""
    notes = []
    if image.mode != "RGB":
        notes.append(f"converted from mode {image.mode} to RGB")
        image = image.convert("RGB")
    if image.size != (size, size):
        notes.append(f"resized from {image.size[0]}x{image.size[1]} to {size}x{size}")
        image = image.resize((size, size), Image.BICUBIC)
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return array.permute(2, 0, 1).float() / 127.5 - 1, notes


def mask_from_pil(image: Image.Image, size: int) -> torch.Tensor:
    """A PIL mask -> (1, size, size) in [0, 1]: its grey level (white 1), resized by the nearest pixel so that it
    stays as sharp as drawn."""
    grey = image.convert("L").resize((size, size), Image.NEAREST)
    return torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(1, size, size).float() / 255


def open_image(path) -> Image.Image:
    """The image file `path`, read; a file that is missing or no image Pillow reads raises LatentlabError."""
    from .errors import LatentlabError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise LatentlabError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LatentlabError(f"{path} is a folder; give an image file (PNG, JPEG, ...)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise LatentlabError(f"{path} is not an image that can be read ({e}); give a PNG, JPEG or another "
                             "format Pillow reads") from None


def read_image(path, size: int) -> tuple[torch.Tensor, list[str]]:
    """The image file `path` as `from_pil` makes it (`open_image`'s errors)."""
    return from_pil(open_image(path), size)
