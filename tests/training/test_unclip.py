"""DALL-E 2's decoder trained from a text model (training/unclip.py), the unCLIP model it makes
(unclip_pipeline.py: text -> prior -> decoder, variations, interpolation), its measurement (evaluation/unclip.py)
and its commands (`train-unclip`, `variations`, `interpolate`, `generate --model`), on tiny real modules."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentlab.cli import main
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.evaluation.adherence import prompt_adherence
from latentlab.evaluation.unclip import EmbeddingOnly, variation_fidelity
from latentlab.images import from_pil
from latentlab.pipeline import Pipeline
from latentlab.unclip_pipeline import UnCLIPPipeline, slerp

from ..cli.commandline import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a small red circle on the left", "a large blue square"]


def train_clip(out, embed_dim=16):
    assert main(["train-clip", "--data", "shapes", "--batch-size", "8", "--width", "32", "--layers", "1",
                 "--embed-dim", str(embed_dim), "--patch-size", "8", "--device", "cpu", "--steps", "2",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return train_clip(tmp_path_factory.mktemp("clip") / "run")


@pytest.fixture(scope="module")
def prior_dir(clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "run"
    assert main(["train-prior", "--clip", str(clip_dir), "--batch-size", "8", "--width", "32", "--layers", "1",
                 "--device", "cpu", "--steps", "2", "--out", str(out)]) == 0
    return out


def train(model, clip_dir, out, *args):
    return main(["train-unclip", "--image-model", str(model), "--clip", str(clip_dir), "--batch-size", "4",
                 "--device", "cpu", "--warmup", "1", "--lr", "1e-3", "--out", str(out), *map(str, args)])


@pytest.fixture(scope="module")
def unclip_dir(model, clip_dir, prior_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("unclip") / "run"
    assert train(model, clip_dir, out, "--steps", 3, "--prior", prior_dir) == 0
    return out


@pytest.fixture(scope="module")
def pipe(unclip_dir):
    return UnCLIPPipeline.load(unclip_dir, device="cpu")


def summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_resumed_run_ends_as_an_uninterrupted_one(model, clip_dir, tmp_path, capsys):
    assert train(model, clip_dir, tmp_path / "whole", "--steps", 4) == 0 and summary(capsys)["steps"] == 4
    assert train(model, clip_dir, tmp_path / "stopped", "--steps", 2) == 0 and summary(capsys)["steps"] == 2
    assert train(model, clip_dir, tmp_path / "stopped", "--steps", 4, "--resume") == 0
    assert summary(capsys)["steps"] == 4
    for part in ("unet", "image_conditioning"):
        whole, resumed = (load_file(tmp_path / run / part / "model.safetensors") for run in ("whole", "stopped"))
        assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_the_folder_is_the_text_model_plus_the_embedding_path_and_the_prior(unclip_dir, model, pipe):
    text = Pipeline.load(unclip_dir, device="cpu")  # the text model, its U-Net the decoder's
    assert all(torch.equal(a, b) for a, b in zip(text.unet.state_dict().values(), pipe.unet.unet.state_dict().values()))
    trained = load_file(unclip_dir / "unet" / "model.safetensors")
    start = load_file(model / "unet" / "model.safetensors")
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # the U-Net trained too
    assert pipe.prior is not None and pipe.prior.clip is pipe.clip
    assert json.loads((unclip_dir / "model_index.json").read_text())["unclip"]["clip"]


def test_text_to_image_goes_through_the_prior_and_is_reproducible(pipe):
    images = pipe.sample(PROMPTS, steps=3, prior_steps=3, seed=5)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1
    torch.testing.assert_close(pipe.sample(PROMPTS, steps=3, prior_steps=3, seed=5), images)
    torch.testing.assert_close(pipe.sample(PROMPTS[1:], steps=3, prior_steps=3, seed=6), images[1:],
                               atol=1e-4, rtol=1e-4)
    z = pipe.prior.sample(PROMPTS, steps=3, seed=5, guidance=1.0)
    torch.testing.assert_close(pipe.decode_embeddings(z, PROMPTS, steps=3, seed=5), images, atol=1e-5, rtol=1e-5)
    assert (pipe.sample(PROMPTS, steps=3, prior_steps=3, seed=5, decoder_text=False) - images).abs().max() > 1e-4


def test_variations_differ_from_each_other_and_follow_the_embedding(pipe):
    source = pipe.sample(PROMPTS[:1], steps=3, prior_steps=3)[0]
    variations = pipe.variations(source, 3, steps=3, seed=2)
    assert variations.shape == (3, 3, 32, 32)
    assert (variations[0] - variations[1]).abs().max() > 1e-4
    z = pipe.embed_images(source[None]).expand(3, -1)
    torch.testing.assert_close(pipe.decode_embeddings(z, steps=3, seed=2), variations)


def test_interpolation_runs_from_one_embedding_to_the_other_on_one_noise(pipe):
    a, b = pipe.sample(PROMPTS, steps=3, prior_steps=3)
    frames = pipe.interpolate(a, b, 4, steps=3, seed=1)
    assert frames.shape == (4, 3, 32, 32)
    ends = pipe.embed_images(torch.stack([a, b]))
    torch.testing.assert_close(frames[[0, 3]], torch.cat([pipe.decode_embeddings(ends[k:k + 1], steps=3, seed=1)
                                                          for k in (0, 1)]), atol=1e-5, rtol=1e-5)


def test_slerp_keeps_unit_length_and_its_ends():
    g = torch.Generator().manual_seed(0)
    a, b = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=-1)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(path[[0, -1]], torch.stack([a, b]))
    torch.testing.assert_close(slerp(a, a, torch.tensor([0.5]))[0], a)


def test_the_measurements_report_what_they_name(pipe):
    report = variation_fidelity(pipe, sources=2, count=2, steps=2)
    assert set(report["kept"]) >= {"shape", "colour", "size", "position", "shape and colour", "all"}
    assert all(0 <= v <= 1 for v in report["kept"].values()) and report["variation"]["between_variations"] > 0
    assert 0 <= report["sources_judged_right"] <= 1
    adherence = prompt_adherence(EmbeddingOnly(pipe), prompts=2, steps=2)
    assert 0 <= adherence["accuracy"]["all"] <= 1


def test_a_model_without_a_prior_makes_variations_only(model, clip_dir, tmp_path, capsys):
    assert train(model, clip_dir, tmp_path / "run", "--steps", 1) == 0
    pipe = UnCLIPPipeline.load(tmp_path / "run", device="cpu")
    assert pipe.variations(torch.zeros(3, 32, 32), 1, steps=1).shape == (1, 3, 32, 32)
    with pytest.raises(LatentlabError, match="has no prior"):
        pipe.sample(PROMPTS, steps=1)
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "run"), "a red circle", "--out", str(tmp_path / "g"),
                 "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "has no prior")
    assert not (tmp_path / "g").exists()


def png(path, size=(40, 30), mode="RGBA"):
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return path


def test_the_commands_write_what_they_say(unclip_dir, tmp_path, capsys):
    image = png(tmp_path / "in.png")
    assert main(["variations", str(image), "--model", str(unclip_dir), "--count", "2", "--steps", "2", "--device",
                 "cpu", "--out", str(tmp_path / "v")]) == 0
    captured = capsys.readouterr()
    assert "converted from mode RGBA to RGB; resized from 40x30 to 32x32" in captured.err
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["000.png", "001.png", "grid.png", "source.png"]
    assert Image.open(tmp_path / "v" / "source.png").size == (32, 32)
    assert main(["interpolate", str(image), str(tmp_path / "v" / "000.png"), "--model", str(unclip_dir), "--frames",
                 "3", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "i"), "--grid-scale", "1"]) == 0
    assert Image.open(tmp_path / "i" / "strip.png").size == (96, 32)
    assert main(["generate", "--model", str(unclip_dir), "a red circle", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "grid.png").is_file()


def test_from_pil_converts_and_resizes_with_notes():
    image, notes = from_pil(Image.new("L", (64, 64), 255), 32)
    assert image.shape == (3, 32, 32) and torch.allclose(image, torch.ones_like(image))
    assert notes == ["converted from mode L to RGB", "resized from 64x64 to 32x32"]
    assert from_pil(Image.new("RGB", (32, 32)), 32)[1] == []


@pytest.mark.parametrize("command, message", [
    (["variations", "{missing}"], "no such file"),
    (["variations", "{text}"], "is not an image that can be read"),
    (["variations", "{folder}"], "is a folder"),
    (["variations", "{image}", "--model", "{text_model}"], "is a text-to-image model; variations needs an unCLIP"),
    (["variations", "{image}", "--model", "shapes-default"], "is a text-to-image model"),
    (["variations", "{image}", "--count", "0"], "must be greater than 0"),
    (["interpolate", "{image}", "{image}", "--frames", "1"], "give at least 2"),
    (["interpolate", "{image}", "{missing}"], "no such file"),
])
def test_bad_input_is_one_line_and_writes_nothing(unclip_dir, model, tmp_path, capsys, command, message):
    values = {"missing": tmp_path / "none.png", "text": tmp_path / "t.png", "folder": tmp_path,
              "image": png(tmp_path / "in.png"), "text_model": model}
    (tmp_path / "t.png").write_text("not an image")
    args = [a.format(**values) for a in command]
    if "--model" not in args:
        args += ["--model", str(unclip_dir)]
    assert main([*args, "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys, message)
    assert not (tmp_path / "out").exists()


def test_a_prior_of_another_contrastive_model_is_refused(model, clip_dir, prior_dir, tmp_path, capsys):
    other = train_clip(tmp_path / "other-clip", embed_dim=8)
    capsys.readouterr()
    assert train(model, other, tmp_path / "run", "--steps", 1, "--prior", prior_dir) == 2
    assert_one_line_error(capsys, "was trained on the contrastive model")
    assert not (tmp_path / "run" / "model_index.json").exists()


def test_a_folder_that_is_not_an_unclip_model_is_refused(model):
    with pytest.raises(CheckpointError, match="is not an unCLIP model"):
        UnCLIPPipeline.load(model)


@pytest.mark.parametrize("args, message", [
    (["--p-drop-text", "1.5"], "is not a probability"),
    (["--tokens", "0"], "must be greater than 0"),
    (["--clip", "/nonexistent"], "not a contrastive image-text model folder"),
    (["--image-model", "/nonexistent"], "does not exist"),
])
def test_bad_training_input_is_one_line(model, clip_dir, tmp_path, capsys, args, message):
    assert train(model, clip_dir, tmp_path / "run", "--steps", "1", *args) == 2
    assert_one_line_error(capsys, message)
    assert not (tmp_path / "run" / "unet").exists()


def test_a_half_precision_save_loads_as_the_model(pipe, tmp_path):
    pipe.save(tmp_path / "half", dtype=torch.float16)
    again = UnCLIPPipeline.load(tmp_path / "half", device="cpu")
    z = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    torch.testing.assert_close(again.decode_embeddings(z, steps=2), pipe.decode_embeddings(z, steps=2), atol=2e-2,
                               rtol=0)
    assert again.prior.prior.config == pipe.prior.prior.config


def test_nll_refuses_an_unclip_model_in_one_line(unclip_dir, capsys):
    assert main(["nll", "--model", str(unclip_dir), "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "is an unCLIP model")


def test_a_grid_of_an_unclip_model_varies_by_its_image_embedding(unclip_dir, tmp_path):
    from latentlab.grid import Grid

    assert main(["generate", "--model", str(unclip_dir), "a red circle", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "g")]) == 0
    child = Grid.load(tmp_path / "g").vary(0, tmp_path / "v", count=2, device="cpu")
    assert len(child.images) == 2 and child.images[0].origin["strength"] is None  # variations, not img2img
