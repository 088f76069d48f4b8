"""The command line: happy paths, and bad input ending in one line and exit status 2."""

import subprocess
import sys

import pytest

from latentlab.cli import main

PYTHON = [sys.executable, "-m", "latentlab"]


@pytest.fixture()
def model_dir(tiny_pipeline, tmp_path):
    tiny_pipeline.save(tmp_path / "model")
    return tmp_path / "model"


def run(*args):
    return subprocess.run([*PYTHON, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_generate_writes_one_png_per_image_and_a_grid(model_dir, tmp_path, capsys):
    out = tmp_path / "samples"
    code = main(["generate", "a large red circle on the left", "a small blue triangle at the top",
                 "--model", str(model_dir), "--steps", "3", "--seed", "0", "--out", str(out), "--device", "cpu"])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000-a-large-red-circle-on-the-left.png", "001-a-small-blue-triangle-at-the-top.png", "grid.png"]


def test_eval_reports_accuracy(model_dir, tmp_path, capsys):
    code = main(["eval", "--model", str(model_dir), "--prompts", "4", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "report.json")])
    assert code == 0
    assert "shape" in capsys.readouterr().out and (tmp_path / "report.json").exists()


@pytest.mark.parametrize("args, message", [
    (["generate", "a red circle", "--colour", "red"], "unrecognized arguments: --colour red"),
    (["generate"], "give one or more non-empty prompts"),
    (["generate", ""], "give one or more non-empty prompts"),
    (["generate", "a red circle", "--model", "/nonexistent/model"], "model /nonexistent/model does not exist or is not a model; accepted: a folder"),
    (["generate", "a red circle", "--steps", "0"], "must be greater than 0"),
    (["generate", "a red circle", "--sampler", "lms"], "invalid choice: 'lms'"),
    (["generate", "a red circle", "--sampler", "euler", "--eta", "1"], "sampler 'euler' takes no option 'eta'"),
    (["generate", "a red circle", "--sampler", "ddpm", "--variance", "learned"], "use 'small' or 'large'"),
    (["generate", "a red circle", "--steps", "1001"], "steps must be between 1 and the model's 1000"),
    (["nll", "--variance", "huge"], "invalid choice: 'huge'"),
    (["generate", "a red circle", "--model", "sd-v1-5.ckpt"], "sd-v1-5.ckpt is a pickle (.ckpt)"),
    (["generate", "a red circle", "--spacing", "even"], "accepted: linspace, leading, trailing, or a list"),
    (["generate", "a red circle", "--steps", "3", "--spacing", "999,500,100,0"], "a custom grid must be 3 decreasing"),
    (["generate", "a red circle", "--spacing", "999,x"], "neither a spacing name nor comma-separated timesteps"),
    (["train", "--out", "x", "--vae", "v", "--zero-terminal-snr"], "use prediction 'v' or 'x0'"),
    (["train-vae", "--out", "x", "--image-size", "48"], "invalid choice: 48"),
    (["train", "--out", "x", "--vae", "/nonexistent/vae", "--steps", "1"], "autoencoder folder /nonexistent/vae"),
    (["generate", "a red circle", "--device", "cpu", "--cuda-graph"], "--cuda-graph needs a CUDA GPU; the model is on cpu"),
    (["generate", "a red circle", "--dtype", "float8"], "invalid choice: 'float8'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "no command given"),
])
def test_bad_input_is_one_line_and_status_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentlab: error: ") and message in err


def test_eval_with_paraphrases(model_dir, capsys):
    assert main(["eval", "--model", str(model_dir), "--prompts", "2", "--steps", "2", "--device", "cpu",
                 "--paraphrases"]) == 0
    out = capsys.readouterr().out
    assert "new templates" in out and "new words" in out


def test_nll_reports_bits_per_dim(model_dir, tmp_path, capsys):
    code = main(["nll", "--model", str(model_dir), "--images", "3", "--device", "cpu", "--out", str(tmp_path / "nll.json")])
    assert code == 0
    assert "bits/dim" in capsys.readouterr().out and (tmp_path / "nll.json").exists()


def test_malformed_model_folder(model_dir, capsys):
    (model_dir / "unet" / "config.json").write_text("{broken")
    assert main(["generate", "a red circle", "--model", str(model_dir)]) == 2
    assert "unet/config.json is not valid JSON" in capsys.readouterr().err


def test_wrong_image_size(model_dir, capsys):
    assert main(["generate", "a red circle", "--model", str(model_dir), "--size", "33", "--device", "cpu"]) == 2
    assert "image size 33 is not accepted" in capsys.readouterr().err


def test_no_traceback_from_the_installed_command(tmp_path):
    result = run("generate", "a red circle", "--model", tmp_path / "missing")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


# ---------------------------------------------------------------------- output paths and full disks

import errno
import json
import os
from pathlib import Path

from PIL import Image


@pytest.fixture()
def no_work(monkeypatch):
    """Every command's work fails the test if it starts: output checks must come first."""
    import latentlab.data.latents
    import latentlab.data.sources
    import latentlab.evaluation
    import latentlab.evaluation.classifier
    import latentlab.training
    import latentlab.training.lora
    import latentlab.training.monitor
    from latentlab.pipeline import Pipeline

    def work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(Pipeline, "load", work)
    for module, name in [(latentlab.training, "train_vae"), (latentlab.training, "train_diffusion"),
                         (latentlab.training.lora, "train_lora"), (latentlab.data.latents, "cache_latents"),
                         (latentlab.data.sources, "open_dataset"), (latentlab.evaluation, "prompt_adherence"),
                         (latentlab.evaluation, "bits_per_dim"), (latentlab.training.monitor, "plot_run"),
                         (latentlab.evaluation.classifier, "train_classifier")]:
        monkeypatch.setattr(module, name, work)


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


def assert_one_line_error(capsys, *parts):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentlab: error: "), err
    for part in parts:
        assert str(part) in err, err


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
    import latentlab.io

    monkeypatch.setattr(latentlab.io, "atomic_write", full_disk)
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


# ---------------------------------------------------------------------- values: non-finite numbers, seeds, text


FLOAT_OPTIONS = [
    ["generate", "a red circle", "--guidance"], ["generate", "a red circle", "--eta"],
    ["train-vae", "--out", "x", "--lr"], ["train-vae", "--out", "x", "--minutes"],
    ["train-vae", "--out", "x", "--disc-weight"], ["train", "--vae", "v", "--out", "x", "--vlb-weight"],
    ["train", "--vae", "v", "--out", "x", "--snr-gamma"], ["train", "--vae", "v", "--out", "x", "--p-two"],
    ["eval", "--guidance"], ["lora", "train", "--data", "d", "--out", "x", "--alpha"],
    ["lora", "train", "--data", "d", "--out", "x", "--dropout"],
    ["lora", "train", "--data", "d", "--out", "x", "--weight-decay"],
    ["lora", "train", "--data", "d", "--out", "x", "--p-uncond"],
    ["lora", "train", "--data", "d", "--out", "x", "--prior-weight"],
    ["lora", "train", "--data", "d", "--out", "x", "--prior-guidance"],
    ["lora", "train", "--data", "d", "--out", "x", "--grad-clip"],
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("command", FLOAT_OPTIONS, ids=lambda c: f"{c[0]}{c[-1]}")
def test_every_float_option_refuses_nan_and_inf(command, value, capsys, no_work):
    assert main([*command[:-1], f"{command[-1]}={value}"]) == 2
    assert_one_line_error(capsys, command[-1], "finite")


SEED_COMMANDS = [["generate", "a red circle"], ["train-vae", "--out", "x"], ["train", "--vae", "v", "--out", "x"],
                 ["cache-latents", "--vae", "v", "--data", "shapes", "--out", "x"], ["eval"],
                 ["train-classifier", "--data", "mnist", "--out", "x"], ["nll"],
                 ["lora", "train", "--data", "d", "--out", "x"]]


@pytest.mark.parametrize("seed", ["-1", "4294967296", str(2**64)])
@pytest.mark.parametrize("command", SEED_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_seed_beyond_the_generators_range_is_refused(command, seed, capsys, no_work):
    assert main([*command, "--seed", seed]) == 2
    assert_one_line_error(capsys, "--seed", "0 to 4294967295")


def test_the_last_images_seed_must_be_in_range_too(tmp_path, capsys):
    assert main(["generate", "a red circle", "--seed", "4294967295", "--images-per-prompt", "2", "--steps", "2",
                 "--device", "cpu", "--out", str(tmp_path / "samples")]) == 2
    assert_one_line_error(capsys, "4294967295")
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("option", [[], ["--negative-prompt"], ["--prior-prompt"]])
def test_a_prompt_that_is_not_utf8_is_refused(option, capsys, no_work):
    text = b"caf\xe9 red circle".decode("utf-8", "surrogateescape")  # how Python reads such bytes in argv
    command = ["lora", "train", "--data", "d", "--out", "x"] if option == ["--prior-prompt"] else ["generate", "a"]
    assert main([*command, *option, text]) == 2
    assert_one_line_error(capsys, "caf\\xe9 red circle", "not valid UTF-8")


def test_a_prompt_that_is_not_utf8_is_one_line_from_the_installed_command(tmp_path):
    result = subprocess.run([*PYTHON, "generate", b"caf\xe9 red circle", "--steps", "2", "--device", "cpu",
                             "--out", str(tmp_path / "samples")], capture_output=True, timeout=300)
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2 and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("latentlab: error: ") and "not valid UTF-8" in err


def test_an_error_after_a_progress_bar_starts_its_own_line():
    result = run("nll", "--variance", "learned", "--images", "2", "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert any(line.startswith("latentlab: error: variance 'learned'") for line in result.stderr.splitlines())


def test_an_error_while_a_library_bar_is_open_starts_its_own_line(capsys, monkeypatch):
    import latentlab.evaluation
    from latentlab.errors import LatentlabError
    from tqdm import tqdm

    bars = []

    def fails_with_a_bar_open(*args, **kwargs):
        bars.append(tqdm(total=2, desc="work"))
        bars[0].update(1)
        raise LatentlabError("it went wrong")

    monkeypatch.setattr(latentlab.evaluation, "bits_per_dim", fails_with_a_bar_open)
    assert main(["nll", "--images", "2", "--device", "cpu"]) == 2
    bars[0].close()
    assert "latentlab: error: it went wrong" in capsys.readouterr().err.splitlines()


# ---------------------------------------------------------------------- sizes: batches, limits, the grid


def pixels(path):
    import numpy as np

    return np.asarray(Image.open(path)).astype(int)


def test_batches_give_the_same_images_and_each_is_saved_as_it_finishes(model_dir, tmp_path, capsys, monkeypatch):
    args = ["generate", "a red circle", "a blue square", "a green triangle", "--model", str(model_dir), "--steps",
            "2", "--seed", "3", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "two"), "--batch-size", "2"]) == 0
    for name in ["000-a-red-circle.png", "001-a-blue-square.png", "002-a-green-triangle.png", "grid.png"]:
        assert abs(pixels(tmp_path / "one" / name) - pixels(tmp_path / "two" / name)).max() <= 1

    from latentlab.pipeline import Pipeline

    sample, calls = Pipeline.sample, []

    def second_batch_fails(self, prompts, **kwargs):
        calls.append(prompts)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return sample(self, prompts, **kwargs)

    monkeypatch.setattr(Pipeline, "sample", second_batch_fails)
    assert main([*args, "--out", str(tmp_path / "cut"), "--batch-size", "2"]) == 130
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["000-a-red-circle.png", "001-a-blue-square.png"]


def test_too_many_images_are_refused_before_sampling(capsys, monkeypatch):
    from latentlab.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "sample", lambda *a, **k: pytest.fail("sampling started"))
    assert main(["generate", "a red circle", "--images-per-prompt", "100000000", "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "100000000 images", "megapixel")


def test_a_grid_too_large_is_written_smaller_and_every_image_is_kept(tmp_path, capsys, monkeypatch):
    import latentlab.pipeline

    image_grid = latentlab.pipeline.image_grid

    def bounded_grid(images, columns=None, scale=1):
        columns = columns or len(images)
        w, h = images[0].size
        assert columns * w * scale * -(-len(images) // columns) * h * scale <= 2**26, "grid over 64 megapixels"
        return image_grid(images, columns, scale)

    monkeypatch.setattr(latentlab.pipeline, "image_grid", bounded_grid)
    out = tmp_path / "samples"
    assert main(["generate", "a red circle", "a blue square", "--grid-scale", "2000", "--steps", "2", "--device",
                 "cpu", "--out", str(out)]) == 0
    assert "grid.png at scale" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["000-a-red-circle.png", "001-a-blue-square.png", "grid.png"]
    width, height = Image.open(out / "grid.png").size
    assert width * height <= 2**26 and width == 2 * height


@pytest.mark.parametrize("scale", ["1e300", "-1e39", "nan"])
def test_a_lora_scale_the_float32_weights_cannot_hold_is_refused(tmp_path, capsys, no_work, scale):
    (tmp_path / "style.safetensors").write_bytes(b"")
    assert main(["generate", "a red circle", "--lora", f"{tmp_path / 'style.safetensors'}:{scale}"]) == 2
    assert_one_line_error(capsys, "scale must be a finite number from -3.403e+38 to 3.403e+38")


NEGATIVE_OPTIONS = [
    (["train-vae", "--out", "x", "--disc-start"], "-1", "0 or more"),
    (["train-vae", "--out", "x", "--disc-weight"], "-0.5", "0 or more"),
    (["train", "--vae", "v", "--out", "x", "--sample-every"], "-1", "0 or more"),
    (["train", "--vae", "v", "--out", "x", "--eval-every"], "-1", "0 or more"),
    (["train", "--vae", "v", "--out", "x", "--p-two"], "1.5", "probability"),
    (["lora", "train", "--data", "d", "--out", "x", "--warmup"], "-1", "0 or more"),
    (["lora", "train", "--data", "d", "--out", "x", "--weight-decay"], "-0.01", "0 or more"),
    (["lora", "train", "--data", "d", "--out", "x", "--prior-weight"], "-1", "0 or more"),
    (["lora", "train", "--data", "d", "--out", "x", "--p-uncond"], "-0.1", "probability"),
    (["lora", "train", "--data", "d", "--out", "x", "--dropout"], "2", "probability"),
]


@pytest.mark.parametrize("command, value, accepted", NEGATIVE_OPTIONS, ids=lambda c: c[-1] if isinstance(c, list) else c)
def test_counts_weights_and_probabilities_out_of_range_are_refused(command, value, accepted, capsys, no_work):
    """--sample-every -1 sampled every step, --eval-every -1 evaluated every step: refused before any work."""
    assert main([*command[:-1], f"{command[-1]}={value}"]) == 2
    assert_one_line_error(capsys, command[-1], accepted)
