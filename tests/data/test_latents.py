"""Latent caching: the shards hold each example's posterior, the trainer reads them in place of images,
and a cache made by another autoencoder is refused."""

import dataclasses
import json

import pytest
import torch

from latentlab.cli import main
from latentlab.data import LatentDataset, ShapesDataset, cache_latents, open_dataset
from latentlab.errors import CheckpointError
from latentlab.io import save_component
from latentlab.models import AutoencoderKL
from latentlab.training import DiffusionTrainConfig, preset, train_diffusion


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    model = AutoencoderKL(dataclasses.replace(preset("tiny", "vae"), scale_factor=0.7))
    save_component(folder, model)
    return folder, model.eval()


def test_a_cache_holds_each_examples_posterior(vae, tmp_path):
    _, model = vae
    data = ShapesDataset(seed=0)
    index = cache_latents(data, model, tmp_path / "cache", count=10, batch=4, shard_size=6)
    assert index["count"] == 10 and index["shards"] == ["latents-00000.safetensors", "latents-00001.safetensors"]
    cache = open_dataset(str(tmp_path / "cache"))
    assert isinstance(cache, LatentDataset) and len(cache) == 10 and cache.image_size == 32
    images, captions, _ = data.batch(0, 10)
    with torch.no_grad():
        q = model.posterior(images)
    order = cache.indices(0, 10)
    mean, logvar, got_captions, _ = cache.latent_batch(0, 10)
    assert got_captions == [captions[i] for i in order]
    assert torch.allclose(mean, q.mean[order], atol=2e-3) and torch.allclose(logvar, q.logvar[order], atol=2e-2)


def test_training_from_a_cache(vae, tmp_path):
    folder, model = vae
    cache_latents(ShapesDataset(seed=0), model, tmp_path / "cache", count=16)
    result = train_diffusion(DiffusionTrainConfig(vae=str(folder), out=str(tmp_path / "run"), data=str(tmp_path / "cache"),
                                                  steps=3, batch_size=4, device="cpu", unet=preset("tiny", "unet"),
                                                  text=preset("tiny", "text")))
    assert result["steps"] == 3 and (tmp_path / "run" / "model_index.json").is_file()


def test_a_cache_from_another_autoencoder_is_refused(vae, tmp_path):
    folder, _ = vae
    other = AutoencoderKL(preset("tiny", "vae"))
    cache_latents(ShapesDataset(seed=0), other, tmp_path / "cache", count=4)
    with pytest.raises(CheckpointError, match="encoded by another autoencoder"):
        train_diffusion(DiffusionTrainConfig(vae=str(folder), out=str(tmp_path / "run"), data=str(tmp_path / "cache"),
                                             steps=1, batch_size=4, device="cpu", unet=preset("tiny", "unet"),
                                             text=preset("tiny", "text")))


def test_cache_latents_command(vae, tmp_path, capsys):
    folder, _ = vae
    assert main(["cache-latents", "--vae", str(folder), "--data", "shapes", "--count", "8", "--out",
                 str(tmp_path / "cache"), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 8
    assert main(["cache-latents", "--vae", str(folder), "--data", "shapes", "--out", str(tmp_path / "x")]) == 2
    assert "shapes is endless: give --count" in capsys.readouterr().err


def test_a_cache_run_removes_what_a_killed_one_left(vae, tmp_path):
    _, model = vae
    out = tmp_path / "cache"
    out.mkdir()
    stale, kept = out / ".latents-00000.safetensors.0123456789ab.tmp", out / "notes.tmp"
    stale.write_bytes(b"half a shard")
    kept.write_text("a user's file")
    cache_latents(ShapesDataset(seed=0), model, out, count=4)
    assert not stale.exists() and kept.exists()
