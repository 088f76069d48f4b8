"""The diffusion upscaler (models/upscaler.py, upscaler_model.py), its training (training/upscaler.py), its
measurement (evaluation/upscaler.py) and its commands (`train-upscaler`, `upscale IMAGE`, `upscale GRID N`), on
tiny real modules."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentlab.cli import main
from latentlab.data.shapes import ShapesDataset, render
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.evaluation.intervals import mean_interval, wilson
from latentlab.evaluation.upscaler import psnr, upscaling_report
from latentlab.grid import Grid
from latentlab.models.unet import UNet, UNetConfig
from latentlab.models.upscaler import NoiseLevelConfig, NoiseLevelEmbedding, Upscaler
from latentlab.upscaler_model import UpscalerModel

from .cli.commandline import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--channels", "32", "32", "--batch-size", "4", "--device", "cpu", "--warmup", "1", "--lr", "1e-3"]


def train(out, *args):
    return main(["train-upscaler", "--out", str(out), *TINY, *map(str, args)])


@pytest.fixture(scope="module")
def upscaler_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("upscaler") / "run"
    assert train(out, "--steps", 3) == 0
    return out


@pytest.fixture(scope="module")
def upscaler(upscaler_dir):
    return UpscalerModel.load(upscaler_dir, device="cpu")


def low_images(n, split="test"):
    return ShapesDataset(seed=5, split=split).batch(0, n)[0]


def summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# ------------------------------------------------------------------ the network


def tiny_network(**unet):
    net = UNet(UNetConfig(**{"in_channels": 6, "out_channels": 3, "channels": (32, 32),
                             "attention_levels": (False, False), "context_dim": 8, "pooled_text": False, **unet}))
    return Upscaler(net, NoiseLevelEmbedding(NoiseLevelConfig.for_unet(net)))


def test_the_network_reads_the_noisy_image_the_small_one_and_the_level():
    torch.manual_seed(0)
    network = tiny_network()
    for p in network.parameters():  # the U-Net starts at zero output; give every weight a value
        torch.nn.init.normal_(p, std=0.05)
    x_t, y_s = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    t, s = torch.tensor([10, 500]), torch.tensor([0, 100])
    out = network(x_t, t, y_s, s)
    assert out.shape == (2, 3, 16, 16)
    for changed in (network(x_t, t, y_s + 0.5, s), network(x_t, t, y_s, s + 50), network(x_t, t + 50, y_s, s)):
        assert not torch.allclose(changed, out)
    assert torch.allclose(network(x_t[1:], t[1:], y_s[1:], s[1:]), out[1:], atol=1e-5)  # images do not mix


@pytest.mark.parametrize("unet, message", [({"in_channels": 4}, "twice the channels"),
                                           ({"pooled_text": True}, "pooled_text")])
def test_a_unet_that_cannot_be_an_upscalers_is_refused(unet, message):
    with pytest.raises(ValueError, match=message):
        tiny_network(**unet)


# ------------------------------------------------------------------ the model


def test_upscaling_doubles_the_size_and_depends_on_the_seed_alone(upscaler):
    y = low_images(3)
    high = upscaler.upscale(y, steps=3, seed=7)
    assert high.shape == (3, 3, 64, 64) and high.abs().max() <= 1
    assert torch.allclose(upscaler.upscale(y[1:], steps=3, seed=8, batch_size=1), high[1:], atol=1e-5)
    assert not torch.allclose(upscaler.upscale(y, steps=3, seed=8), high)
    assert not torch.allclose(upscaler.upscale(y, steps=3, seed=7, noise_level=200), high)


@pytest.mark.parametrize("sampler", ["ddpm", "euler", "heun", "dpmpp_2m"])
def test_every_sampler_upscales(upscaler, sampler):
    assert upscaler.upscale(low_images(1), steps=2, sampler=sampler).shape == (1, 3, 64, 64)


def test_a_half_precision_save_loads_as_the_model(upscaler, tmp_path):
    upscaler.save(tmp_path / "half", dtype=torch.float16)
    again = UpscalerModel.load(tmp_path / "half", device="cpu")
    assert again.config == upscaler.config and again.diffusion == upscaler.diffusion
    weights = load_file(tmp_path / "half" / "unet" / "model.safetensors")
    assert all(w.dtype == torch.float16 for w in weights.values())
    y = low_images(2)
    assert (again.upscale(y, steps=3) - upscaler.upscale(y, steps=3)).abs().max() < 0.05


@pytest.mark.parametrize("images, message", [(torch.zeros(1, 3, 28, 28), "32x32"), (torch.zeros(3, 32, 32), "32x32"),
                                             (torch.zeros(1, 1, 32, 32), "RGB")])
def test_images_of_another_size_are_refused(upscaler, images, message):
    with pytest.raises(LatentlabError, match=message):
        upscaler.upscale(images, steps=2)


@pytest.mark.parametrize("level", [-1, 1000, 2.5, True])
def test_a_noise_level_that_is_no_timestep_is_refused(upscaler, level):
    with pytest.raises(LatentlabError, match="0 to 999"):
        upscaler.upscale(low_images(1), steps=2, noise_level=level)


def test_a_folder_that_is_not_an_upscaler_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not an upscaler folder"):
        UpscalerModel.load(tmp_path)


# ------------------------------------------------------------------ training


def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, capsys):
    assert train(tmp_path / "whole", "--steps", 4) == 0 and summary(capsys)["steps"] == 4
    assert train(tmp_path / "stopped", "--steps", 2) == 0 and summary(capsys)["steps"] == 2
    assert train(tmp_path / "stopped", "--steps", 4, "--resume") == 0 and summary(capsys)["steps"] == 4
    for part in ("unet", "noise_level"):
        whole, resumed = (load_file(tmp_path / run / part / "model.safetensors") for run in ("whole", "stopped"))
        assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_resuming_with_other_settings_is_refused(tmp_path, capsys):
    assert train(tmp_path / "run", "--steps", 2) == 0
    capsys.readouterr()
    assert train(tmp_path / "run", "--steps", 4, "--resume", "--max-noise-level", 100) == 2
    assert_one_line_error(capsys, "max_noise_level")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_weights_of_one(tmp_path):
    """torchrun, two CPU processes (gloo), each with half of every batch: the same run as one process."""
    args = ["train-upscaler", *TINY, "--steps", "3"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "latentlab", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"processes": 2') == 1  # two processes, one report
    one, two = (load_file(tmp_path / run / "unet" / "model.safetensors") for run in ("one", "two"))
    difference = torch.cat([(two[k].double() - one[k].double()).abs().flatten() for k in one])
    # the same run, up to the order of floating-point sums, which Adam's normalised step enlarges in the few
    # weights whose gradient is still near zero (the biases of the residual branches that start at zero)
    assert difference.mean() < 1e-7 and (difference > 1e-5).double().mean() < 1e-3 and difference.max() < 1e-3 * 0.3


def test_a_run_resumes_exactly_on_another_number_of_processes(tmp_path):
    """Every draw is made for the global batch, so a run started on one process continues on two (torchrun, gloo)
    to the weights of an uninterrupted run on one."""
    args = ["train-upscaler", *TINY]
    assert main([*args, "--steps", "4", "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--steps", "2", "--out", str(tmp_path / "moved")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "latentlab", *args, "--steps", "4", "--resume",
               "--out", str(tmp_path / "moved")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    whole, moved = (load_file(tmp_path / run / "unet" / "model.safetensors") for run in ("whole", "moved"))
    difference = torch.cat([(moved[k].double() - whole[k].double()).abs().flatten() for k in whole])
    assert difference.mean() < 1e-7 and difference.max() < 1e-3 * 0.3  # as for two processes from the start


@pytest.mark.parametrize("args, message", [(["--max-noise-level", 1000], "max_noise_level"),
                                           (["--noise-level", 300], "noise_level 300"),
                                           (["--channels", 48, 64], "multiple"),
                                           (["--p-two", 2], "probability")])
def test_bad_training_input_is_one_line(tmp_path, capsys, args, message):
    assert train(tmp_path / "bad", "--steps", 1, *args) == 2
    assert_one_line_error(capsys, message)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ measurement


def test_psnr_and_intervals():
    truth = render(ShapesDataset(split="test", image_size=64).batch(0, 4)[2], 64)
    assert psnr(truth, truth).min() >= 99
    noisy = truth + 0.02 * torch.randn_like(truth)
    assert 39 < psnr(noisy, truth).mean() < 41  # noise of 0.01 on [0, 1]: 40 dB
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == 1 and wilson(5, 10)[0] < 0.5 < wilson(5, 10)[1]
    band = mean_interval(torch.tensor([1.0, 2.0, 3.0]))
    assert band["mean"] == 2 and band["interval"][0] < 2 < band["interval"][1]


def test_the_report_sets_the_upscaler_beside_bicubic_and_the_truth(upscaler):
    report = upscaling_report(upscaler, scenes=4, steps=2, noise_levels=(0,), batch_size=2)
    rows = report["methods"]
    assert set(rows) == {"bicubic", "upscaler, noise level 0", "truth", "low resolution (32px)"}
    assert rows["truth"]["judge"]["all"] == 1  # the judge reads renders at both sizes
    assert 30 < rows["bicubic"]["psnr"]["mean"] < 40  # bicubic is close, not exact, on these shapes
    assert report["size"] == 64 and report["scenes"] == 4


# ------------------------------------------------------------------ the commands


def test_upscaling_an_image_file(upscaler_dir, tmp_path, capsys):
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    assert main(["upscale", str(tmp_path / "red.png"), "--model", str(upscaler_dir), "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "out")]) == 0
    assert "resized" in capsys.readouterr().err
    assert Image.open(tmp_path / "out" / "000.png").size == (64, 64)
    assert Image.open(tmp_path / "out" / "source.png").size == (32, 32)
    assert (tmp_path / "out" / "grid.png").is_file()


def test_upscaling_image_n_of_a_grid_writes_a_grid_the_loop_goes_on_from(upscaler_dir, tmp_path):
    assert main(["generate", "a red circle", "a blue square", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "g")]) == 0
    assert main(["upscale", str(tmp_path / "g"), "1", "--model", str(upscaler_dir), "--steps", "2",
                 "--device", "cpu"]) == 0
    child = Grid.load(tmp_path / "g" / "upscale-001")
    (image,) = child.images
    assert image.prompt == "a blue square" and image.settings["size"] == 64 and image.seed == 1
    assert image.origin["action"] == "upscale" and image.origin["image"] == 1
    assert child.source(0).shape == (3, 64, 64)
    parent = Grid.load(tmp_path / "g")
    again = parent.upscale(1, tmp_path / "again", model=str(upscaler_dir), steps=2, device="cpu")
    assert torch.equal(again.source(0), child.source(0))  # the same seed, the same image


@pytest.mark.parametrize("args, message", [
    (["{grid}"], "say which image"),
    (["{grid}", "5"], "numbered 0 to 1"),
    (["{grid}/000-a-red-circle.png", "0"], "not a folder"),
    (["{grid}/missing.png"], "missing.png"),
    (["{grid}", "0", "--noise-level", "5000"], "0 to 999"),
    (["{grid}", "0", "--model", "{grid}"], "not an upscaler folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(upscaler_dir, tmp_path, capsys, args, message):
    grid = tmp_path / "g"
    assert main(["generate", "a red circle", "a blue square", "--steps", "2", "--device", "cpu",
                 "--out", str(grid)]) == 0
    capsys.readouterr()
    args = [a.format(grid=grid) for a in args]
    if "--model" not in args:
        args += ["--model", str(upscaler_dir)]
    assert main(["upscale", *args, "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys, message)
    assert not (tmp_path / "out").exists()


def test_a_grid_image_of_another_size_is_refused(upscaler_dir, tmp_path, capsys):
    grid = tmp_path / "g"
    assert main(["generate", "a red circle", "--steps", "2", "--device", "cpu", "--out", str(grid)]) == 0
    assert main(["upscale", str(grid), "0", "--model", str(upscaler_dir), "--steps", "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["upscale", str(grid / "upscale-000"), "0", "--model", str(upscaler_dir), "--device", "cpu"]) == 2
    assert_one_line_error(capsys, "64x64", "32x32")
