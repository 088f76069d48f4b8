"""Where the networks run and in what precision: a user's "auto", "cuda:1" or "bfloat16" -> torch's objects.

Every entry point (Pipeline, the training runs, the CLI) reads devices and dtypes here, so a bad name is
refused with the same one-line error wherever it is given.
"""

from __future__ import annotations

import torch

from .errors import LatentlabError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is the GPU where there is one, else the CPU; a CUDA device on a machine without one is refused."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise LatentlabError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LatentlabError("device cuda was asked for, but this machine has no CUDA GPU; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A name of DTYPES (or one of its torch dtypes) -> the torch dtype; None stays None (keep the weights')."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise LatentlabError(f"unknown dtype {dtype!r}; accepted: {', '.join(DTYPES)}")
    return DTYPES[dtype]
