"""A motion LoRA (train-video --init --motion --lora-rank): a tiny video model taught the diagonal. Only the LoRA
trains, its file loads into generate-video --adapter and changes the clips, a resumed run ends as an
uninterrupted one, and bad input is one line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentlab.adapters.inject import adapter_state_dict
from latentlab.cli import main
from latentlab.training.video import ADAPTER, LORA_FILENAME, VideoTrainConfig, VideoTrainer
from latentlab.video_pipeline import VideoPipeline

from .commandline import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["--frames", "8", "--batch-size", "2", "--device", "cpu", "--warmup", "1"]
LORA = ["--motion", "diagonal", "--lora-rank", "4", "--lr", "0.01"]
PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
               "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    """The shipped image model's video model after one large step: its alphas moved off 1, so that the temporal
    layers, and a LoRA in them, reach the output."""
    out = tmp_path_factory.mktemp("video") / "model"
    assert main(["train-video", "--image-model", "shapes-default", "--steps", "1", *COMMON, "--lr", "0.05",
                 "--out", str(out)]) == 0
    return out


def lora_run(video_model, out, *args) -> int:
    return main(["train-video", "--init", str(video_model), *LORA, *COMMON, "--out", str(out), *map(str, args)])


@pytest.fixture(scope="module")
def trained(video_model, tmp_path_factory):
    """Four steps of the LoRA run lora_run makes, through the library: (the trainer after its run, the LoRA's
    weights before it, the report)."""
    out = tmp_path_factory.mktemp("lora") / "whole"
    trainer = VideoTrainer(VideoTrainConfig(out=str(out), init=str(video_model), motion="diagonal", lora_rank=4,
                                            lr=0.01, steps=4, frames=8, batch_size=2, device="cpu", warmup=1))
    start = {k: v.clone() for k, v in adapter_state_dict(trainer.temporal, ADAPTER).items()}
    return trainer, start, trainer.run()


def test_only_the_lora_trains_and_its_file_is_written(trained, video_model):
    trainer, start, report = trained
    assert report["steps"] == 4 and report["lora"] == str(trainer.out / LORA_FILENAME)
    assert sorted(p.name for p in trainer.out.iterdir()) == ["checkpoint.safetensors", "log.csv", LORA_FILENAME]
    # the spatial and the temporal layers' weights are the video model's, bit for bit
    base = VideoPipeline.load(video_model, device="cpu").unet.state_dict()
    now = {k.replace(".base.", "."): v for k, v in trainer.unet.state_dict().items() if ".lora_" not in k}
    assert now.keys() == base.keys() and all(torch.equal(now[k], base[k]) for k in base)
    # every LoRA tensor moved, in every temporal attention projection, and the file holds them
    lora = adapter_state_dict(trainer.temporal, ADAPTER)
    assert lora.keys() == start.keys() and not any(torch.equal(lora[k], start[k]) for k in lora)
    modules = {k.rsplit(".lora_", 1)[0] for k in lora}
    attentions = [name for name in trainer.temporal if "_attentions_" in name]
    assert modules == {f"{name}.layer.{p}" for name in attentions for p in PROJECTIONS}
    saved = load_file(trainer.out / LORA_FILENAME)
    assert saved.keys() == {f"temporal.{k}" for k in lora} and all(torch.equal(saved[f"temporal.{k}"], v)
                                                                  for k, v in lora.items())


def test_generate_video_loads_the_lora_and_it_changes_the_clips(trained, video_model, tmp_path, capsys):
    lora = trained[0].out / LORA_FILENAME

    def strip(out, *args):
        assert main(["generate-video", "a small red circle moves diagonally", "--model", str(video_model), "--steps",
                     "2", "--device", "cpu", "--no-mp4", "--out", str(tmp_path / out), *args]) == 0
        return np.asarray(Image.open(tmp_path / out / "000-a-small-red-circle-moves-diagonally.png"))

    plain, adapted, off = strip("plain"), strip("lora", "--adapter", str(lora)), strip("off", "--adapter", f"{lora}:0")
    assert plain.shape == (128, 8 * 128, 3) and not np.array_equal(plain, adapted)
    assert np.array_equal(plain, off)  # at scale 0, the model as it was


def test_a_resumed_lora_run_ends_as_an_uninterrupted_one(trained, video_model, tmp_path, capsys):
    assert lora_run(video_model, tmp_path / "run", "--steps", 2) == 0
    capsys.readouterr()
    assert lora_run(video_model, tmp_path / "run", "--steps", 4, "--lora-rank", 8, "--resume") == 2
    assert_one_line_error(capsys, "other settings (lora_rank)")
    assert lora_run(video_model, tmp_path / "run", "--steps", 4, "--resume") == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 4 and report["lora"] == str(tmp_path / "run" / LORA_FILENAME)
    whole, resumed = load_file(trained[0].out / LORA_FILENAME), load_file(tmp_path / "run" / LORA_FILENAME)
    assert whole.keys() == resumed.keys()
    worst = max((resumed[k].double() - whole[k].double()).abs().max().item() for k in whole)
    assert worst <= 1e-6, f"largest difference {worst}"


@pytest.mark.parametrize("args, message", [
    (["--init", "{video}", "--motion", "spin"], "argument --motion: invalid choice: 'spin'"),
    (["--image-model", "shapes-default", "--lora-rank", "4"], "--lora-rank needs --init"),
    (["--init", "{video}", "--image-model", "shapes-default"], "give --image-model or --init, not both"),
    (["--init", "{image}", "--lora-rank", "4"], "is not a video model"),
    (["--init", "{video}", "--lora-rank", "0"], "must be greater than 0"),
    (["--init", "{video}", "--lora-rank", "4", "--lora-target", "nothing_here"], "no linear layer or convolution"),
    (["--init", "{video}", "--lora-rank", "4", "--lora-target", "("], "is not a regular expression"),
    (["--image-model", "shapes-default", "--lora-target", "to_q"], "--lora-target is an option of a LoRA run"),
    (["--image-model", "shapes-default", "--concept-count", "10"], "--concept-count is an option of a --motion run"),
    (["--init", "{video}", "--motion", "diagonal", "--p-two", "0.5"], "--p-two is not an option of a --motion run"),
    (["--init", "{video}", "--lora-rank", "4", "--no-temporal-attention"], "its video model brings its own"),
    (["--out", "{out}"], "the following arguments are required: --image-model (or --init"),
])
def test_bad_input_is_one_line_status_2_and_writes_nothing(args, message, video_model, model_dir, tmp_path, capsys):
    names = {"video": video_model, "image": model_dir, "out": tmp_path / "out"}
    args = [a.format(**names) for a in args]
    assert main(["train-video", *COMMON, *(["--out", str(tmp_path / "out")] if "--out" not in args else []),
                 *args]) == 2
    assert_one_line_error(capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_generate_video_refuses_a_missing_adapter(video_model, tmp_path, capsys):
    assert main(["generate-video", "a red circle", "--model", str(video_model), "--adapter", str(tmp_path / "no"),
                 "--out", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys, "does not exist")
    assert not (tmp_path / "out").exists()
