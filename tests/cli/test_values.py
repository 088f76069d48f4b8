"""The command line's values: non-finite numbers, seeds and text refused in one line."""

import subprocess

import pytest

from latentlab.cli import main

from .commandline import PYTHON, assert_one_line_error, run


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
