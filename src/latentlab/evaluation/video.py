"""How well a video model draws the video world's prompts, read by the clip judge (data/video_judge.py).

For each prompt of a split, one clip: the share of clips whose every frame shows the right objects, whose
objects move as the caption says (motion), keep their identity from frame to frame, and are right in all of it;
the share of single frames right on their own (per-frame whole-prompt accuracy); and the centroids' jitter
(temporal smoothness; lower is smoother). `video_adherence(pipe)` measures a video model; with `baseline=True`
the same for its image model sampled frame by frame from the same noise (its temporal layers made new: each
the identity), the baseline Blattmann et al. (2023) improve on.
"""

from __future__ import annotations

import torch

from ..data.video import MotionConcept, VideoDataset
from ..data.video_judge import clip_metrics
from ..video_pipeline import VideoPipeline


def frame_by_frame(pipe: VideoPipeline) -> VideoPipeline:
    """The model's image model as a video model: each frame drawn alone, from the same noise."""
    return VideoPipeline.from_image(pipe.image_model(), pipe.unet.temporal.config, frames=pipe.frames)


@torch.no_grad()
def video_adherence(pipe: VideoPipeline, *, prompts: int = 200, split: str = "test", frames: int | None = None,
                    seed: int = 1234, steps: int = 50, guidance: float = 4.0, sampler: str = "ddim",
                    batch_size: int = 50, baseline: bool = False, data_seed: int = 0, motion: str | None = None,
                    callback=None, **sampler_options) -> dict:
    """The clip judge's reading of `prompts` clips of the split's captions (clip i seeded by `seed + i`); with a
    new `motion` (data/video.py NEW_MOTIONS), fresh clips of it instead ("a small red circle moves diagonally":
    `MotionConcept`'s test split), what a motion LoRA is measured on."""
    frames = frames or pipe.frames
    model = frame_by_frame(pipe) if baseline else pipe
    data = (VideoDataset(seed=data_seed, split=split, frames=frames, image_size=pipe.image_size) if motion is None
            else MotionConcept(motion=motion, seed=data_seed, split="test", frames=frames, image_size=pipe.image_size))
    clips, captions = zip(*(data.example(i) for i in range(prompts)))
    videos = torch.cat([model.sample(list(captions[s:s + batch_size]), frames=frames, seed=seed + s, steps=steps,
                                     guidance=guidance, sampler=sampler, callback=callback, **sampler_options).cpu()
                        for s in range(0, prompts, batch_size)])
    return {"model": "image model, frame by frame" if baseline else "video model",
            "split": split if motion is None else f"{motion} (fresh clips)",
            "prompts": prompts, "frames": frames, "steps": steps, "guidance": guidance, "sampler": sampler,
            "seed": seed, **clip_metrics(list(clips), videos)}
