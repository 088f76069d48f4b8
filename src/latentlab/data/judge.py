"""A judge for the shapes world: reads an image and returns the objects it shows.

No learned network: the background is the image's median colour; each foreground pixel belongs to
the palette colour whose direction from the background is closest to its own (blending with the
background keeps that direction, so anti-aliased edges count too); the coverage of a pixel is its
projection onto the object's mean colour. From an object's coverage map the judge reads its size
(area), its position (centroid) and its shape (the best-overlapping shape template, drawn with the
renderer's own distance functions at the object's centroid and area). Pixels of one colour that do not touch
(8-connected) are separate objects, so two objects drawn in one colour count as two.

The colours the judge knows are the training palette unless `palette` says otherwise: a concept colour
(shapes.NEW_COLOURS) is read by adding it to the palette, a concept shape (shapes.NEW_SHAPES) by adding it
to `shapes` (evaluation/concept.py). Adding one only moves the decision boundaries next to it, so ordinary
prompts are always judged with the palette and shapes alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .shapes import COLOURS, POSITIONS, SHAPES, SIZES, Scene, coverage, shape_distance, shape_index

MIN_AREA = 0.006  # an object covers at least this fraction of the image (small ones ~3%)
FOREGROUND = 0.12  # distance from the background (RGB in [0, 1]) above which a pixel is foreground
ATTRIBUTES = ("shape", "colour", "size", "position")
AXIS = {"left of": "horizontal", "right of": "horizontal", "above": "vertical", "below": "vertical"}


@dataclass(frozen=True)
class Detection:
    shape: str
    colour: str
    size: str
    position: str
    centre: tuple[float, float]  # (x, y) as fractions of the image
    area: float  # fraction of the image covered


def _palette_directions(background: torch.Tensor, palette: dict[str, tuple[float, float, float]]) -> torch.Tensor:
    rgb = torch.tensor(list(palette.values()))
    d = rgb - background
    return d / d.norm(dim=1, keepdim=True)


def _position(cx: float, cy: float) -> str:
    """The named position nearest the centroid."""
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)


def _size(area: float) -> str:
    """Small or large by the equivalent radius, split at the geometric mean of the two radii."""
    radius = math.sqrt(area / math.pi)
    return "small" if radius < math.sqrt(SIZES["small"] * SIZES["large"]) else "large"


def _shape(alpha: torch.Tensor, cx: float, cy: float, radius: float, shapes: tuple[str, ...]) -> str:
    """The shape of `shapes` whose template (same centroid and area) overlaps the coverage map best."""
    S, n = alpha.shape[-1], len(shapes)
    grid = torch.arange(S, dtype=torch.float32) + 0.5
    dx = (grid.view(1, S) - cx).expand(S, S)
    dy = (grid.view(S, 1) - cy).expand(S, S)
    ids = torch.tensor([shape_index(name) for name in shapes])
    templates = coverage(shape_distance(ids, dx.expand(n, S, S), dy.expand(n, S, S), torch.full((n,), radius)))
    iou = torch.minimum(templates, alpha).sum((1, 2)) / torch.maximum(templates, alpha).sum((1, 2))
    return shapes[int(iou.argmax())]


def judge(image: torch.Tensor, palette: dict[str, tuple[float, float, float]] | None = None,
          shapes: tuple[str, ...] | None = None) -> list[Detection]:
    """Objects in one image, (3, H, W) in [-1, 1], largest first; colours named from `palette`
    (name -> RGB in [0, 1], default the training palette COLOURS), shapes from `shapes` (default SHAPES)."""
    palette = COLOURS if palette is None else palette
    shapes = SHAPES if shapes is None else tuple(shapes)
    rgb = ((image.detach().float().cpu() + 1) / 2).clamp(0, 1)
    S = rgb.shape[-1]
    pixels = rgb.reshape(3, -1).T  # (HW, 3)
    background = pixels.median(dim=0).values
    offset = pixels - background
    distance = offset.norm(dim=1)
    directions = _palette_directions(background, palette)
    label = (offset @ directions.T).argmax(dim=1)
    foreground = distance > FOREGROUND
    # a member pixel has at least 3 foreground pixels of its colour in its 3x3 neighbourhood (itself
    # included): isolated noise pixels are no object
    one_hot = torch.stack([(foreground & (label == k)).view(S, S) for k in range(len(palette))]).float()
    neighbours = F.conv2d(one_hot[:, None], torch.ones(1, 1, 3, 3), padding=1)[:, 0].view(len(palette), -1)
    ys, xs = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")  # pixel centres
    detections = []
    for k, name in enumerate(palette):
        member = (one_hot[k].view(-1) > 0) & (neighbours[k] >= 3)
        if member.sum() < 2:
            continue
        # the colour's shade: mean of its strongest pixels; coverage: projection onto it
        core = member & (distance >= 0.7 * distance[member].max())
        colour = offset[core].mean(0)
        coverage_k = ((offset @ colour) / (colour @ colour)).clamp(0, 1).view(S, S)
        for part in components(member.view(S, S)):  # two objects of one colour are two detections
            alpha = coverage_k * part
            area = float(alpha.sum()) / (S * S)
            if area < MIN_AREA:
                continue
            mass = alpha.sum()
            cx, cy = float((alpha * xs).sum() / mass), float((alpha * ys).sum() / mass)
            radius = math.sqrt(area * S * S / math.pi)
            detections.append(Detection(
                shape=_shape(alpha, cx, cy, radius, shapes), colour=name, size=_size(area),
                position=_position(cx / S, cy / S), centre=(cx / S, cy / S), area=area,
            ))
    return sorted(detections, key=lambda d: -d.area)


def components(mask: torch.Tensor) -> list[torch.Tensor]:
    """The 8-connected components of a boolean (H, W) mask, as float masks: each pixel takes the largest label
    in its 3x3 neighbourhood within the mask until no label changes."""
    H, W = mask.shape
    labels = torch.where(mask, torch.arange(1, H * W + 1, dtype=torch.float32).view(H, W), torch.zeros(()))
    while True:
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    return [(labels == value).float() for value in labels.unique() if value > 0]


def relation_of(first: Detection, second: Detection) -> str:
    """Where the first object is relative to the second: the dominant axis of their offset."""
    dx, dy = first.centre[0] - second.centre[0], first.centre[1] - second.centre[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _match(scene: Scene, detections: list[Detection]) -> list[Detection | None]:
    """The detection standing for each scene object: the two largest, paired by colour where the
    colours allow (the nearest to the object's intended position where two share its colour), else by
    distance to that position."""
    top = detections[: len(scene.objects)]
    matched: list[Detection | None] = [None] * len(scene.objects)
    for i, obj in enumerate(scene.objects):
        same = [d for d in top if d.colour == obj.colour]
        if same:
            matched[i] = _nearest(same, obj)
            top.remove(matched[i])
    for i, obj in enumerate(scene.objects):
        if matched[i] is None and top:
            matched[i] = _nearest(top, obj)
            top.remove(matched[i])
    return matched


def _nearest(detections: list[Detection], obj) -> Detection:
    """The detection nearest the object's intended position."""
    px, py = POSITIONS[obj.position]
    return min(detections, key=lambda d: (d.centre[0] - px) ** 2 + (d.centre[1] - py) ** 2)


def score(scene: Scene, detections: list[Detection]) -> dict[str, bool]:
    """Which of the scene's attributes the image shows.

    The largest detections stand for the scene's objects (`_match`). One object: shape, colour,
    size, position. Two objects: shape, colour, size (right for both), relation. Then `count`
    (exactly as many objects as the scene has) and `all` (every key above).
    """
    matched = _match(scene, detections)
    attributes = ATTRIBUTES if len(scene.objects) == 1 else ("shape", "colour", "size")
    result = {attr: all(d is not None and getattr(d, attr) == getattr(o, attr) for d, o in zip(matched, scene.objects))
              for attr in attributes}
    if len(scene.objects) == 2:
        result["relation"] = None not in matched and relation_of(*matched) == scene.relation
    result["count"] = len(detections) == len(scene.objects)
    result["all"] = all(result.values())
    if len(scene.objects) == 2:  # beside the rest, not part of "all": the relation implies it
        result["relation axis"] = None not in matched and AXIS[relation_of(*matched)] == AXIS[scene.relation]
    return result
