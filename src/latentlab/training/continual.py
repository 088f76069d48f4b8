"""Continual customisation: C-LoRA's self-regularisation (Smith et al. 2023, "Continual Diffusion").

A sequence of tasks t = 1 .. T, each a new concept taught from a few images. C-LoRA adapts the U-Net's
cross-attention key and value projections (`TARGETS`, the only layers the text reaches) by one low-rank update
per task; the earlier ones are merged and frozen, so that after task t

    W_t = W_0 + sum_{tau <= t} B_tau A_tau

and task t's update is penalised where the earlier tasks already changed the weight:

    L = L_diffusion + lambda L_forget,    L_forget = sum over the layers of || P_t (.) B_t A_t ||_F^2,
    P_t = sum_{tau < t} B_tau A_tau = W_{t-1} - W_0

((.) the element-wise product). Task t writes into the entries of K and V that the earlier tasks left alone,
which is what keeps their concepts (each named by a token of its own) drawing as they did. With lambda = 0 it
is sequential LoRA on K and V, the paper's ablation. The past updates P_t are read off the weights
(`past_updates`: the merged weights less W_0), so no earlier task's file is needed to train the next.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters.inject import adapter_layers
from ..adapters.lora import LoRALayer
from ..errors import LatentlabError

TARGETS = ("attn2.to_k", "attn2.to_v")  # the U-Net's cross-attention K and V projections (the paper's)


def target_weights(unet: nn.Module) -> dict[str, torch.Tensor]:
    """W of every layer C-LoRA adapts (`TARGETS`), by module name, as float32 copies: W_0 before the first task.
    A layer wrapped by an adapter is read through its base, where merged adapters live."""
    linears = ((name.removesuffix(".base"), module) for name, module in unet.named_modules()
               if isinstance(module, nn.Linear))
    return {name: module.weight.detach().float().clone() for name, module in linears if name.endswith(TARGETS)}


def past_updates(unet: nn.Module, initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """P_t = W_{t-1} - W_0 per adapted layer: what the earlier tasks, merged into `unet`, changed."""
    now = target_weights(unet)
    if now.keys() != initial.keys():
        raise LatentlabError(f"the model's K and V layers ({len(now)}) are not those of the initial weights "
                             f"({len(initial)}): another model")
    return {name: now[name] - w_0.to(now[name].device) for name, w_0 in initial.items()}


def forgetting_penalty(unet: nn.Module, past: dict[str, torch.Tensor], adapter: str = "default") -> torch.Tensor:
    """L_forget = sum over the layers of || P_t (.) Delta W_t ||_F^2, Delta W_t = adapter's s (alpha / r) B A
    (differentiable in A and B); `past`: `past_updates`. Layers without the adapter add nothing."""
    terms = [(past[name].to(layer.base.weight.device) * layer.delta_weight(adapter)).square().sum()
             for name, layer in adapter_layers(unet, LoRALayer) if name in past and adapter in layer.adapters]
    if not terms:
        raise LatentlabError(f"no layer of the model holds adapter {adapter!r} on {' or '.join(TARGETS)}")
    return torch.stack(terms).sum()
