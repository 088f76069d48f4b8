"""Inpainting (Pipeline.inpaint) on tiny pipelines of the real modules: a text model (the blending fallback,
diffusion/inpainting.py) and one whose U-Net reads the mask and the masked image (9 input channels); what stays,
what is drawn, bad masks; `latentlab inpaint`. Parity with diffusers: tests/io/test_inpaint_parity.py."""

import dataclasses
import re

import numpy as np
import pytest
import torch
from PIL import Image

from latentlab.cli import main
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.models import UNet
from latentlab.pipeline import Pipeline

from .conftest import tiny

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red circle", "a blue square"]


def inputs():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, :, 4:20, 8:24] = 1
    masks[1, :, 16:, :] = 0.8  # binarised at 0.5
    return images, masks


def with_mask_channels(pipe: Pipeline) -> Pipeline:
    """`pipe` with an inpainting U-Net: 4 + 1 + 4 input channels, random weights."""
    torch.manual_seed(1)
    unet = UNet(dataclasses.replace(pipe.unet.config, in_channels=9))
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return Pipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=unet.eval(), vae=pipe.vae,
                    diffusion=pipe.diffusion, image_size=pipe.image_size)


@pytest.mark.parametrize("masked_input", [False, True])
def test_the_unmasked_pixels_stay_and_the_masked_ones_are_drawn(tiny_pipeline, masked_input):
    pipe = with_mask_channels(tiny_pipeline) if masked_input else tiny_pipeline
    assert pipe.takes_masks == masked_input
    images, masks = inputs()
    out = pipe.inpaint(images, masks, PROMPTS, steps=4, seed=2)
    keep = masks < 0.5
    assert torch.equal(out.expand_as(images)[keep.expand_as(images)], images[keep.expand_as(images)])
    assert (out - images)[(~keep).expand_as(images)].abs().max() > 0.05
    loose = pipe.inpaint(images, masks, PROMPTS, steps=4, seed=2, keep_unmasked=False)
    assert torch.equal(loose[(~keep).expand_as(images)], out[(~keep).expand_as(images)])
    assert (loose - images)[keep.expand_as(images)].abs().max() > 0


def test_the_fallback_ends_on_the_known_latents(tiny_pipeline, monkeypatch):
    """With the blending fallback the latents outside the (latent-size) mask end as the image's own, drawn from
    the encoder's posterior by each image's generator first."""
    images, masks = inputs()
    decoded = []
    monkeypatch.setattr(tiny_pipeline, "decode", lambda z: decoded.append(z) or Pipeline.decode(tiny_pipeline, z))
    tiny_pipeline.inpaint(images, masks, PROMPTS, steps=4, seed=2)
    known = tiny_pipeline.encode(images, [torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2 + i))
                                          for i in range(2)])
    keep = (torch.nn.functional.interpolate((masks >= 0.5).float(), size=(8, 8)) < 0.5).expand_as(known)
    torch.testing.assert_close(decoded[0][keep], known[keep], atol=1e-5, rtol=0)
    assert (decoded[0][~keep] - known[~keep]).abs().max() > 0.05


def test_a_model_with_mask_channels_draws_text_to_image_with_the_whole_image_masked(tiny_pipeline):
    pipe = with_mask_channels(tiny_pipeline)
    assert pipe.sample(PROMPTS, steps=2).shape == (2, 3, 32, 32)


def test_inpainting_folders_load_and_other_input_widths_are_refused(tiny_pipeline, tmp_path):
    with_mask_channels(tiny_pipeline).save(tmp_path / "inpainting")
    assert Pipeline.load(tmp_path / "inpainting", device="cpu").takes_masks
    pipe = with_mask_channels(tiny_pipeline)
    pipe.unet = UNet(dataclasses.replace(pipe.unet.config, in_channels=5))
    pipe.save(tmp_path / "five")
    with pytest.raises(CheckpointError, match="takes 5 channels.*latents alone \\(4, text to image\\).*9, inpainting"):
        Pipeline.load(tmp_path / "five", device="cpu")


@pytest.mark.parametrize("change, message", [
    (lambda m: m[:, :, :16, :16], "one mask \\(B, 1, H, W\\) per image, of the image's size"),
    (lambda m: m[:1], "one mask"),
    (lambda m: torch.cat([torch.zeros_like(m[:1]), m[1:]]), "mask 0 is empty"),
    (lambda m: torch.cat([m[:1], torch.ones_like(m[1:])]), "mask 1 is full"),
])
def test_bad_masks_raise_one_clear_error(tiny_pipeline, change, message):
    images, masks = inputs()
    with pytest.raises(LatentlabError, match=message):
        tiny_pipeline.inpaint(images, change(masks), PROMPTS, steps=2)


def png(path, size=(40, 40), mode="RGB", box=None):
    rng = np.random.default_rng(0)
    if box is None:
        pixels = rng.integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    else:
        pixels = np.zeros((size[1], size[0]), np.uint8)
        pixels[box[0]:box[1], box[2]:box[3]] = 255
    Image.fromarray(pixels.squeeze(), mode).save(path)
    return path


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny(tokenizer).save(folder)
    return folder


def test_the_command_writes_source_mask_images_and_grid(model_folder, tmp_path):
    image, mask = png(tmp_path / "in.png"), png(tmp_path / "m.png", mode="L", box=(5, 25, 5, 25))
    assert main(["inpaint", str(image), str(mask), "a red circle", "--model", str(model_folder), "--count", "2",
                 "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["000.png", "001.png", "grid.png", "mask.png", "source.png"]
    source, drawn = (np.array(Image.open(tmp_path / "o" / f)) for f in ("source.png", "000.png"))
    keep = np.array(Image.open(tmp_path / "o" / "mask.png"))[..., 0] < 128
    assert (source[keep] == drawn[keep]).all() and (source[~keep] != drawn[~keep]).any()


@pytest.mark.parametrize("args, message", [
    (["{image}", "{small_mask}", "a circle"], "the mask .* is 20x20, the image 40x40"),
    (["{image}", "{empty}", "a circle"], "mask 0 is empty"),
    (["{image}", "{full}", "a circle"], "mask 0 is full"),
    (["{image}", "{missing}", "a circle"], "no such file"),
    (["{image}", "{mask}", "a circle", "--strength", "2"], "outside \\[0, 1\\]"),
])
def test_bad_input_is_one_line_and_writes_nothing(model_folder, tmp_path, capsys, args, message):
    values = {"image": png(tmp_path / "in.png"), "mask": png(tmp_path / "m.png", mode="L", box=(0, 9, 0, 9)),
              "small_mask": png(tmp_path / "s.png", (20, 20), "L", box=(0, 9, 0, 9)),
              "empty": png(tmp_path / "e.png", mode="L", box=(0, 0, 0, 0)),
              "full": png(tmp_path / "f.png", mode="L", box=(0, 40, 0, 40)), "missing": tmp_path / "none.png"}
    args = [a.format(**values) for a in args]
    assert main(["inpaint", *args, "--model", str(model_folder), "--steps", "2", "--device", "cpu", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentlab: error: ") and re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_a_text_model_widened_for_masks_starts_as_itself(tiny_pipeline):
    from latentlab.training.diffusion import with_mask_inputs

    wide = with_mask_inputs(tiny_pipeline.unet, 4).eval()
    assert wide.config.in_channels == 9 and with_mask_inputs(wide, 4) is wide
    g = torch.Generator().manual_seed(0)
    x, inputs, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 8, 8, generator=g), \
        torch.randn(2, 3, 64, generator=g)
    t = torch.tensor([5, 50])
    torch.testing.assert_close(wide(torch.cat([x, inputs], 1), t, context), tiny_pipeline.unet(x, t, context))


def test_training_an_inpainting_model_from_a_text_model(model_folder, tmp_path, capsys):
    from latentlab.evaluation.inpainting import inpainting_accuracy

    assert main(["train", "--vae", str(model_folder), "--init", str(model_folder), "--inpainting", "--steps", "2",
                 "--batch-size", "4", "--device", "cpu", "--sample-every", "0", "--out", str(tmp_path / "m")]) == 0
    pipe = Pipeline.load(tmp_path / "m", device="cpu")
    assert pipe.takes_masks
    report = inpainting_accuracy(pipe, scenes=2, steps=2)
    assert set(report["accuracy"]) == {"asked object in the box", "kept object", "whole scene"}
    assert all(0 <= v <= 1 for v in report["accuracy"].values()) and report["outside_rms"]["drawn"] >= 0
    capsys.readouterr()
    assert main(["train", "--vae", str(model_folder), "--inpainting", "--data", "fashion-mnist", "--steps", "1",
                 "--device", "cpu", "--out", str(tmp_path / "f")]) == 2
    assert "trains on the shapes world" in capsys.readouterr().err
