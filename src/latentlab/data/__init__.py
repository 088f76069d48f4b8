"""Data: the shapes world (renderer, captions, held-out combinations) and its judge."""

from .judge import judge, score
from .shapes import ShapesDataset, caption, render, sample_scene

__all__ = ["ShapesDataset", "caption", "judge", "render", "sample_scene", "score"]
