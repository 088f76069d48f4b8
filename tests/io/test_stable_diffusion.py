"""Stable Diffusion 1.x files, end to end: a tiny SD-shaped pipeline saved by diffusers' own save_pretrained,
and the same weights as an original single file, loaded and run by latentlab (Python API and CLI) and
checked image for image against diffusers' StableDiffusionPipeline."""

import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

from latentlab.cli import main
from latentlab.errors import CheckpointError
from latentlab.io.convert import to_ldm_checkpoint
from latentlab.io.stable_diffusion import read_clip_tokenizer
from latentlab.models import clip_tokenizer
from latentlab.pipeline import Pipeline

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

SD15_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
PROMPTS = ["a red circle", "two blue squares, side by side"]


@pytest.fixture(scope="module")
def sd(tmp_path_factory, tiny_sd_components):
    """(diffusers pipeline, its save_pretrained folder, the same weights as an original single file)."""
    pipe = StableDiffusionPipeline(**tiny_sd_components())
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    pipe.save_pretrained(folder, safe_serialization=True)
    single = folder.parent / "tiny-sd.safetensors"
    save_file(to_ldm_checkpoint(pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict()), single)
    return pipe, folder, single


def initial_noise(n: int, seed: int, shape=(4, 8, 8)) -> torch.Tensor:
    """x_T as latentlab's Pipeline.sample draws it: image i from a generator seeded with seed + i."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


def diffusers_images(pipe, steps=4, guidance=3.0, seed=0):
    """DDIM, eta 0, trailing timesteps: the run latentlab's `ddim` sampler takes with spacing="trailing"."""
    pipe.scheduler = DDIMScheduler(**SD15_SCHEDULER, steps_offset=0, clip_sample=False, set_alpha_to_one=True,
                                   timestep_spacing="trailing")
    out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, latents=initial_noise(len(PROMPTS), seed),
               output_type="pt", height=16, width=16)
    return out.images  # (B, 3, H, W) in [0, 1]


def our_images(pipe, steps=4, guidance=3.0, seed=0):
    images = pipe.sample(PROMPTS, steps=steps, guidance=guidance, seed=seed, sampler="ddim", spacing="trailing", size=16)
    return (images / 2 + 0.5).clamp(0, 1)


@pytest.fixture(scope="module")
def reference(sd):
    with torch.no_grad():
        return diffusers_images(sd[0])


def test_diffusers_folder_draws_diffusers_images(sd, reference):
    pipe = Pipeline.load(sd[1], device="cpu")
    assert pipe.image_size == 16 and pipe.diffusion.schedule == "scaled_linear"
    got = our_images(pipe)
    assert reference.std() > 0.05  # the images are not flat: the comparison means something
    assert (got - reference).abs().max() < 1e-4


def test_single_file_draws_the_same_images(sd, reference):
    pipe = Pipeline.load(sd[2], device="cpu")
    assert pipe.unet.config.channels == (32, 64) and pipe.unet.config.heads == 8
    assert (our_images(pipe) - reference).abs().max() < 1e-4


def test_saved_as_latentlab_folder_and_read_back(sd, tmp_path):
    pipe = Pipeline.load(sd[1], device="cpu")
    pipe.save(tmp_path / "ours")
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["text_encoder"] == "clip"
    assert torch.equal(our_images(Pipeline.load(tmp_path / "ours", device="cpu")), our_images(pipe))


@pytest.mark.parametrize("which", [1, 2])
def test_cli_generates_from_both(sd, tmp_path, which, capsys):
    out = tmp_path / "images"
    code = main(["generate", "a red circle", "--model", str(sd[which]), "--steps", "2", "--size", "16",
                 "--out", str(out), "--device", "cpu"])
    assert code in (0, None) and (out / "000-a-red-circle.png").is_file() and (out / "grid.png").is_file()


def test_pickle_only_folder_is_refused(sd, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(sd[1], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(CheckpointError, match="only pickles .*diffusion_pytorch_model.bin.*safe_serialization=True"):
        Pipeline.load(folder, device="cpu")


def test_other_pipelines_are_refused(sd, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(sd[1], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="unet is .*UNet2DModel.*accepted: a UNet2DConditionModel"):
        Pipeline.load(folder, device="cpu")


def test_unsupported_unet_config_names_the_file(sd, tmp_path):
    folder = tmp_path / "lcm"
    shutil.copytree(sd[1], folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["time_cond_proj_dim"] = 256
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unet/config.json: .*time_cond_proj_dim"):
        Pipeline.load(folder, device="cpu")


@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab.json + merges.txt"])
def test_both_tokenizer_layouts_give_clips_ids(sd, clip_vocab_files, tmp_path, layout):
    """transformers 5 saves tokenizer.json, transformers 4 (SD 1.x's own folders) vocab.json and merges.txt."""
    folder = tmp_path / "tokenizer"
    shutil.copytree(sd[1] / "tokenizer", folder)
    if layout != "tokenizer.json":
        (folder / "tokenizer.json").unlink()
        for f in clip_vocab_files:
            shutil.copy(f, folder / f.name)
    prompts = PROMPTS + ["Ünïcode, 'quotes' & <|endoftext|> symbols!!", "word " * 100]
    want = clip_tokenizer()(prompts)
    got = read_clip_tokenizer(folder, 77)(prompts)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("changes, message", [
    ({"_class_name": "StableDiffusionXLPipeline"}, "StableDiffusionXLPipeline.*accepted: StableDiffusionPipeline"),
    ({"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}, "text_encoder_2"),
    ({"controlnet": ["diffusers", "ControlNetModel"]}, "controlnet"),
])
def test_pipelines_the_loader_does_not_understand_are_refused(sd, tmp_path, changes, message):
    folder = tmp_path / "other"
    shutil.copytree(sd[1], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **changes}))
    with pytest.raises(CheckpointError, match=f"model_index.json: .*{message}"):
        Pipeline.load(folder, device="cpu")


@pytest.mark.parametrize("part, file, changes, message", [
    ("text_encoder", "config.json", {"a_future_setting": 1}, "a_future_setting"),
    ("text_encoder", "config.json", {"hidden_size": "64"}, "hidden_size"),
    ("scheduler", "scheduler_config.json", {"a_future_setting": 1}, "a_future_setting"),
    ("scheduler", "scheduler_config.json", {"_class_name": "FlowMatchEulerDiscreteScheduler"}, "FlowMatch"),
    ("scheduler", "scheduler_config.json", {"num_train_timesteps": [1000]}, "num_train_timesteps"),
    ("unet", "config.json", {"block_out_channels": 32}, "block_out_channels"),
    ("unet", "config.json", {"norm_num_groups": "32"}, "norm_num_groups"),
    ("unet", "config.json", {"sample_size": [8, 8]}, "sample_size"),
    ("unet", "config.json", {"norm_eps": None}, "norm_eps"),
    ("vae", "config.json", {"latent_channels": 4.5}, "latent_channels"),
    ("vae", "config.json", {"scaling_factor": "0.18215"}, "scaling_factor"),
])
def test_component_configs_the_loader_does_not_understand_are_one_line_errors(sd, tmp_path, part, file, changes,
                                                                             message):
    folder = tmp_path / "other"
    shutil.copytree(sd[1], folder)
    config = folder / part / file
    config.write_text(json.dumps({**json.loads(config.read_text()), **changes}))
    with pytest.raises(CheckpointError, match=f"{config}: .*{message}") as error:
        Pipeline.load(folder, device="cpu")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", ["77", None, 0, float("nan")])
def test_a_bad_tokenizer_length_is_a_one_line_error(sd, tmp_path, value):
    folder = tmp_path / "tokenizer"
    shutil.copytree(sd[1] / "tokenizer", folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": value}))
    with pytest.raises(CheckpointError, match="tokenizer_config.json: model_max_length"):
        read_clip_tokenizer(folder, 77)
