"""Importance sampling of timesteps by the second moment of the bound's terms (Nichol & Dhariwal 2021, sec. 3.3).

p_t ~ sqrt(E[L_t^2]), kept from the last `history` values of each L_t; timesteps are uniform until
every t has that many. Each example is weighted 1 / (T p_t), so the loss stays unbiased.
"""

from __future__ import annotations

import torch


class ImportanceSampler:
    def __init__(self, T: int, *, history: int = 10, uniform: float = 1e-3):
        self.T, self.history, self.uniform = T, history, uniform
        self.values = torch.zeros(T, history, dtype=torch.float64)  # last L_t values, a ring per t
        self.counts = torch.zeros(T, dtype=torch.long)

    def probabilities(self) -> torch.Tensor:
        if (self.counts < self.history).any():
            return torch.full((self.T,), 1 / self.T, dtype=torch.float64)
        p = self.values.pow(2).mean(1).sqrt()
        p = p / p.sum()
        return (1 - self.uniform) * p + self.uniform / self.T

    def sample(self, batch: int, *, device=None, generator: torch.Generator | None = None):
        """(t, weights), each (batch,): timesteps drawn from p and their weights 1 / (T p_t)."""
        p = self.probabilities()
        t = torch.multinomial(p, batch, replacement=True, generator=generator)
        weights = 1 / (self.T * p[t])
        return t.to(device), weights.to(device, torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the bound terms `losses` (B,) measured at timesteps `t` (B,)."""
        for step, value in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            self.values[step, self.counts[step] % self.history] = value
            self.counts[step] += 1

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.values, self.counts = state["values"].clone(), state["counts"].clone()
