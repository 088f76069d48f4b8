"""Textual inversion on a tiny frozen model, on the CPU: only the new token's rows change, the file it writes
loads into a fresh pipeline with the encoding training ended with, a run killed after a checkpoint and
resumed ends bit-identical to an uninterrupted one, and the commands train and generate with it."""

import json

import pytest
import torch
from safetensors import safe_open

from latentlab.cli import main
from latentlab.data.concept import write_concept_folder
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.models.text_encoder import encode_prompts
from latentlab.pipeline import Pipeline
from latentlab.training.state import FILENAME, load_state
from latentlab.training.textual_inversion import (EMBEDDING_FILENAME, TextualInversionConfig,
                                                  TextualInversionTrainer, train_textual_inversion)
from latentlab.adapters.textual_inversion import token_embedding

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red <diamond> on the left", "a small blue circle"]


@pytest.fixture(scope="module")
def diamonds(tmp_path_factory):
    """Eight captioned diamonds ("a red diamond on the left"), with concept.json naming the word."""
    return write_concept_folder(tmp_path_factory.mktemp("data") / "diamonds", "diamond", count=8)


def config(model, data, out, **changes):
    settings = dict(data=str(data), out=str(out), model=str(model), token="<diamond>", initializer="square",
                    vectors=2, steps=6, batch_size=2, lr=1e-2, device="cpu", checkpoint_every=2)
    return TextualInversionConfig(**{**settings, **changes})


def frozen(trainer) -> dict[str, torch.Tensor]:
    """Every parameter of the three networks but the trained vectors."""
    return {f"{part}.{name}": p.detach().clone() for part in ("unet", "vae", "text_encoder")
            for name, p in getattr(trainer.pipe, part).named_parameters() if p is not trainer.vectors}


@pytest.fixture(scope="module")
def trained(model, diamonds, tmp_path_factory):
    """(trainer, its frozen weights before training, its initial vectors, the run's result)."""
    trainer = TextualInversionTrainer(config(model, diamonds, tmp_path_factory.mktemp("runs") / "whole"))
    before, start = frozen(trainer), trainer.vectors.detach().clone()
    return trainer, before, start, trainer.run()


def test_only_the_new_rows_train(model, trained):
    trainer, before, start, result = trained
    after = frozen(trainer)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    width = trainer.pipe.text_encoder.config.width
    assert result["trainable_parameters"] == trainer.vectors.numel() == 2 * width
    assert [p for g in trainer.optimizer.param_groups for p in g["params"]] == [trainer.vectors]
    assert not torch.equal(trainer.vectors, start)  # the vectors moved
    original = Pipeline.load(model, device="cpu").text_encoder.token_embedding.weight
    weight = token_embedding(trainer.pipe.text_encoder).weight.detach()  # what the encoder reads
    assert torch.equal(weight[:len(original)], original) and torch.equal(weight[len(original):], trainer.vectors)
    assert torch.equal(start, original[trainer.pipe.tokenizer.token_to_id("square")].expand(2, -1))


def test_the_file_loads_into_a_fresh_pipeline_with_the_same_encoding(model, trained):
    trainer, _, _, result = trained
    with safe_open(result["embedding"], "pt") as f:  # diffusers' layout
        assert list(f.keys()) == ["<diamond>"] and f.get_tensor("<diamond>").shape == (2, 64)
    fresh = Pipeline.load(model, device="cpu")
    assert fresh.load_textual_inversion(result["embedding"]) == "<diamond>"
    with torch.no_grad():
        want, got = (encode_prompts(p.tokenizer, p.text_encoder, PROMPTS)[0] for p in (trainer.pipe, fresh))
    assert torch.equal(got, want)


class Killed(BaseException):
    """The process dying: nothing after it runs but `finally` blocks."""


def test_a_killed_run_resumes_exactly(model, diamonds, trained, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_step = TextualInversionTrainer.train_step

    def dies_at_step_5(self, step):
        if step == 5:
            raise Killed
        return train_step(self, step)

    monkeypatch.setattr(TextualInversionTrainer, "train_step", dies_at_step_5)
    with pytest.raises(Killed):
        train_textual_inversion(config(model, diamonds, out))
    assert load_state(out / FILENAME)[1]["step"] == 4  # the last checkpoint; step 5's work is lost
    monkeypatch.setattr(TextualInversionTrainer, "train_step", train_step)
    with pytest.raises(CheckpointError, match=r"other settings \(lr\)"):
        train_textual_inversion(config(model, diamonds, out, lr=1e-3, resume=True))
    assert train_textual_inversion(config(model, diamonds, out, resume=True))["steps"] == 6
    (mine, meta), (theirs, _) = (load_state(run / FILENAME) for run in (out, trained[0].out))
    assert meta["step"] == 6 and mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs if not k.startswith("rng."))
    assert (out / "log.csv").read_text().count("step,") == 1


@pytest.mark.parametrize("changes, message", [
    (dict(token="red"), "token red is already in the tokenizer's vocabulary"),
    (dict(token="a b"), "without spaces"),
    (dict(initializer=" "), "give an initializer word"),
    (dict(vectors=0), "vectors must be a positive integer"),
    (dict(word="hexagon"), "no caption of .* holds <diamond> or hexagon"),
])
def test_bad_settings_are_one_line_errors(model, diamonds, tmp_path, changes, message):
    with pytest.raises(LatentlabError, match=message) as e:
        TextualInversionTrainer(config(model, diamonds, tmp_path / "run", **changes))
    assert "\n" not in str(e.value)


def test_the_commands_train_and_generate_with_the_token(model, diamonds, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["textual-inversion", "train", "--model", str(model), "--data", str(diamonds), "--out", str(out),
                 "--token", "<diamond>", "--initializer", "square", "--steps", "2", "--batch-size", "2",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["embedding"] == str(out / EMBEDDING_FILENAME)
    assert main(["generate", "a red <diamond>", "--model", str(model), "--embedding", result["embedding"],
                 "--steps", "2", "--out", str(tmp_path / "samples"), "--device", "cpu"]) == 0
    assert (tmp_path / "samples" / "000-a-red-diamond.png").is_file()
    capsys.readouterr()
    assert main(["generate", "a red circle", "--model", str(model), "--embedding", str(tmp_path / "x.pt"),
                 "--out", str(tmp_path / "samples2"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a pickle" in err
    assert main(["textual-inversion"]) == 2
