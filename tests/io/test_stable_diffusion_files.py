"""Stable Diffusion files (io/convert.py): diffusers' and transformers' configs, and the original single-file
layout, checked against diffusers' own single-file converters on tiny real models."""

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                 convert_ldm_vae_checkpoint)
from transformers import CLIPTextConfig as TransformersCLIPConfig
from transformers import CLIPTextModel as TransformersCLIPModel

from latentlab.io.convert import (clip_config_from_ldm, clip_config_from_transformers, from_transformers_clip_text,
                                  split_ldm_checkpoint, to_ldm_checkpoint, unet_config_from_diffusers,
                                  unet_config_from_ldm, vae_config_from_diffusers, vae_config_from_ldm)
from latentlab.models import CLIPTextConfig, UNetConfig, VAEConfig

# runwayml/stable-diffusion-v1-5's unet/, vae/ and text_encoder/ config.json, as published
SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3,
    "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD15_TEXT = {
    "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"], "attention_dropout": 0.0,
    "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "torch_dtype": "float32",
    "transformers_version": "4.22.0.dev0", "vocab_size": 49408,
}

TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                 norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=8)
TINY_VAE = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
SD_CONVENTIONS = ("heads", "groups", "norm_eps")  # what the shapes of a single file cannot tell


def tiny_unet(**changes) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**{**TINY_UNET, **changes})


def tiny_vae(**changes) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(**{**TINY_VAE, **changes})


def tiny_clip() -> TransformersCLIPModel:
    torch.manual_seed(0)
    return TransformersCLIPModel(TransformersCLIPConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                                        intermediate_size=256, vocab_size=1000, bos_token_id=998,
                                                        eos_token_id=999))


@pytest.fixture(scope="module")
def parts():
    """Tiny diffusers / transformers state dicts of SD 1.x's shape (the U-Net's at TINY_UNET)."""
    return {"unet": tiny_unet().state_dict(), "vae": tiny_vae().state_dict(),
            "text_encoder": tiny_clip().state_dict()}


def assert_same(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].shape == value.shape and torch.equal(got[key], value), key


# ------------------------------------------------------------------ single files, against diffusers' converters

@pytest.mark.parametrize("changes, conventional", [
    ({}, True),  # levels (attention, plain), 1-block levels, 1x1-conv proj_in
    (dict(block_out_channels=(32, 64, 64), layers_per_block=2, in_channels=9, transformer_layers_per_block=2,
          down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
          up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True),
     True),  # inpainting-like input, depth-2 transformers, linear proj_in, attention at the last level
    (dict(attention_head_dim=2, norm_num_groups=16, norm_eps=1e-6, transformer_layers_per_block=(1, 2),
          resnet_time_scale_shift="scale_shift", down_block_types=("CrossAttnDownBlock2D",) * 2,
          up_block_types=("CrossAttnUpBlock2D",) * 2), False),  # per-level depth; scale-shift conditioning
])
def test_unet_single_file_round_trip(parts, changes, conventional):
    """Our writer's file, read by diffusers' converter and by ours, gives back the U-Net, and its inferred
    config is the one of diffusers' config (up to SD 1.x's conventions where the model breaks them)."""
    unet = tiny_unet(**changes)
    ldm = to_ldm_checkpoint(unet.state_dict(), parts["vae"], parts["text_encoder"])
    assert_same(convert_ldm_unet_checkpoint(ldm, dict(unet.config)), unet.state_dict())
    read = split_ldm_checkpoint(ldm)["unet"]
    assert_same(read, unet.state_dict())
    inferred, declared = unet_config_from_ldm(read), unet_config_from_diffusers(dict(unet.config))
    if not conventional:
        declared = dataclasses.replace(declared, **{k: getattr(inferred, k) for k in SD_CONVENTIONS})
    assert inferred == declared


@pytest.mark.parametrize("changes", [
    {},
    dict(block_out_channels=(32, 64, 64), layers_per_block=2, latent_channels=8, use_quant_conv=False,
         use_post_quant_conv=False, down_block_types=("DownEncoderBlock2D",) * 3,
         up_block_types=("UpDecoderBlock2D",) * 3),
])
def test_vae_single_file_round_trip(parts, changes):
    vae = tiny_vae(**changes)
    ldm = to_ldm_checkpoint(parts["unet"], vae.state_dict(), parts["text_encoder"])
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)  # LDM's 1x1 convolutions
    assert_same(convert_ldm_vae_checkpoint(ldm, dict(vae.config)), vae.state_dict())
    read = split_ldm_checkpoint(ldm)["vae"]
    assert_same(read, vae.state_dict())
    assert vae_config_from_ldm(read) == vae_config_from_diffusers(dict(vae.config))


def test_clip_single_file_round_trip(parts):
    clip = tiny_clip()
    want = from_transformers_clip_text(clip.state_dict())  # transformers 5 drops the text_model. level
    ldm = to_ldm_checkpoint(parts["unet"], parts["vae"], clip.state_dict())
    assert_same(convert_ldm_clip_checkpoint(ldm), want)
    read = split_ldm_checkpoint(ldm)["text_encoder"]
    assert_same(read, want)
    assert clip_config_from_ldm(read) == clip_config_from_transformers(clip.config.to_dict())


def test_training_leftovers_and_old_text_keys_are_read_past(parts):
    """LDM buffers, EMA copies and position ids are dropped; text keys without `text_model.` are accepted."""
    ldm = to_ldm_checkpoint(parts["unet"], parts["vae"], parts["text_encoder"])
    text = "cond_stage_model.transformer."
    old = {k.replace(f"{text}text_model.", text): v for k, v in ldm.items()}
    extras = {"betas": torch.ones(3), "alphas_cumprod": torch.ones(3), "model_ema.decay": torch.ones(()),
              "model_ema.diffusion_modelconv_inweight": torch.ones(1),
              f"{text}text_model.embeddings.position_ids": torch.arange(77)[None]}
    assert old.keys() != ldm.keys()
    want = split_ldm_checkpoint(ldm)
    for state in ({**ldm, **extras}, old):
        got = split_ldm_checkpoint(state)
        for name in parts:
            assert_same(got[name], want[name])


def test_stable_diffusion_1_5_full_size_layout():
    """SD 1.5's published configs, built on the meta device: the single file has the published file's key counts
    (686 U-Net, 248 VAE, 196 text tensors besides position_ids) and gives back the same configs."""
    settings = [{k: v for k, v in cfg.items() if not k.startswith("_")} for cfg in (SD15_UNET, SD15_VAE, SD15_TEXT)]
    with torch.device("meta"):
        models = (UNet2DConditionModel(**settings[0]), AutoencoderKL(**settings[1]),
                  TransformersCLIPModel(TransformersCLIPConfig(**settings[2])))
    ldm = to_ldm_checkpoint(*(model.state_dict() for model in models))
    counts = [sum(k.startswith(p) for k in ldm) for p in ("model.diffusion_model.", "first_stage_model.", "cond_")]
    assert counts == [686, 248, 196]
    parts = split_ldm_checkpoint(ldm)
    assert unet_config_from_ldm(parts["unet"]) == unet_config_from_diffusers(SD15_UNET)
    assert vae_config_from_ldm(parts["vae"]) == vae_config_from_diffusers(SD15_VAE)
    assert clip_config_from_ldm(parts["text_encoder"]) == clip_config_from_transformers(SD15_TEXT)


@pytest.mark.parametrize("changes, message", [
    ({"cond_stage_model.model.transformer.resblocks.0.ln_1.weight": torch.ones(1)}, "Stable Diffusion 2.x"),
    ({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(1)},
     "Stable Diffusion XL"),
    ({"model.diffusion_model.input_blocks.1.2.weight": torch.ones(1)}, r"unknown U-Net keys input_blocks\.1\.2"),
    ({"first_stage_model.loss.logvar": torch.ones(1)}, r"unknown VAE keys loss\.logvar"),
    ({"cond_stage_model.transformer.text_projection.weight": torch.ones(1)}, "unknown text encoder keys"),
    ({"control_model.input_blocks.0.0.weight": torch.ones(1)}, r"unknown keys control_model\.input_blocks"),
    ("unet", "no model.diffusion_model. keys"),
])
def test_single_files_we_cannot_read_are_refused(parts, changes, message):
    ldm = to_ldm_checkpoint(parts["unet"], parts["vae"], parts["text_encoder"])
    if changes == "unet":
        ldm = {k: v for k, v in ldm.items() if not k.startswith("model.diffusion_model.")}
    else:
        ldm.update(changes)
    with pytest.raises(ValueError, match=message):
        split_ldm_checkpoint(ldm)


# ------------------------------------------------------------------ configs

def test_stable_diffusion_1_5_configs():
    assert unet_config_from_diffusers(SD15_UNET) == UNetConfig(
        in_channels=4, out_channels=4, channels=(320, 640, 1280, 1280), blocks_per_level=2,
        attention_levels=(True, True, True, False), transformer_depth=1, heads=8, context_dim=768, groups=32,
        dropout=0.0, attention_gates=False, time_conditioning="additive", pooled_text=False,
        linear_projection=False, norm_eps=1e-5) == UNetConfig.stable_diffusion_1()
    assert vae_config_from_diffusers(SD15_VAE) == VAEConfig.stable_diffusion_1() == VAEConfig(
        image_channels=3, latent_channels=4, channels=(128, 256, 512, 512), blocks_per_level=2, groups=32,
        scale_factor=0.18215, quant_conv=True, downsample_padding="asymmetric", attention_bias=True)
    assert clip_config_from_transformers(SD15_TEXT) == CLIPTextConfig(
        vocab_size=49408, width=768, layers=12, heads=12, mlp_width=3072, max_positions=77, activation="quick_gelu",
        layer_norm_eps=1e-5, eos_token_id=49407)  # legacy eos_token_id 2: pooled at the largest id


def test_stable_diffusion_2_head_counts():
    """SD 2.x's attention_head_dim [5, 10, 20, 20] is a head count per level (diffusers' naming quirk)."""
    config = unet_config_from_diffusers({**SD15_UNET, "attention_head_dim": [5, 10, 20, 20],
                                         "use_linear_projection": True, "cross_attention_dim": 1024})
    assert (config.heads, config.linear_projection, config.context_dim) == ((5, 10, 20, 20), True, 1024)


@pytest.mark.parametrize("key, value", [
    ("class_embed_type", "timestep"), ("addition_embed_type", "text_time"), ("encoder_hid_dim", 768),
    ("encoder_hid_dim_type", "text_proj"), ("time_cond_proj_dim", 256), ("num_class_embeds", 1000),
    ("conv_in_kernel", 1), ("conv_out_kernel", 1), ("act_fn", "gelu"), ("flip_sin_to_cos", False),
    ("freq_shift", 1), ("time_embedding_type", "fourier"), ("time_embedding_act_fn", "silu"),
    ("timestep_post_act", "silu"), ("time_embedding_dim", 512), ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"),
    ("mid_block_type", None), ("only_cross_attention", True), ("only_cross_attention", [True, False, False, False]),
    ("dual_cross_attention", True), ("resnet_skip_time_act", True), ("resnet_out_scale_factor", 2.0),
    ("mid_block_scale_factor", 1.5), ("downsample_padding", 0), ("center_input_sample", True),
    ("attention_type", "gated"), ("cross_attention_norm", "group_norm"), ("class_embeddings_concat", True),
    ("reverse_transformer_layers_per_block", [[1], [1], [1], [1]]), ("resnet_time_scale_shift", "spatial"),
    ("layers_per_block", [1, 2, 2, 2]), ("transformer_layers_per_block", [[1, 2], 1, 1, 1]),
    ("norm_num_groups", None), ("cross_attention_dim", [768, 1024, 1024, 1024]),
    ("down_block_types", ["SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]),
    ("up_block_types", ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
    ("a_future_setting", 1),
])
def test_unet_settings_we_cannot_reproduce_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        unet_config_from_diffusers({**SD15_UNET, key: value})


@pytest.mark.parametrize("key, value", [
    ("shift_factor", 0.1159), ("latents_mean", [0.0] * 4), ("latents_std", [1.0] * 4),
    ("mid_block_add_attention", False), ("act_fn", "gelu"), ("out_channels", 4), ("use_quant_conv", False),
    ("down_block_types", ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"]),
    ("up_block_types", ["AttnUpDecoderBlock2D"] * 4), ("a_future_setting", 1),
])
def test_vae_settings_we_cannot_reproduce_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        vae_config_from_diffusers({**SD15_VAE, key: value})


@pytest.mark.parametrize("key, value", [
    ("model_type", "clip"), ("architectures", ["CLIPVisionModel"]), ("hidden_act", "relu"), ("a_future_setting", 1),
    ("hidden_size", "768"), ("num_hidden_layers", 12.5), ("layer_norm_eps", None), ("vocab_size", True),
])
def test_other_text_encoders_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        clip_config_from_transformers({**SD15_TEXT, key: value})


# transformers 4's full dump of a config's generic settings (what older save_pretrained calls wrote)
TRANSFORMERS_4_GENERIC = {
    "return_dict": True, "output_hidden_states": False, "output_attentions": False, "torchscript": False,
    "torch_dtype": None, "use_bfloat16": False, "tf_legacy_loss": False, "pruned_heads": {}, "tie_word_embeddings": True,
    "is_encoder_decoder": False, "is_decoder": False, "cross_attention_hidden_size": None, "add_cross_attention": False,
    "tie_encoder_decoder": False, "max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False,
    "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
    "typical_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "num_return_sequences": 1, "chunk_size_feed_forward": 0,
    "output_scores": False, "return_dict_in_generate": False, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "finetuning_task": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "tokenizer_class": None, "prefix": None, "sep_token_id": None,
    "decoder_start_token_id": None, "task_specific_params": None, "problem_type": None,
}


def test_text_encoder_configs_of_every_transformers_version_are_read():
    want = clip_config_from_transformers(SD15_TEXT)
    assert clip_config_from_transformers({**TRANSFORMERS_4_GENERIC, **SD15_TEXT}) == want
    assert clip_config_from_transformers(TransformersCLIPConfig(**{k: v for k, v in SD15_TEXT.items()
                                                                   if not k.startswith("_")}).to_dict()) == want


# ------------------------------------------------------------------ single files that break SD 1.x's conventions

def ldm_file(tmp_path, parts, unet=None, vae=None, text_encoder=None):
    """A single file of the tiny parts, with the given networks' state dicts instead."""
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(to_ldm_checkpoint(unet or parts["unet"], vae or parts["vae"], text_encoder or parts["text_encoder"]),
              path)
    return path


@pytest.mark.parametrize("part, model", [
    ("unet", lambda: tiny_unet(block_out_channels=(16, 32), norm_num_groups=8)),
    ("unet", lambda: tiny_unet(block_out_channels=(48, 64), norm_num_groups=16)),
    ("vae", lambda: tiny_vae(block_out_channels=(16, 32), norm_num_groups=8)),
])
def test_single_files_whose_widths_do_not_fit_32_groups_are_refused(parts, tmp_path, part, model):
    """A single file does not record its group-norm groups: widths that 32 groups (SD 1.x's) cannot split are
    refused, in one line naming the assumption and the way to give the groups, instead of read with other groups."""
    from latentlab.errors import CheckpointError
    from latentlab.pipeline import Pipeline

    path = ldm_file(tmp_path, parts, **{part: model().state_dict()})
    with pytest.raises(CheckpointError, match=f"{path}: .*32 groups.*norm_num_groups") as error:
        Pipeline.load(path, device="cpu")
    assert "\n" not in str(error.value)


def test_single_file_text_encoders_narrower_than_sd_heads_are_refused(parts, tmp_path):
    from latentlab.errors import CheckpointError
    from latentlab.pipeline import Pipeline

    torch.manual_seed(0)
    narrow = TransformersCLIPModel(TransformersCLIPConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1,
                                                          intermediate_size=64, vocab_size=1000))
    path = ldm_file(tmp_path, parts, text_encoder=narrow.state_dict())
    with pytest.raises(CheckpointError, match=f"{path}: the text encoder is 32 wide.*64-wide heads") as error:
        Pipeline.load(path, device="cpu")
    assert "heads must be positive" not in str(error.value) and "\n" not in str(error.value)
