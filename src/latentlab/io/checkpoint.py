"""Components on disk: a folder with `config.json` (the component's dataclass config) and
`model.safetensors` (its weights). Never pickle. Every write goes to a temporary file in the same
folder and is renamed over the target, so a crash mid-write leaves the previous file intact.
Configs are read field by field: a value of another type than the field's, or one no network can be
built from, is a CheckpointError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors_file
from safetensors.torch import save as save_safetensors
from torch import nn

from ..errors import CheckpointError

CONFIG, WEIGHTS = "config.json", "model.safetensors"
SAVE_ID = "latentlab.save_id"  # weights metadata: which save wrote the file (see Pipeline.save)
C = TypeVar("C")


def _new_temporary(path: Path) -> tuple[int, Path]:
    """A new file `.NAME.RANDOM.tmp` beside `path` (RANDOM: 12 hex digits), open for writing, created with mode
    0666 for the kernel to apply the umask to."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half of one. The
    file's mode is 0666 less the umask, as for any new file (tempfile.mkstemp's would be 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write or fsync names no file: name ours
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _fits(value, annotation) -> bool:
    """Whether a JSON value is of a config field's type: int (not bool), float (an int too; finite), bool,
    str, tuple[X, ...] (a JSON array), unions (`int | None`), Literal choices."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(_fits, value, args))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    return True  # a type configs do not use: the config's own checks decide


def _describe(annotation) -> str:
    """What a field of type `annotation` accepts, in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(map(_describe, args))
    if origin is typing.Literal:
        return " or ".join(map(json.dumps, args))
    if origin in (tuple, list):
        return f"a list of {_describe(args[0])}s" if args[-1:] == (Ellipsis,) else f"a list of {len(args)} values"
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _short(value) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def check_value(name: str, value, annotation) -> None:
    """A ValueError naming field `name` where `value` (from JSON) is not of type `annotation`."""
    if not _fits(value, annotation):
        raise ValueError(f"field {name} is {_short(value)}; accepted: {_describe(annotation)}")


def check_fields(config_cls: type, data: dict, names: dict[str, str] | None = None) -> None:
    """Every value in `data` has the type that `config_cls` declares for its field, else a ValueError names
    the field (by `names`, where a foreign file calls it otherwise) and what it accepts."""
    hints = typing.get_type_hints(config_cls)
    for field, value in data.items():
        if field in hints:
            check_value((names or {}).get(field, field), value, hints[field])


def read_config(path: str | Path, config_cls: type[C]) -> C:
    """A dataclass config from JSON; unknown, ill-typed or out-of-range fields are errors."""
    data = read_json(path)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise CheckpointError(f"{path} has unknown fields {unknown}; accepted: {sorted(fields)}")
    try:
        check_fields(config_cls, data)
        return config_cls(**data)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        raise CheckpointError(f"{path} is not a valid {config_cls.__name__}: {e}") from None


def save_component(folder: str | Path, module: nn.Module, *, dtype: torch.dtype | None = None,
                   save_id: str | None = None) -> None:
    """Write the module's weights (optionally cast to `dtype`; `save_id` in their metadata) and then
    `module.config` to `folder`."""
    folder = Path(folder)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in module.state_dict().items()}
    atomic_write(folder / WEIGHTS, save_safetensors(state, metadata={SAVE_ID: save_id} if save_id else None))
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


def read_save_id(path: str | Path) -> str | None:
    """The SAVE_ID in a safetensors file's metadata (None where it has none), from its header alone."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get(SAVE_ID)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def build(module_cls: type[nn.Module], config, source: str | None = None) -> nn.Module:
    """The module without initialising its weights (on the meta device), for `load_weights` to fill. A
    config the module cannot be built from is a CheckpointError naming `source` (the config's file)."""
    try:
        with torch.device("meta"):
            return module_cls(config)
    except (ValueError, TypeError, RuntimeError, AssertionError, ZeroDivisionError, OverflowError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source or type(config).__name__}: a {module_cls.__name__} cannot be built from "
                              f"this config ({reason})") from None


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
    wrong = [k for k in expected if expected[k].is_floating_point() != state[k].is_floating_point()]
    if wrong:
        k = wrong[0]
        need = "floating-point" if expected[k].is_floating_point() else str(expected[k].dtype).removeprefix("torch.")
        raise CheckpointError(f"{source}: {len(wrong)} weights are stored as the wrong kind of number, e.g. {k} is "
                              f"stored as {str(state[k].dtype).removeprefix('torch.')}; the architecture needs "
                              f"{need} weights")
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
    module = build(module_cls, config, str(folder / CONFIG))
    return load_weights(module, state, f"{folder / WEIGHTS} (with {folder / CONFIG})")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files that `atomic_write` leaves when a kill stops it before its rename, in
    `folder` and below (symlinked folders are not followed); return them. Only files named as atomic_write
    names them go. Call it where no write can be under way in `folder`: as a run starts, in its main process."""
    removed = []
    for root, _, names in os.walk(folder):
        for name in filter(_is_temporary, names):
            path = Path(root) / name
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path)
            except OSError:  # not ours to remove after all (permissions): leave it
                continue
    return removed


def _is_temporary(name: str) -> bool:
    """`.TARGET.RANDOM.tmp`: RANDOM is atomic_write's 12 hex digits, or the 8 characters of tempfile.mkstemp,
    which it used before."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    target, _, random = name[1:-len(".tmp")].rpartition(".")
    hex_digits, mkstemp_alphabet = set("0123456789abcdef"), set("abcdefghijklmnopqrstuvwxyz0123456789_")
    return bool(target) and ((len(random) == 12 and set(random) <= hex_digits)
                             or (len(random) == 8 and set(random) <= mkstemp_alphabet))
