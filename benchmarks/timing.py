"""What the GPU benchmarks share: seconds per call of a CUDA function."""

from __future__ import annotations

import time

import torch


def seconds_per_call(fn, n: int, warm: int) -> float:
    """Seconds per call, averaged over n calls after `warm` untimed ones (the GPU synchronised around them)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n
