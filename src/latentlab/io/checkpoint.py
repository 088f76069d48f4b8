"""Components on disk: a folder with `config.json` (the component's dataclass config) and
`model.safetensors` (its weights). Never pickle. Every write goes to a temporary file in the same
folder and is renamed over the target, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors_file
from safetensors.torch import save as save_safetensors
from torch import nn

from ..errors import CheckpointError

CONFIG, WEIGHTS = "config.json", "model.safetensors"
C = TypeVar("C")


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_config(path: str | Path, config_cls: type[C]) -> C:
    """A dataclass config from JSON; unknown or ill-typed fields are errors."""
    data = read_json(path)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise CheckpointError(f"{path} has unknown fields {unknown}; accepted: {sorted(fields)}")
    try:
        return config_cls(**data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid {config_cls.__name__}: {e}") from None


def save_component(folder: str | Path, module: nn.Module, *, dtype: torch.dtype | None = None) -> None:
    """Write `module.config` and the module's weights (optionally cast to `dtype`) to `folder`."""
    folder = Path(folder)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in module.state_dict().items()}
    atomic_write(folder / WEIGHTS, save_safetensors(state))
    atomic_write(folder / CONFIG, json.dumps(dataclasses.asdict(module.config), indent=2) + "\n")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (memory-mapped, so a multi-GB file is not read twice)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_safetensors_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def build(module_cls: type[nn.Module], config) -> nn.Module:
    """The module without initialising its weights (on the meta device), for `load_weights` to fill."""
    with torch.device("meta"):
        return module_cls(config)


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load `state` into `module` (built by `build` or not), float32 for floating-point weights; every key
    and shape must match, and an error names the first differences. `source` names the file in errors."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the architecture: missing keys {missing[:5]}, "
                              f"unexpected keys {unexpected[:5]} ({len(missing)} and {len(unexpected)} in all)")
    wrong = [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{source}: {len(wrong)} weights have the wrong shape, e.g. {k} is "
                              f"{tuple(state[k].shape)}, the architecture needs {tuple(expected[k].shape)}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, assign=True)
    return module


def load_component(folder: str | Path, module_cls: type[nn.Module], config_cls: type,
                   translate: Callable[[dict, object], dict] | None = None) -> nn.Module:
    """Rebuild a module from its folder; every weight must match the config's architecture exactly.
    `translate(state, config)`, from io/convert.py, renames the keys of an older or foreign layout first."""
    folder = Path(folder)
    config = read_config(folder / CONFIG, config_cls)
    state = read_safetensors(folder / WEIGHTS)
    if translate is not None:
        state = translate(state, config)
    return load_weights(build(module_cls, config), state, f"{folder / WEIGHTS} (with {folder / CONFIG})")
