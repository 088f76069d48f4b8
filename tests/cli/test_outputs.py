"""The command line's outputs: --out paths refused before any work, and full disks."""

import errno
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from latentlab.cli import main

from .commandline import assert_one_line_error


def folder_commands(tmp_path, out):
    """Every command that writes a folder, with --out `out`."""
    (tmp_path / "vae").mkdir(exist_ok=True)
    (tmp_path / "style.safetensors").write_bytes(b"")
    return [["generate", "a red circle", "--out", out],
            ["train-vae", "--out", out],
            ["train", "--vae", tmp_path / "vae", "--out", out],
            ["cache-latents", "--vae", tmp_path / "vae", "--data", "shapes", "--out", out],
            ["train-classifier", "--data", "mnist", "--out", out],
            ["lora", "train", "--data", "shapes", "--out", out],
            ["lora", "merge", "--model", tmp_path / "model", "--lora", tmp_path / "style.safetensors", "--out", out]]


def file_commands(tmp_path, out):
    """Every command that writes one file, with --out `out`."""
    (tmp_path / "run").mkdir(exist_ok=True)
    return [["eval", "--out", out], ["nll", "--out", out], ["plot", tmp_path / "run", "--out", out]]


@pytest.mark.parametrize("n", range(7))
def test_an_out_folder_that_is_a_file_or_under_one_is_refused_before_any_work(tmp_path, capsys, no_work, n):
    (tmp_path / "taken").write_text("a file")
    for out, says in [(tmp_path / "taken", "is a file"), (tmp_path / "taken" / "run", "is a file")]:
        assert main(list(map(str, folder_commands(tmp_path, out)[n]))) == 2
        assert_one_line_error(capsys, tmp_path / "taken", says)
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.parametrize("n", range(3))
def test_an_out_file_that_is_a_folder_or_under_a_file_is_refused_before_any_work(tmp_path, capsys, no_work, n):
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "folder").mkdir()
    for out, says in [(tmp_path / "folder", "is a folder"), (tmp_path / "taken" / "report.json", "is a file")]:
        assert main(list(map(str, file_commands(tmp_path, out)[n]))) == 2
        assert_one_line_error(capsys, out if says == "is a folder" else tmp_path / "taken", says)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes whatever the folder's mode")
def test_an_unwritable_out_folder_is_refused_before_any_work(tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for command in folder_commands(tmp_path, locked / "run") + file_commands(tmp_path, locked / "report.json"):
            assert main(list(map(str, command))) == 2
            assert_one_line_error(capsys, locked, "Permission denied")
    finally:
        locked.chmod(0o700)


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("command", [["eval", "--prompts", "2", "--steps", "2"], ["nll", "--images", "2"]])
def test_a_report_that_cannot_be_written_is_printed_and_the_error_is_one_line(model_dir, tmp_path, capsys,
                                                                                monkeypatch, command):
    import latentlab.evaluation
    import latentlab.io

    monkeypatch.setattr(latentlab.io, "atomic_write", full_disk)
    # the bound itself is test_commands.py's (a thousand U-Net calls): here only its report matters
    monkeypatch.setattr(latentlab.evaluation, "bits_per_dim", lambda pipe, **kwargs: {
        "images": 2, "split": "test", "variance": "small", "seed": 0, "decoder_log_scale": -3.0,
        "bits_per_dim": dict.fromkeys(("latent", "latent_prior", "latent_decoder", "pixel", "pixel_reconstruction"), 1.5)})
    out = tmp_path / "report.json"
    assert main([*command, "--model", str(model_dir), "--device", "cpu", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out[captured.out.index("\n") + 1:] if command[0] == "nll"
                        else captured.out[captured.out.index("["):])
    assert report and not out.exists()
    last = captured.err.splitlines()[-1]  # after nll's progress bar
    assert last.startswith("latentlab: error: cannot write ") and "latentlab" not in captured.err.replace(last, "")
    assert str(out) in last and "No space left on device" in last


def test_a_grid_that_cannot_be_written_keeps_the_images(model_dir, tmp_path, capsys, monkeypatch):
    save = Image.Image.save

    def save_all_but_the_grid(image, path, *args, **kwargs):
        if Path(path).name == "grid.png":
            full_disk()
        return save(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_all_but_the_grid)
    out = tmp_path / "samples"
    assert main(["generate", "a red circle", "a blue square", "--model", str(model_dir), "--steps", "2",
                 "--device", "cpu", "--out", str(out)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("latentlab: error: cannot write ") and "No space left on device" in last
    assert str(out / "grid.png") in last and "2 images" in last
    assert sorted(p.name for p in out.iterdir()) == ["000-a-red-circle.png", "001-a-blue-square.png"]


def test_a_full_disk_while_training_is_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "fsync", full_disk)  # every checkpoint and model file is written through fsync
    assert main(["train-vae", "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("latentlab: error: ") and "No space left on device" in last
