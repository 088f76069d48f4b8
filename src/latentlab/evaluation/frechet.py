"""The Frechet distance between two sets of features (Heusel et al. 2017): the 2-Wasserstein distance
between the Gaussians fitted to them,
    d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1^1/2 S_2 S_1^1/2)^1/2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """d^2 between features a (N, D) and b (M, D), computed in float64."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    if a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two sets of at least 2 feature vectors of one width, got {tuple(a.shape)} and {tuple(b.shape)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()


def pooled_pixels(images: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Features of images (B, 3, H, W): their colours averaged over a size x size grid, (B, 3 * size^2)."""
    return F.adaptive_avg_pool2d(images.float(), size).flatten(1)
