"""What the trainers read: captioned images, example i for every i >= 0.

A data set is an endless, deterministic stream: `batch(start, n, device)` returns examples start ..
start + n - 1, the same ones whenever asked. That is what makes runs resumable and independent of how
many processes share them (each renders only its slice). The shapes world is endless by itself;
a finite set of N examples repeats, in a fresh order each epoch (example i is item
order(i // N)[i % N], the order a permutation seeded by the set's seed and the epoch).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class CaptionedImages(Protocol):
    image_size: int

    def batch(self, start: int, n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[str], list]:
        """(images (n, 3, H, W) in [-1, 1] on `device`, captions, labels or scenes) of examples start .. start + n - 1."""
        ...


def to_images(pixels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 pixels (n, H, W, 3) or grey (n, H, W) -> float images (n, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    if x.dim() == 3:
        x = x[..., None].expand(-1, -1, -1, 3)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


class FiniteDataset:
    """Base of the finite sets: the epoch order, and `batch` over `items(indices)`."""

    def __init__(self, size: int, seed: int = 0):
        if size < 1:
            raise ValueError("the data set holds no examples")
        self.size, self.seed = size, seed
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.size

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._orders[epoch]

    def indices(self, start: int, n: int) -> list[int]:
        return [int(self.order(i // self.size)[i % self.size]) for i in range(start, start + n)]

    def items(self, indices: list[int]) -> tuple[np.ndarray, list[str], list]:
        """(uint8 pixels (n, H, W, 3) or (n, H, W), captions, labels) of the given items."""
        raise NotImplementedError

    def batch(self, start: int, n: int, device: torch.device | str = "cpu"):
        pixels, captions, labels = self.items(self.indices(start, n))
        return to_images(pixels, device), captions, labels
