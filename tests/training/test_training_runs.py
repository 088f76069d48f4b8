"""Short runs of the real training loops: what they write, and continuing from a model."""

import json

from latentlab import Pipeline
from latentlab.diffusion import DiffusionConfig
from latentlab.io import save_component
from latentlab.models import AutoencoderKL
from latentlab.training import DiffusionTrainConfig, VAETrainConfig, preset, train_diffusion, train_vae
from latentlab.training.loop import read_log


def tiny_run(tmp_path, name, **changes):
    config = DiffusionTrainConfig(vae=str(tmp_path / "vae"), out=str(tmp_path / name), steps=4, batch_size=4,
                                  device="cpu", unet=preset("tiny", "unet"), text=preset("tiny", "text"), **changes)
    return train_diffusion(config)


def test_vae_run_writes_a_loadable_component_with_its_scale(tmp_path):
    result = train_vae(VAETrainConfig(out=str(tmp_path / "vae"), steps=3, batch_size=4, device="cpu",
                                      model=preset("tiny", "vae")))
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert result["steps"] == 3 and config["scale_factor"] == result["scale_factor"] > 0
    assert [row["step"] for row in read_log(tmp_path / "vae" / "log.csv")] == [1]


def test_continuing_keeps_the_models_tokenizer_and_schedule(tmp_path):
    save_component(tmp_path / "vae", AutoencoderKL(preset("tiny", "vae")))
    tiny_run(tmp_path, "first", diffusion=DiffusionConfig(schedule="cosine", timesteps=50))
    tiny_run(tmp_path, "second", init=str(tmp_path / "first"))  # its own default schedule is linear
    first, second = Pipeline.load(tmp_path / "first", device="cpu"), Pipeline.load(tmp_path / "second", device="cpu")
    assert second.diffusion == first.diffusion == DiffusionConfig(schedule="cosine", timesteps=50)
    assert second.tokenizer.to_json() == first.tokenizer.to_json()
    assert any((a != b).any() for a, b in zip(first.unet.parameters(), second.unet.parameters()))
