"""Session-wide inputs for the fuzz properties: hypothesis runs many examples per test, and takes no
function-scoped fixtures, so the tiny model, its folder and its LoRA files are made once."""

import dataclasses

import pytest
import torch

from latentlab.adapters.lora import TEXT_ENCODER, UNET_ATTENTION, add_lora, lora_layers
from latentlab.diffusion import DiffusionConfig
from latentlab.io import save_component
from latentlab.models import AutoencoderKL, TextEncoder, UNet
from latentlab.pipeline import Pipeline
from latentlab.training.presets import preset

from .fuzzing import copy_pipeline

LORA_FORMATS = ("latentlab", "kohya", "diffusers", "peft")


@pytest.fixture(scope="session")
def fuzz_pipeline(tokenizer) -> Pipeline:
    """tests/conftest.py's `tiny_pipeline`, made once: the real modules at the `tiny` preset, random weights.
    Properties must not change it (copy it, or load the folder)."""
    torch.manual_seed(0)
    text = TextEncoder(dataclasses.replace(preset("tiny", "text"), vocab_size=tokenizer.vocab_size))
    unet = UNet(preset("tiny", "unet"))
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    vae = AutoencoderKL(preset("tiny", "vae"))
    return Pipeline(tokenizer=tokenizer, text_encoder=text.eval(), unet=unet.eval(), vae=vae.eval(),
                    diffusion=DiffusionConfig(schedule="linear", timesteps=100), image_size=32)


@pytest.fixture(scope="session")
def model_dir(fuzz_pipeline, tmp_path_factory):
    """The tiny model as a latentlab model folder."""
    folder = tmp_path_factory.mktemp("fuzz") / "model"
    fuzz_pipeline.save(folder)
    return folder


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory):
    """A tiny autoencoder folder, as `latentlab train-vae` writes it (for train and cache-latents)."""
    folder = tmp_path_factory.mktemp("fuzz") / "vae"
    torch.manual_seed(0)
    save_component(folder, AutoencoderKL(preset("tiny", "vae")))
    return folder


@pytest.fixture(scope="session")
def lora_files(fuzz_pipeline, tmp_path_factory) -> dict:
    """{format: path} of one LoRA ("style": the U-Net's attention at rank 2, alpha 3, a convolution at rank
    1, and, but in peft, the text encoder's attention), nonzero A and B, written by Pipeline.save_lora."""
    folder = tmp_path_factory.mktemp("fuzz_loras")
    pipe = copy_pipeline(fuzz_pipeline)
    add_lora(pipe.unet, "style", rank=2, alpha=3.0, targets=UNET_ATTENTION)
    add_lora(pipe.unet, "style", rank=1, alpha=1.0, targets=[r"down_blocks\.0\.resnets\.0\.conv1"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in lora_layers(pipe.unet):
            for p in (layer.lora_A["style"].weight, layer.lora_B["style"].weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    pipe.save_lora(folder / "peft", "style", format="peft")
    add_lora(pipe.text_encoder, "style", rank=2, alpha=1.0, targets=TEXT_ENCODER[:4])
    with torch.no_grad():
        for _, layer in lora_layers(pipe.text_encoder):
            for p in (layer.lora_A["style"].weight, layer.lora_B["style"].weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    files = {"peft": folder / "peft"}
    for format in LORA_FORMATS[:3]:
        files[format] = folder / f"style_{format}.safetensors"
        pipe.save_lora(files[format], "style", format=format)
    return files
