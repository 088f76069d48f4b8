"""The upscaler against bicubic upsampling, on the shapes world.

`upscaling_report`: rendered scenes of a split, each at the low size (what the upscaler reads) and the high size
(the truth); per method (bicubic, the upscaler at each noise level asked), the mean PSNR against the truth with
its 95% interval, and the judge's reading of the high-resolution result (the share of images right on every
attribute of their scene, with its binomial interval). `generated_report`: the same judge on a text model's own
32x32 images and on their upscales, the way the grid's U button uses the upscaler: the upscale should draw what
the small image shows, neither losing nor inventing.
"""

from __future__ import annotations

import torch

from ..data.judge import judge, score
from ..data.shapes import ShapesDataset, render
from ..upscaler_model import UpscalerModel, upsample
from .intervals import mean_interval, wilson


def psnr(images: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per image (B,), in dB, of images in [-1, 1] (a peak of 1 once mapped to [0, 1])."""
    mse = ((images.float() - truth.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def verdicts(images: torch.Tensor, scenes) -> list[bool]:
    """Whether the judge reads each image right on every attribute of its scene."""
    return [score(scene, judge(image))["all"] for image, scene in zip(images, scenes)]


def judged(right: list[bool]) -> dict:
    """The share of images right, with its interval."""
    return {"all": sum(right) / len(right), "interval": wilson(sum(right), len(right))}


def upscaling_report(upscaler: UpscalerModel, *, scenes: int = 200, split: str = "test", seed: int = 1234,
                     data_seed: int = 0, steps: int = 50, sampler: str = "ddim", noise_levels=(0, 20),
                     batch_size: int = 100) -> dict:
    """PSNR against the truth and the judge, for bicubic and for the upscaler at each noise level."""
    c = upscaler.config
    truth, _, drawn = ShapesDataset(seed=data_seed, split=split, image_size=c.size).batch(0, scenes)
    low = render(drawn, c.low_size)
    methods = {"bicubic": upsample(low, c.size)}
    for s in noise_levels:
        methods[f"upscaler, noise level {s}"] = upscaler.upscale(low, steps=steps, sampler=sampler, seed=seed,
                                                                 noise_level=s, batch_size=batch_size)
    rows = {name: {"psnr": mean_interval(psnr(images, truth)), "judge": judged(verdicts(images, drawn))}
            for name, images in methods.items()}
    rows["truth"] = {"psnr": None, "judge": judged(verdicts(truth, drawn))}
    rows[f"low resolution ({c.low_size}px)"] = {"psnr": None, "judge": judged(verdicts(low, drawn))}
    return {"scenes": scenes, "split": split, "steps": steps, "sampler": sampler, "seed": seed,
            "low_size": c.low_size, "size": c.size, "methods": rows}


def generated_report(pipe, upscaler: UpscalerModel, *, prompts: int = 200, split: str = "test", seed: int = 1234,
                     steps: int = 50, guidance: float = 4.0, noise_level: int | None = None,
                     batch_size: int = 100) -> dict:
    """A text model's images of the split's captions, judged as drawn and once upscaled (bicubic beside)."""
    _, captions, drawn = ShapesDataset(seed=0, split=split, image_size=pipe.image_size).batch(0, prompts)
    small = torch.cat([pipe.sample(captions[i:i + batch_size], seed=seed + i, steps=steps, guidance=guidance).cpu()
                       for i in range(0, prompts, batch_size)])
    large = upscaler.upscale(small, seed=seed, noise_level=noise_level, batch_size=batch_size)
    before, after = verdicts(small, drawn), verdicts(large, drawn)
    return {"prompts": prompts, "split": split, "steps": steps, "guidance": guidance, "seed": seed,
            "noise_level": upscaler.config.noise_level if noise_level is None else noise_level,
            "judge": {"drawn": judged(before), "upscaled": judged(after),
                      "bicubic": judged(verdicts(upsample(small, upscaler.config.size), drawn))},
            "same verdict": sum(a == b for a, b in zip(before, after)) / prompts}
