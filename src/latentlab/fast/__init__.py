"""The speed wing: the same maths as models/ and adapters/, computed faster, installed by swapping modules.

install.py swaps modules for their fast subclasses (modules.py; lora.py for LoRA), which use: lean
layers that save only what their gradients need (activation_memory.py), whole frozen blocks as one
autograd node (frozen_transformer.py), the low-rank product with hand-written gradients (lowrank.py),
casts to the compute dtype made once (precision.py), gradient checkpointing without autograd's
bookkeeping in the first pass (checkpointing.py), a Triton GroupNorm for channels-last maps
(group_norm.py). cuda_graph.py records a network's kernels and replays them. Nothing in models/ or
adapters/ knows of this package.
"""

from .cuda_graph import CUDAGraphed
from .install import install, uninstall
from .precision import track

__all__ = ["CUDAGraphed", "install", "track", "uninstall"]
