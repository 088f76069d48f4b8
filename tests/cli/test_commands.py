"""The command line: happy paths, and bad input ending in one line and exit status 2."""

import pytest

from latentlab.cli import main

from .commandline import run


def test_generate_writes_one_png_per_image_and_a_grid(model_dir, tmp_path, capsys):
    out = tmp_path / "samples"
    code = main(["generate", "a large red circle on the left", "a small blue triangle at the top",
                 "--model", str(model_dir), "--steps", "3", "--seed", "0", "--out", str(out), "--device", "cpu"])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000-a-large-red-circle-on-the-left.png", "001-a-small-blue-triangle-at-the-top.png", "grid.json",
                     "grid.png"]


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
    (["generate", "a red circle", "--device", "cpu", "--cuda-graph"], "cuda_graph needs the pipeline on a CUDA GPU; it is on cpu"),
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
