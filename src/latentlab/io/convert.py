"""Checkpoint key translation, in one place: foreign state dicts -> the key names of our modules.

The model files never see foreign key names; each function here takes a state dict as stored by
another library and returns the one our module loads with strict=True.
"""

from __future__ import annotations

import torch

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


def diffusion_config_from_diffusers(scheduler: dict):
    """A diffusers scheduler config (scheduler/scheduler_config.json) -> DiffusionConfig. Only the
    training process is read (schedule, T, target, zero-SNR rescaling); how diffusers would sample is
    the sampler's business here. A schedule we cannot reproduce exactly is an error, not a guess."""
    from ..diffusion import DiffusionConfig

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


# ------------------------------------------------------------------ latentlab's own first format

def _rename_blocks(key: str) -> str:
    """Residual and attention blocks of format 1: skip -> conv_shortcut, embed -> time_emb_proj, to_out -> to_out.0."""
    key = key.replace(".skip.", ".conv_shortcut.").replace(".embed.", ".time_emb_proj.")
    return key.replace(".to_out.weight", ".to_out.0.weight").replace(".to_out.bias", ".to_out.0.bias")


def blocks_from_latentlab_v1(state: StateDict) -> StateDict:
    """A U-Net or text encoder written by latentlab format 1 (the first shipped model) -> the current names."""
    return {_rename_blocks(k): v for k, v in state.items()}


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
