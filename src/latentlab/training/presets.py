"""Named architecture sizes: `tiny` for CPU smoke runs and tests, `default` for the shipped model."""

from __future__ import annotations

import copy

from ..models import TextEncoderConfig, UNetConfig, VAEConfig

PRESETS = {
    "tiny": {
        "vae": VAEConfig(channels=(16, 32, 32), groups=8),
        "unet": UNetConfig(channels=(32, 64), blocks_per_level=1, attention_levels=(True, True), context_dim=64,
                           head_dim=16, groups=8),
        "text": TextEncoderConfig(width=64, layers=2, head_dim=32),
    },
    "default": {
        "vae": VAEConfig(channels=(64, 128, 128)),
        "unet": UNetConfig(channels=(64, 128), blocks_per_level=2, attention_levels=(True, True), context_dim=192),
        "text": TextEncoderConfig(width=192, layers=4, head_dim=64),
    },
}


def preset(name: str, part: str):
    """A fresh copy of a preset's config, so that changing it changes no other run's."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name][part])
