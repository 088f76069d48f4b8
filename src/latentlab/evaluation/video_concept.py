"""How well a video model draws a concept it learned from images: a new shape or colour (data/concept.py) set in
motion, as an image LoRA of the concept loaded into the video model's spatial layers should draw it.

For each prompt, one clip of data/video.py's `ConceptClips` ("a small red diamond moves to the right"), read
by the clip judge with the training palette plus the concept colour, or the training shapes plus the concept
shape (evaluation/concept.py's `judge_options`): `concept_frames`, the share of the frames that should show the
concept in which some object reads as it; `concept_clips`, the share of clips showing it in every such frame;
`read`, what the largest object of each frame reads as on the concept's attribute (fractions, "none" where
nothing was found); and evaluation/video.py's figures (per_frame, objects, count, motion, identity, all,
jitter), read with the same judge. The ground truth reads 100% on the concept (tests/evaluation).
"""

from __future__ import annotations

from collections import Counter

import torch

from ..data.concept import concept_kind
from ..data.video import Clip, ConceptClips, states
from ..data.video_judge import ClipReading, clip_figures, judge_clip
from ..video_pipeline import VideoPipeline
from .concept import concept_judge_options


def read_concept_clips(clips: list[Clip], videos: torch.Tensor, concept: str) -> dict:
    """The judge's figures (module docstring) for clips of a concept and the videos (B, T, 3, H, W) in [-1, 1]
    drawn of them, and `passed`: whether each clip shows the concept in every frame it should."""
    options, kind = concept_judge_options(concept), concept_kind(concept)
    readings: list[ClipReading] = [judge_clip(video, **options) for video in videos]
    shown, read = [], Counter()  # shown: per clip, whether each frame that should show the concept does
    for clip, reading in zip(clips, readings):
        should = [any(getattr(o, kind) == concept for o in frame) for frame in states(clip)]
        shown.append([any(getattr(d, kind) == concept for d in detections)
                      for detections, wanted in zip(reading.frames, should) if wanted])
        read.update(getattr(detections[0], kind) if detections else "none" for detections in reading.frames)
    frames = [ok for clip in shown for ok in clip]
    return {"concept_frames": sum(frames) / len(frames), "concept_clips": sum(all(c) for c in shown) / len(shown),
            "read": {name: count / sum(read.values()) for name, count in read.most_common()},
            **clip_figures(clips, readings), "passed": [all(c) for c in shown]}


@torch.no_grad()
def video_concept_accuracy(pipe: VideoPipeline, *, concept: str = "diamond", word: str | None = None,
                           prompts: int = 50, frames: int | None = None, seed: int = 1234, steps: int = 50,
                           guidance: float = 4.0, sampler: str = "ddim", batch_size: int = 50, data_seed: int = 0,
                           callback=None, **sampler_options) -> dict:
    """The clip judge's reading (module docstring) of `prompts` clips of `concept` (named `word` in the
    captions, default its name) of ConceptClips' test split, clip i seeded by `seed + i`; `failures`, the first
    20 captions whose clip does not show the concept in every frame."""
    frames = frames or pipe.frames
    data = ConceptClips(concept=concept, word=word, seed=data_seed, split="test", frames=frames,
                        image_size=pipe.image_size)
    clips, captions = zip(*(data.example(i) for i in range(prompts)))
    videos = torch.cat([pipe.sample(list(captions[s:s + batch_size]), frames=frames, seed=seed + s, steps=steps,
                                    guidance=guidance, sampler=sampler, callback=callback, **sampler_options).cpu()
                        for s in range(0, prompts, batch_size)])
    reading = read_concept_clips(list(clips), videos, concept)
    passed = reading.pop("passed")
    return {"concept": concept, "kind": concept_kind(concept), "word": data.word, "prompts": prompts,
            "frames": frames, "steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed,
            "data_seed": data_seed, **{k: v for k, v in sampler_options.items() if v is not None}, **reading,
            "failures": [caption for caption, ok in zip(captions, passed) if not ok][:20]}
