"""Checkpoint key translation, in one place: foreign state dicts -> the key names of our modules.

The model files never see foreign key names; each function here takes a state dict as stored by
another library and returns the one our module loads with strict=True.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from .checkpoint import check_fields, check_value

if TYPE_CHECKING:
    from ..models import VAEConfig

StateDict = dict[str, torch.Tensor]


def from_transformers_bert(state: StateDict) -> StateDict:
    """transformers' BertModel -> models.bert.BertModel: drop the position-id buffer (positions are
    0 .. L-1 by construction) and the pooler (the context is the per-token states, not a sentence vector)."""
    return {k: v for k, v in state.items() if k != "embeddings.position_ids" and not k.startswith("pooler.")}


def from_transformers_clip_text(state: StateDict) -> StateDict:
    """transformers' CLIPTextModel -> models.clip.CLIPTextModel. Files written by transformers 4 (Stable
    Diffusion 1.x's text_encoder/ among them) carry the `text_model.` level, transformers 5 drops it:
    add it where missing. Older files also store the position-id buffer: drop it (positions are
    0 .. L-1 by construction; some merged checkpoints hold it as corrupted floats)."""
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    return {k: v for k, v in state.items() if k != "text_model.embeddings.position_ids"}


# diffusers' beta_schedule names, and the betas' ends each of our schedules uses
_DIFFUSERS_SCHEDULES = {"linear": ("linear", (1e-4, 0.02)), "scaled_linear": ("scaled_linear", (0.00085, 0.012)),
                        "squaredcos_cap_v2": ("cosine", None)}
_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# diffusers' schedulers of the DDPM family (a discrete beta schedule; not EDM's sigmas, not flow matching)
_DIFFUSERS_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler", "DDIMInverseScheduler",
    "DDPMParallelScheduler", "DDIMParallelScheduler", "SASolverScheduler")
# the settings that describe the training process, read below, with their types
_DIFFUSERS_SCHEDULER_TYPES = {"beta_schedule": str, "beta_start": float, "beta_end": float,
                              "num_train_timesteps": int, "prediction_type": str, "variance_type": str | None,
                              "rescale_betas_zero_snr": bool}
# settings that would make the model another kind of process (flow matching, continuous time): key -> accepted
_DIFFUSERS_SCHEDULER_FIXED = {"use_flow_sigmas": (False,), "use_dynamic_shifting": (False,),
                              "timestep_type": ("discrete",)}
# how those schedulers sample, as of diffusers 0.42 (and tensor_format, of its first versions): not read here
_DIFFUSERS_SCHEDULER_SAMPLING = (
    "algorithm_type", "clip_sample", "clip_sample_range", "corrector_order", "disable_corrector",
    "dynamic_thresholding_ratio", "euler_at_final", "final_sigmas_type", "flow_shift", "interpolation_type",
    "lambda_min_clipped", "lower_order_final", "noise_sampler_seed", "original_inference_steps", "predict_x0",
    "predictor_order", "sample_max_value", "set_alpha_to_one", "shift_terminal", "sigma_max", "sigma_min",
    "skip_prk_steps", "solver_order", "solver_p", "solver_type", "steps_offset", "tau_func", "tensor_format",
    "thresholding", "time_shift_type", "timestep_scaling", "timestep_spacing", "trained_betas", "use_beta_sigmas",
    "use_exponential_sigmas", "use_karras_sigmas", "use_lu_lambdas")


def diffusion_config_from_diffusers(scheduler: dict):
    """A diffusers scheduler config (scheduler/scheduler_config.json) -> DiffusionConfig. Only the
    training process is read (schedule, T, target, zero-SNR rescaling); how diffusers would sample is
    the sampler's business here. A schedule we cannot reproduce exactly, a scheduler outside the DDPM
    family and a setting unknown to diffusers 0.42 are errors, not guesses."""
    from ..diffusion import DiffusionConfig

    kind = scheduler.get("_class_name", "DDPMScheduler")
    if kind not in _DIFFUSERS_SCHEDULERS:
        raise ValueError(f"diffusers scheduler {kind!r} is not supported; accepted: the DDPM family's "
                         f"({', '.join(_DIFFUSERS_SCHEDULERS)})")
    known = (*_DIFFUSERS_SCHEDULER_TYPES, *_DIFFUSERS_SCHEDULER_SAMPLING)
    _check_settings(scheduler, _DIFFUSERS_SCHEDULER_FIXED, known, "scheduler")
    for key, kind in _DIFFUSERS_SCHEDULER_TYPES.items():
        if key in scheduler:
            check_value(key, scheduler[key], kind)
    name = scheduler.get("beta_schedule", "linear")
    if name not in _DIFFUSERS_SCHEDULES:
        raise ValueError(f"diffusers beta_schedule {name!r} is not supported; accepted: {', '.join(_DIFFUSERS_SCHEDULES)}")
    if scheduler.get("trained_betas") is not None:
        raise ValueError("a scheduler config with trained_betas is not supported; accepted: a named beta_schedule")
    schedule, ends = _DIFFUSERS_SCHEDULES[name]
    T = int(scheduler.get("num_train_timesteps", 1000))
    if ends is not None:
        given = (float(scheduler.get("beta_start", 1e-4)), float(scheduler.get("beta_end", 0.02)))
        want = tuple(e * 1000 / T for e in ends) if schedule == "linear" else ends
        if any(abs(g - w) > 1e-9 for g, w in zip(given, want)):
            raise ValueError(f"{name} betas from {given[0]} to {given[1]} over {T} steps are not our {schedule} "
                             f"schedule; accepted: {want[0]:g} to {want[1]:g}")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in _DIFFUSERS_PREDICTIONS:
        raise ValueError(f"diffusers prediction_type {prediction!r} is not supported; accepted: "
                         f"{', '.join(_DIFFUSERS_PREDICTIONS)}")
    variance = scheduler.get("variance_type", "fixed_small")
    return DiffusionConfig(schedule=schedule, timesteps=T, prediction=_DIFFUSERS_PREDICTIONS[prediction],
                           learned_variance=variance in ("learned", "learned_range"),
                           zero_terminal_snr=bool(scheduler.get("rescale_betas_zero_snr", False)))


# ------------------------------------------------------------------ Stable Diffusion files
#
# Stable Diffusion 1.x comes as a diffusers folder (a config.json per component, read by the
# *_from_diffusers / *_from_transformers functions) or as the original CompVis single file, whose keys
# (model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*) are translated to
# diffusers' / transformers' names here and whose configs are inferred from the tensors' shapes.

# diffusers UNet2DConditionModel settings our U-Net has one behaviour for: key -> accepted values
# (an absent key takes diffusers' default, which is the first accepted value)
_DIFFUSERS_UNET_FIXED = {
    "center_input_sample": (False,), "flip_sin_to_cos": (True,), "freq_shift": (0,), "act_fn": ("silu",),
    "time_embedding_type": ("positional",), "time_embedding_act_fn": (None,), "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,), "conv_in_kernel": (3,), "conv_out_kernel": (3,), "downsample_padding": (1,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",), "mid_block_scale_factor": (1,),
    "only_cross_attention": (False,), "mid_block_only_cross_attention": (None, False),
    "dual_cross_attention": (False,), "class_embed_type": (None,), "num_class_embeds": (None,),
    "class_embeddings_concat": (False,), "addition_embed_type": (None,), "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,), "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1,),
    "attention_type": ("default",), "cross_attention_norm": (None,), "reverse_transformer_layers_per_block": (None,),
}
# diffusers' defaults for the settings that we translate (SD 1.5's config.json predates some of them)
_DIFFUSERS_UNET_DEFAULTS = {
    "in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "attention_head_dim": 8,
    "num_attention_heads": None, "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "norm_num_groups": 32, "norm_eps": 1e-5, "dropout": 0.0, "use_linear_projection": False,
    "resnet_time_scale_shift": "default", "time_embedding_dim": None,
}
# settings that do not change what the network computes (or only matter with a refused one)
_DIFFUSERS_UNET_IGNORED = ("sample_size", "upcast_attention", "addition_time_embed_dim",
                           "projection_class_embeddings_input_dim", "addition_embed_type_num_heads")
# the types of the settings that we translate
_DIFFUSERS_UNET_TYPES = {
    "in_channels": int, "out_channels": int, "block_out_channels": tuple[int, ...],
    "layers_per_block": int | tuple[int, ...], "down_block_types": tuple[str, ...], "up_block_types": tuple[str, ...],
    "attention_head_dim": int | tuple[int, ...], "num_attention_heads": int | tuple[int, ...] | None,
    "cross_attention_dim": int | tuple[int, ...], "transformer_layers_per_block": int | tuple[int, ...],
    "norm_num_groups": int, "norm_eps": float, "dropout": float, "use_linear_projection": bool,
    "resnet_time_scale_shift": str, "time_embedding_dim": int | None, "sample_size": int | None,
}
_DOWN_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # block type -> has attention
_UP_BLOCKS = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
_TIME_CONDITIONING = {"default": "additive", "scale_shift": "scale_shift"}


def _check_settings(cfg: dict, fixed: dict, known, what: str) -> None:
    """Every key of a diffusers config is known, and each fixed setting has an accepted value."""
    for key, value in cfg.items():
        if key.startswith("_"):
            continue  # _class_name, _diffusers_version, _name_or_path, ...
        if key not in fixed and key not in known:
            raise ValueError(f"diffusers {what} setting {key!r} is unknown here; accepted: {what}'s settings "
                             "as of diffusers 0.42")
        if key in fixed and _uniform(value) not in fixed[key]:
            raise ValueError(f"diffusers {what} {key}={value!r} is not supported; accepted: "
                             f"{' or '.join(map(repr, fixed[key]))}")


def _uniform(value):
    """A per-level list whose entries agree -> that entry; anything else unchanged."""
    if isinstance(value, (list, tuple)) and value and all(v == value[0] for v in value):
        return value[0]
    return value


def _per_level(values, what: str):
    """One value per level -> an int where all agree, else a tuple; nested lists are refused."""
    if isinstance(values, int):
        return values
    if not all(isinstance(v, int) for v in values):
        raise ValueError(f"diffusers {what}={values!r} is not supported; accepted: an int or one int per level")
    return _uniform(tuple(values))


def _unet_attention_levels(cfg: dict) -> tuple[bool, ...]:
    """Which levels carry transformers, from diffusers' block types; the decoder must mirror the encoder."""
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    for name, types, known in (("down_block_types", down, _DOWN_BLOCKS), ("up_block_types", up, _UP_BLOCKS)):
        if any(t not in known for t in types):
            raise ValueError(f"diffusers UNet {name} {types} is not supported; accepted: {', '.join(known)}")
    attention = tuple(_DOWN_BLOCKS[t] for t in down)
    if tuple(_UP_BLOCKS[t] for t in reversed(up)) != attention or len(down) != len(cfg["block_out_channels"]):
        raise ValueError(f"diffusers UNet up_block_types {up} do not mirror down_block_types {down}; "
                         "accepted: the down types reversed, Down -> Up, one per block_out_channels entry")
    return attention


def _unet_kwargs_from_diffusers(cfg: dict) -> dict:
    """The UNetConfig fields of a diffusers UNet2DConditionModel config (see unet_config_from_diffusers)."""
    cfg = {**_DIFFUSERS_UNET_DEFAULTS, **cfg}
    known = (*_DIFFUSERS_UNET_DEFAULTS, *_DIFFUSERS_UNET_IGNORED)
    _check_settings(cfg, _DIFFUSERS_UNET_FIXED, known, "UNet2DConditionModel")
    for key, kind in _DIFFUSERS_UNET_TYPES.items():
        check_value(key, cfg.get(key), kind)
    channels = tuple(cfg["block_out_channels"])
    for key in ("layers_per_block", "cross_attention_dim", "norm_num_groups"):
        if not isinstance(_uniform(cfg[key]), int):
            raise ValueError(f"diffusers UNet {key}={cfg[key]!r} is not supported; accepted: one int for every level")
    if cfg["time_embedding_dim"] not in (None, 4 * channels[0]):
        raise ValueError(f"diffusers UNet time_embedding_dim={cfg['time_embedding_dim']} is not supported; "
                         f"accepted: None or 4 * block_out_channels[0] = {4 * channels[0]}")
    shift = cfg["resnet_time_scale_shift"]
    if shift not in _TIME_CONDITIONING:
        raise ValueError(f"diffusers UNet resnet_time_scale_shift={shift!r} is not supported; "
                         f"accepted: {', '.join(_TIME_CONDITIONING)}")
    heads = cfg["num_attention_heads"] or cfg["attention_head_dim"]  # diffusers' naming quirk: a head count
    return dict(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], channels=channels,
                blocks_per_level=_uniform(cfg["layers_per_block"]), attention_levels=_unet_attention_levels(cfg),
                transformer_depth=_per_level(cfg["transformer_layers_per_block"], "UNet transformer_layers_per_block"),
                heads=_per_level(heads, "UNet attention_head_dim"), context_dim=_uniform(cfg["cross_attention_dim"]),
                groups=_uniform(cfg["norm_num_groups"]), dropout=float(cfg["dropout"]), attention_gates=False,
                time_conditioning=_TIME_CONDITIONING[shift], pooled_text=False,
                linear_projection=bool(cfg["use_linear_projection"]), norm_eps=float(cfg["norm_eps"]))


def unet_config_from_diffusers(cfg: dict):
    """A diffusers UNet2DConditionModel config (unet/config.json) -> UNetConfig.

    diffusers' attention_head_dim is, while num_attention_heads is None (always, in released
    versions), the number of heads per attention layer: SD 1.x's 8 means 8 heads at every level,
    SD 2.x's [5, 10, 20, 20] one count per level. Settings our U-Net cannot reproduce exactly (class or
    added embeddings, other block types, kernels, activations, ...) are errors, not approximations.
    """
    from ..models import UNetConfig

    return UNetConfig(**_unet_kwargs_from_diffusers(cfg))


_DIFFUSERS_VAE_FIXED = {"act_fn": ("silu",), "shift_factor": (None, 0), "latents_mean": (None,),
                        "latents_std": (None,), "mid_block_add_attention": (True,),
                        "down_block_types": ("DownEncoderBlock2D",), "up_block_types": ("UpDecoderBlock2D",)}
_DIFFUSERS_VAE_DEFAULTS = {"in_channels": 3, "out_channels": 3, "block_out_channels": (64,), "layers_per_block": 1,
                           "latent_channels": 4, "norm_num_groups": 32, "scaling_factor": 0.18215,
                           "use_quant_conv": True, "use_post_quant_conv": True}
_DIFFUSERS_VAE_IGNORED = ("sample_size", "force_upcast")
_DIFFUSERS_VAE_TYPES = {"in_channels": int, "out_channels": int, "block_out_channels": tuple[int, ...],
                        "layers_per_block": int, "latent_channels": int, "norm_num_groups": int,
                        "scaling_factor": float, "use_quant_conv": bool, "use_post_quant_conv": bool,
                        "down_block_types": tuple[str, ...], "up_block_types": tuple[str, ...]}


def vae_config_from_diffusers(cfg: dict):
    """A diffusers AutoencoderKL config (vae/config.json) -> VAEConfig. Every diffusers autoencoder pads
    its downsampling asymmetrically and has biases on the mid-block attention; latent shift or
    per-channel statistics, other block types and an image size that changes on the way are errors."""
    from ..models import VAEConfig

    cfg = {**_DIFFUSERS_VAE_DEFAULTS, **cfg}
    _check_settings(cfg, _DIFFUSERS_VAE_FIXED, (*_DIFFUSERS_VAE_DEFAULTS, *_DIFFUSERS_VAE_IGNORED), "AutoencoderKL")
    for key, kind in _DIFFUSERS_VAE_TYPES.items():
        if key in cfg:
            check_value(key, cfg[key], kind)
    if cfg["in_channels"] != cfg["out_channels"]:
        raise ValueError(f"diffusers AutoencoderKL in_channels={cfg['in_channels']} and out_channels="
                         f"{cfg['out_channels']} differ; accepted: the same image channels in and out")
    if cfg["use_quant_conv"] != cfg["use_post_quant_conv"]:
        raise ValueError("diffusers AutoencoderKL use_quant_conv and use_post_quant_conv differ; accepted: both "
                         "true or both false")
    if len(cfg["down_block_types"]) != len(cfg["block_out_channels"]):
        raise ValueError(f"diffusers AutoencoderKL has {len(cfg['down_block_types'])} down_block_types for "
                         f"{len(cfg['block_out_channels'])} block_out_channels; accepted: one per level")
    return VAEConfig(image_channels=cfg["in_channels"], latent_channels=cfg["latent_channels"],
                     channels=tuple(cfg["block_out_channels"]), blocks_per_level=cfg["layers_per_block"],
                     groups=cfg["norm_num_groups"], scale_factor=float(cfg["scaling_factor"]),
                     quant_conv=bool(cfg["use_quant_conv"]), downsample_padding="asymmetric", attention_bias=True)


_CLIP_ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection")
# transformers' CLIPTextConfig settings -> our CLIPTextConfig's fields
_TRANSFORMERS_CLIP_FIELDS = {"vocab_size": "vocab_size", "hidden_size": "width", "num_hidden_layers": "layers",
                             "num_attention_heads": "heads", "intermediate_size": "mlp_width",
                             "max_position_embeddings": "max_positions", "hidden_act": "activation",
                             "layer_norm_eps": "layer_norm_eps", "eos_token_id": "eos_token_id"}
# CLIP settings that do not change what the text tower computes: dropout (off at inference), initialisation,
# the token ids generation would use, the projection of CLIPTextModelWithProjection (not used)
_TRANSFORMERS_CLIP_IGNORED = ("model_type", "architectures", "attention_dropout", "dropout", "initializer_range",
                              "initializer_factor", "projection_dim", "bos_token_id", "pad_token_id")
# every transformers model config's generic settings, as of transformers 4 and 5 (what an output holds, how
# generate() would run, labels, dtypes, versions): none changes the text tower's states
_TRANSFORMERS_GENERIC = (
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "torch_dtype", "dtype",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "tie_word_embeddings", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "finetuning_task", "id2label",
    "label2id", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params",
    "problem_type", "transformers_version", "gradient_checkpointing")


def clip_config_from_transformers(cfg: dict):
    """A transformers CLIPTextConfig (text_encoder/config.json) -> CLIPTextConfig; absent keys take
    transformers' defaults, and a setting transformers' CLIPTextConfig does not have is an error. Legacy
    configs (SD 1.x's among them) say eos_token_id=2, and transformers then pools at the largest token id,
    which is "<|endoftext|>" = vocab_size - 1 (49407): we record that id."""
    from ..models import CLIPTextConfig
    from ..models.clip import ACTIVATIONS

    for key in cfg:
        if not key.startswith("_") and key not in (*_TRANSFORMERS_CLIP_FIELDS, *_TRANSFORMERS_CLIP_IGNORED,
                                                    *_TRANSFORMERS_GENERIC):
            raise ValueError(f"transformers CLIPTextConfig setting {key!r} is unknown here; accepted: "
                             "CLIPTextConfig's settings as of transformers 5")
    if cfg.get("model_type", "clip_text_model") != "clip_text_model":
        raise ValueError(f"transformers model_type {cfg['model_type']!r} is not supported; accepted: clip_text_model")
    others = [name for name in cfg.get("architectures") or () if name not in _CLIP_ARCHITECTURES]
    if others:
        raise ValueError(f"transformers architectures {others} are not supported; "
                         f"accepted: {', '.join(_CLIP_ARCHITECTURES)}")
    defaults = {"vocab_size": 49408, "hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
                "intermediate_size": 2048, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5, "eos_token_id": 49407}
    fields = {ours: cfg.get(theirs, defaults[theirs]) for theirs, ours in _TRANSFORMERS_CLIP_FIELDS.items()}
    check_fields(CLIPTextConfig, fields, {ours: theirs for theirs, ours in _TRANSFORMERS_CLIP_FIELDS.items()})
    if fields["activation"] not in ACTIVATIONS:
        raise ValueError(f"transformers hidden_act {fields['activation']!r} is not supported; accepted: "
                         f"{', '.join(ACTIVATIONS)}")
    if fields["eos_token_id"] == 2:
        fields["eos_token_id"] = fields["vocab_size"] - 1
    return CLIPTextConfig(**{**fields, "layer_norm_eps": float(fields["layer_norm_eps"])})


# The single file: component prefixes, and what the prefixes of other models' files say they are
_LDM_PARTS = {"model.diffusion_model.": "unet", "first_stage_model.": "vae",
              "cond_stage_model.transformer.": "text_encoder"}
_LDM_FOREIGN = {"cond_stage_model.model.": "a Stable Diffusion 2.x file (OpenCLIP text encoder)",
                "conditioner.embedders.": "a Stable Diffusion XL file (two text encoders)"}

# (LDM, diffusers) names inside one residual block of the U-Net, of the autoencoder, and in its attention
_LDM_UNET_RESNET = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                    ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))
_LDM_VAE_RESNET = (("norm1.", "norm1."), ("conv1.", "conv1."), ("norm2.", "norm2."), ("conv2.", "conv2."),
                   ("nin_shortcut.", "conv_shortcut."))
_LDM_VAE_ATTENTION = (("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."),
                      ("proj_out.", "to_out.0."))
_VAE_ATTENTION_WEIGHTS = tuple(f"mid_block.attentions.0.{p}.weight" for p in ("to_q", "to_k", "to_v", "to_out.0"))
_CLIP_KEY = re.compile(r"text_model\.(embeddings\.(token|position)_embedding\.weight|final_layer_norm\.(weight|bias)"
                       r"|encoder\.layers\.\d+\.(self_attn\.[qkv]_proj|self_attn\.out_proj|layer_norm[12]|mlp\.fc[12])"
                       r"\.(weight|bias))")


def _unet_key_map(levels: int, blocks: int, attention: tuple[bool, ...]) -> list[tuple[str, str]]:
    """(LDM prefix, diffusers prefix) pairs of a U-Net with `levels` levels of `blocks` residual blocks.

    LDM numbers its blocks flat: input_blocks.0 is conv_in, then each level's blocks (a resnet `.0`, its
    transformer `.1` where the level has attention) and a downsampler `.0.op` except after the last;
    output_blocks run coarsest level first, blocks + 1 per level, the upsampler after the transformer.
    Transformer sub-keys are the same in both.
    """
    pairs = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("input_blocks.0.0.", "conv_in."), ("middle_block.1.", "mid_block.attentions.0."),
             ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
    resnets = [("middle_block.0.", "mid_block.resnets.0."), ("middle_block.2.", "mid_block.resnets.1.")]
    for i in range(levels):
        for j in range(blocks):
            k = 1 + i * (blocks + 1) + j
            resnets.append((f"input_blocks.{k}.0.", f"down_blocks.{i}.resnets.{j}."))
            if attention[i]:
                pairs.append((f"input_blocks.{k}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"input_blocks.{(i + 1) * (blocks + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
    for i in range(levels):  # diffusers' up_blocks.i is the decoder side of level levels - 1 - i
        has_attention = attention[levels - 1 - i]
        for j in range(blocks + 1):
            k = i * (blocks + 1) + j
            resnets.append((f"output_blocks.{k}.0.", f"up_blocks.{i}.resnets.{j}."))
            if has_attention:
                pairs.append((f"output_blocks.{k}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"output_blocks.{k}.{2 if has_attention else 1}.conv.", f"up_blocks.{i}.upsamplers.0.conv."))
    return pairs + [(ldm + a, ours + b) for ldm, ours in resnets for a, b in _LDM_UNET_RESNET]


def _vae_key_map(levels: int, blocks: int) -> list[tuple[str, str]]:
    """(LDM prefix, diffusers prefix) pairs of an autoencoder with `levels` levels of `blocks` residual
    blocks (the decoder's: blocks + 1). LDM numbers the decoder's levels from the finest, diffusers from
    the coarsest."""
    pairs = [("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    resnets, attentions = [], []
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.conv_in.", f"{part}.conv_in."), (f"{part}.conv_out.", f"{part}.conv_out."),
                  (f"{part}.norm_out.", f"{part}.conv_norm_out.")]
        resnets += [(f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0."),
                    (f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.")]
        attentions.append((f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0."))
    for i in range(levels):
        up = levels - 1 - i
        resnets += [(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.") for j in range(blocks)]
        resnets += [(f"decoder.up.{up}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.") for j in range(blocks + 1)]
        if i < levels - 1:
            pairs += [(f"encoder.down.{i}.downsample.conv.", f"encoder.down_blocks.{i}.downsamplers.0.conv."),
                      (f"decoder.up.{up}.upsample.conv.", f"decoder.up_blocks.{i}.upsamplers.0.conv.")]
    pairs += [(ldm + a, ours + b) for ldm, ours in resnets for a, b in _LDM_VAE_RESNET]
    return pairs + [(ldm + a, ours + b) for ldm, ours in attentions for a, b in _LDM_VAE_ATTENTION]


def _indices(state: StateDict, pattern: str) -> set[int]:
    """The distinct numbers that the regex group of `pattern` matches at the start of the keys."""
    found = (re.match(pattern, key) for key in state)
    return {int(m.group(1)) for m in found if m}


def _has_prefix(state: StateDict, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in state)


def _ldm_unet_layout(state: StateDict) -> tuple[int, int, tuple[bool, ...]]:
    """(levels, residual blocks per level, attention per level) of an LDM U-Net, from its key names."""
    levels = 1 + len(_indices(state, r"input_blocks\.(\d+)\.0\.op\."))
    blocks = len(_indices(state, r"output_blocks\.(\d+)\.")) // levels - 1
    if blocks < 1:
        raise ValueError("the U-Net's output_blocks do not form levels; accepted: a Stable Diffusion 1.x U-Net")
    attention = tuple(_has_prefix(state, f"input_blocks.{1 + i * (blocks + 1)}.1.") for i in range(levels))
    return levels, blocks, attention


def _diffusers_unet_layout(state: StateDict) -> tuple[int, int, tuple[bool, ...]]:
    """(levels, residual blocks per level, attention per level) of a diffusers U-Net, from its key names."""
    levels = len(_indices(state, r"down_blocks\.(\d+)\."))
    blocks = len(_indices(state, r"down_blocks\.0\.resnets\.(\d+)\."))
    return levels, blocks, tuple(_has_prefix(state, f"down_blocks.{i}.attentions.") for i in range(levels))


def _ldm_vae_layout(state: StateDict) -> tuple[int, int]:
    return len(_indices(state, r"encoder\.down\.(\d+)\.")), len(_indices(state, r"encoder\.down\.0\.block\.(\d+)\."))


def _diffusers_vae_layout(state: StateDict) -> tuple[int, int]:
    return (len(_indices(state, r"encoder\.down_blocks\.(\d+)\.")),
            len(_indices(state, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")))


def _renamed(key: str, table: dict[str, str]) -> str | None:
    """`key` with its longest prefix listed in `table` replaced by the listed one; None when none is."""
    cut = key.rfind(".")
    while cut > 0:
        if key[:cut + 1] in table:
            return table[key[:cut + 1]] + key[cut + 1:]
        cut = key.rfind(".", 0, cut)
    return None


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _rename(state: StateDict, table: dict[str, str], what: str) -> StateDict:
    """Every key renamed through `table`; keys it does not know are an error, not left behind."""
    renamed = {key: _renamed(key, table) for key in state}
    unknown = [key for key, new in renamed.items() if new is None]
    if unknown:
        raise ValueError(f"unknown {what} keys {_some(unknown)}; accepted: the Stable Diffusion 1.x {what} layout")
    return {renamed[key]: value for key, value in state.items()}


def _clip_text(state: StateDict) -> StateDict:
    """A CLIP text tower's state in transformers' names with the `text_model.` level; other keys are an error."""
    state = from_transformers_clip_text(state)
    unknown = [key for key in state if not _CLIP_KEY.fullmatch(key)]
    if unknown:
        raise ValueError(f"unknown text encoder keys {_some(unknown)}; accepted: a transformers CLIPTextModel's")
    return state


def _ldm_parts(state: StateDict) -> dict[str, StateDict]:
    """The single file's tensors by component, prefixes removed. EMA copies (model_ema.*) and LDM's
    buffers (betas, alphas_cumprod, ...: keys without a dot) are dropped; any other key is an error."""
    for prefix, what in _LDM_FOREIGN.items():
        if _has_prefix(state, prefix):
            raise ValueError(f"{prefix}* keys: this is {what}; accepted: Stable Diffusion 1.x single files")
    parts, unknown = {name: {} for name in _LDM_PARTS.values()}, []
    for key, value in state.items():
        prefix = next((p for p in _LDM_PARTS if key.startswith(p)), None)
        if prefix is not None:
            parts[_LDM_PARTS[prefix]][key[len(prefix):]] = value
        elif "." in key and not key.startswith("model_ema."):
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown keys {_some(unknown)} in the single file; accepted: {', '.join(_LDM_PARTS)}, "
                         "model_ema. and LDM's buffers")
    for prefix, name in _LDM_PARTS.items():
        if not parts[name]:
            raise ValueError(f"the single file has no {prefix} keys ({name}); accepted: a whole Stable Diffusion "
                             "1.x checkpoint")
    return parts


def split_ldm_checkpoint(state: StateDict) -> dict[str, StateDict]:
    """An original (CompVis) Stable Diffusion 1.x single file -> {"unet", "vae", "text_encoder"} state
    dicts in diffusers' and transformers' key names (text encoder: text_model.*), so each loads like a
    diffusers folder's. Only the non-EMA weights are read. SD 2.x, SDXL and keys the layout does not
    have are errors. The VAE's attention, stored as 1x1 convolutions, becomes linear weights."""
    parts = _ldm_parts(state)
    unet_table = dict(_unet_key_map(*_ldm_unet_layout(parts["unet"])))
    vae = _rename(parts["vae"], dict(_vae_key_map(*_ldm_vae_layout(parts["vae"]))), "VAE")
    vae = {k: v.flatten(1) if k.endswith(_VAE_ATTENTION_WEIGHTS) else v  # (C, C, 1, 1) -> (C, C)
           for k, v in vae.items()}
    return {"unet": _rename(parts["unet"], unet_table, "U-Net"), "vae": vae,
            "text_encoder": _clip_text(parts["text_encoder"])}


def to_ldm_checkpoint(unet: StateDict, vae: StateDict, text_encoder: StateDict) -> StateDict:
    """diffusers' U-Net and AutoencoderKL and transformers' CLIPTextModel state dicts -> one Stable
    Diffusion 1.x single-file state dict (the inverse of split_ldm_checkpoint, through the same key maps)."""
    unet_table = {ours: ldm for ldm, ours in _unet_key_map(*_diffusers_unet_layout(unet))}
    vae_table = {ours: ldm for ldm, ours in _vae_key_map(*_diffusers_vae_layout(vae))}
    vae = {k: v[:, :, None, None] if k.endswith(_VAE_ATTENTION_WEIGHTS) else v  # (C, C) -> (C, C, 1, 1)
           for k, v in vae.items()}
    prefixes = dict(zip(_LDM_PARTS.values(), _LDM_PARTS))
    return {**{prefixes["unet"] + k: v for k, v in _rename(unet, unet_table, "U-Net").items()},
            **{prefixes["vae"] + k: v for k, v in _rename(vae, vae_table, "VAE").items()},
            **{prefixes["text_encoder"] + k: v for k, v in _clip_text(text_encoder).items()}}


# what the shapes of a single file cannot tell, taken from Stable Diffusion 1.x
SD1_GROUPS, SD1_UNET_HEADS, SD1_TEXT_HEAD_WIDTH = 32, 8, 64


def _check_sd1_groups(channels: tuple[int, ...], what: str, folder: str) -> None:
    """Widths that SD 1.x's 32 group-norm groups cannot split prove the file's model used other groups."""
    if any(c % SD1_GROUPS for c in channels):
        raise ValueError(f"the {what}'s widths {channels} are not multiples of {SD1_GROUPS}: a single file does not "
                         f"record its group-norm groups, and is read with Stable Diffusion 1.x's {SD1_GROUPS} groups; "
                         f"accepted: widths that {SD1_GROUPS} groups divide, or the model as a diffusers folder whose "
                         f"{folder}/config.json gives its norm_num_groups")


def _unet_kwargs_from_ldm(unet: StateDict) -> dict:
    """The UNetConfig fields of a U-Net state dict in diffusers' names (see unet_config_from_ldm)."""
    levels, blocks, attention = _diffusers_unet_layout(unet)
    channels = tuple(unet[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels))
    _check_sd1_groups(channels, "U-Net", "unet")
    mid = "mid_block.attentions.0."
    mid_depth = len(_indices(unet, rf"{mid}transformer_blocks\.(\d+)\."))
    depth = tuple(len(_indices(unet, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\."))
                  if attention[i] else mid_depth for i in range(levels))
    scale_shift = unet["down_blocks.0.resnets.0.time_emb_proj.weight"].shape[0] == 2 * channels[0]
    return dict(in_channels=unet["conv_in.weight"].shape[1], out_channels=unet["conv_out.weight"].shape[0],
                channels=channels, blocks_per_level=blocks, attention_levels=attention,
                transformer_depth=_uniform(depth), heads=SD1_UNET_HEADS,
                context_dim=unet[f"{mid}transformer_blocks.0.attn2.to_k.weight"].shape[1], groups=SD1_GROUPS,
                dropout=0.0, attention_gates=False, time_conditioning="scale_shift" if scale_shift else "additive",
                pooled_text=False, linear_projection=unet[f"{mid}proj_in.weight"].ndim == 2, norm_eps=1e-5)


def unet_config_from_ldm(unet: StateDict):
    """The UNetConfig of split_ldm_checkpoint(...)["unet"], from its tensors: levels, widths, blocks per
    level, attention levels, transformer depth (per level where they differ; a level without attention
    takes the mid block's), context width, in/out channels, linear or 1x1-conv proj_in, and additive or
    scale-shift time conditioning. What shapes cannot tell follows SD 1.x: 8 heads, 32 groups, eps 1e-5; widths
    that 32 groups cannot split are refused (their model had other groups, which the file does not say)."""
    from ..models import UNetConfig

    return UNetConfig(**_unet_kwargs_from_ldm(unet))


def vae_config_from_ldm(vae: StateDict):
    """The VAEConfig of split_ldm_checkpoint(...)["vae"], from its tensors: image and latent channels,
    widths, blocks per level, quant convs, attention biases. What shapes cannot tell follows SD 1.x:
    32 groups (widths they cannot split are refused), scale factor 0.18215, asymmetric downsampling padding."""
    from ..models import VAEConfig

    levels, blocks = _diffusers_vae_layout(vae)
    channels = tuple(vae[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels))
    _check_sd1_groups(channels, "autoencoder", "vae")
    return VAEConfig(image_channels=vae["encoder.conv_in.weight"].shape[1],
                     latent_channels=vae["decoder.conv_in.weight"].shape[1], channels=channels,
                     blocks_per_level=blocks, groups=SD1_GROUPS, scale_factor=0.18215,
                     quant_conv="quant_conv.weight" in vae,
                     downsample_padding="asymmetric",
                     attention_bias="encoder.mid_block.attentions.0.to_q.bias" in vae)


def clip_config_from_ldm(text_encoder: StateDict):
    """The CLIPTextConfig of split_ldm_checkpoint(...)["text_encoder"], from its tensors: vocabulary,
    width, layers, MLP width, positions. What shapes cannot tell follows SD 1.x (openai CLIP ViT-L/14):
    64-wide heads (a width they cannot split is refused), quick_gelu, layer-norm eps 1e-5, end token = the last
    id of the vocabulary."""
    from ..models import CLIPTextConfig

    vocab_size, width = text_encoder["text_model.embeddings.token_embedding.weight"].shape
    if width % SD1_TEXT_HEAD_WIDTH:
        raise ValueError(f"the text encoder is {width} wide, not a multiple of {SD1_TEXT_HEAD_WIDTH}: a single file "
                         "does not record its attention heads, and is read with Stable Diffusion 1.x's "
                         f"{SD1_TEXT_HEAD_WIDTH}-wide heads; accepted: widths that are multiples of "
                         f"{SD1_TEXT_HEAD_WIDTH}, or the model as a diffusers folder whose text_encoder/config.json "
                         "gives its num_attention_heads")
    return CLIPTextConfig(vocab_size=vocab_size, width=width, heads=width // SD1_TEXT_HEAD_WIDTH,
                          layers=len(_indices(text_encoder, r"text_model\.encoder\.layers\.(\d+)\.")),
                          mlp_width=text_encoder["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                          max_positions=text_encoder["text_model.embeddings.position_embedding.weight"].shape[0],
                          activation="quick_gelu", layer_norm_eps=1e-5, eos_token_id=vocab_size - 1)


# ------------------------------------------------------------------ latentlab's own first format

def _rename_blocks(key: str) -> str:
    """Residual and attention blocks of format 1: skip -> conv_shortcut, embed -> time_emb_proj, to_out -> to_out.0."""
    key = key.replace(".skip.", ".conv_shortcut.").replace(".embed.", ".time_emb_proj.")
    return key.replace(".to_out.weight", ".to_out.0.weight").replace(".to_out.bias", ".to_out.0.bias")


def blocks_from_latentlab_v1(state: StateDict) -> StateDict:
    """A U-Net or text encoder written by latentlab format 1 (the first shipped model) -> the current names."""
    return blocks_from_latentlab_v2({_rename_blocks(k): v for k, v in state.items()})


# format 2's U-Net levels (down.i.blocks.j.res, mid, mid_res, ...) -> diffusers' UNet2DConditionModel tree;
# the feed-forward's output layer moved from net.1 to net.2 when the dropout between them got its slot
_V2_RENAMES = [(re.compile(pattern), replacement) for pattern, replacement in [
    (r"^time_embed\.0\.", "time_embedding.linear_1."),
    (r"^time_embed\.2\.", "time_embedding.linear_2."),
    (r"^(down|up)\.(\d+)\.blocks\.(\d+)\.res\.", r"\1_blocks.\2.resnets.\3."),
    (r"^(down|up)\.(\d+)\.blocks\.(\d+)\.attn\.", r"\1_blocks.\2.attentions.\3."),
    (r"^down\.(\d+)\.resample\.", r"down_blocks.\1.downsamplers.0."),
    (r"^up\.(\d+)\.resample\.", r"up_blocks.\1.upsamplers.0."),
    (r"^up\.(\d+)\.gates\.", r"up_blocks.\1.gates."),
    (r"^mid\.res\.", "mid_block.resnets.0."),
    (r"^mid\.attn\.", "mid_block.attentions.0."),
    (r"^mid_res\.", "mid_block.resnets.1."),
    (r"^norm_out\.", "conv_norm_out."),
    (r"\.attentions\.(\d+)\.blocks\.", r".attentions.\1.transformer_blocks."),
    (r"\.ff\.net\.1\.", ".ff.net.2."),
]]


def blocks_from_latentlab_v2(state: StateDict) -> StateDict:
    """A U-Net or text encoder written by latentlab format 2 -> the current (format 3) names."""
    def rename(key: str) -> str:
        for pattern, replacement in _V2_RENAMES:
            key = pattern.sub(replacement, key)
        return key
    return {rename(k): v for k, v in state.items()}


def vae_from_latentlab_v1(state: StateDict, channels: tuple[int, ...], blocks_per_level: int) -> StateDict:
    """An autoencoder of format 1, whose levels were flat sequences (`encoder.down.N`, `decoder.up.N`)
    and whose mid-block held `res1, norm, attn, res2`, -> diffusers' layout (down_blocks.i.resnets.j, ...)."""
    if not any(k.startswith(("encoder.down.", "decoder.up.")) for k in state):
        return state  # already the current layout
    renames, levels = {}, len(channels)
    flat = 0
    for i in range(levels):  # encoder: blocks_per_level resnets, then a downsampler except at the last level
        for j in range(blocks_per_level):
            renames[f"encoder.down.{flat}."] = f"encoder.down_blocks.{i}.resnets.{j}."
            flat += 1
        if i < levels - 1:
            renames[f"encoder.down.{flat}."] = f"encoder.down_blocks.{i}.downsamplers.0."
            flat += 1
    flat = 0
    for i in range(levels):  # decoder: coarsest first, blocks_per_level + 1 resnets, then an upsampler
        for j in range(blocks_per_level + 1):
            renames[f"decoder.up.{flat}."] = f"decoder.up_blocks.{i}.resnets.{j}."
            flat += 1
        if i < levels - 1:
            renames[f"decoder.up.{flat}."] = f"decoder.up_blocks.{i}.upsamplers.0."
            flat += 1
    for part in ("encoder", "decoder"):
        renames.update({f"{part}.mid.res1.": f"{part}.mid_block.resnets.0.", f"{part}.mid.res2.": f"{part}.mid_block.resnets.1.",
                        f"{part}.mid.norm.": f"{part}.mid_block.attentions.0.group_norm.",
                        f"{part}.mid.attn.": f"{part}.mid_block.attentions.0.",
                        f"{part}.norm_out.": f"{part}.conv_norm_out."})

    def rename(key: str) -> str:
        for old, new in renames.items():
            if key.startswith(old):
                return _rename_blocks(new + key[len(old):])
        return _rename_blocks(key)

    return {rename(k): v for k, v in state.items()}


def vae_translation(state: StateDict, config: VAEConfig) -> StateDict:
    """An autoencoder folder of either format: format 1's flat levels are renamed to the current layout
    (the `translate` that io.load_component calls with the folder's config)."""
    return vae_from_latentlab_v1(state, config.channels, config.blocks_per_level)
