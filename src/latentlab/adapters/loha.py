"""Low-rank Hadamard product adaptation (LoHa; FedPara, Hyeon-Woo et al. 2022, as LyCORIS trains it):

    Delta W = (w1_a w1_b) * (w2_a w2_b)        (* elementwise; h = W0 x + s (alpha / r) Delta W x)

Two rank-r products multiplied elementwise reach rank up to r^2 with the parameters of two rank-r LoRAs.
A convolution's kernel is flattened, W0 (out x in k k); with `tucker`, a kxk convolution's update is
instead built per factor pair from a core t (r x r x k x k) and two r-row factors, as in peft
(`use_effective_conv2d`) and LyCORIS (`use_tucker`, formerly `use_cp`):

    (w_a w_b)[p, q, :, :]  ->  sum_ij t[i, j] w_a[i, p] w_b[j, q]

Initialised as peft does: every factor like nn.Linear's weight except w2_b, which is zero, so a new
adapter is the identity. State-dict keys are peft's: hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b (and
hada_t1, hada_t2). adapters/lycoris.py applies, scales and merges it.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .inject import add_adapter
from .lora import DEFAULT_ADAPTER, UNET_ATTENTION
from .lycoris import LycorisLayer, tucker_kernel


class LoHaLayer(LycorisLayer):
    """A frozen nn.Linear or nn.Conv2d (`base`) plus named LoHa adapters."""

    label = "LoHa"

    def make_factors(self, rank: int, tucker: bool = False) -> dict[str, torch.Tensor]:
        """w1_a, w1_b, w2_a like nn.Linear's weight, w2_b zero; with `tucker` (kxk convolutions only, as peft),
        the cores t1, t2 too."""
        out, inputs, kernel, r = self.base.weight.shape[0], self.base.weight.shape[1], self.kernel(), rank
        if tucker and kernel not in ((), (1, 1)):
            return {"hada_w1_a": self.init_factor(r, out), "hada_w1_b": self.init_factor(r, inputs),
                    "hada_w2_a": self.init_factor(r, out), "hada_w2_b": self.init_factor(r, inputs, zero=True),
                    "hada_t1": self.init_factor(r, r, *kernel), "hada_t2": self.init_factor(r, r, *kernel)}
        n = self.base.weight[0].numel()  # in (x k x k)
        return {"hada_w1_a": self.init_factor(out, r), "hada_w1_b": self.init_factor(r, n),
                "hada_w2_a": self.init_factor(out, r), "hada_w2_b": self.init_factor(r, n, zero=True)}

    def update(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """(w1_a w1_b) * (w2_a w2_b): (out, in k k), or (out, in, k, k) from the Tucker cores."""
        if "hada_t1" in f:
            w1 = tucker_kernel(f["hada_t1"], f["hada_w1_a"], f["hada_w1_b"])
            return w1 * tucker_kernel(f["hada_t2"], f["hada_w2_a"], f["hada_w2_b"])
        return (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])


def add_loha(model: nn.Module, adapter: str = DEFAULT_ADAPTER, *, rank: int = 4, alpha: float | None = None,
             tucker: bool = False, targets: Iterable[str] | None = None, dtype: torch.dtype | None = None) -> list[str]:
    """Add LoHa adapter `adapter` to every linear layer and convolution of `model` named by `targets`
    (patterns; default UNET_ATTENTION): rank r, alpha (None: alpha = r), `tucker` for kxk convolutions' kernels.
    The adapter's weights are float32 unless `dtype` says otherwise; W0 is frozen. Returns the module names.
    All or nothing."""
    return add_adapter(model, LoHaLayer, adapter, UNET_ATTENTION if targets is None else targets,
                       rank=rank, alpha=alpha, tucker=tucker, dtype=dtype)
