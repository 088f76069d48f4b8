"""Measuring models: prompt adherence read by the shapes judge."""

from .adherence import prompt_adherence

__all__ = ["prompt_adherence"]
