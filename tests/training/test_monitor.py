"""Watching a run: sample grids, TensorBoard event files, `latentlab plot`; and watching changes nothing."""

import pytest
import torch
from PIL import Image

from latentlab.cli import main
from latentlab.io import save_component
from latentlab.models import AutoencoderKL
from latentlab.training import DiffusionTrainConfig, preset, train_diffusion
from latentlab.training.state import FILENAME, load_state


def run(tmp_path, name, **changes):
    settings = dict(vae=str(tmp_path / "vae"), out=str(tmp_path / name), steps=4, batch_size=4, device="cpu",
                    unet=preset("tiny", "unet"), text=preset("tiny", "text"))
    return train_diffusion(DiffusionTrainConfig(**{**settings, **changes}))


@pytest.fixture()
def vae(tmp_path):
    save_component(tmp_path / "vae", AutoencoderKL(preset("tiny", "vae")))


def test_grids_tensorboard_and_plot(tmp_path, vae, capsys):
    run(tmp_path, "run", sample_every=2)
    grids = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert grids == ["step-000002.png", "step-000004.png"]
    assert Image.open(tmp_path / "run" / "samples" / grids[0]).size == (8 * 64, 64)  # 8 prompts, 32 px at 2x

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"] and "samples" in events.Tags()["images"]

    assert main(["plot", str(tmp_path / "run")]) == 0
    assert Image.open(tmp_path / "run" / "curves.png").size[0] > 300
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "has no log.csv" in capsys.readouterr().err


def test_sampling_during_a_run_changes_nothing(tmp_path, vae):
    run(tmp_path, "plain")
    run(tmp_path, "watched", sample_every=1)
    plain, _ = load_state(tmp_path / "plain" / FILENAME)
    watched, _ = load_state(tmp_path / "watched" / FILENAME)
    assert all(torch.equal(plain[k], watched[k]) for k in plain)


def test_measuring_while_training(tmp_path, vae, monkeypatch):
    """--eval-every writes the judge's accuracy per evaluation to metrics.csv, with the training minutes."""
    from latentlab.evaluation import adherence
    from latentlab.training.monitor import read_columns

    calls = []
    real = adherence.prompt_adherence

    def fewer_prompts(pipe, **kwargs):
        calls.append(kwargs)
        return real(pipe, **{**kwargs, "prompts": 4, "steps": 2})

    monkeypatch.setattr("latentlab.evaluation.prompt_adherence", fewer_prompts)
    run(tmp_path, "run", eval_every=2)
    columns = read_columns(tmp_path / "run" / "metrics.csv")
    assert columns["step"] == [2, 4] and len(calls) == 2
    assert all(0 <= a <= 1 for a in columns["single_object_accuracy"]) and columns["train_minutes"][1] > 0


def test_a_resumed_metrics_log_drops_the_rows_after_its_checkpoint(tmp_path):
    """Killed after the evaluation of step 6, its checkpoint at 4: the resumed run measures 6 again, once."""
    from latentlab.training.monitor import MetricsLog, read_columns

    first = MetricsLog(tmp_path / "metrics.csv")
    for step in (2, 4, 6):
        first.write(step, {"accuracy": 0.1})
    resumed = MetricsLog(tmp_path / "metrics.csv", first_step=4)
    for step in (6, 8):
        resumed.write(step, {"accuracy": 0.2})
    columns = read_columns(tmp_path / "metrics.csv")
    assert columns["step"] == [2, 4, 6, 8] and columns["accuracy"] == [0.1, 0.1, 0.2, 0.2]
