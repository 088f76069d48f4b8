"""Measuring models: prompt adherence read by the shapes judge, bits per dimension, Frechet distance."""

from .adherence import prompt_adherence
from .frechet import frechet_distance, pooled_pixels
from .likelihood import bits_per_dim

__all__ = ["bits_per_dim", "frechet_distance", "pooled_pixels", "prompt_adherence"]
