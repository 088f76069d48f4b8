"""The video world: captioned clips of one or two coloured shapes that move, bounce, grow, shrink or change colour.

A clip is the shapes world (data/shapes.py) set in motion. Each object has a shape and a colour of the training
palette (SHAPES, COLOURS), a size, a start position and one motion of MOTIONS:

- "left", "right", "up", "down": the centre travels TRAVEL (0.4 of the width) at constant speed, linearly
  from the first frame to the last;
- "bounce horizontal", "bounce vertical": the centre travels TRAVEL towards the middle of the frame by the
  middle of the clip and comes back to its start by the last frame (a triangle wave, constant speed);
- "grow", "shrink": the radius goes linearly from small to large (or back), the centre stays; a growing object
  starts small and a shrinking one large, and the caption names the start size ("a small red circle grows");
- "change colour": the object switches to `end_colour`, another palette colour, at the middle frame (frames
  frames // 2 onwards), with no blend, so every frame shows a palette colour.

A motion of NEW_MOTIONS is never drawn by any split, as shapes.NEW_SHAPES are never drawn: a model learns it from
a few clips of its own (`MotionConcept`), as data/concept.py teaches a new colour or shape. So far there is one:

- "diagonal": down and to the right, linearly from the first frame to the last; the centre travels
  DIAGONAL_TRAVEL = TRAVEL / sqrt(2) (0.28 of the width) along each axis, so its path is as long as a straight
  move's (TRAVEL) and as fast, and leaves a large object room to start (a large triangle's centre starts
  anywhere in x 0.25 .. 0.47, y 0.28 .. 0.56). Its wordings are "moves diagonally", "slides diagonally",
  "moves down and to the right", ...

Every object stays wholly in the frame all the clip. Two objects have distinct colours (end colours included)
and paths that never meet: they move along the same axis, in two bands (one in the top half, one in the bottom
half, for horizontal motions) or two columns (left and right halves, for vertical ones); a clip whose objects
would move along different axes is not drawn (the halves leave a large object no room to cross the other's).
Captions come in several wordings, the canonical one first ("a small red circle moves to the right and a large
blue square moves up"). Some shape-motion pairs (HELD_OUT) never appear in the train and test splits; the
"heldout" split is made of them, to test compositional generalisation over motion, as shapes.HELD_OUT does
over colour.

Every clip is drawn from a seed, a split and an index: the set is infinite and deterministic, and a clip's
objects and motions do not depend on its number of frames (FRAMES), only its sampling in time. `states(clip)`
gives every frame's objects (centre, radius, colour), from which both the renderer (shapes.draw, every frame of
every clip in one call) and the tests read.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import torch

from .concept import CONCEPT_SPLITS, check_concept, concept_kind
from .shapes import (_SPLIT_STREAM, COLOURS, SHAPES, SIZE_WORDS, SIZES, SPLITS, _article, colour_rgb, draw,
                     shape_index)

FRAMES = (8, 16)  # frames per clip accepted
MOTIONS = ("left", "right", "up", "down", "bounce horizontal", "bounce vertical", "grow", "shrink", "change colour")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), y pointing down
NEW_MOTIONS = ("diagonal",)  # never drawn by any split (as shapes.NEW_SHAPES): MotionConcept's clips teach them
DIAGONALS = {"diagonal": (1, 1)}  # (dx, dy) of a diagonal move, y pointing down: down and to the right
BOUNCES = {"bounce horizontal": 0, "bounce vertical": 1}  # the axis it moves along, 0 for x
SIZE_CHANGES = {"grow": ("small", "large"), "shrink": ("large", "small")}  # (first frame's size, last frame's)
HELD_OUT = frozenset({("triangle", "up"), ("circle", "shrink"), ("square", "bounce horizontal")})
TRAVEL = 0.4  # how far a moving or bouncing centre goes, as a fraction of the width
DIAGONAL_TRAVEL = TRAVEL / math.sqrt(2)  # how far a diagonal move goes along each axis: TRAVEL along its path
MARGIN = 0.03  # the least gap between an object and the edge of its region (frame or half), fraction of the width
# how far each shape reaches from its centre (left, right, up, down), in radii of the circle of the same area
# (shapes.shape_distance): the square's half side sqrt(pi)/2; the triangle's half side, circumradius, inradius
_SIDE = math.sqrt(4 * math.pi / math.sqrt(3))
EXTENTS = {
    "circle": (1.0, 1.0, 1.0, 1.0),
    "square": (math.sqrt(math.pi) / 2,) * 4,
    "triangle": (_SIDE / 2, _SIDE / 2, _SIDE / math.sqrt(3), _SIDE / (2 * math.sqrt(3))),
    "diamond": (math.sqrt(math.pi / 2),) * 4,  # a concept (shapes.NEW_SHAPES): the square's half diagonal
}
FULL = (0.0, 1.0, 0.0, 1.0)  # a region (x0, x1, y0, y1), fractions of the image
BANDS = ((0.0, 1.0, 0.0, 0.5), (0.0, 1.0, 0.5, 1.0))  # two objects moving horizontally: top and bottom halves
COLUMNS = ((0.0, 0.5, 0.0, 1.0), (0.5, 1.0, 0.0, 1.0))  # two objects moving vertically: left and right halves
_STREAM_OFFSET = 2**64  # above every stream of the image world (shapes.scene_rng, below 2**64 for seeds < 6e9)

# Wording. Each motion has several phrasings; the first is the canonical one. {colour}: the end colour.
MOTION_WORDS = {
    "left": ("moves to the left", "moves left", "slides left", "goes left"),
    "right": ("moves to the right", "moves right", "slides right", "goes right"),
    "up": ("moves up", "slides up", "goes up", "rises"),
    "down": ("moves down", "slides down", "goes down", "sinks"),
    "bounce horizontal": ("bounces left and right", "bounces from side to side", "moves back and forth sideways"),
    "bounce vertical": ("bounces up and down", "bounces from top to bottom", "moves back and forth vertically"),
    "grow": ("grows", "gets bigger", "grows larger", "expands"),
    "shrink": ("shrinks", "gets smaller", "shrinks down", "contracts"),
    "change colour": ("turns {colour}", "changes colour to {colour}", "changes color to {colour}",
                      "becomes {colour}"),
    "diagonal": ("moves diagonally", "slides diagonally", "goes diagonally", "moves down and to the right",
                 "slides down to the right"),
}
SINGLE_TEMPLATES = (
    "{a} {obj} {motion}",
    "a video of {a} {obj} that {motion}",
    "there is {a} {obj} that {motion}",
    "{obj} {motion}",
    "in this clip {a} {obj} {motion}",
)
PAIR_TEMPLATES = (
    "{a1} {obj1} {motion1} and {a2} {obj2} {motion2}",
    "{a1} {obj1} {motion1} while {a2} {obj2} {motion2}",
    "a video of {a1} {obj1} that {motion1} and {a2} {obj2} that {motion2}",
    "{obj1} {motion1}, {obj2} {motion2}",
)


def _accepted(values) -> str:
    return ", ".join(str(v) for v in values)


def check_frames(frames: int) -> None:
    if frames not in FRAMES:
        raise ValueError(f"{frames} frames per clip are not supported; accepted: {_accepted(FRAMES)}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {_accepted(SPLITS)}")


def check_new_motion(motion: str) -> None:
    if motion not in NEW_MOTIONS:
        raise ValueError(f"unknown new motion {motion!r}; accepted: {_accepted(NEW_MOTIONS)} (the motions no split "
                         "draws)")


@dataclass(frozen=True)
class MovingObject:
    """One object of a clip as it is at the first frame, and its motion."""

    shape: str
    colour: str
    size: str  # at the first frame
    start: tuple[float, float]  # centre (x, y) at the first frame, fractions of the image
    motion: str  # one of MOTIONS or NEW_MOTIONS
    end_colour: str | None = None  # the colour from the middle frame on; for "change colour" only

    def __post_init__(self):
        if self.motion not in MOTIONS + NEW_MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; accepted: {_accepted(MOTIONS + NEW_MOTIONS)}")
        if (self.motion == "change colour") != (self.end_colour is not None):
            raise ValueError("an end colour is given with the motion 'change colour' and only with it")
        if self.motion in SIZE_CHANGES and self.size != SIZE_CHANGES[self.motion][0]:
            raise ValueError(f"an object that does {self.motion!r} starts {SIZE_CHANGES[self.motion][0]}")


@dataclass(frozen=True)
class Clip:
    objects: tuple[MovingObject, ...]
    frames: int  # one of FRAMES

    def __post_init__(self):
        check_frames(self.frames)


@dataclass(frozen=True)
class ObjectState:
    """One object in one frame."""

    shape: str
    colour: str
    centre: tuple[float, float]  # (x, y), fractions of the image
    radius: float  # of the circle of the same area, fraction of the width


# ---------------------------------------------------------------- motion


def _offset(obj: MovingObject, progress: float) -> tuple[float, float]:
    """The centre's offset from its start at `progress` (0 at the first frame, 1 at the last)."""
    if obj.motion in DIRECTIONS:
        dx, dy = DIRECTIONS[obj.motion]
        return dx * TRAVEL * progress, dy * TRAVEL * progress
    if obj.motion in DIAGONALS:
        dx, dy = DIAGONALS[obj.motion]
        return dx * DIAGONAL_TRAVEL * progress, dy * DIAGONAL_TRAVEL * progress
    if obj.motion in BOUNCES:
        axis = BOUNCES[obj.motion]
        towards_middle = 1.0 if obj.start[axis] < 0.5 else -1.0
        d = towards_middle * TRAVEL * (1 - abs(2 * progress - 1))  # out by the middle, back by the end
        return (d, 0.0) if axis == 0 else (0.0, d)
    return 0.0, 0.0


def _radius(obj: MovingObject, progress: float) -> float:
    first, last = SIZE_CHANGES.get(obj.motion, (obj.size, obj.size))
    return (1 - progress) * SIZES[first] + progress * SIZES[last]


def state(obj: MovingObject, frame: int, frames: int) -> ObjectState:
    """The object at frame `frame` of `frames`."""
    progress = frame / (frames - 1)
    dx, dy = _offset(obj, progress)
    colour = obj.end_colour if obj.end_colour is not None and frame >= frames // 2 else obj.colour
    return ObjectState(obj.shape, colour, (obj.start[0] + dx, obj.start[1] + dy), _radius(obj, progress))


def states(clip: Clip) -> tuple[tuple[ObjectState, ...], ...]:
    """Every frame's objects: states(clip)[t][k] is object k at frame t."""
    return tuple(tuple(state(obj, t, clip.frames) for obj in clip.objects) for t in range(clip.frames))


def axis_of(motion: str) -> int | None:
    """0 for a motion along x, 1 along y, None for one in place (and for a diagonal, along both)."""
    if motion in DIRECTIONS:
        return 0 if DIRECTIONS[motion][0] else 1
    return BOUNCES.get(motion)


# ---------------------------------------------------------------- sampling


def _fits(kinds: list[tuple[str, str]], split: str) -> bool:
    """Train and test clips avoid the held-out shape-motion pairs; heldout clips contain one."""
    held = [kind in HELD_OUT for kind in kinds]
    return any(held) if split == "heldout" else not any(held)


def _regions(motions: list[str], rng: random.Random) -> tuple[tuple[float, float, float, float], ...] | None:
    """Where each object stays: the frame for one; for two, halves across their common axis, in random order.
    None if two objects move along different axes."""
    if len(motions) == 1:
        return (FULL,)
    axes = {axis_of(m) for m in motions} - {None}
    if len(axes) > 1:
        return None
    axis = axes.pop() if axes else rng.choice((0, 1))
    halves = BANDS if axis == 0 else COLUMNS
    return halves if rng.random() < 0.5 else halves[::-1]


def _start(rng: random.Random, shape: str, motion: str, radius: float, region) -> tuple[float, float]:
    """A start from which the object (at its largest radius) stays in its region, MARGIN from the edges."""
    left, right, up, down = (e * radius for e in EXTENTS[shape])
    x0, x1, y0, y1 = region
    low, high = [x0 + MARGIN + left, y0 + MARGIN + up], [x1 - MARGIN - right, y1 - MARGIN - down]
    axis = axis_of(motion)
    if axis is not None:  # room for the travel; a bounce goes towards the middle, so starts on the side it leaves
        way = DIRECTIONS[motion][axis] if motion in DIRECTIONS else rng.choice((1, -1))
        low[axis], high[axis] = (low[axis], high[axis] - TRAVEL) if way > 0 else (low[axis] + TRAVEL, high[axis])
    for axis, way in enumerate(DIAGONALS.get(motion, ())):  # a diagonal's room along both axes
        low[axis], high[axis] = ((low[axis], high[axis] - DIAGONAL_TRAVEL) if way > 0
                                 else (low[axis] + DIAGONAL_TRAVEL, high[axis]))
    assert low[0] <= high[0] and low[1] <= high[1], "an object has no room in its region"
    return rng.uniform(low[0], high[0]), rng.uniform(low[1], high[1])


def sample_clip(rng: random.Random, split: str = "train", p_two: float = 0.35, frames: int = 16) -> Clip:
    """Draw a clip of the split (rejection sampling over the held-out pairs and the two objects' axes)."""
    check_split(split)
    check_frames(frames)
    n = 2 if rng.random() < p_two else 1
    while True:
        kinds = [(rng.choice(SHAPES), rng.choice(MOTIONS)) for _ in range(n)]
        regions = _regions([m for _, m in kinds], rng)
        if regions is not None and _fits(kinds, split):
            break
    objects, taken = [], set()
    for (shape, motion), region in zip(kinds, regions):
        colour = rng.choice([c for c in COLOURS if c not in taken])
        taken.add(colour)
        end_colour = None
        if motion == "change colour":
            end_colour = rng.choice([c for c in COLOURS if c not in taken])
            taken.add(end_colour)
        size = SIZE_CHANGES[motion][0] if motion in SIZE_CHANGES else rng.choice(list(SIZES))
        largest = max(SIZES[s] for s in SIZE_CHANGES.get(motion, (size,)))
        start = _start(rng, shape, motion, largest, region)
        objects.append(MovingObject(shape, colour, size, start, motion, end_colour))
    return Clip(tuple(objects), frames)


def clip_rng(seed: int, index: int, split: str = "train") -> random.Random:
    """The random stream of one example: fixed by (seed, split, index), apart from the image world's streams."""
    return random.Random(_STREAM_OFFSET + (seed * 3 + _SPLIT_STREAM[split]) * 1_000_003_007 + index)


# ---------------------------------------------------------------- captions


def caption(clip: Clip, rng: random.Random | None = None) -> str:
    """A caption of the clip; with `rng`, a random template and wording, else the canonical one."""
    pick = (lambda options: options[0]) if rng is None else rng.choice

    def phrase(obj: MovingObject) -> tuple[str, str]:  # (the object, its motion)
        motion = pick(MOTION_WORDS[obj.motion]).format(colour=obj.end_colour)
        return f"{pick(SIZE_WORDS[obj.size])} {obj.colour} {obj.shape}", motion

    if len(clip.objects) == 1:
        obj, motion = phrase(clip.objects[0])
        template = pick(SINGLE_TEMPLATES)
        return template.format(a=_article(obj), obj=obj, motion=motion)
    (obj1, motion1), (obj2, motion2) = (phrase(o) for o in clip.objects)
    return pick(PAIR_TEMPLATES).format(a1=_article(obj1), obj1=obj1, motion1=motion1,
                                       a2=_article(obj2), obj2=obj2, motion2=motion2)


# ---------------------------------------------------------------- rendering


def render(clips: list[Clip], image_size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Render clips of one frame count to a (B, T, 3, H, W) tensor in [-1, 1], all frames in one shapes.draw."""
    frames = {clip.frames for clip in clips}
    if len(frames) != 1:
        raise ValueError(f"clips rendered together have one number of frames; got {sorted(frames)}")
    B, T, S = len(clips), frames.pop(), image_size
    n_max = max(len(clip.objects) for clip in clips)
    rows = []  # per (clip, frame, object slot): shape id, r, g, b, centre x, centre y, radius, present
    for clip in clips:
        for frame in states(clip):
            rows += [(shape_index(o.shape), *colour_rgb(o.colour), o.centre[0] * S, o.centre[1] * S, o.radius * S, 1.0)
                     for o in frame]
            rows += [(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)] * (n_max - len(frame))
    table = torch.tensor(rows, dtype=torch.float32).view(B * T, n_max, 8)
    images = draw(table[..., 0].long(), table[..., 1:4], table[..., 4:6], table[..., 6], table[..., 7], S, device)
    return images.view(B, T, 3, S, S)


class VideoDataset:
    """An infinite, deterministic stream of (video, caption, clip) from a seed.

    Example `index` is the same for every run with the same seed and split; its objects and motions are
    also the same at every frame count and image size.
    """

    def __init__(self, *, seed: int = 0, split: str = "train", frames: int = 16, image_size: int = 32,
                 p_two: float = 0.35, canonical_captions: bool = False):
        check_split(split)
        check_frames(frames)
        if image_size not in (32, 64):
            raise ValueError(f"image size {image_size} is not supported; accepted: 32, 64")
        if not 0.0 <= p_two <= 1.0:
            raise ValueError(f"p_two is a probability; got {p_two}")
        self.seed, self.split, self.frames, self.image_size = seed, split, frames, image_size
        self.p_two, self.canonical_captions = p_two, canonical_captions

    def example(self, index: int) -> tuple[Clip, str]:
        rng = clip_rng(self.seed, index, self.split)
        clip = sample_clip(rng, self.split, self.p_two, self.frames)
        return clip, caption(clip, None if self.canonical_captions else rng)

    def batch(self, start: int, n: int, device: torch.device | str = "cpu"):
        """Examples start .. start + n - 1 as (videos (n, T, 3, H, W) in [-1, 1], captions, clips)."""
        clips, captions = zip(*(self.example(i) for i in range(start, start + n)))
        return render(list(clips), self.image_size, device), list(captions), list(clips)

    def __getitem__(self, index: int):
        videos, captions, clips = self.batch(index, 1)
        return videos[0], captions[0], clips[0]


def motion_object(rng: random.Random, motion: str) -> MovingObject:
    """One object of the training shapes, palette and sizes doing `motion`, starting anywhere it stays in the
    frame all the clip."""
    shape, colour, size = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES))
    return MovingObject(shape, colour, size, _start(rng, shape, motion, SIZES[size], FULL), motion)


class MotionConcept(VideoDataset):
    """Clips of a new motion (NEW_MOTIONS), to teach it to a video model (a motion LoRA, training/video.py) and
    test what it learned: one object of the training shapes, palette and sizes doing the motion, captioned in
    the motion's wordings ("a small red circle moves diagonally").

    Example i is fixed by (motion, split, seed, i), apart from every other stream. The "train" split is a fixed
    set of `count` clips, cycled: example i is example i mod count, caption included, as a folder of captioned
    clips would be (data/concept.py's folders). The "test" split is an endless stream of fresh clips. Clips
    are the same at every frame count and image size.
    """

    def __init__(self, *, motion: str = "diagonal", seed: int = 0, split: str = "train", count: int = 50,
                 frames: int = 16, image_size: int = 32, canonical_captions: bool = False):
        check_new_motion(motion)
        if split not in CONCEPT_SPLITS:
            raise ValueError(f"unknown motion concept split {split!r}; accepted: {_accepted(CONCEPT_SPLITS)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive whole number of clips, got {count!r}")
        super().__init__(seed=seed, split=split, frames=frames, image_size=image_size, p_two=0.0,
                         canonical_captions=canonical_captions)
        self.motion, self.count = motion, count

    def example(self, index: int) -> tuple[Clip, str]:
        if self.split == "train":
            index %= self.count
        rng = random.Random(f"motion-concept/{self.motion}/{self.split}/{self.seed}/{index}")  # hashed by SHA-512
        clip = Clip((motion_object(rng, self.motion),), self.frames)
        return clip, caption(clip, None if self.canonical_captions else rng)


def concept_object(rng: random.Random, concept: str) -> MovingObject:
    """One object of a concept (data/concept.py: a colour of NEW_COLOURS or a shape of NEW_SHAPES) doing a motion
    of MOTIONS, its other attributes drawn as sample_clip draws them, starting anywhere it stays in the frame."""
    motion = rng.choice(MOTIONS)
    if concept_kind(concept) == "colour":
        shape, colour = rng.choice(SHAPES), concept
    else:
        shape, colour = concept, rng.choice(list(COLOURS))
    end_colour = rng.choice([c for c in COLOURS if c != colour]) if motion == "change colour" else None
    size = SIZE_CHANGES[motion][0] if motion in SIZE_CHANGES else rng.choice(list(SIZES))
    largest = max(SIZES[s] for s in SIZE_CHANGES.get(motion, (size,)))
    return MovingObject(shape, colour, size, _start(rng, shape, motion, largest, FULL), motion, end_colour)


class ConceptClips(VideoDataset):
    """Clips of a concept learned from images (a new colour or shape, data/concept.py) set in motion, to measure
    what an image LoRA of it teaches a video model (evaluation/video_concept.py): one object of the concept
    doing a motion of MOTIONS, captioned in the world's wordings with the concept named `word` ("a small red
    diamond moves to the right"). A shape concept needs its EXTENTS.

    Example i is fixed by (concept, split, seed, i), apart from every other stream; the same at every frame
    count and image size.
    """

    def __init__(self, *, concept: str = "diamond", word: str | None = None, seed: int = 0, split: str = "test",
                 frames: int = 16, image_size: int = 32, canonical_captions: bool = False):
        self.word = check_concept(concept, word)
        if concept_kind(concept) == "shape" and concept not in EXTENTS:
            raise ValueError(f"the shape {concept!r} has no extents for clips yet; accepted: "
                             f"{_accepted(s for s in EXTENTS if s not in SHAPES)}")
        if split not in CONCEPT_SPLITS:
            raise ValueError(f"unknown concept split {split!r}; accepted: {_accepted(CONCEPT_SPLITS)}")
        super().__init__(seed=seed, split=split, frames=frames, image_size=image_size, p_two=0.0,
                         canonical_captions=canonical_captions)
        self.concept = concept

    def example(self, index: int) -> tuple[Clip, str]:
        rng = random.Random(f"concept-clip/{self.concept}/{self.split}/{self.seed}/{index}")  # hashed by SHA-512
        clip = Clip((concept_object(rng, self.concept),), self.frames)
        text = caption(clip, None if self.canonical_captions else rng)
        return clip, re.sub(rf"\b{self.concept}\b", self.word, text)


def caption_corpus(n: int = 20_000, seed: int = 0) -> list[str]:
    """Captions of every wording, for fitting a tokenizer."""
    data = VideoDataset(seed=seed, split="train", p_two=0.5)
    return [data.example(i)[1] for i in range(n)]
