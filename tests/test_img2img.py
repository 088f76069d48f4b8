"""Image-to-image (Pipeline.img2img, SDEdit) on a tiny pipeline of the real modules: what strength does, every
sampler, images independent of their batch, and bad input; `latentlab img2img`. Parity with diffusers:
tests/io/test_img2img_parity.py."""

import numpy as np
import pytest
import torch
from PIL import Image

from latentlab.cli import main
from latentlab.diffusion import SAMPLERS
from latentlab.errors import LatentlabError

from .cli.commandline import assert_one_line_error
from .conftest import tiny

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red circle", "a blue square"]


def sources():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_strength_zero_is_the_autoencoder_round_trip(tiny_pipeline):
    images = sources()
    got = tiny_pipeline.img2img(images, PROMPTS, strength=0.0, seed=3)
    noise = [torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3 + i)) for i in range(2)]
    torch.testing.assert_close(got, tiny_pipeline.decode(tiny_pipeline.encode(images, noise)))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_the_strengths_share_of_its_steps(tiny_pipeline, sampler):
    calls = []
    got = tiny_pipeline.img2img(sources(), PROMPTS, strength=0.5, steps=6, sampler=sampler,
                                callback=lambda i, n: calls.append(n))
    assert got.shape == (2, 3, 32, 32) and calls == [3, 3, 3]


def test_an_image_does_not_depend_on_its_batch(tiny_pipeline):
    both = tiny_pipeline.img2img(sources(), PROMPTS, strength=0.7, steps=5, seed=4)
    second = tiny_pipeline.img2img(sources()[1:], PROMPTS[1:], strength=0.7, steps=5, seed=5)
    torch.testing.assert_close(second, both[1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny_pipeline.img2img(sources(), PROMPTS, strength=0.7, steps=5, seed=4,
                                                     batch_size=1), both, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"strength": 1.5}, "strength must be a number from 0 to 1"),
    ({"strength": -0.1}, "strength must be a number from 0 to 1"),
    ({"images": torch.zeros(2, 1, 32, 32)}, "square RGB images"),
    ({"images": torch.zeros(1, 3, 32, 32)}, "give 2 square RGB images"),
    ({"images": torch.full((2, 3, 32, 32), float("nan"))}, "NaN"),
    ({"images": torch.zeros(2, 3, 20, 20)}, "image size 20 is not accepted"),
])
def test_bad_input_raises_one_clear_error(tiny_pipeline, kwargs, message):
    kwargs = {"images": sources(), "strength": 0.5, **kwargs}
    with pytest.raises(LatentlabError, match=message):
        tiny_pipeline.img2img(kwargs.pop("images"), PROMPTS, steps=2, **kwargs)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny(tokenizer).save(folder)
    return folder


def png(path, size=(40, 40), mode="RGB"):
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return path


def test_the_command_writes_the_source_the_images_and_a_grid(model_folder, tmp_path, capsys):
    assert main(["img2img", str(png(tmp_path / "in.png")), "a red circle", "--model", str(model_folder), "--count",
                 "2", "--steps", "4", "--strength", "0.5", "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    assert "resized from 40x40 to 32x32" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["000.png", "001.png", "grid.png", "source.png"]


@pytest.mark.parametrize("args, message", [
    (["{image}", "a circle", "--strength", "1.5"], "strength '1.5' is outside [0, 1]"),
    (["{image}", "a circle", "--strength", "nan"], "finite"),
    (["{missing}", "a circle"], "no such file"),
    (["{text}", "a circle"], "is not an image that can be read"),
    (["{image}", " "], "non-empty prompt"),
    (["{image}", "a circle", "--size", "20"], "image size 20 is not accepted"),
])
def test_bad_input_is_one_line_and_writes_nothing(model_folder, tmp_path, capsys, args, message):
    (tmp_path / "t.png").write_text("no image")
    values = {"image": png(tmp_path / "in.png"), "missing": tmp_path / "none.png", "text": tmp_path / "t.png"}
    args = [a.format(**values) for a in args]
    assert main(["img2img", *args, "--model", str(model_folder), "--steps", "2", "--device", "cpu", "--out",
                 str(tmp_path / "o")]) == 2
    assert_one_line_error(capsys, message)
    assert not (tmp_path / "o").exists()


def test_the_strength_curve_reports_kept_and_followed_attributes(tiny_pipeline):
    from latentlab.evaluation.img2img import other_scenes, strength_curve

    _, sources, asked, prompts = other_scenes(4, "test", 0, 32)
    assert all(getattr(s.objects[0], a) != getattr(t.objects[0], a) for s, t in zip(sources, asked)
               for a in ("colour", "shape", "size", "position"))
    report = strength_curve(tiny_pipeline, (0.0, 1.0), cases=2, steps=2)
    assert [row["strength"] for row in report["curve"]] == [0.0, 1.0]
    for row in report["curve"]:
        assert set(row["kept"]) == set(row["followed"]) == {"colour", "shape", "size", "position", "all"}
        assert all(0 <= v <= 1 for v in [*row["kept"].values(), *row["followed"].values()])
