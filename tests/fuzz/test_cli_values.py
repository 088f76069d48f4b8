"""Command-line values as a user might type them (nan, inf, negatives, huge numbers, words, odd text) for
each command's options, through `latentlab.cli.main` in this process: exit status 0 with the result, or
2 with one line `latentlab: error: ...`; never a traceback, never a changed input. Non-finite numbers are
always refused. Training commands draw only values that must be refused before any work (one that is
taken trains a step of the tiny preset, seconds)."""

import math
import os
import resource
import subprocess
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from .fuzzing import (any_text, assert_cli_alone, fuzz, is_non_finite, numbers, run_cli, scratch, small_numbers,
                      strings, unchanged)

pytestmark = pytest.mark.usefixtures("one_thread")


def at_most(limit: int):
    """Values that are not integers, or integers up to `limit` (larger ones cost time and memory)."""
    def small(text: str) -> bool:
        try:
            return int(text) <= limit
        except ValueError:
            return True
    return small


spacings = st.sampled_from(["linspace", "leading", "trailing", "even", "", "999,500,0", "99,50,0", "0,0", "5,-1",
                            "99,99", "1000,1", ",", "1,", "18446744073709551616,0", "nan"]) | st.text(max_size=8)
GENERATE = {
    "--steps": small_numbers.filter(at_most(100)),
    "--guidance": numbers,
    "--eta": numbers,
    "--seed": numbers,
    "--size": small_numbers.filter(at_most(64)),
    "--images-per-prompt": small_numbers.filter(at_most(8)),
    "--grid-scale": small_numbers.filter(at_most(16)),
    "--batch-size": small_numbers.filter(at_most(8)),
    "--spacing": spacings,
    "--sampler": st.sampled_from(["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "lms", "", "DDIM"]),
    "--variance": st.sampled_from(["small", "large", "learned", "huge", ""]),
    "--dtype": st.sampled_from(["float32", "bfloat16", "float16", "float64", ""]),
    "--device": st.sampled_from(["cpu", "auto", "cuda", "cuda:0", "cuda:-1", "meta", "mps", "cpu:0", "xla", ""])
    | strings,
    "--negative-prompt": any_text,
}
FLOATS = {"--guidance", "--eta"}


def options(table: dict, most: int = 3):
    """One to `most` of the options in `table`, each with a drawn value."""
    return st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=most, unique=True).flatmap(
        lambda names: st.tuples(*[st.tuples(st.just(n), table[n]) for n in names]))


@fuzz(60)
@given(chosen=options(GENERATE))
@example(chosen=(("--guidance", "nan"),))
@example(chosen=(("--eta", "inf"),))
@example(chosen=(("--seed", str(2**64)),))
def test_generate_with_any_option_values_exits_0_or_2_with_one_line(model_dir, chosen):
    with scratch() as folder, unchanged(model_dir):
        code, _, _ = run_cli(["generate", "a red circle", "--model", model_dir, "--steps", "1", "--device", "cpu",
                              "--out", folder / "samples", *[f"{name}={value}" for name, value in chosen]])
        if code == 0:
            values = dict(chosen)
            assert not any(is_non_finite(values[n]) for n in FLOATS & values.keys()), "a non-finite value accepted"
            images = int(values.get("--images-per-prompt", 1))
            assert len(list((folder / "samples").glob("*.png"))) == images + 1


@fuzz(16)
@given(scale=numbers)
@example(scale="nan")
@example(scale="1e+300")
def test_a_lora_scale_of_any_value_exits_0_or_2_with_one_line(model_dir, lora_files, scale):
    with scratch() as folder, unchanged(model_dir, lora_files["latentlab"]):
        code, _, _ = run_cli(["generate", "a red circle", "--model", model_dir, "--steps", "1", "--device", "cpu",
                              "--out", folder / "samples", "--lora", f"{lora_files['latentlab']}:{scale}"])
        assert code == 2 or math.isfinite(float(scale))


@fuzz(6)
@given(seed=st.integers(0, 2**32 - 1) | st.integers(0, 2**70), apart=st.sampled_from([1, 2**32, 2**33, 2**64]))
@example(seed=0, apart=2**32)
def test_two_seeds_generate_accepts_give_different_images(model_dir, seed, apart):
    with scratch() as folder:
        codes = [run_cli(["generate", "a red circle", "--model", model_dir, "--steps", "1", "--device", "cpu",
                          "--seed", s, "--out", folder / str(s)])[0] for s in (seed, seed + apart)]
        if codes == [0, 0]:
            a, b = ((folder / str(s) / "000-a-red-circle.png").read_bytes() for s in (seed, seed + apart))
            assert a != b, f"seeds {seed} and {seed + apart} give the same image"


# ---------------------------------------------------------------------- output paths


OUT_KINDS = ["file", "under a file", "proc", "nul", "long", "not utf-8", "folder", "new"]


def out_path(root, kind: str):
    """--out of a kind: taken by a file, under a file, in /proc (unwritable), holding NUL, too long, not
    UTF-8, an existing folder, a new one."""
    return {"file": root / "taken", "under a file": root / "taken" / "out", "proc": "/proc/self/latentlab-fuzz",
            "nul": f"{root}/a\0b", "long": root / ("x" * 300), "not utf-8": root / "caf\udce9",
            "folder": root / "folder", "new": root / "new" / "out"}[kind]


@fuzz(14)
@given(kind=st.sampled_from(OUT_KINDS), command=st.sampled_from(["generate", "eval", "nll", "cache-latents",
                                                                  "lora merge"]))
@example(kind="file", command="generate")
@example(kind="under a file", command="eval")
def test_any_out_path_exits_0_or_2_with_one_line_and_changes_no_other_file(
        model_dir, vae_dir, lora_files, kind, command):
    with scratch() as root:
        (root / "taken").write_text("a file")
        (root / "folder").mkdir()
        (root / "folder" / "kept.txt").write_text("kept")
        argv = {"generate": ["generate", "a red circle", "--model", model_dir, "--steps", "1"],
                "eval": ["eval", "--model", model_dir, "--prompts", "2", "--steps", "1"],
                "nll": ["nll", "--model", model_dir, "--images", "2", "--batch-size", "2"],
                "cache-latents": ["cache-latents", "--vae", vae_dir, "--data", "shapes", "--count", "2"],
                "lora merge": ["lora", "merge", "--model", model_dir, "--lora", lora_files["kohya"]]}[command]
        writes_a_file = command in ("eval", "nll")  # which may replace a file, but not a folder's files
        with unchanged(model_dir, vae_dir, lora_files["kohya"], root / "folder" / "kept.txt",
                       *([] if writes_a_file else [root / "taken"])):
            run_cli([*argv, "--device", "cpu", "--out", out_path(root, kind)])


# ---------------------------------------------------------------------- training commands


NON_FINITE = st.sampled_from(["nan", "inf", "-inf", "1e309", "-nan", "Infinity"])
# not numbers, or negative ones, which no training option takes (0 turns some off; none counts backwards)
REFUSED = st.sampled_from(["abc", "", "0x10", "1,5", "-1", "-9223372036854775809"])
NOT_INTEGERS = st.sampled_from(["2.5", "1e3"])
FLOAT_TRAINING = {"--lr", "--minutes", "--disc-weight", "--vlb-weight", "--snr-gamma", "--p-two", "--alpha",
                  "--dropout", "--weight-decay", "--grad-clip", "--p-uncond", "--prior-weight"}


def bad_values(names: list[str]) -> dict:
    """Values no option takes: non-finite ones for floats, fractions for integers, words, negatives."""
    return {n: NON_FINITE | REFUSED if n in FLOAT_TRAINING else REFUSED | NOT_INTEGERS for n in names}


COMMON = ["--steps", "--batch-size", "--lr", "--minutes", "--seed", "--image-size", "--checkpoint-every"]
TRAIN_VAE = bad_values(COMMON + ["--disc-start", "--disc-weight"])
TRAIN = bad_values(COMMON + ["--timesteps", "--vlb-weight", "--snr-gamma", "--p-two", "--save-every", "--grad-accum",
                             "--sample-every", "--eval-every"])
LORA_TRAIN = bad_values(["--steps", "--batch-size", "--lr", "--rank", "--alpha", "--dropout", "--warmup",
                         "--weight-decay", "--grad-clip", "--p-uncond", "--prior-weight", "--checkpoint-every",
                         "--seed", "--image-size"])
TRAINING = {"train-vae": TRAIN_VAE, "train": TRAIN, "lora train": LORA_TRAIN}
training_options = st.sampled_from(sorted(TRAINING)).flatmap(
    lambda command: st.tuples(st.just(command), options(TRAINING[command], most=1).map(lambda chosen: chosen[0])))


@fuzz(12, shrink=False)
@given(choice=training_options)
@example(choice=("train", ("--lr", "inf")))
@example(choice=("train", ("--vlb-weight", "nan")))
@example(choice=("train", ("--sample-every", "-1")))
@example(choice=("train-vae", ("--disc-weight", "-1")))
def test_training_with_a_bad_value_is_refused_in_one_line_before_any_work(model_dir, vae_dir, choice):
    command, (name, value) = choice
    argv = {"train-vae": ["train-vae", "--preset", "tiny"],
            "train": ["train", "--vae", vae_dir, "--preset", "tiny", "--sample-every", "0"],
            "lora train": ["lora", "train", "--model", model_dir, "--data", "shapes"]}[command]
    with scratch() as folder, unchanged(model_dir, vae_dir):
        code, _, err = run_cli([*argv, "--steps", "1", "--minutes", "0.1", "--batch-size", "2", "--device",
                                "cpu", "--out", folder / "run", f"{name}={value}"])
        assert code == 2, f"{name}={value} accepted"
        assert_cli_alone(err)
        assert not (folder / "run").exists()


# ---------------------------------------------------------------------- sizes that cannot fit


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))


@pytest.mark.parametrize("option", [["--images-per-prompt", "100000000"], ["--grid-scale", "2000"]])
def test_a_size_that_cannot_fit_is_refused_or_done_in_parts(model_dir, tmp_path, option):
    """In a process of its own with at most 8 GiB of address space (a grid at scale 2000 would take 16 GB): a
    defect here aborts the process or runs out of memory. No GPU is shown to it: CUDA's start-up alone
    reserves more address space than that."""
    result = subprocess.run([sys.executable, "-m", "latentlab", "generate", "a red circle", *option, "--model",
                             str(model_dir), "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "samples")],
                            capture_output=True, text=True, timeout=300, preexec_fn=limit_memory,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode in (0, 2), f"exit status {result.returncode}: {result.stderr[-1000:]}"
    if result.returncode == 2:
        lines = result.stderr.rstrip("\n").split("\n")
        assert lines[-1].startswith("latentlab: error: ") and result.stderr.count("latentlab: error:") == 1
