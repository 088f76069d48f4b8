"""Measuring models: prompt adherence read by the shapes judge, and bits per dimension."""

from .adherence import prompt_adherence
from .likelihood import bits_per_dim

__all__ = ["bits_per_dim", "prompt_adherence"]
