"""Measuring inpainting (Pipeline.inpaint) on the shapes world.

Each case is a two-object scene of the split with its second object taken out: the source image shows the first
object alone, and the prompt is the whole scene's caption. The mask is the box where the second object was, less
the first object's box, so the kept object is never redrawn. The judge reads the result: is the asked object
there (its shape, colour and size, its centre inside the box), is the kept one still right, is the whole scene
right (relation too). Outside the mask, the result drawn without compositing is compared with the source
(root-mean-square pixel difference in [0, 1] units), beside the autoencoder's own round trip of the sources: the
issue's bar for "changes nothing outside".
"""

from __future__ import annotations

import torch

from ..data.judge import Detection, judge, score
from ..data.masks import box_mask, object_box
from ..data.shapes import Scene, ShapeObject, ShapesDataset, render
from ..pipeline import Pipeline


def found(obj: ShapeObject, detections: list[Detection], box: tuple[int, int, int, int] | None, size: int) -> bool:
    """Whether a detection shows `obj`'s shape, colour and size (with its centre in `box`, where one is given; else
    at its position)."""
    for d in detections:
        if (d.shape, d.colour, d.size) != (obj.shape, obj.colour, obj.size):
            continue
        if box is None:
            if d.position == obj.position:
                return True
        elif box[0] <= d.centre[1] * size < box[2] and box[1] <= d.centre[0] * size < box[3]:
            return True
    return False


def cases(split: str, n: int, size: int, seed: int):
    """(scene, caption, source image, mask, box) for `n` two-object scenes of the split."""
    data = ShapesDataset(seed=seed, split=split, image_size=size, p_two=1.0)
    examples = [data.example(i) for i in range(n)]
    scenes = [scene for scene, _ in examples]
    sources = render([Scene(objects=s.objects[:1], jitter=s.jitter[:1]) for s in scenes], size)
    boxes = [object_box(s, 1, size) for s in scenes]
    masks = torch.stack([box_mask(b, size) * (1 - box_mask(object_box(s, 0, size), size))  # clear of the kept one
                         for s, b in zip(scenes, boxes)])
    return scenes, [c for _, c in examples], sources, masks, boxes


@torch.no_grad()
def inpainting_accuracy(pipe: Pipeline, *, scenes: int = 200, split: str = "test", seed: int = 1234, steps: int = 50,
                        guidance: float = 4.0, sampler: str = "ddim", batch_size: int = 100) -> dict:
    size = pipe.image_size
    all_scenes, captions, sources, masks, boxes = cases(split, scenes, size, seed)
    drawn = torch.cat([pipe.inpaint(sources[s:s + batch_size], masks[s:s + batch_size], captions[s:s + batch_size],
                                    steps=steps, guidance=guidance, sampler=sampler, seed=seed + s,
                                    keep_unmasked=False).cpu()
                       for s in range(0, scenes, batch_size)])
    outside = (1 - masks).expand_as(sources).bool()
    round_trip = torch.cat([pipe.img2img(sources[s:s + batch_size], captions[s:s + batch_size], strength=0.0,
                                         seed=seed + s).cpu() for s in range(0, scenes, batch_size)])
    composited = masks * drawn + (1 - masks) * sources
    totals = {"asked object in the box": 0, "kept object": 0, "whole scene": 0}
    for scene, image, box in zip(all_scenes, composited, boxes):
        detections = judge(image)
        totals["asked object in the box"] += found(scene.objects[1], detections, box, size)
        totals["kept object"] += found(scene.objects[0], detections, None, size)
        totals["whole scene"] += score(scene, detections)["all"]
    return {"scenes": scenes, "split": split, "steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed,
            "takes_masks": pipe.takes_masks, "accuracy": {k: v / scenes for k, v in totals.items()},
            "outside_rms": {"drawn": rms_outside(drawn, sources, outside),
                            "autoencoder_round_trip": rms_outside(round_trip, sources, outside)}}


def rms_outside(images: torch.Tensor, sources: torch.Tensor, outside: torch.Tensor) -> float:
    """Root-mean-square difference over the pixels outside the masks, in [0, 1] units."""
    return (((images - sources) / 2)[outside]).pow(2).mean().sqrt().item()
