"""`latentlab train-video` and `latentlab generate-video`: a few steps on the shipped image model, clips written
as GIF, MP4 and frame strip, a resumed run that ends as an uninterrupted one, and bad input in one line."""

import json
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentlab.cli import main
from latentlab.training.state import FILENAME, load_state
from latentlab.training.video import VideoTrainer

from .commandline import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train-video", "--image-model", "shapes-default", "--frames", "8", "--batch-size", "2", "--device", "cpu",
         "--warmup", "1"]
PROMPTS = ["a red circle moves to the right", "a small blue square grows"]


def train(out, *args):
    return main([*TRAIN, "--out", str(out), *map(str, args)])


def summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "model"
    assert train(out, "--steps", 3) == 0
    return out


def temporal_weights(out) -> dict[str, torch.Tensor]:
    """The run's temporal layers and their EMA (checkpoint), and the model folder's (the EMA's)."""
    tensors, meta = load_state(out / FILENAME)
    kept = {k: v for k, v in tensors.items() if k.startswith(("temporal.", "ema."))}
    folder = {f"folder.{k}": v for k, v in load_file(out / "temporal" / "model.safetensors").items()}
    return meta["step"], {**kept, **folder}


def test_train_video_writes_a_video_model_and_reports(tmp_path, capsys):
    assert train(tmp_path / "run", "--steps", 3, "--no-temporal-attention") == 0
    report = summary(capsys)
    assert report["steps"] == 3 and report["processes"] == 1 and not report["interrupted"]
    index = json.loads((tmp_path / "run" / "model_index.json").read_text())
    assert index["video"] == {"frames": 8}
    config = json.loads((tmp_path / "run" / "temporal" / "config.json").read_text())
    assert config["attention"] is False and config["convolutions"] is True


def test_generate_video_writes_gif_mp4_and_strip(video_model, tmp_path, capsys):
    av = pytest.importorskip("av", reason="the test extra installs it: pip install -e '.[test]'")
    out = tmp_path / "videos"
    assert main(["generate-video", *PROMPTS, "--model", str(video_model), "--steps", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    stems = ["000-a-red-circle-moves-to-the-right", "001-a-small-blue-square-grows"]
    assert sorted(p.name for p in out.iterdir()) == sorted(s + e for s in stems for e in (".gif", ".mp4", ".png"))
    with Image.open(out / f"{stems[0]}.gif") as gif:
        assert gif.n_frames == 8 and gif.info["loop"] == 0 and gif.size == (128, 128)
    with Image.open(out / f"{stems[0]}.png") as strip:
        assert strip.size == (8 * 128, 128)
    with av.open(str(out / f"{stems[0]}.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8


def test_without_pyav_or_with_no_mp4_the_gif_and_strip_are_written(video_model, tmp_path, capsys, monkeypatch):
    assert main(["generate-video", PROMPTS[0], "--model", str(video_model), "--steps", "1", "--device", "cpu",
                 "--frames", "3", "--out", str(tmp_path / "a"), "--no-mp4"]) == 0
    assert sorted(p.suffix for p in (tmp_path / "a").iterdir()) == [".gif", ".png"]
    assert "PyAV" not in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    assert main(["generate-video", PROMPTS[0], "--model", str(video_model), "--steps", "1", "--device", "cpu",
                 "--frames", "3", "--out", str(tmp_path / "b")]) == 0
    assert sorted(p.suffix for p in (tmp_path / "b").iterdir()) == [".gif", ".png"]
    notes = [line for line in capsys.readouterr().err.splitlines() if "PyAV" in line]
    assert len(notes) == 1 and "pip install 'latentlab[video]'" in notes[0]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "heun", "dpmpp_2m"])
def test_every_sampler_draws_clips(video_model, tmp_path, sampler, capsys):
    out = tmp_path / "videos"
    assert main(["generate-video", PROMPTS[0], "--model", str(video_model), "--steps", "2", "--device", "cpu",
                 "--frames", "2", "--sampler", sampler, "--no-mp4", "--out", str(out)]) == 0
    with Image.open(out / "000-a-red-circle-moves-to-the-right.gif") as gif:
        assert gif.n_frames == 2


def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, capsys, monkeypatch):
    """4 steps at once; 2 then --resume to 4; and killed at step 3 after its checkpoint at 2, then resumed."""
    assert train(tmp_path / "whole", "--steps", 4) == 0
    step, whole = temporal_weights(tmp_path / "whole")
    assert step == 4 and all(whole[k] != 1 for k in whole if k.endswith(".alpha"))  # trained: alpha moved

    assert train(tmp_path / "stopped", "--steps", 2) == 0 and summary(capsys)["steps"] == 2
    assert train(tmp_path / "stopped", "--steps", 4, "--resume") == 0 and summary(capsys)["steps"] == 4

    step_once = VideoTrainer.train_step

    def killed_at_3(self, step):
        if step == 2 and not self.config.resume:  # the third step, after the checkpoint of step 2
            raise KeyboardInterrupt
        return step_once(self, step)

    monkeypatch.setattr(VideoTrainer, "train_step", killed_at_3)
    assert train(tmp_path / "killed", "--steps", 4, "--checkpoint-every", 2) == 130
    assert load_state(tmp_path / "killed" / FILENAME)[1]["step"] == 2
    assert train(tmp_path / "killed", "--steps", 4, "--checkpoint-every", 2, "--resume") == 0
    assert summary(capsys)["steps"] == 4

    for run in ("stopped", "killed"):
        step, resumed = temporal_weights(tmp_path / run)
        assert step == 4 and resumed.keys() == whole.keys()
        worst = max((resumed[k].double() - whole[k].double()).abs().max().item() for k in whole)
        assert worst <= 1e-6, f"{run}: largest difference {worst}"


@pytest.mark.parametrize("args, message", [
    (["generate-video", "", "--model", "{video}"], "give one or more non-empty prompts"),
    (["generate-video"], "give one or more non-empty prompts"),
    (["generate-video", "a red circle", "--model", "{image}"], "is not a video model"),
    (["generate-video", "a red circle"], "no video model given; train one with latentlab train-video"),
    (["generate-video", "a red circle", "--model", "{video}", "--frames", "0"], "must be greater than 0"),
    (["generate-video", "a red circle", "--model", "{video}", "--out", "{file}/videos"], "which is a file"),
    (["generate-video", "a red circle", "--model", "{video}", "--steps", "1001"], "steps must be between 1"),
    (["generate-video", "a red circle", "--model", "{video}", "--sampler", "euler", "--eta", "1"],
     "sampler 'euler' takes no option 'eta'"),
    (["generate-video", "a red circle", "--model", "{video}", "--fps", "nan"], "give a finite number"),
    (["generate-video", "a red circle", "--model", "{video}", "--seed", "-1"], "0 to 4294967295"),
    ([*TRAIN, "--out", "{out}", "--frames", "12"], "invalid choice: 12"),
    ([*TRAIN, "--out", "{out}", "--lr", "inf"], "give a finite number"),
    ([*TRAIN, "--out", "{out}", "--p-uncond", "1.5"], "is not a probability"),
    ([*TRAIN, "--out", "{out}", "--resume"], "does not exist; start the run without --resume"),
    ([*TRAIN, "--out", "{out}", "--temporal-kernel", "2"], "kernel must be a positive odd number"),
    ([*TRAIN, "--out", "{out}", "--no-temporal-conv", "--no-temporal-attention"], "needs temporal convolutions"),
    ([*TRAIN, "--out", "{file}/run"], "which is a file"),
    (["train-video", "--out", "{out}"], "the following arguments are required: --image-model"),
])
def test_bad_input_is_one_line_status_2_and_writes_nothing(args, message, video_model, model_dir, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setattr("latentlab.cli.generate_video.shipped", lambda: None)  # as long as no video model ships
    (tmp_path / "file").write_text("")
    names = {"video": video_model, "image": model_dir, "file": tmp_path / "file", "out": tmp_path / "out"}
    args = [a.format(**names) for a in args]
    if "--out" not in args and args[0] == "generate-video":
        args += ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert_one_line_error(capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "model"]
