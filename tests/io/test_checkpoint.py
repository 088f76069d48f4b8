import dataclasses
import json
import os
import stat
import typing

import pytest
import torch
from safetensors.torch import save as save_safetensors

from latentlab.diffusion import DiffusionConfig
from latentlab.errors import CheckpointError
from latentlab.evaluation.classifier import ClassifierConfig
from latentlab.io import atomic_write, load_component, read_config, save_component
from latentlab.models import (AutoencoderKL, CLIPTextConfig, CLIPTextModel, TextEncoder, TextEncoderConfig, UNet,
                              UNetConfig, VAEConfig)
from latentlab.models.bert import BertConfig, BertModel
from latentlab.training.presets import preset


def test_round_trip_is_exact(tmp_path):
    vae = AutoencoderKL(preset("tiny", "vae"))
    save_component(tmp_path / "vae", vae)
    loaded = load_component(tmp_path / "vae", AutoencoderKL, VAEConfig)
    assert loaded.config == vae.config
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), loaded.state_dict().values()))


def test_half_precision_storage_loads_into_float32(tmp_path):
    vae = AutoencoderKL(preset("tiny", "vae"))
    save_component(tmp_path / "vae", vae, dtype=torch.float16)
    loaded = load_component(tmp_path / "vae", AutoencoderKL, VAEConfig)
    for a, b in zip(vae.parameters(), loaded.parameters()):
        assert b.dtype == torch.float32 and torch.allclose(a, b, atol=1e-3, rtol=1e-3)


def test_a_crash_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "file.json"
    atomic_write(path, "old")

    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError):
        atomic_write(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_component(tmp_path / "unet", UNet(preset("tiny", "unet")))
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**config, "channels": [64, 128]}))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_component(tmp_path / "unet", UNet, UNetConfig)
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**config, "blocks_per_level": 2}))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_component(tmp_path / "unet", UNet, UNetConfig)


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                           ('{"colour": 1}', "unknown fields"),
                                           ('{"channels": "wide"}', "not a valid VAEConfig")])
def test_malformed_configs(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        read_config(tmp_path / "config.json", VAEConfig)


def test_missing_and_corrupt_weights(tmp_path):
    save_component(tmp_path / "vae", AutoencoderKL(preset("tiny", "vae")))
    weights = tmp_path / "vae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_component(tmp_path / "vae", AutoencoderKL, VAEConfig)
    weights.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_component(tmp_path / "vae", AutoencoderKL, VAEConfig)


# ------------------------------------------------------------------ file modes

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        save_component(tmp_path / "vae", AutoencoderKL(preset("tiny", "vae")))
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "vae" / "config.json", tmp_path / "vae" / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


# ------------------------------------------------------------------ configs, field by field

CONFIGS = [UNetConfig, VAEConfig, TextEncoderConfig, CLIPTextConfig, BertConfig, DiffusionConfig, ClassifierConfig]


def wrong_values(annotation) -> list:
    """JSON values of another type than `annotation` (a config field's type) accepts."""
    wrong = {int: ["32", 3.5, True], float: ["0.1", True, float("nan"), float("inf")], bool: [1, "true", 0],
             str: [5, ["a"], True]}
    hints = typing.get_args(annotation) or (annotation,)
    if annotation in wrong:
        return wrong[annotation] + [None, {"a": 1}]
    if typing.get_origin(annotation) is tuple:
        return ["wide", 64, None] + [[value] for value in wrong[hints[0]][:2]]
    if int in hints:  # int | tuple[int, ...] (| None)
        return ["8", [1.5], 2.0, True, {"a": 1}] + ([] if type(None) in hints else [None])
    raise AssertionError(f"no wrong values for {annotation}")


WRONG_FIELDS = [pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={value!r}")
                for cls in CONFIGS for name, annotation in typing.get_type_hints(cls).items()
                for value in wrong_values(annotation)]


@pytest.mark.parametrize("cls, field, value", WRONG_FIELDS)
def test_every_config_field_refuses_a_wrong_type(tmp_path, cls, field, value):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**dataclasses.asdict(cls()), field: value}))
    with pytest.raises(CheckpointError) as error:
        read_config(path, cls)
    message = str(error.value)
    assert str(path) in message and f" {field} " in message and "accepted: " in message and "\n" not in message


@pytest.mark.parametrize("cls", CONFIGS)
def test_default_configs_read_back(tmp_path, cls):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dataclasses.asdict(cls())))
    assert read_config(path, cls) == cls()


@pytest.mark.parametrize("module, changes, message", [
    ("unet", {"head_dim": 0}, "head_dim"), ("unet", {"groups": 0}, "groups"), ("unet", {"heads": 0}, "heads"),
    ("unet", {"heads": [4, 0]}, "heads"), ("unet", {"channels": [0, 64]}, "channels"),
    ("unet", {"blocks_per_level": 0}, "blocks_per_level"), ("unet", {"transformer_depth": -1}, "transformer_depth"),
    ("unet", {"dropout": 1.5}, "dropout"), ("unet", {"norm_eps": 0}, "norm_eps"),
    ("unet", {"in_channels": -4}, "in_channels"), ("unet", {"context_dim": 0}, "context_dim"),
    ("unet", {"channels": [40, 64]}, "head_dim"),
    ("vae", {"groups": 0}, "groups"), ("vae", {"latent_channels": 0}, "latent_channels"),
    ("vae", {"scale_factor": 0}, "scale_factor"), ("vae", {"blocks_per_level": 0}, "blocks_per_level"),
    ("text", {"head_dim": 0}, "head_dim"), ("text", {"width": 100}, "head_dim"), ("text", {"vocab_size": 0}, "vocab_size"),
    ("text", {"layers": -1}, "layers"), ("text", {"max_length": 0}, "max_length"),
    ("bert", {"heads": 0}, "heads"), ("bert", {"layer_norm_eps": -1}, "layer_norm_eps"),
    ("bert", {"type_vocab_size": 0}, "type_vocab_size"), ("clip", {"heads": 0}, "heads"),
    ("classifier", {"dropout": 2.0}, "cannot be built"), ("classifier", {"channels": [32, -1]}, "cannot be built"),
])
def test_out_of_range_configs_are_one_line_errors(tmp_path, module, changes, message):
    """Well-typed values that no network can be built from: an error naming the file, not a traceback."""
    from latentlab.evaluation.classifier import Classifier

    modules = {"unet": (UNet, UNetConfig, preset("tiny", "unet")), "vae": (AutoencoderKL, VAEConfig, preset("tiny", "vae")),
               "text": (TextEncoder, TextEncoderConfig, preset("tiny", "text")),
               "bert": (BertModel, BertConfig, BertConfig(vocab_size=50, width=32, layers=1, heads=2, mlp_width=64,
                                                          max_positions=16)),
               "clip": (CLIPTextModel, CLIPTextConfig, CLIPTextConfig(vocab_size=50, width=32, layers=1, heads=2,
                                                                      mlp_width=64, max_positions=16, eos_token_id=49)),
               "classifier": (Classifier, ClassifierConfig, ClassifierConfig(channels=(8, 16), features=16))}
    module_cls, config_cls, config = modules[module]
    save_component(tmp_path / module, module_cls(config))
    (tmp_path / module / "config.json").write_text(json.dumps({**dataclasses.asdict(config), **changes}))
    with pytest.raises(CheckpointError, match=message) as error:
        load_component(tmp_path / module, module_cls, config_cls)
    assert str(tmp_path / module / "config.json") in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.uint8])
def test_weights_stored_as_integers_are_refused(tmp_path, dtype):
    vae = AutoencoderKL(preset("tiny", "vae"))
    save_component(tmp_path / "vae", vae)
    state = {k: v.to(dtype) for k, v in vae.state_dict().items()}
    (tmp_path / "vae" / "model.safetensors").write_bytes(save_safetensors(state))
    with pytest.raises(CheckpointError, match=f"stored as {str(dtype).removeprefix('torch.')}.*floating-point"):
        load_component(tmp_path / "vae", AutoencoderKL, VAEConfig)


def test_temporaries_a_killed_write_left_are_removed(tmp_path):
    """A kill between atomic_write's mkstemp and its rename leaves `.NAME.XXXXXXXX.tmp`; the next start removes
    every such file in the run folder and below, and nothing else."""
    from latentlab.io.checkpoint import remove_stale_temporaries

    (tmp_path / "unet").mkdir()
    stale = [tmp_path / ".checkpoint.safetensors.0f3a9c12d4e5.tmp",  # atomic_write's names, and mkstemp's before
             tmp_path / ".checkpoint.safetensors.k2x_9abc.tmp", tmp_path / "unet" / ".model.safetensors.00000000.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / ".model.safetensors.TOOLONG12.tmp",
            tmp_path / "checkpoint.safetensors", tmp_path / "unet" / "config.json"]
    for path in stale + kept:
        path.write_bytes(b"x")
    (tmp_path / ".log.csv.abcdefgh.tmp").mkdir()  # a folder of that name is not atomic_write's
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert remove_stale_temporaries(tmp_path / "nowhere") == []


def test_the_temporary_name_pattern_is_atomic_writes(tmp_path, monkeypatch):
    """What remove_stale_temporaries matches is what atomic_write really leaves when killed before its rename."""
    from pathlib import Path

    from latentlab.io.checkpoint import remove_stale_temporaries

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # as if the process died there
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "model.safetensors", b"weights")
    monkeypatch.undo()
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".model.safetensors.")
    assert remove_stale_temporaries(tmp_path) == left and list(tmp_path.iterdir()) == []


def test_a_write_that_fails_names_its_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError) as failed:
        atomic_write(tmp_path / "model.safetensors", b"weights")
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []
