import json

import pytest
import torch

from latentlab.errors import CheckpointError
from latentlab.io import atomic_write, load_component, read_config, save_component
from latentlab.models import AutoencoderKL, UNet, UNetConfig, VAEConfig
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
