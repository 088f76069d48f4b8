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
