"""An adapter variant keeps its own maths under the speed wing: the fused training nodes (fast/lora.py,
fast/frozen_transformer.py) were written for plain LoRA and apply to it alone.

The toy variant is LoRA with a learned gain per output, h = W0 x + g * s B A x (g starts at 1): a subclass
of LoRALayer, as DoRA or C-LoRA's regularised LoRA would be. Were the nodes to take it for LoRA, they would
compute W0 x + s B A x and give g no gradient."""

import dataclasses
import re

import pytest
import torch
from torch import nn

from latentlab import fast
from latentlab.adapters import LoRALayer, add_lora
from latentlab.adapters.inject import adapter_layers, trainable, wrap
from latentlab.fast import activation_memory
from latentlab.models import UNet
from latentlab.training.presets import preset

pytestmark = pytest.mark.usefixtures("one_thread")


class GainLoRA(LoRALayer):
    """LoRA with a learned per-output gain: h = W0 x + g * s B A x."""

    label = "gain-LoRA"
    mergeable = False  # (it could be: g scales delta_weight's rows; a toy need not)

    def __init__(self, base: nn.Linear | nn.Conv2d):
        super().__init__(base)
        self.gain = nn.ParameterDict()

    def create(self, name: str, **options) -> None:
        super().create(name, **options)
        width = self.base.weight.shape[0]
        self.gain[name] = nn.Parameter(torch.ones(width, dtype=self.lora_A[name].weight.dtype))

    def destroy(self, name: str) -> None:
        super().destroy(name)
        del self.gain[name]

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        g = self.gain[name].to(x.dtype)
        return super().delta(name, x) * (g if x.dim() != 4 else g[:, None, None])

    def trainable(self, name: str) -> list[nn.Parameter]:
        return [*super().trainable(name), self.gain[name]]


ATTENTION1 = r"attn1\.to_[qkv]"  # the variant on self-attention's q, k, v; plain LoRA elsewhere


def adapted_unet() -> UNet:
    """The tiny U-Net in float64, frozen, with GainLoRA on every self-attention's q, k, v and plain LoRA on
    the attention outputs, every trained tensor random (a gain away from 1)."""
    torch.manual_seed(0)
    unet = UNet(dataclasses.replace(preset("tiny", "unet"), dropout=0.0)).double().train().requires_grad_(False)
    with torch.no_grad():  # the outputs start at zero (UNet._zero_init_outputs), which would stop every gradient
        for p in unet.parameters():
            if not p.any():
                p.normal_(std=0.05)
    for name, module in list(unet.named_modules()):
        if isinstance(module, nn.Linear) and re.search(ATTENTION1 + "$", name):
            wrap(unet, name, GainLoRA).add("default", rank=2, alpha=3.0, dtype=torch.float64)
    add_lora(unet, "default", rank=2, alpha=3.0, targets=["to_out.0"], dtype=torch.float64)
    with torch.no_grad():
        for p in trainable(unet):
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return unet


def gradients(unet: UNet) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(the graph's node names, each trained tensor's gradient) of a fixed loss."""
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=g).double(), torch.randn(2, 6, 64, generator=g).double()
    out = unet(x, torch.tensor([3, 900]), context)
    nodes = graph_nodes(out)
    params = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(out.square().mean(), list(params.values()))
    return nodes, dict(zip(params, grads))


def graph_nodes(out: torch.Tensor) -> list[str]:
    seen, stack, names = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_variants_gradients_are_autograds_with_the_speed_wing_on_and_off(checkpointing, monkeypatch):
    monkeypatch.setattr(activation_memory, "MIN_ELEMENTS", 0)  # every lean layer and node where it applies
    unet = adapted_unet().enable_gradient_checkpointing(checkpointing)
    plain_nodes, plain = gradients(unet)  # the modules as written: autograd's gradients
    fast.install(unet)
    assert all(type(layer) is GainLoRA for name, layer in adapter_layers(unet) if re.search(ATTENTION1 + "$", name))
    fast_nodes, ours = gradients(unet)
    assert "_LoRALinearBackward" not in plain_nodes
    if not checkpointing:  # the plain LoRA layers still train through their node
        assert "_LoRALinearBackward" in fast_nodes and "_FrozenTransformerBlockBackward" not in fast_nodes
    assert ours.keys() == plain.keys() and any(".gain." in n for n in ours)
    for name in plain:
        torch.testing.assert_close(ours[name], plain[name], rtol=0, atol=1e-12, msg=name)


def test_the_variant_is_not_plain_lora():
    """The gains matter: plain LoRA on the same weights gives other gradients (what a fused node taking the
    variant for LoRA would give)."""
    unet = adapted_unet()
    _, variant = gradients(unet)
    with torch.no_grad():
        for _, layer in adapter_layers(unet, GainLoRA):
            layer.gain["default"].fill_(1.0)
    _, unit_gain = gradients(unet)
    lora = [n for n in variant if ".lora_" in n]
    assert all(variant[n].abs().sum() > 0 for n in lora)
    assert all(not torch.allclose(variant[n], unit_gain[n]) for n in lora if "attn1.to_out" not in n)
