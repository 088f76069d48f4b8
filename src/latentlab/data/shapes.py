"""The shapes world: captioned images of one or two coloured shapes on a plain background.

Every image is drawn from a seed and an index, so the set is infinite and deterministic. A scene's
attributes are: shape, colour, size and position of each object, and for two objects the relation of
the first to the second. Captions come from several templates with varied wording. Some
colour-shape combinations never appear in the training split; the "heldout" split is made of them,
to test compositional generalisation. NEW_COLOURS and NEW_SHAPES are colours and shapes no split ever
draws: concepts to teach a trained model afterwards (data/concept.py); scenes of them render and caption
like any other.

Rendering is vectorised in torch (any device): each shape is a signed distance field, anti-aliased
by clamping the distance to one pixel. All shapes of one size have the same area, so size is
readable from area alone. `draw` paints tables of objects at any centre and radius; `render` fills them
from scenes (the video world, data/video.py, fills them from every frame of its clips).
"""

from __future__ import annotations

import math
import random
import dataclasses
from dataclasses import dataclass

import torch

SHAPES = ("circle", "square", "triangle")
# never drawn by any split, like NEW_COLOURS; append only: a shape's id is its place in SHAPES + NEW_SHAPES
NEW_SHAPES = (
    "diamond",  # the square turned by 45 degrees
    "star",  # five points, pointing up; inner radius half the outer
    "hexagon",  # regular, flat top and bottom, corners left and right
    "cross",  # a plus: two bars three times as long as wide
    "ring",  # an annulus from 3/4 to 5/4 of the circle's radius
)
COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.88, 0.15, 0.15),
    "orange": (0.97, 0.55, 0.10),
    "yellow": (0.95, 0.92, 0.15),
    "green": (0.15, 0.72, 0.22),
    "blue": (0.15, 0.30, 0.92),
    "purple": (0.62, 0.22, 0.82),
}
NEW_COLOURS = {  # name -> RGB: never drawn by any split, so a model trained on the shapes world has never seen them
    # green and blue in equal parts: 37 degrees from each, seen from the background (the judge reads directions;
    # the palette's closest pair, orange and yellow, is 18 degrees apart)
    "cyan": (0.10, 0.85, 0.80),
    # light pink: white's share sets it apart from red (43 degrees), purple and yellow (31 degrees each)
    "pink": (0.96, 0.66, 0.68),
    # dark reddish brown: darker than the background in blue, which turns it 29 degrees from red and 30 from
    # orange (a brighter brown would lie on orange's ray: the judge reads no brightness)
    "brown": (0.45, 0.20, 0.00),
}
BACKGROUND = (0.16, 0.16, 0.16)
SIZES = {"small": 0.10, "large": 0.16}  # radius of the equal-area circle, as a fraction of the width
POSITIONS = {  # centre (x, y) as fractions of the image
    "left": (0.27, 0.50),
    "right": (0.73, 0.50),
    "top": (0.50, 0.27),
    "bottom": (0.50, 0.73),
    "centre": (0.50, 0.50),
}
RELATIONS = {  # relation of the first object to the second -> (first's position, second's position)
    "left of": ("left", "right"),
    "right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}
HELD_OUT = frozenset({("green", "triangle"), ("purple", "circle"), ("orange", "square")})
JITTER = 0.03  # uniform jitter of each centre, as a fraction of the width
SPLITS = ("train", "test", "heldout")
_SPLIT_STREAM = {"train": 0, "test": 1, "heldout": 2}

# Wording. Each attribute value has several phrasings; the first is the canonical one.
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
POSITION_WORDS = {
    "left": ("on the left", "at the left", "on the left side", "to the left"),
    "right": ("on the right", "at the right", "on the right side", "to the right"),
    "top": ("at the top", "near the top", "in the upper part", "on top"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part", "on the bottom"),
    "centre": ("in the centre", "in the center", "in the middle", "at the centre"),
}
RELATION_WORDS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
SINGLE_TEMPLATES = (
    "{a} {size} {colour} {shape} {pos}",
    "{pos}, {a} {size} {colour} {shape}",
    "there is {a} {size} {colour} {shape} {pos}",
    "a picture of {a} {size} {colour} {shape} {pos}",
    "{size} {colour} {shape} {pos}",
    "{a_colour} {colour} {shape}, {size}, {pos}",
    "{a_shape} {shape} that is {colour} and {size}, {pos}",
)
PAIR_TEMPLATES = (
    "{a1} {obj1} {rel} {a2} {obj2}",
    "there is {a1} {obj1} {rel} {a2} {obj2}",
    "a picture of {a1} {obj1} {rel} {a2} {obj2}",
    "{obj1} {rel} {obj2}",
)


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """One or two objects; with two, `relation` says where the first is relative to the second."""

    objects: tuple[ShapeObject, ...]
    relation: str | None = None
    jitter: tuple[tuple[float, float], ...] = ()  # per-object centre offset, fraction of the width


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def colour_rgb(name: str) -> tuple[float, float, float]:
    """The RGB of a palette colour or of one of NEW_COLOURS."""
    if name in COLOURS:
        return COLOURS[name]
    if name in NEW_COLOURS:
        return NEW_COLOURS[name]
    raise ValueError(f"unknown colour {name!r}; accepted: {', '.join([*COLOURS, *NEW_COLOURS])}")


def caption(scene: Scene, rng: random.Random | None = None, *, words: dict[str, str] | None = None) -> str:
    """A caption of the scene; with `rng`, a random template and wording, else the canonical one.
    `words` names colours or shapes by other words in the caption (a concept's identifier, data/concept.py)."""
    pick = (lambda options: options[0]) if rng is None else rng.choice
    words = words or {}

    def colour(obj: ShapeObject) -> str:
        return words.get(obj.colour, obj.colour)

    def shape(obj: ShapeObject) -> str:
        return words.get(obj.shape, obj.shape)

    def phrase(obj: ShapeObject) -> str:
        return f"{pick(SIZE_WORDS[obj.size])} {colour(obj)} {shape(obj)}"

    if len(scene.objects) == 1:
        (obj,) = scene.objects
        size = pick(SIZE_WORDS[obj.size])
        template = SINGLE_TEMPLATES[0] if rng is None else rng.choice(SINGLE_TEMPLATES)
        return template.format(
            a=_article(size), a_colour=_article(colour(obj)), a_shape=_article(shape(obj)),
            size=size, colour=colour(obj), shape=shape(obj), pos=pick(POSITION_WORDS[obj.position]),
        )
    first, second = (phrase(o) for o in scene.objects)
    template = PAIR_TEMPLATES[0] if rng is None else rng.choice(PAIR_TEMPLATES)
    return template.format(
        a1=_article(first), obj1=first, a2=_article(second), obj2=second,
        rel=pick(RELATION_WORDS[scene.relation]),
    )


def _sample_object(rng: random.Random, position: str, exclude_colour: str | None = None) -> ShapeObject:
    colours = [c for c in COLOURS if c != exclude_colour]
    return ShapeObject(rng.choice(SHAPES), rng.choice(colours), rng.choice(list(SIZES)), position)


def _fits(objects: tuple[ShapeObject, ...], split: str) -> bool:
    """Train and test scenes avoid the held-out colour-shape pairs; heldout scenes contain one."""
    held = [(o.colour, o.shape) in HELD_OUT for o in objects]
    return any(held) if split == "heldout" else not any(held)


def sample_scene(rng: random.Random, split: str = "train", p_two: float = 0.35) -> Scene:
    """Draw a scene of the split (rejection sampling over the held-out pairs)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    two = rng.random() < p_two
    while True:
        if two:
            relation = rng.choice(list(RELATIONS))
            pos1, pos2 = RELATIONS[relation]
            first = _sample_object(rng, pos1)
            objects = (first, _sample_object(rng, pos2, exclude_colour=first.colour))
        else:
            relation, objects = None, (_sample_object(rng, rng.choice(list(POSITIONS))),)
        if _fits(objects, split):
            break
    jitter = tuple((rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)) for _ in objects)
    return Scene(objects, relation, jitter)


def widen(scene: Scene, rng: random.Random, p_new: float) -> Scene:
    """The scene with each object's colour, and independently its shape, replaced by a new one (NEW_COLOURS,
    NEW_SHAPES) with probability p_new each; two objects keep distinct colours. For autoencoders only
    ("shapes-wide", data/sources.py): an autoencoder should carry any colour and shape, as SD's carries what its
    U-Net never learned to draw; a diffusion model trained on it would no longer find the concepts new."""
    objects = []
    for obj in scene.objects:
        taken = {o.colour for o in objects}
        colour = rng.choice([c for c in NEW_COLOURS if c not in taken]) if rng.random() < p_new else obj.colour
        shape = rng.choice(NEW_SHAPES) if rng.random() < p_new else obj.shape
        objects.append(dataclasses.replace(obj, colour=colour, shape=shape))
    return dataclasses.replace(scene, objects=tuple(objects))


def scene_rng(seed: int, index: int, split: str = "train") -> random.Random:
    """The random stream of one example: fixed by (seed, split, index)."""
    return random.Random((seed * 3 + _SPLIT_STREAM[split]) * 1_000_003_007 + index)


# ---------------------------------------------------------------- rendering


def shape_index(name: str) -> int:
    """The id of a shape of SHAPES or NEW_SHAPES, as `shape_distance` takes it."""
    if name not in SHAPES + NEW_SHAPES:
        raise ValueError(f"unknown shape {name!r}; accepted: {', '.join(SHAPES + NEW_SHAPES)}")
    return (SHAPES + NEW_SHAPES).index(name)


# Each distance function takes offsets dx, dy (..., H, W) of pixel centres from the shape's centre and the radius
# r (..., 1, 1) of the circle of the same area; it gives the signed distance in pixels, negative inside. The
# new shapes' distances are exact (Quilez's 2D distance functions, https://iquilezles.org/articles/distfunctions2d/).
_STAR_INNER = 0.5  # the star's inner radius as a fraction of its outer one
_STAR_OUTER = math.sqrt(math.pi / (5 * _STAR_INNER * math.sin(math.pi / 5)))  # area 5 R^2 inner sin 36 = pi r^2
_HEXAGON_APOTHEM = math.sqrt(math.pi / (2 * math.sqrt(3)))  # area 2 sqrt(3) a^2 = pi r^2
_CROSS_HALF_WIDTH = math.sqrt(math.pi / 20)  # bars of half width w, half length 3w: area 20 w^2 = pi r^2


def _circle(dx, dy, r):
    return torch.sqrt(dx**2 + dy**2) - r


def _square(dx, dy, r):
    return torch.maximum(dx.abs(), dy.abs()) - r * math.sqrt(math.pi) / 2  # the half side


def _triangle(dx, dy, r):
    """Equilateral, pointing up, centred on its centroid."""
    side = r * math.sqrt(4 * math.pi / math.sqrt(3))
    inradius = side / (2 * math.sqrt(3))
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    return torch.stack([dy, c * dx - s * dy, -c * dx - s * dy], 0).amax(0) - inradius


def _diamond(dx, dy, r):
    half = r * math.sqrt(math.pi) / 2  # the square's half side
    return (dx.abs() + dy.abs()) / math.sqrt(2) - half


def _star(dx, dy, r):
    """Five points, one pointing up: fold the plane into the first point's half sector, then the distance to
    its edge from the tip (0, R) to the inner corner at 36 degrees."""
    outer = r * _STAR_OUTER
    c, s = math.cos(math.pi / 5), math.sin(math.pi / 5)
    px, py = dx.abs(), -dy  # y up
    for kx, ky in ((c, -s), (-c, -s)):  # mirror across the lines between the points
        t = 2 * (kx * px + ky * py).clamp(min=0)
        px, py = px - t * kx, py - t * ky
    px, py = px.abs(), py - outer  # from the tip
    ex, ey = _STAR_INNER * s, _STAR_INNER * c - 1  # the edge's direction, length one per unit of R
    h = torch.minimum(((px * ex + py * ey) / (ex**2 + ey**2)).clamp(min=0), outer)
    return torch.sqrt((px - ex * h) ** 2 + (py - ey * h) ** 2) * torch.sign(py * ex - px * ey)


def _hexagon(dx, dy, r):
    """Regular, edges at the top and bottom at the apothem a, corners left and right."""
    a = r * _HEXAGON_APOTHEM
    kx, ky = -math.sqrt(3) / 2, 0.5  # the normal of the slanted edge, mirrored onto the top one
    px, py = dx.abs(), dy.abs()
    t = 2 * (kx * px + ky * py).clamp(max=0)
    px, py = px - t * kx, py - t * ky
    ex = px - torch.maximum(torch.minimum(px, a / math.sqrt(3)), -a / math.sqrt(3))  # beyond the top edge's ends
    return torch.sqrt(ex**2 + (py - a) ** 2) * torch.sign(py - a)


def _cross(dx, dy, r):
    """A plus of two bars, half width w and half length 3w: fold onto the horizontal bar's upper half."""
    w = r * _CROSS_HALF_WIDTH
    ax, ay = dx.abs(), dy.abs()
    px, py = torch.maximum(ax, ay), torch.minimum(ax, ay)
    qx, qy = px - 3 * w, py - w
    k = torch.maximum(qx, qy)
    wx, wy = torch.where(k > 0, qx, w - px), torch.where(k > 0, qy, -k)
    return torch.sign(k) * torch.sqrt(wx.clamp(min=0) ** 2 + wy.clamp(min=0) ** 2)


def _ring(dx, dy, r):
    """Radii 3r/4 to 5r/4: area pi ((5/4)^2 - (3/4)^2) r^2 = pi r^2."""
    return (torch.sqrt(dx**2 + dy**2) - r).abs() - r / 4


_DISTANCES = {"circle": _circle, "square": _square, "triangle": _triangle, "diamond": _diamond, "star": _star,
              "hexagon": _hexagon, "cross": _cross, "ring": _ring}


def shape_distance(shape_ids: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor):
    """Signed distance (pixels, negative inside) of each shape centred at the origin.

    shape_ids, r: (...,); dx, dy: (..., H, W) offsets of pixel centres from the shape's centre; ids
    index SHAPES + NEW_SHAPES (`shape_index`). Each shape has the area of a circle of radius r. Only the
    shapes present are computed: the new ones cost several times the old.
    """
    r, ids = r[..., None, None], shape_ids[..., None, None]
    distance = _circle(dx, dy, r)
    for k, name in enumerate(SHAPES + NEW_SHAPES):
        if k and bool((shape_ids == k).any()):
            distance = torch.where(ids == k, _DISTANCES[name](dx, dy, r), distance)
    return distance


def coverage(distance: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage of a pixel from its signed distance to the edge."""
    return (0.5 - distance).clamp(0.0, 1.0)


def draw(shape_ids: torch.Tensor, colours: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
         present: torch.Tensor, image_size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw B images of n object slots each, painted in slot order over the background; (B, 3, H, W) in [-1, 1].

    shape_ids (B, n) index SHAPES + NEW_SHAPES (`shape_index`); colours (B, n, 3) RGB in [0, 1]; centres (B, n, 2)
    (x, y) and radii (B, n) in pixels, continuous (radius: of the circle of the same area); present (B, n) 1 for
    an object, 0 for an empty slot. The tables are moved to `device`.
    """
    (B, n), S = shape_ids.shape, image_size
    shape_ids, colours, centres = shape_ids.to(device), colours.to(device), centres.to(device)
    radii, present = radii.to(device), present.to(device)
    grid = torch.arange(S, device=device, dtype=torch.float32) + 0.5
    dx = grid.view(1, 1, 1, S) - centres[..., 0, None, None]  # (B, n, 1, S)
    dy = grid.view(1, 1, S, 1) - centres[..., 1, None, None]  # (B, n, S, 1)
    dx, dy = torch.broadcast_tensors(dx, dy)
    alpha = coverage(shape_distance(shape_ids, dx, dy, radii)) * present[..., None, None]  # (B, n, S, S)
    image = torch.tensor(BACKGROUND, device=device).view(1, 3, 1, 1).expand(B, 3, S, S)
    for k in range(n):
        a = alpha[:, k, None]
        image = image * (1 - a) + colours[:, k, :, None, None] * a
    return image * 2 - 1


def render(scenes: list[Scene], image_size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Render scenes to a (B, 3, H, W) tensor in [-1, 1]. Colours: the palette's and NEW_COLOURS."""
    n_max = max(len(s.objects) for s in scenes)
    B, S = len(scenes), image_size
    rows = []  # per object slot: shape id, r, g, b, centre x, centre y, radius, present
    for scene in scenes:
        for k in range(n_max):
            if k >= len(scene.objects):
                rows.append((0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
                continue
            obj = scene.objects[k]
            jx, jy = scene.jitter[k] if scene.jitter else (0.0, 0.0)
            px, py = POSITIONS[obj.position]
            rows.append((shape_index(obj.shape), *colour_rgb(obj.colour), (px + jx) * S, (py + jy) * S,
                         SIZES[obj.size] * S, 1.0))
    table = torch.tensor(rows, dtype=torch.float32).view(B, n_max, 8)
    return draw(table[..., 0].long(), table[..., 1:4], table[..., 4:6], table[..., 6], table[..., 7], S, device)


class ShapesDataset:
    """An infinite, deterministic stream of (image, caption, scene) from a seed.

    Example `index` is the same for every run with the same seed, split and size, so a data
    order is fully described by the indices drawn.
    """

    def __init__(self, *, seed: int = 0, split: str = "train", image_size: int = 32, p_two: float = 0.35,
                 canonical_captions: bool = False, p_new: float = 0.0):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
        if image_size not in (32, 64):
            raise ValueError(f"image size {image_size} is not supported; accepted: 32, 64")
        if not 0.0 <= p_two <= 1.0:
            raise ValueError(f"p_two is a probability; got {p_two}")
        if not 0.0 <= p_new <= 1.0:
            raise ValueError(f"p_new is a probability; got {p_new}")
        self.seed, self.split, self.image_size, self.p_two = seed, split, image_size, p_two
        self.canonical_captions, self.p_new = canonical_captions, p_new

    def example(self, index: int) -> tuple[Scene, str]:
        rng = scene_rng(self.seed, index, self.split)
        scene = sample_scene(rng, self.split, self.p_two)
        if self.p_new:  # after the scene, so that p_new = 0 leaves the world's stream as it was
            scene = widen(scene, rng, self.p_new)
        return scene, caption(scene, None if self.canonical_captions else rng)

    def batch(self, start: int, n: int, device: torch.device | str = "cpu"):
        """Examples start .. start + n - 1 as (images (n, 3, H, W) in [-1, 1], captions, scenes)."""
        scenes, captions = zip(*(self.example(i) for i in range(start, start + n)))
        return render(list(scenes), self.image_size, device), list(captions), list(scenes)

    def __getitem__(self, index: int):
        images, captions, scenes = self.batch(index, 1)
        return images[0], captions[0], scenes[0]


def caption_corpus(n: int = 20_000, seed: int = 0) -> list[str]:
    """Captions of every wording, for fitting a tokenizer."""
    data = ShapesDataset(seed=seed, split="train", p_two=0.5)
    return [data.example(i)[1] for i in range(n)]
