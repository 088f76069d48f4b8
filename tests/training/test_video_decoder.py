"""Training a video decoder (training/video_decoder.py) and `latentlab train-video-decoder`: the loss, only the
temporal layers learning, a resumed run that ends as an uninterrupted one, --into, bad input in one line, and
the reconstruction figures (evaluation/video_decoder.py)."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from latentlab.cli import main
from latentlab.evaluation.video_decoder import reconstruction_figures
from latentlab.models.video_decoder import VideoDecoder
from latentlab.pipeline import Pipeline
from latentlab.training.state import FILENAME, load_state
from latentlab.training.video_decoder import (VideoDecoderTrainConfig, VideoDecoderTrainer, flicker,
                                              video_reconstruction_loss)
from latentlab.video_pipeline import VideoPipeline, read_video_decoder

from ..cli.commandline import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train-video-decoder", "--frames", "8", "--batch-size", "2", "--device", "cpu", "--warmup", "1", "--lr",
         "1e-2"]


def train(model, out, *args):
    return main([*TRAIN, "--model", str(model), "--out", str(out), *map(str, args)])


def summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def layers(out) -> dict[str, torch.Tensor]:
    return load_file(out / "vae_temporal" / "model.safetensors")


def contents(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def video_model(model, tmp_path_factory):
    """A video model folder made from the tiny image model."""
    folder = tmp_path_factory.mktemp("video") / "model"
    VideoPipeline.from_image(Pipeline.load(model, device="cpu"), frames=8).save(folder)
    return folder


def test_the_loss_is_l1_plus_the_weighted_error_of_frame_differences():
    x = torch.rand(2, 5, 3, 4, 4) * 2 - 1
    steady = x + 0.1  # the same error at every frame: no flicker
    assert flicker(steady, x).item() == pytest.approx(0, abs=1e-6)
    flickering = x + 0.1 * torch.tensor([1, -1, 1, -1, 1.0]).view(1, 5, 1, 1, 1)  # the error's sign alternates
    assert flicker(flickering, x).item() == pytest.approx(0.2)
    terms = video_reconstruction_loss(flickering, x, 0.5)
    assert terms["l1"].item() == pytest.approx(0.1) and terms["loss"].item() == pytest.approx(0.1 + 0.5 * 0.2)


def test_only_the_temporal_layers_train(model, tmp_path):
    trainer = VideoDecoderTrainer(VideoDecoderTrainConfig(model=str(model), out=str(tmp_path / "run"), frames=8,
                                                          batch_size=1, device="cpu"))
    trainable = {id(p) for p in trainer.vae.parameters() if p.requires_grad}
    assert not trainable and [id(p) for p in trainer.params] == [id(p) for p in trainer.temporal.parameters()]
    before = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
    trainer.train_step(0)
    assert all(torch.equal(before[k], v) for k, v in trainer.vae.state_dict().items())


def test_a_resumed_run_ends_as_an_uninterrupted_one(model, tmp_path, capsys):
    assert train(model, tmp_path / "whole", "--steps", 4) == 0
    report = summary(capsys)
    assert report["steps"] == 4 and report["alpha_min"] < report["alpha_max"] and not report["interrupted"]
    assert train(model, tmp_path / "stopped", "--steps", 2) == 0 and summary(capsys)["steps"] == 2
    assert train(model, tmp_path / "stopped", "--steps", 4, "--resume") == 0 and summary(capsys)["steps"] == 4
    assert load_state(tmp_path / "stopped" / FILENAME)[1]["step"] == 4
    whole, resumed = layers(tmp_path / "whole"), layers(tmp_path / "stopped")
    assert whole.keys() == resumed.keys()
    worst = max((whole[k].double() - resumed[k].double()).abs().max().item() for k in whole)
    assert worst <= 1e-6, f"largest difference {worst}"


def test_into_writes_a_copy_of_the_video_model_with_the_decoder(video_model, tmp_path, capsys):
    before = contents(video_model)
    assert train(video_model, tmp_path / "run", "--steps", 2, "--into", tmp_path / "with-decoder") == 0
    assert summary(capsys)["into"] == str(tmp_path / "with-decoder")
    assert contents(video_model) == before  # the input folder is never changed
    pipe = VideoPipeline.load(tmp_path / "with-decoder", device="cpu")
    trained = layers(tmp_path / "run")
    assert all(torch.equal(v, trained[k]) for k, v in pipe.video_decoder.temporal.state_dict().items())
    original = VideoPipeline.load(video_model, device="cpu").unet.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in pipe.unet.state_dict().items())  # the rest: the input's


def test_the_figures_compare_the_frozen_and_the_temporal_decoder(model, tmp_path):
    pipe = Pipeline.load(model, device="cpu")
    new = VideoDecoder(pipe.vae.decoder)  # new temporal layers, each the identity: the frozen decoder
    rows = reconstruction_figures(pipe, new, clips=3, frames=8, batch_size=2)
    assert list(rows) == ["frozen", "temporal"]
    assert rows["frozen"]["psnr_db"] == pytest.approx(rows["temporal"]["psnr_db"], abs=1e-4)
    assert rows["frozen"]["flicker"] == pytest.approx(rows["temporal"]["flicker"], abs=1e-6)
    assert 0 < rows["frozen"]["flicker"] <= 2 * rows["frozen"]["l1"] and rows["temporal"]["clips"] == 3
    assert list(reconstruction_figures(pipe, clips=1, frames=8)) == ["frozen"]


@pytest.mark.parametrize("args, message", [
    (["--model", "{image}", "--out", "{out}", "--into", "{into}"], "needs --model to be a video model folder"),
    (["--model", "{video}", "--out", "{out}", "--into", "{video}"], "is the --model folder"),
    (["--model", "{video}", "--out", "{out}", "--into", "{full}"], "exists and is not an empty folder"),
    (["--model", "{video}", "--out", "{out}", "--into", "{file}/v"], "which is a file"),
    (["--model", "{video}", "--out", "{out}", "--frames", "12"], "invalid choice: 12"),
    (["--model", "{video}", "--out", "{out}", "--temporal-kernel", "2"], "kernel must be a positive odd number"),
    (["--model", "{video}", "--out", "{out}", "--temporal-weight", "-1"], "must be 0 or more"),
    (["--model", "{video}", "--out", "{out}", "--lr", "inf"], "give a finite number"),
    (["--model", "{video}", "--out", "{out}", "--resume"], "does not exist; start the run without --resume"),
    (["--model", "{video}", "--out", "{file}/run"], "which is a file"),
    (["--out", "{out}"], "the following arguments are required: --model"),
])
def test_bad_input_is_one_line_status_2_and_writes_nothing(args, message, video_model, model, tmp_path, capsys,
                                                           monkeypatch):
    def work(*args, **kwargs):
        raise AssertionError("the work started before the input was checked")

    monkeypatch.setattr("latentlab.training.video_decoder.train_video_decoder", work)
    (tmp_path / "file").write_text("")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    names = {"video": video_model, "image": model, "file": tmp_path / "file", "out": tmp_path / "out",
             "into": tmp_path / "into", "full": tmp_path / "full"}
    before = contents(video_model)
    assert main(["train-video-decoder", *[a.format(**names) for a in args]]) == 2
    assert_one_line_error(capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]
    assert contents(video_model) == before


def test_a_decoder_folder_reads_back_around_the_autoencoder(model, tmp_path, capsys):
    assert train(model, tmp_path / "run", "--steps", 1) == 0
    pipe = Pipeline.load(model, device="cpu")
    decoder = read_video_decoder(tmp_path / "run" / "vae_temporal", pipe.vae)
    assert decoder.decoder is pipe.vae.decoder and decoder.config.kernel == 3
