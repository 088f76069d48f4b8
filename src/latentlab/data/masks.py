"""Masks for inpainting on the shapes world: the region a model redraws (1) or keeps (0), (1, H, W) each.

Training draws, per scene: half the time the box around one of its objects (so the model learns to put an
object where a box is and the caption says), a third of the time a random rectangle, and otherwise the whole
image (so it still draws from text alone, as Stable Diffusion's inpainting model is trained).
"""

from __future__ import annotations

import random

import torch

from .shapes import POSITIONS, SIZES, Scene

OBJECT_BOX = 1.7  # half the side of an object's box, in radii of its equal-area circle: every shape fits
MARGIN = 0.06  # added to each side, as a fraction of the width


def object_box(scene: Scene, k: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) in pixels of the square around object k of `scene`, clipped to the image."""
    obj = scene.objects[k]
    jx, jy = scene.jitter[k] if scene.jitter else (0.0, 0.0)
    px, py = POSITIONS[obj.position]
    half = OBJECT_BOX * SIZES[obj.size] + MARGIN
    cx, cy = px + jx, py + jy
    return (max(0, round((cy - half) * size)), max(0, round((cx - half) * size)),
            min(size, round((cy + half) * size)), min(size, round((cx + half) * size)))


def box_mask(box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """(1, size, size): 1 inside the box (top, left, bottom, right), 0 outside."""
    mask = torch.zeros(1, size, size)
    top, left, bottom, right = box
    mask[:, top:bottom, left:right] = 1
    return mask


def random_box(rng: random.Random, size: int) -> tuple[int, int, int, int]:
    """A rectangle with sides from a quarter to three quarters of the image, anywhere in it."""
    h, w = (rng.randint(size // 4, 3 * size // 4) for _ in range(2))
    top, left = rng.randint(0, size - h), rng.randint(0, size - w)
    return top, left, top + h, left + w


def training_mask(scene: Scene, size: int, rng: random.Random) -> torch.Tensor:
    """One training mask (1, size, size) for `scene`: an object's box (1/2), a random rectangle (1/3), or the
    whole image (1/6)."""
    u = rng.random()
    if u < 1 / 2:
        return box_mask(object_box(scene, rng.randrange(len(scene.objects)), size), size)
    if u < 5 / 6:
        return box_mask(random_box(rng, size), size)
    return torch.ones(1, size, size)
