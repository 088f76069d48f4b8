"""Resumable training checkpoints: everything a run needs to continue exactly where it stopped.

One safetensors file holds every tensor (the networks, their EMA copies, the optimiser's moments,
random-number-generator states) and, in its header's metadata, one JSON document for the rest (the
step, the run's config, the optimiser's hyper-parameters, Python's and NumPy's generator states).
It is written with `io.atomic_write`: a crash or a kill mid-write leaves the previous checkpoint
whole. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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
AGAIN = "restore the file, or start the run again without --resume"  # what to do about a damaged checkpoint


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
    try:
        meta = json.loads(meta)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: its metadata is not valid JSON ({e}); {AGAIN}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its metadata is not a JSON object; {AGAIN}")
    return tensors, meta


def meta_field(meta: dict, key: str, kind: type | tuple[type, ...], path: Path):
    """meta[key], which must be a `kind`; a missing or ill-typed field is a CheckpointError naming it."""
    value = meta.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CheckpointError(f"{path}: its metadata field {key!r} is missing or not a "
                              f"{getattr(kind, '__name__', kind)} (found {str(value)[:40]!r}); {AGAIN}")
    return value


def saved_step(meta: dict, path: Path) -> int:
    """The step a checkpoint was written at: a whole number >= 0."""
    step = meta_field(meta, "step", int, path)
    if step < 0:
        raise CheckpointError(f"{path}: its metadata field 'step' is {step}, must be >= 0; {AGAIN}")
    return step


# ------------------------------------------------------------------ the run's settings


def config_json(config) -> dict:
    """A run's dataclass config as plain JSON values (tuples as lists), as the checkpoint stores it."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def check_resumable(meta: dict, config, path: Path, may_change: tuple[str, ...], identity: dict[str, str]) -> None:
    """A run resumes only the run it continues: every setting but `may_change` must be the saved one. The
    settings that name files (the keys of `identity`: the autoencoder, the data, a base model...) compare
    by what the files hold, `identity`'s digests, which the checkpoint keeps beside the config (`meta["identity"]`):
    ./x, /abs/x, a link to x or a copy of x are the same setting. A checkpoint written before it kept them
    compares such paths by the real path they name now."""
    saved = meta_field(meta, "config", dict, path)
    saved_identity = meta.get("identity") if isinstance(meta.get("identity"), dict) else {}
    changed = []
    for key, value in config_json(config).items():
        if key in may_change:
            continue
        if key in identity and key in saved_identity:
            if saved_identity[key] != identity[key]:
                changed.append(f"{key}: other contents")
        elif key in identity:
            if not same_path(saved.get(key), value):
                changed.append(key)
        elif saved.get(key) != value:
            changed.append(key)
    if changed:
        raise CheckpointError(f"{path} was written by a run with other settings ({', '.join(sorted(changed))}); resume "
                              f"with the same ones, or start a new run in another --out folder")


def same_path(a, b) -> bool:
    """Whether two path settings name the same thing: equal, or the same real path (links resolved)."""
    return a == b or (isinstance(a, str) and isinstance(b, str) and os.path.realpath(a) == os.path.realpath(b))


# ------------------------------------------------------------------ what a setting's files hold

SAMPLE = 4096  # values of each tensor or array that a digest reads


def digest(*parts) -> str:
    """A content digest of modules (each weight's name, shape and values), tensors, arrays and JSON-able
    values: the same for the same contents wherever they were read from. Of each tensor it reads up to
    2 * SAMPLE evenly spaced values, as float32, so an SD-sized model costs a fraction of a second: two
    different models (or data sets) differ in nearly every weight (or pixel), and so in the sample."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, nn.Module):
            for name, tensor in sorted(part.state_dict().items()):
                h.update(f"{name}{tuple(tensor.shape)};".encode())
                h.update(_sample(tensor))
        elif torch.is_tensor(part) or isinstance(part, np.ndarray):
            h.update(f"{tuple(part.shape)};".encode())
            h.update(_sample(torch.as_tensor(part)))
        else:
            h.update(json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:32]


def _sample(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1)
    return flat[::max(1, flat.numel() // SAMPLE)].float().cpu().numpy().tobytes()


def data_identity(spec: str, data) -> str:
    """What a run's `data` setting names: a named set's name; a folder's contents (its captions, and its
    images' pixels or its cached latents), however the folder is reached."""
    from ..data.sources import NAMED

    if spec in NAMED:
        return spec
    arrays = [getattr(data, name) for name in ("pixels", "mean", "logvar") if hasattr(data, name)]
    if not hasattr(data, "captions") or not arrays:
        return os.path.realpath(spec)
    return digest(list(data.captions), *arrays)


# ------------------------------------------------------------------ modules and optimisers


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = prefix + "."
    return {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}


def load_module(module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Every weight of `module` from the checkpoint's `prefix.*` tensors, strictly: names and shapes."""
    state, expected = unprefixed(prefix, tensors), module.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        what = (f"{prefix}.{wrong[0]} is {tuple(state[wrong[0]].shape)}, "
                f"this run's is {tuple(expected[wrong[0]].shape)}" if wrong else f"missing {[f'{prefix}.{k}' for k in missing[:3]]}, "
                              f"unexpected {[f'{prefix}.{k}' for k in unexpected[:3]]}")
        raise CheckpointError(f"{path}: its {prefix} does not fit this run's architecture ({what})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its {prefix} does not load ({str(e).splitlines()[0]})") from None


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


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta, path: Path,
                   prefix: str = "optimizer") -> None:
    """The optimiser's state from a checkpoint, checked against this optimiser first: its parameter groups
    (each setting of the type this optimiser has), and every per-parameter tensor's name and shape. A value
    that does not fit raises CheckpointError naming `path`; the optimiser is then unchanged."""

    def malformed(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: its {prefix} state does not fit this run's optimiser ({what}); {AGAIN}")

    if not isinstance(meta, dict) or not isinstance(meta.get("scalars"), dict):
        raise malformed("expected an object with param_groups and scalars")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    for key, value in [*unprefixed(prefix, tensors).items(), *meta["scalars"].items()]:
        index, _, name = key.partition(".")
        if not (index.isdigit() and name):
            raise malformed(f"{prefix}.{key} is not named {prefix}.INDEX.NAME")
        if int(index) >= len(params):
            raise malformed(f"{prefix}.{key} is for parameter {index}; this run has {len(params)}")
        state.setdefault(int(index), {})[name] = value
    needed = _adam_state(optimizer)
    for index, values in state.items():
        _check_parameter_state(values, params[index], f"{prefix}.{index}", malformed)
        if needed is not None and set(values) != needed:
            raise malformed(f"{prefix}.{index} holds {sorted(values)}, Adam's state is {sorted(needed)}")
    groups = _param_groups(meta.get("param_groups"), optimizer.state_dict()["param_groups"], malformed)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise malformed(str(e).splitlines()[0]) from None


def _adam_state(optimizer: torch.optim.Optimizer) -> set[str] | None:
    """The entries of each parameter's state in Adam and AdamW (the trainers' optimisers); None for others."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    amsgrad = any(group.get("amsgrad") for group in optimizer.param_groups)
    return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())


def _check_parameter_state(values: dict, param: torch.Tensor, where: str, malformed) -> None:
    """A parameter's optimiser state: "step" a single number, every other tensor of the parameter's shape."""
    for name, value in values.items():
        if name == "step":
            ok = (value.numel() == 1 if torch.is_tensor(value)
                  else isinstance(value, (int, float)) and not isinstance(value, bool))
            if not ok:
                raise malformed(f"{where}.step must be one number, has shape {tuple(getattr(value, 'shape', ()))}")
        elif not torch.is_tensor(value) or value.shape != param.shape:
            raise malformed(f"{where}.{name} has shape {tuple(getattr(value, 'shape', ()))}, "
                            f"the parameter's is {tuple(param.shape)}")


def _param_groups(saved, current: list[dict], malformed) -> list[dict]:
    """The saved parameter groups, each setting checked to be of the kind this optimiser's is (a setting the
    checkpoint lacks takes this optimiser's value)."""
    if not isinstance(saved, list) or len(saved) != len(current):
        raise malformed(f"param_groups must be a list of {len(current)} groups")
    groups = []
    for group, mine in zip(saved, current):
        if not isinstance(group, dict) or group.get("params") != mine["params"]:
            raise malformed(f"param_groups' params must be {mine['params']}")
        for key, value in mine.items():
            if key in group and not _same_kind(group[key], value):
                raise malformed(f"param_groups.{key} is {str(group[key])[:40]!r}, must be like {value!r}")
        groups.append({key: tuple(group[key]) if isinstance(value, tuple) and key in group else group.get(key, value)
                       for key, value in mine.items()})
    return groups


def _same_kind(saved, mine) -> bool:
    """Whether a saved optimiser setting can stand where this optimiser has `mine`."""
    if mine is None or isinstance(mine, bool):
        return saved is None or isinstance(saved, bool)
    if isinstance(mine, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool)
    if isinstance(mine, (tuple, list)):
        return (isinstance(saved, (tuple, list)) and len(saved) == len(mine)
                and all(_same_kind(s, m) for s, m in zip(saved, mine)))
    return isinstance(saved, type(mine))


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


def set_rng_state(tensors: dict, meta, generators: dict[str, torch.Generator], path: Path) -> None:
    """Every generator's state from a checkpoint, all or none: a state that is missing or does not fit raises
    CheckpointError naming `path`, and every generator keeps the state it had."""
    before = rng_state(generators)
    try:
        _set_rng_state(tensors, meta, generators)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, OverflowError) as e:
        _set_rng_state(*before, generators)
        message = " ".join(str(e).split())[:100]
        raise CheckpointError(f"{path}: its random-generator states are missing or malformed "
                              f"({type(e).__name__}: {message}); {AGAIN}") from None


def _set_rng_state(tensors: dict, meta: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    for name, g in generators.items():
        g.set_state(tensors[f"rng.generator.{name}"])
    kind, position, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---------------------------------------------------------------------- a trainer's checkpoint


def default_settings(config_cls: type) -> dict:
    """Every setting of a run's config class at its default, as a checkpoint stores it: what a checkpoint
    written before a setting was added ran with."""
    return json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(config_cls)
                                  if f.default is not dataclasses.MISSING}))


def _generators(trainer) -> dict[str, torch.Generator]:
    """The trainer's own noise generator, if it draws from one (a trainer whose steps draw nothing has none)."""
    return {"noise": trainer.noise} if getattr(trainer, "noise", None) is not None else {}


def save_trainer_state(trainer) -> None:
    """The checkpoint of a trainer that keeps its trained tensors (`trained_tensors()`), an optimizer and at most
    one noise generator (`noise`): with its step, config and identity, all a step reads."""
    meta = {"step": trainer.step, "config": config_json(trainer.config), "identity": trainer.identity}
    optimizer_tensors, meta["optimizer"] = optimizer_state(trainer.optimizer)
    random_tensors, meta["rng"] = rng_state(_generators(trainer))
    save_state(trainer.checkpoint_path, {**trainer.trained_tensors(), **optimizer_tensors, **random_tensors}, meta)


def load_trainer_state(trainer, may_change: tuple[str, ...]) -> None:
    """`save_trainer_state`'s checkpoint back into the trainer (`restore_tensors(tensors, path)` takes the
    trained tensors), after checking that it is this run's: settings other than `may_change` and the
    identity must match (a setting the checkpoint predates counts at its default)."""
    path = trainer.checkpoint_path
    tensors, meta = load_state(path)
    step = saved_step(meta, path)
    meta["config"] = {**default_settings(type(trainer.config)), **meta_field(meta, "config", dict, path)}
    check_resumable(meta, trainer.config, path, may_change, trainer.identity)
    trainer.restore_tensors(tensors, path)
    load_optimizer(trainer.optimizer, tensors, meta_field(meta, "optimizer", dict, path), path)
    set_rng_state(tensors, meta_field(meta, "rng", dict, path), _generators(trainer), path)
    trainer.step = step


class Checkpointed:
    """The checkpoint of a trainer whose state `save_trainer_state` writes: at out/checkpoint.safetensors, after
    the finiteness check (`finite`), by the main process only where the trainer runs in a `world`; resumed with
    the settings in `resumable_changes` free to differ."""

    resumable_changes: tuple[str, ...]

    @property
    def checkpoint_path(self) -> Path:
        return self.out / FILENAME

    def save_checkpoint(self) -> None:
        self.finite.check(self.step)
        world = getattr(self, "world", None)
        if world is None or world.main:
            save_trainer_state(self)

    def load_checkpoint(self) -> None:
        load_trainer_state(self, self.resumable_changes)
