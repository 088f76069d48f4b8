"""Image-to-image (Pipeline.img2img, SDEdit) against diffusers' StableDiffusionImg2ImgPipeline: a tiny SD-shaped
model saved by diffusers, the same images, prompts, strength and generators, image for image."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

from latentlab.images import from_pil
from latentlab.pipeline import Pipeline

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]

SD15_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
PROMPTS = ["a red circle", "two blue squares, side by side"]


@pytest.fixture(scope="module")
def sd(tmp_path_factory, tiny_sd_components):
    pipe = StableDiffusionImg2ImgPipeline(**tiny_sd_components())
    pipe.scheduler = DDIMScheduler(**SD15_SCHEDULER, steps_offset=0, clip_sample=False, set_alpha_to_one=True,
                                   timestep_spacing="trailing")
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe, Pipeline.load(folder, device="cpu")


def pictures():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in PROMPTS]


@pytest.mark.parametrize("strength, steps", [(0.6, 5), (1.0, 4), (0.3, 10)])
def test_img2img_draws_diffusers_images(sd, strength, steps):
    theirs, ours = sd
    with torch.no_grad():
        want = theirs(PROMPTS, image=pictures(), strength=strength, num_inference_steps=steps, guidance_scale=3.0,
                      generator=[torch.Generator().manual_seed(7 + i) for i in range(2)], output_type="pt").images
    images = torch.stack([from_pil(p, 16)[0] for p in pictures()])
    got = ours.img2img(images, PROMPTS, strength=strength, steps=steps, guidance=3.0, seed=7, sampler="ddim",
                       spacing="trailing")
    assert want.std() > 0.05
    assert ((got / 2 + 0.5).clamp(0, 1) - want).abs().max() < 1e-4
