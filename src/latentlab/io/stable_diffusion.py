"""Stable Diffusion 1.x model files -> our modules: diffusers-format folders and original single files.

A diffusers folder (what `StableDiffusionPipeline.save_pretrained` writes):

    model_index.json                     {"_class_name": "StableDiffusionPipeline", ...}
    unet/config.json + diffusion_pytorch_model.safetensors
    vae/config.json  + diffusion_pytorch_model.safetensors
    text_encoder/config.json + model.safetensors      (transformers' CLIPTextModel)
    tokenizer/vocab.json + merges.txt, or tokenizer.json   (CLIP's BPE)
    scheduler/scheduler_config.json

An original single file (CompVis/Stability `.safetensors`) holds the three networks under their
LDM key names; io/convert.py translates them and infers the architecture from the tensors' shapes.
Only safetensors are read: `.bin` and `.ckpt` files are pickles, which can run code when loaded.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..diffusion import DiffusionConfig
from ..errors import CheckpointError
from ..models import AutoencoderKL, CLIPTextModel, UNet, clip_tokenizer, clip_tokenizer_from_files
from ..models.clip_tokenizer import clip_tokenizer_from_tokenizer_json
from . import convert
from .checkpoint import build, load_weights, read_json, read_safetensors

# what a single file cannot say: Stable Diffusion 1.x's noise schedule and resolution
SD1_DIFFUSION = DiffusionConfig(schedule="scaled_linear", timesteps=1000, prediction="eps")
SD1_IMAGE_SIZE = 512


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file() and "_class_name" in read_json(path / "model_index.json")


@contextmanager
def _config_errors(source: Path):
    """A config translation's ValueError, as a CheckpointError naming the file."""
    try:
        yield
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def read_diffusers_weights(folder: Path, stem: str) -> dict:
    """`stem`.safetensors in `folder`, or its shards (`stem`.safetensors.index.json); fp16 variants too."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return read_safetensors(folder / name)
    for name in (f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors.index.json"):
        if (folder / name).is_file():
            shards = sorted(set(read_json(folder / name).get("weight_map", {}).values()))
            if not shards:
                raise CheckpointError(f"{folder / name} lists no weight files")
            state = {}
            for shard in shards:
                state.update(read_safetensors(folder / shard))
            return state
    pickles = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
    hint = (f"; it holds only pickles ({', '.join(pickles)}), which latentlab never loads: re-save the model "
            "with save_pretrained(..., safe_serialization=True) where you trust it") if pickles else ""
    raise CheckpointError(f"{folder} has no {stem}.safetensors{hint}")


def read_clip_tokenizer(folder: Path, max_positions: int):
    """A diffusers pipeline's tokenizer/: vocab.json and merges.txt (transformers 4), or tokenizer.json (5)."""
    config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    max_length = min(int(config.get("model_max_length", max_positions)), max_positions)
    if (folder / "vocab.json").is_file() or not (folder / "tokenizer.json").is_file():
        return clip_tokenizer_from_files(folder / "vocab.json", folder / "merges.txt", max_length=max_length)
    return clip_tokenizer_from_tokenizer_json(folder / "tokenizer.json", max_length=max_length)


def load_diffusers_folder(path: Path) -> dict:
    """The Pipeline's parts from a diffusers StableDiffusionPipeline folder."""
    index = read_json(path / "model_index.json")
    for part, kind in (("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL"), ("text_encoder", "CLIPTextModel"),
                       ("tokenizer", "CLIPTokenizer")):
        given = index.get(part)
        if not isinstance(given, list) or len(given) != 2 or given[1] not in (kind, kind + "Fast", kind + "WithProjection"):
            raise CheckpointError(f"{path / 'model_index.json'}: {part} is {given!r}; accepted: a {kind} "
                                  "(Stable Diffusion 1.x's pipeline layout)")
    unet_json = read_json(path / "unet" / "config.json")
    with _config_errors(path / "unet" / "config.json"):
        unet_config = convert.unet_config_from_diffusers(unet_json)
    with _config_errors(path / "vae" / "config.json"):
        vae_config = convert.vae_config_from_diffusers(read_json(path / "vae" / "config.json"))
    with _config_errors(path / "text_encoder" / "config.json"):
        clip_config = convert.clip_config_from_transformers(read_json(path / "text_encoder" / "config.json"))
    with _config_errors(path / "scheduler" / "scheduler_config.json"):
        diffusion = convert.diffusion_config_from_diffusers(read_json(path / "scheduler" / "scheduler_config.json"))
    text_weights = convert.from_transformers_clip_text(read_diffusers_weights(path / "text_encoder", "model"))
    sample_size = unet_json.get("sample_size", SD1_IMAGE_SIZE // vae_config.downsampling)
    return dict(
        tokenizer=read_clip_tokenizer(path / "tokenizer", clip_config.max_positions),
        text_encoder=load_weights(build(CLIPTextModel, clip_config), text_weights, str(path / "text_encoder")),
        unet=load_weights(build(UNet, unet_config), read_diffusers_weights(path / "unet", "diffusion_pytorch_model"),
                          str(path / "unet")),
        vae=load_weights(build(AutoencoderKL, vae_config), read_diffusers_weights(path / "vae", "diffusion_pytorch_model"),
                         str(path / "vae")),
        diffusion=diffusion,
        image_size=int(sample_size) * vae_config.downsampling,
    )


def load_single_file(path: Path) -> dict:
    """The Pipeline's parts from an original Stable Diffusion 1.x single file (.safetensors). The
    architecture comes from the tensors' shapes; the schedule and resolution are SD 1.x's."""
    with _config_errors(path):
        parts = convert.split_ldm_checkpoint(read_safetensors(path))
        configs = (convert.unet_config_from_ldm(parts["unet"]), convert.vae_config_from_ldm(parts["vae"]),
                   convert.clip_config_from_ldm(parts["text_encoder"]))
    unet_config, vae_config, clip_config = configs
    return dict(
        tokenizer=clip_tokenizer(max_length=clip_config.max_positions),
        text_encoder=load_weights(build(CLIPTextModel, clip_config), parts["text_encoder"], f"{path} (text encoder)"),
        unet=load_weights(build(UNet, unet_config), parts["unet"], f"{path} (U-Net)"),
        vae=load_weights(build(AutoencoderKL, vae_config), parts["vae"], f"{path} (autoencoder)"),
        diffusion=SD1_DIFFUSION,
        image_size=SD1_IMAGE_SIZE,
    )
