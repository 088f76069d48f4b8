"""Inpainting (Pipeline.inpaint) with a Stable Diffusion inpainting model (the U-Net reads the latents, the mask
and the masked image's latents: 4 + 1 + 4 channels) against diffusers' StableDiffusionInpaintPipeline: a tiny
SD-shaped inpainting model saved by diffusers and as an original single file, the same images, masks,
prompts and generators, image for image."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline
from PIL import Image
from safetensors.torch import save_file

from latentlab.images import from_pil
from latentlab.io.convert import to_ldm_checkpoint
from latentlab.pipeline import Pipeline

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]

SD15_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
PROMPTS = ["a red circle", "two blue squares, side by side"]


@pytest.fixture(scope="module")
def sd(tmp_path_factory, tiny_sd_components):
    pipe = StableDiffusionInpaintPipeline(**tiny_sd_components(in_channels=9))
    pipe.scheduler = DDIMScheduler(**SD15_SCHEDULER, steps_offset=0, clip_sample=False, set_alpha_to_one=True,
                                   timestep_spacing="trailing")
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd-inpainting"
    pipe.save_pretrained(folder, safe_serialization=True)
    single = folder.parent / "tiny-sd-inpainting.safetensors"
    save_file(to_ldm_checkpoint(pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict()), single)
    return pipe, folder, single


def inputs():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in PROMPTS]
    masks = []
    for top, left in ((2, 3), (8, 0)):
        m = np.zeros((16, 16), np.uint8)
        m[top:top + 7, left:left + 9] = 255
        masks.append(Image.fromarray(m))
    return images, masks


def ours(pipe, strength, steps):
    images, masks = inputs()
    x = torch.stack([from_pil(p, 16)[0] for p in images])
    m = torch.stack([torch.from_numpy(np.array(p)).float()[None] / 255 for p in masks])
    return pipe.inpaint(x, m, PROMPTS, strength=strength, steps=steps, guidance=3.0, seed=11, sampler="ddim",
                        spacing="trailing", keep_unmasked=False)


@pytest.mark.parametrize("strength, steps", [(1.0, 4), (0.6, 5)])
def test_inpainting_model_draws_diffusers_images(sd, strength, steps):
    theirs, folder, single = sd
    images, masks = inputs()
    with torch.no_grad():
        want = theirs(PROMPTS, image=images, mask_image=masks, strength=strength, num_inference_steps=steps,
                      guidance_scale=3.0, generator=[torch.Generator().manual_seed(11 + i) for i in range(2)],
                      output_type="pt", height=16, width=16).images
    assert want.std() > 0.05
    for source in (folder, single):
        pipe = Pipeline.load(source, device="cpu")
        assert pipe.takes_masks
        got = (ours(pipe, strength, steps) / 2 + 0.5).clamp(0, 1)
        assert (got - want).abs().max() < 1e-4
