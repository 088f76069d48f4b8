"""Textual-inversion files: a concept's token and its embedding vectors, as safetensors.

We write diffusers' layout, what its textual-inversion training script saves and `load_textual_inversion`
reads: one tensor named after the token, {"<diamond>": (n, D) float32}, metadata {"format": "pt"}. The
run's folder names it learned_embeds.safetensors, the file name diffusers looks for in a folder.

We read that layout and the safetensors forms of AUTOMATIC1111's: {"emb_params": (n, D)} (what A1111 and
kohya's scripts write as safetensors) and {"string_to_param.*": (n, D)} (A1111's pickled dict
{"string_to_param": {"*": tensor}}, flattened), whose token is the file's name, as A1111 names it. Pickles
(.pt, .bin) are refused: reading one can run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from ..errors import CheckpointError
from . import atomic_write

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
A1111_KEYS = ("emb_params", "string_to_param.*")  # the token is the file's name
A1111_EXTRA = "string_to_token.*"  # A1111's placeholder id, beside string_to_param.* in a flattened file; unused


def save_textual_inversion(path: str | Path, token: str, vectors: torch.Tensor,
                           metadata: dict[str, str] | None = None) -> None:
    """Write {token: vectors (n, D) float32} to `path` (.safetensors) in diffusers' layout, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: textual-inversion files are written as .safetensors")
    vectors = vectors.detach().float().cpu().contiguous()
    if vectors.ndim != 2 or not token:
        raise CheckpointError(f"{path}: expected a token and vectors (n, D), got {token!r} and "
                              f"{tuple(vectors.shape)}")
    atomic_write(path, save_safetensors({token: vectors}, metadata={**(metadata or {}), "format": "pt"}))


def read_textual_inversion(path: str | Path, token: str | None = None) -> tuple[str, torch.Tensor]:
    """(token, vectors (n, D) float32) of a file in diffusers' or A1111's layout; `token` replaces the file's.
    A file that is not one (a pickle, not safetensors, empty, several tensors, not float (n, D)) is a one-line
    CheckpointError."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path} is a pickle ({path.suffix}), which can run code when read; latentlab reads "
                              "textual-inversion files only as .safetensors")
    if not path.is_file():
        raise CheckpointError(f"textual-inversion file {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty; expected a safetensors file of one embedding")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({' '.join(str(e).split())})") from None
    key = _key(path, tensors)
    vectors = tensors[key]
    if vectors.ndim == 1:
        vectors = vectors[None]  # (D,) -> (1, D)
    if not vectors.is_floating_point() or vectors.ndim != 2 or 0 in vectors.shape:
        raise CheckpointError(f"{path}: {_shown(key)} is {str(vectors.dtype)[6:]} {tuple(vectors.shape)}; expected "
                              "float vectors (n, D)")
    if not torch.isfinite(vectors).all():
        raise CheckpointError(f"{path}: {_shown(key)} holds NaN or infinite values")
    return token or (path.stem if key in A1111_KEYS else key), vectors.float()


def _key(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """The name of the file's embedding tensor: its only one (A1111's string_to_token.* aside)."""
    names = [k for k in tensors if k != A1111_EXTRA or len(tensors) == 1]
    if len(names) != 1:
        shown = ", ".join(_shown(k) for k in sorted(names)[:4]) + (", ..." if len(names) > 4 else "")
        raise CheckpointError(f"{path} holds {len(names)} tensors ({shown or 'none'}); expected one embedding: "
                              f"{{token: (n, D)}} (diffusers) or {' or '.join(A1111_KEYS)} (A1111)")
    return names[0]


def _shown(name: str) -> str:
    """A name from a file as a message shows it: quoted with escapes where it holds control characters."""
    return name if name.isprintable() else repr(name)
