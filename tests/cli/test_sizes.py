"""The command line's sizes: batches, limits, the grid."""

import pytest
from PIL import Image

from latentlab.cli import main

from .commandline import assert_one_line_error


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
    import latentlab.images

    image_grid = latentlab.images.image_grid

    def bounded_grid(images, columns=None, scale=1):
        columns = columns or len(images)
        w, h = images[0].size
        assert columns * w * scale * -(-len(images) // columns) * h * scale <= 2**26, "grid over 64 megapixels"
        return image_grid(images, columns, scale)

    monkeypatch.setattr(latentlab.images, "image_grid", bounded_grid)
    out = tmp_path / "samples"
    assert main(["generate", "a red circle", "a blue square", "--grid-scale", "2000", "--steps", "2", "--device",
                 "cpu", "--out", str(out)]) == 0
    assert "grid.png at scale" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["000-a-red-circle.png", "001-a-blue-square.png", "grid.json",
                                                     "grid.png"]
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
