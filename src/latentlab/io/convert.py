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
