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
What a single file's shapes cannot tell follows SD 1.x (32 group-norm groups; 8 heads in the U-Net,
64-wide ones in the text encoder), and widths those cannot split are refused. A model that breaks these
conventions loads as a diffusers folder, whose configs say its groups and heads: diffusers'
`StableDiffusionPipeline.from_single_file(path, config=FOLDER_WITH_ITS_CONFIGS).save_pretrained(OUT)`.
Settings, components and pipelines that the loader does not understand are refused, not ignored.
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
# a diffusers folder's model_index.json: the pipeline read, its networks' classes, its other components (the
# scheduler's class is checked with its config), and those read past (the safety checker and its image
# processor, IP-Adapter's image encoder: none takes part in text to image)
# the same components; an inpainting pipeline's U-Net takes the mask and the masked image's latents too
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
CLASSES = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
           "tokenizer": "CLIPTokenizer"}
COMPONENTS = (*CLASSES, "scheduler", "safety_checker", "feature_extractor", "image_encoder", "requires_safety_checker")


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file() and "_class_name" in read_json(path / "model_index.json")


@contextmanager
def _config_errors(source: Path):
    """A config translation's ValueError, as a CheckpointError naming the file; so too the errors of a value
    that the translation's checks let through (an empty list, a missing tensor)."""
    try:
        yield
    except CheckpointError:
        raise
    except KeyError as e:
        raise CheckpointError(f"{source}: {e.args[0]!r} is missing; accepted: a Stable Diffusion 1.x model") from None
    except (ValueError, TypeError, IndexError, ZeroDivisionError, OverflowError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def check_pipeline_index(path: Path, index: dict) -> None:
    """A diffusers model_index.json names a Stable Diffusion 1.x pipeline of the components the loader reads."""
    if index.get("_class_name") not in PIPELINES:
        raise CheckpointError(f"{path}: the pipeline is {index.get('_class_name')!r}; accepted: "
                              f"{' or '.join(PIPELINES)} (Stable Diffusion 1.x)")
    unknown = [key for key in index if not key.startswith("_") and key not in COMPONENTS]
    if unknown:
        raise CheckpointError(f"{path}: components {unknown} are not a {PIPELINES[0]}'s; accepted: "
                              f"{', '.join(COMPONENTS)}")
    for part, kind in CLASSES.items():
        given = index.get(part)
        accepted = (kind, kind + "Fast", kind + "WithProjection")
        if not isinstance(given, list) or len(given) != 2 or given[1] not in accepted:
            raise CheckpointError(f"{path}: {part} is {given!r}; accepted: a {kind} (Stable Diffusion 1.x's pipeline "
                                  "layout)")


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
    max_length = config.get("model_max_length", max_positions)
    if isinstance(max_length, bool) or not isinstance(max_length, (int, float)) or not max_length >= 1:
        raise CheckpointError(f"{folder / 'tokenizer_config.json'}: model_max_length is {max_length!r}; accepted: "
                              "a positive number")
    max_length = int(min(max_length, max_positions))
    if (folder / "vocab.json").is_file() or not (folder / "tokenizer.json").is_file():
        return clip_tokenizer_from_files(folder / "vocab.json", folder / "merges.txt", max_length=max_length)
    return clip_tokenizer_from_tokenizer_json(folder / "tokenizer.json", max_length=max_length)


def load_diffusers_folder(path: Path) -> dict:
    """The Pipeline's parts from a diffusers StableDiffusionPipeline folder."""
    check_pipeline_index(path / "model_index.json", read_json(path / "model_index.json"))
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
    sample_size = unet_json.get("sample_size")
    sample_size = SD1_IMAGE_SIZE // vae_config.downsampling if sample_size is None else sample_size
    if sample_size < 1:
        raise CheckpointError(f"{path / 'unet' / 'config.json'}: sample_size is {sample_size}; accepted: a positive "
                              "integer")
    return dict(
        tokenizer=read_clip_tokenizer(path / "tokenizer", clip_config.max_positions),
        text_encoder=load_weights(build(CLIPTextModel, clip_config, str(path / "text_encoder" / "config.json")),
                                  text_weights, str(path / "text_encoder")),
        unet=load_weights(build(UNet, unet_config, str(path / "unet" / "config.json")),
                          read_diffusers_weights(path / "unet", "diffusion_pytorch_model"), str(path / "unet")),
        vae=load_weights(build(AutoencoderKL, vae_config, str(path / "vae" / "config.json")),
                         read_diffusers_weights(path / "vae", "diffusion_pytorch_model"), str(path / "vae")),
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
        text_encoder=load_weights(build(CLIPTextModel, clip_config, f"{path} (text encoder)"), parts["text_encoder"],
                                  f"{path} (text encoder)"),
        unet=load_weights(build(UNet, unet_config, f"{path} (U-Net)"), parts["unet"], f"{path} (U-Net)"),
        vae=load_weights(build(AutoencoderKL, vae_config, f"{path} (autoencoder)"), parts["vae"],
                         f"{path} (autoencoder)"),
        diffusion=SD1_DIFFUSION,
        image_size=SD1_IMAGE_SIZE,
    )
