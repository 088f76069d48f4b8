"""Checkpoints that never lose work, and runs whose result does not depend on how they were run:
resumed after a checkpoint, killed with SIGKILL, stopped with SIGTERM, accumulated over micro-batches,
or spread over two processes (torchrun, gloo on the CPU)."""

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latentlab.cli import main
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.io import save_component
from latentlab.models import AutoencoderKL
from latentlab.training import DiffusionTrainConfig, preset, train_diffusion
from latentlab.training.state import FILENAME, load_state, save_state

STEPS = 12


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "vae"
    torch.manual_seed(0)
    save_component(folder, AutoencoderKL(preset("tiny", "vae")))
    return folder


def config(vae, out, **changes):
    settings = dict(vae=str(vae), out=str(out), steps=STEPS, batch_size=4, device="cpu", warmup=2,
                    checkpoint_every=3, unet=preset("tiny", "unet"), text=preset("tiny", "text"))
    return DiffusionTrainConfig(**{**settings, **changes})


def weights(out) -> dict[str, torch.Tensor]:
    """Every tensor of the run's final checkpoint but the random-generator states: networks, EMA, optimiser."""
    tensors, meta = load_state(Path(out) / FILENAME)
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}, meta


def assert_same_run(a, b, atol=0.0):
    (ta, ma), (tb, mb) = weights(a), weights(b)
    assert ma["step"] == mb["step"] == STEPS and ta.keys() == tb.keys()
    worst = max((ta[k].double() - tb[k].double()).abs().max().item() for k in ta)
    assert worst <= atol, f"largest difference {worst}"


@pytest.fixture(scope="module")
def uninterrupted(vae, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    train_diffusion(config(vae, out))
    return out


def test_resuming_after_a_checkpoint_gives_the_same_weights(vae, uninterrupted, tmp_path):
    train_diffusion(config(vae, tmp_path / "run", steps=5))  # checkpoints at 3 and at its end, 5
    result = train_diffusion(config(vae, tmp_path / "run", resume=True))
    assert result["steps"] == STEPS
    assert_same_run(tmp_path / "run", uninterrupted)
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and sum(line.startswith("step,") for line in log) == 1  # appended


def test_resuming_needs_the_same_settings(vae, tmp_path):
    train_diffusion(config(vae, tmp_path / "run", steps=3))
    with pytest.raises(CheckpointError, match=r"other settings \(lr\)"):
        train_diffusion(config(vae, tmp_path / "run", lr=1e-3, resume=True))


def test_resuming_does_not_depend_on_how_the_paths_are_spelled(vae, tmp_path, monkeypatch):
    """`--out run` then `--out ./run`, a moved run folder, an absolute path, a symlinked or copied autoencoder:
    the same run resumes, exactly as before. Another autoencoder is refused, naming the setting."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(vae, "vae")
    train_diffusion(config("vae", "run", steps=3))
    assert train_diffusion(config("./vae", "./run", steps=4, resume=True))["steps"] == 4
    shutil.move("run", "moved")
    os.symlink(tmp_path / "vae", "link")
    assert train_diffusion(config("link", tmp_path / "moved", steps=5, resume=True))["steps"] == 5
    shutil.copytree("vae", "copy")
    assert train_diffusion(config(tmp_path / "copy", "moved", steps=6, resume=True))["steps"] == 6
    torch.manual_seed(1)
    save_component("other", AutoencoderKL(preset("tiny", "vae")))
    with pytest.raises(CheckpointError, match=r"other settings \(vae: other contents\)"):
        train_diffusion(config("other", "moved", steps=7, resume=True))


def test_a_checkpoint_from_before_identities_compares_real_paths(vae, tmp_path, monkeypatch):
    """A checkpoint that keeps no `identity` (written before) resumes where its paths name the same files."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(vae, "vae")
    train_diffusion(config("vae", "run", steps=2))
    tensors, meta = load_state(Path("run") / FILENAME)
    del meta["identity"]
    save_state(Path("run") / FILENAME, tensors, meta)
    assert train_diffusion(config(tmp_path / "vae", "run", steps=3, resume=True))["steps"] == 3
    shutil.copytree("vae", "copy")
    tensors, meta = load_state(Path("run") / FILENAME)
    del meta["identity"]
    save_state(Path("run") / FILENAME, tensors, meta)
    with pytest.raises(CheckpointError, match=r"other settings \(vae\)"):
        train_diffusion(config("copy", "run", steps=4, resume=True))


def test_a_start_removes_the_temporary_files_a_kill_left(vae, tmp_path):
    """A kill mid-write leaves `.NAME.RANDOM.tmp` beside the file; the next run in that folder removes them."""
    out = tmp_path / "run"
    (out / "unet").mkdir(parents=True)
    stale = [out / ".checkpoint.safetensors.0123456789ab.tmp", out / "unet" / ".model.safetensors.a1b2c3d4e5f6.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    train_diffusion(config(vae, out, steps=1))
    assert not any(path.exists() for path in stale)
    assert not list(out.rglob("*.tmp")) and (out / FILENAME).is_file()


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / FILENAME
    save_state(path, {"w": torch.ones(3)}, {"step": 1})

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        save_state(path, {"w": torch.zeros(3)}, {"step": 2})
    tensors, meta = load_state(path)
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # no temporary file left behind


def test_gradient_accumulation_gives_the_same_weights(vae, uninterrupted, tmp_path):
    train_diffusion(config(vae, tmp_path / "run", grad_accum=2))
    assert_same_run(tmp_path / "run", uninterrupted, atol=1e-5)
    with pytest.raises(LatentlabError, match="does not split into 1 processes x 3 micro-batches"):
        train_diffusion(config(vae, tmp_path / "bad", grad_accum=3))


# ------------------------------------------------------------------ real processes

def cli_args(vae, out, steps=STEPS):
    return ["train", "--vae", str(vae), "--out", str(out), "--steps", str(steps), "--batch-size", "4", "--preset",
            "tiny", "--device", "cpu", "--checkpoint-every", "1", "--seed", "0"]


def start(args, env=None):
    """The command in a process of its own, on as many threads as this one: the sums of a step split over
    threads differently, and their last bits differ, on a machine whose default thread count is not ours."""
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-m", "latentlab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **threads, **(env or {})})


def wait_for_checkpoint(out, process, timeout=120):
    path = Path(out) / FILENAME
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cli_whole(vae, tmp_path_factory):
    """The uninterrupted run through the command line, for the runs below to match."""
    out = tmp_path_factory.mktemp("cli") / "whole"
    assert main(cli_args(vae, out, steps=STEPS * 5)) == 0
    return out


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_or_stopped_then_resumed_gives_the_same_weights(vae, cli_whole, tmp_path, how):
    """SIGKILL leaves the last checkpoint; SIGTERM saves one and exits cleanly, saying how to continue."""
    out = tmp_path / "run"
    process = start(cli_args(vae, out, steps=STEPS * 5))
    wait_for_checkpoint(out, process)
    process.send_signal(how)
    _, err = process.communicate(timeout=120)
    stopped_at = load_state(out / FILENAME)[1]["step"]
    if how == signal.SIGTERM:
        assert process.returncode == 0 and "stopped by SIGTERM" in err and "--resume" in err
    else:
        assert process.returncode == -signal.SIGKILL
    assert 0 < stopped_at < STEPS * 5
    assert main(cli_args(vae, out, steps=STEPS * 5) + ["--resume"]) == 0
    (mine, meta), (theirs, _) = weights(out), weights(cli_whole)
    assert meta["step"] == STEPS * 5 and all(torch.equal(mine[k], theirs[k]) for k in theirs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_weights_of_one(vae, uninterrupted, tmp_path):
    """torchrun, two CPU processes (gloo), each with half of every batch: the same run as one process."""
    out = tmp_path / "ddp"
    args = ["train", "--vae", str(vae), "--out", str(out), "--steps", str(STEPS), "--batch-size", "4", "--preset",
            "tiny", "--device", "cpu", "--checkpoint-every", "3"]
    whole_args = [a for a in args]
    whole_args[whole_args.index(str(out))] = str(tmp_path / "one")
    assert main(whole_args) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "latentlab", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"processes": 2') == 1  # two processes, one report
    (two, meta), (one, _) = weights(out), weights(tmp_path / "one")
    assert meta["step"] == STEPS
    worst = max((two[k].double() - one[k].double()).abs().max().item() for k in one)
    print(f"largest difference between 2 processes and 1: {worst:.2e}")
    assert 0 < worst < 1e-5  # the same run, up to the order of floating-point sums


# ------------------------------------------------------------------ a run that diverges

@pytest.mark.parametrize("what", ["weights", "loss"])
def test_a_run_that_turns_nan_stops_and_keeps_the_last_good_checkpoint(vae, tmp_path, monkeypatch, capsys, what):
    """A NaN in the weights (or the loss) after step 4 stops the run with one line naming the step and the
    learning rate, exit status 2: the checkpoint of step 4 is the last written, and no model folder is."""
    from latentlab.training.diffusion import DiffusionTrainer

    train_step = DiffusionTrainer.train_step

    def poisoned(self, step):
        loss = train_step(self, step)
        if step == 4:  # the fifth step: checkpoints 1 to 4 are good
            if what == "weights":
                with torch.no_grad():
                    self.params[0].fill_(math.nan)
            else:
                loss = loss * math.nan
        return loss

    monkeypatch.setattr(DiffusionTrainer, "train_step", poisoned)
    out = tmp_path / "run"
    assert main(cli_args(vae, out, steps=STEPS)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("latentlab: error:")]
    assert len(errors) == 1 and "step 5" in errors[0] and "learning rate" in errors[0], errors
    tensors, meta = load_state(out / FILENAME)
    assert meta["step"] == 4 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert not (out / "unet").exists() and not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("setting", ["lr", "vlb_weight", "snr_gamma", "weight_decay", "p_uncond", "minutes"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_settings_that_are_not_finite_are_refused(vae, tmp_path, setting, value):
    with pytest.raises(LatentlabError, match=f"{setting} must be a finite number"):
        config(vae, tmp_path / "run", **{setting: value})


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_the_generators_would_wrap_is_refused(vae, tmp_path, seed):
    with pytest.raises(LatentlabError, match="seeds from 0 to 4294967295"):
        config(vae, tmp_path / "run", seed=seed)
