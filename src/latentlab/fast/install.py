"""Installing the speed wing: swap each module it speeds up for its fast subclass, and back.

`install(model)` walks the model and gives each module whose exact class has a fast counterpart
(fast/modules.py, fast/lora.py, fast/activation_memory.py) that class instead. The fast class is a
subclass of the plain one with no state of its own, so parameters, buffers, hooks, state-dict keys and
isinstance checks are unchanged; only `forward` differs, computing the same maths faster. A subclass of a
plain class (a LoRA variant with other maths) is not swapped. Trainers and the pipeline install the
wing on the networks they run; code that builds networks itself runs the plain modules unless it
installs it too.
"""

from __future__ import annotations

from torch import nn

from ..adapters.lora import LoRALayer
from ..models.attention import GEGLU, Attention, SpatialTransformer, TransformerBlock
from ..models.blocks import ResBlock
from ..models.unet import UNet
from . import activation_memory
from .lora import FastLoRALayer
from .modules import (FastAttention, FastGEGLU, FastGroupNorm, FastResBlock, FastSpatialTransformer,
                      FastTransformerBlock, FastUNet)

FAST: dict[type, type] = {
    nn.Conv2d: activation_memory.Conv2d,
    nn.LayerNorm: activation_memory.LayerNorm,
    nn.GroupNorm: FastGroupNorm,
    Attention: FastAttention,
    GEGLU: FastGEGLU,
    TransformerBlock: FastTransformerBlock,
    SpatialTransformer: FastSpatialTransformer,
    ResBlock: FastResBlock,
    UNet: FastUNet,
    LoRALayer: FastLoRALayer,
}
"""plain class -> its fast subclass"""

PLAIN = {fast: plain for plain, fast in FAST.items()}


def install(*models: nn.Module) -> None:
    """Swap every module of `models` that has a fast counterpart for it (again after adapters are added:
    new adapter layers are plain until then). Installing twice changes nothing."""
    _swap(models, FAST)


def uninstall(*models: nn.Module) -> None:
    """Swap every fast module of `models` back to its plain class."""
    _swap(models, PLAIN)


def _swap(models, table: dict[type, type]) -> None:
    for model in models:
        for module in model.modules():
            cls = table.get(type(module))
            if cls is not None:
                module.__class__ = cls
