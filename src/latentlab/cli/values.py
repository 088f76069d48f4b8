"""The command line's value types: text -> a checked value, or argparse's error naming the option.

Each refuses what the library would refuse later, so that a bad value ends the command before any work,
in one line that names the option; where the library has the rule (seeds, prompts), the type asks it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import LatentlabError
from ..pipeline import Pipeline

FLOAT32_MAX = 3.4028234663852886e38


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def finite(text: str) -> float:
    """A number other than nan and inf."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted: give a finite number")
    return value


def positive(kind):
    """The type of a count or size (kind int) or of a rate or weight (kind float) greater than 0."""
    def parse(text: str):
        value = finite(text) if kind is float else whole(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value
    return parse


def non_negative(kind):
    """As `positive`, where 0 is accepted (it turns the setting off)."""
    def parse(text: str):
        value = finite(text) if kind is float else whole(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
        return value
    return parse


def probability(text: str) -> float:
    value = finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability: give a number from 0 to 1")
    return value


def strength(text: str) -> float:
    """img2img's strength: how much of the sampler's way from noise is walked again."""
    value = finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"strength {text!r} is outside [0, 1]: give a number from 0 (keep the "
                                         "image) to 1 (draw it anew)")
    return value


def seed(text: str) -> int:
    """A seed the generators tell apart (Pipeline.MAX_SEED)."""
    value = whole(text)
    if not 0 <= value <= Pipeline.MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is not accepted: give a seed from 0 to {Pipeline.MAX_SEED}, the "
                                         "seeds the generator tells apart")
    return value


def prompt(text: str) -> str:
    """A prompt in valid UTF-8 (command-line bytes that are not arrive as lone surrogates)."""
    try:
        Pipeline.check_prompt(text)
    except LatentlabError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def spacing(text: str):
    """A spacing name, or comma-separated timesteps."""
    if "," not in text and not text.strip().isdigit():
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a spacing name nor comma-separated timesteps") from None


def lora_file(text: str) -> tuple[str, float]:
    """FILE or FILE:SCALE (the multiplier s of W0 + s alpha / r B A; default 1); the file must exist."""
    path, scale = text, 1.0
    if ":" in text and not Path(text).exists():
        path, _, number = text.rpartition(":")
        try:
            scale = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: scale {number!r} is not a number; write FILE or FILE:SCALE, "
                                             "e.g. style.safetensors:0.8") from None
        if not abs(scale) <= FLOAT32_MAX:  # nan, inf, or beyond what the float32 weights can hold
            raise argparse.ArgumentTypeError(f"{text!r}: scale must be a finite number from -{FLOAT32_MAX:.4g} to "
                                             f"{FLOAT32_MAX:.4g}")
    if not Path(path).exists():
        raise argparse.ArgumentTypeError(f"LoRA file {path} does not exist")
    return path, scale
