"""Training DALL-E 2's prior (training/prior.py) and `latentlab train-prior`: a resumed run that ends as an
uninterrupted one, the prior folder and its sampling, the measurement against its baselines
(evaluation/prior.py), and bad input in one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from latentlab.cli import main
from latentlab.errors import CheckpointError
from latentlab.evaluation.prior import prior_accuracy, regressed, ridge
from latentlab.prior_model import PriorModel

from ..cli.commandline import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "run"
    assert main(["train-clip", "--data", "shapes", "--batch-size", "8", "--width", "32", "--layers", "1",
                 "--embed-dim", "16", "--patch-size", "8", "--device", "cpu", "--steps", "2", "--out", str(out)]) == 0
    return out


def train(clip_dir, out, *args):
    return main(["train-prior", "--clip", str(clip_dir), "--batch-size", "8", "--width", "32", "--layers", "1",
                 "--device", "cpu", "--warmup", "1", "--out", str(out), *map(str, args)])


def summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_resumed_run_ends_as_an_uninterrupted_one(clip_dir, tmp_path, capsys):
    assert train(clip_dir, tmp_path / "whole", "--steps", 4) == 0 and summary(capsys)["steps"] == 4
    assert train(clip_dir, tmp_path / "stopped", "--steps", 2) == 0 and summary(capsys)["steps"] == 2
    assert train(clip_dir, tmp_path / "stopped", "--steps", 4, "--resume") == 0 and summary(capsys)["steps"] == 4
    whole, resumed = (load_file(tmp_path / run / "prior" / "model.safetensors") for run in ("whole", "stopped"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_the_folder_samples_unit_embeddings_reproducibly(clip_dir, tmp_path, capsys):
    assert train(clip_dir, tmp_path / "run", "--steps", 2) == 0
    prior = PriorModel.load(tmp_path / "run", device="cpu")
    prompts = ["a small red circle on the left", "a large blue square"]
    z = prior.sample(prompts, steps=4, seed=3)
    assert z.shape == (2, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(prior.sample(prompts, steps=4, seed=3), z)
    torch.testing.assert_close(prior.sample(prompts[1:], steps=4, seed=4), z[1:], atol=1e-5, rtol=1e-5)
    assert (prior.sample(prompts, steps=4, seed=3, guidance=1.0) - z).abs().max() > 1e-6


def test_the_measurement_reports_every_answer(clip_dir, tmp_path, capsys):
    assert train(clip_dir, tmp_path / "run", "--steps", 2) == 0
    report = prior_accuracy(PriorModel.load(tmp_path / "run", device="cpu"), prompts=6, steps=2, fit=40,
                            batch_size=4)
    for name in ("prior", "regression", "text embedding"):
        assert -1 <= report[name]["cosine"] <= 1 and 0 <= report[name]["nearest_image_of_the_scene"] <= 1


def test_ridge_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(200, 5, generator=g), torch.randn(5, 3, generator=g)
    fitted = ridge(x, x @ w + 0.5, penalty=1e-9)
    torch.testing.assert_close(fitted[:5], w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted[5], torch.full((3,), 0.5), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(regressed(x, fitted).norm(dim=1), torch.ones(200))


def test_a_folder_that_is_not_a_prior_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a prior folder"):
        PriorModel.load(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--clip", "/nonexistent"], "not a contrastive image-text model folder"),
    (["--p-uncond", "1.5"], "is not a probability"),
    (["--layers", "0"], "must be greater than 0"),
    (["--schedule", "square"], "invalid choice: 'square'"),
])
def test_bad_input_is_one_line(clip_dir, tmp_path, capsys, args, message):
    base = ["train-prior", "--clip", str(clip_dir), "--out", str(tmp_path / "run"), "--steps", "1", "--device", "cpu"]
    assert main([*base, *args]) == 2
    assert_one_line_error(capsys, message)
    assert not (tmp_path / "run" / "prior").exists()
