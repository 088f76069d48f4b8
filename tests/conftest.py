import dataclasses

import pytest
import torch

from latentlab.data.shapes import caption_corpus
from latentlab.diffusion import DiffusionConfig
from latentlab.models import AutoencoderKL, TextEncoder, Tokenizer, UNet
from latentlab.pipeline import Pipeline
from latentlab.training.presets import preset

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.fit(caption_corpus(2000), max_length=32)


@pytest.fixture()
def tiny_pipeline(tokenizer) -> Pipeline:
    """A randomly initialised pipeline of the real modules at the `tiny` preset."""
    torch.manual_seed(0)
    text = TextEncoder(dataclasses.replace(preset("tiny", "text"), vocab_size=tokenizer.vocab_size))
    unet = UNet(preset("tiny", "unet"))
    for p in unet.parameters():  # undo the zero initialisation, so that the text reaches the output
        torch.nn.init.normal_(p, std=0.05)
    vae = AutoencoderKL(preset("tiny", "vae"))
    return Pipeline(tokenizer=tokenizer, text_encoder=text.eval(), unet=unet.eval(), vae=vae.eval(),
                    diffusion=DiffusionConfig(schedule="linear", timesteps=100), image_size=32)
