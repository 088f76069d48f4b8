"""Resumable training checkpoints: everything a run needs to continue exactly where it stopped.

One safetensors file holds every tensor (the networks, their EMA copies, the optimiser's moments,
random-number-generator states) and, in its header's metadata, one JSON document for the rest (the
step, the run's config, the optimiser's hyper-parameters, Python's and NumPy's generator states).
It is written with `io.atomic_write`: a crash or a kill mid-write leaves the previous checkpoint
whole. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch import nn

from ..errors import CheckpointError
from ..io import atomic_write

FILENAME = "checkpoint.safetensors"
META_KEY = "latentlab_training_state"


def save_state(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write `tensors` and the JSON-able `meta` to one file, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, save_safetensors(tensors, metadata={META_KEY: json.dumps(meta)}))


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a file written by `save_state`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; there is no checkpoint to resume from")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({e})") from None
    if meta is None:
        raise CheckpointError(f"{path} is a safetensors file but not a latentlab training checkpoint")
    return tensors, json.loads(meta)


# ------------------------------------------------------------------ the run's settings


def config_json(config) -> dict:
    """A run's dataclass config as plain JSON values (tuples as lists), as the checkpoint stores it."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def check_resumable(saved: dict, config, path: Path, may_change: tuple[str, ...]) -> None:
    """A run resumes only the run it continues: every setting but `may_change` must be the saved one."""
    current = config_json(config)
    changed = sorted(k for k in current if k not in may_change and saved.get(k) != current[k])
    if changed:
        raise CheckpointError(f"{path} was written by a run with other settings ({', '.join(changed)}); resume with "
                              f"the same ones, or start a new run in another --out folder")


# ------------------------------------------------------------------ modules and optimisers


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = prefix + "."
    return {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}


def load_module(module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Every weight of `module` from the checkpoint's `prefix.*` tensors, strictly."""
    try:
        module.load_state_dict(unprefixed(prefix, tensors), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint's {prefix} does not fit this run's architecture: "
                              f"{str(e).splitlines()[0]}") from None


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict, dict]:
    """(tensors, JSON) of an optimiser's state_dict: per-parameter tensors apart, hyper-parameters as JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "optimizer") -> None:
    state: dict[int, dict] = {}
    for key, value in unprefixed(prefix, tensors).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------ random number generators


def rng_state(generators: dict[str, torch.Generator]) -> tuple[dict, dict]:
    """(tensors, JSON) of every generator a run draws from: torch's global CPU (and CUDA) ones, Python's,
    NumPy's, and the run's own `generators`."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors.update({f"rng.generator.{name}": g.get_state() for name, g in generators.items()})
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    python = random.getstate()
    meta = {"python": [python[0], list(python[1]), python[2]], "numpy": [kind, int(position), int(has_gauss),
                                                                          float(gauss)]}
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    for name, g in generators.items():
        g.set_state(tensors[f"rng.generator.{name}"])
    kind, position, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
