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
