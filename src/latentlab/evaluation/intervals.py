"""95% intervals for the evaluations' figures: a proportion's (Wilson's score interval) and a mean's (normal)."""

from __future__ import annotations

import math

import torch

Z = 1.96  # the normal quantile of a two-sided 95% interval


def wilson(right: int, n: int) -> list[float]:
    """The 95% Wilson score interval of the proportion right / n (Wilson 1927): unlike p +- Z sqrt(p(1-p)/n), it
    stays inside [0, 1] and is not empty at 0 or n."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = right / n
    centre, half = p + Z * Z / (2 * n), Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return [max(0.0, (centre - half) / (1 + Z * Z / n)), min(1.0, (centre + half) / (1 + Z * Z / n))]


def proportion(right: int, n: int) -> dict:
    """The share right / n (nan when n is 0), its 95% interval (`wilson`) and n."""
    return {"share": right / n if n else float("nan"), "interval": wilson(right, n), "n": n}


def mean_interval(values: torch.Tensor) -> dict:
    """The mean of `values` and its normal 95% interval."""
    n, mean = len(values), values.float().mean().item()
    half = Z * values.float().std().item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "interval": [mean - half, mean + half]}
