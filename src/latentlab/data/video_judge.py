"""A judge for the video world: reads a clip frame by frame and says what each object does.

No learned network. Every frame is read by the image judge (data/judge.py), which finds at most one object
per palette colour. Objects are followed across frames by colour, and an object whose colour is gone is
linked to the nearest new detection within LINK (how a colour change is followed). Each track's motion is
read from its centroid and area trajectories:

- a move (left, right, up, down): it travels at least MIN_TRAVEL along one axis, never stepping back by more
  than BACKTRACK, and stays within STEADY across it;
- a bounce: it goes at least MIN_TRAVEL out along one axis and comes back at least half way, one way out and
  the other way back (one reversal);
- grow / shrink: its centroid stays within STEADY of its start and its area grows (shrinks) by GROWTH or more,
  never going back by more than a factor AREA_BACKTRACK;
- change colour: it stays put and keeps its area, and its colour switches exactly once;
- diagonal (of video.NEW_MOTIONS): it travels at least MIN_TRAVEL along both axes, the ways the diagonal goes
  (down and to the right), never stepping back on either by more than BACKTRACK, and stays within STEADY of the
  straight line from its first centroid to its last (an L-shaped path is no diagonal).

A moving object keeps its area within a factor AREA_STEADY. An object keeps its identity when it is seen in
every frame with one shape, one colour (apart from the switch of a colour change) and one size (apart from a
growth or shrinking). Temporal smoothness is the centroid's jitter: the mean length of its second difference
from frame to frame, as a fraction of the width: 0 for constant speed, apart from pixel noise; a true bounce's
turn adds 4 TRAVEL / ((T - 1) (T - 2)), 0.038 at 8 frames and 0.0076 at 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .judge import Detection, judge
from .video import BOUNCES, DIAGONALS, DIRECTIONS, SIZE_CHANGES, Clip, MovingObject, states

LINK = 0.2  # a centroid moves less than this between frames, as a fraction of the width
MIN_TRAVEL = 0.15  # a move or bounce goes at least this far (the world's TRAVEL is 0.4)
STEADY = 0.06  # a centroid that does not move stays this close to its start (off-axis, for a move)
BACKTRACK = 0.012  # a move steps back at most this far between frames (a 16-frame move steps 0.027)
GROWTH = 1.6  # grow / shrink: the last frame's area over the first's, or its inverse (the world's is 2.56)
AREA_BACKTRACK = 0.97  # a growth loses at most 3% of the area between frames (a 16-frame growth gains 6.5%)
AREA_STEADY = 1.3  # largest over smallest area of an object that keeps its size


@dataclass(frozen=True)
class Track:
    """One object followed across the frames."""

    detections: tuple[Detection | None, ...]  # per frame; None where it is not seen
    motion: str | None  # the motion of video.MOTIONS or NEW_MOTIONS it shows; None if none fits
    keeps_identity: bool
    jitter: float  # mean |second difference| of the centroid, fraction of the width; nan under 3 frames seen


@dataclass(frozen=True)
class ClipReading:
    frames: tuple[tuple[Detection, ...], ...]  # the image judge's reading of each frame
    tracks: tuple[Track, ...]  # in the order first seen, largest first within a frame
    jitter: float  # mean of the tracks' (those seen in 3 frames or more); nan if none


# ---------------------------------------------------------------- following objects


def _last(track: list[Detection | None]) -> Detection:
    return next(d for d in reversed(track) if d is not None)


def _distance(a: Detection, b: Detection) -> float:
    return math.dist(a.centre, b.centre)


def link(frames: tuple[tuple[Detection, ...], ...]) -> list[list[Detection | None]]:
    """Detections grouped into tracks (one entry per frame): by colour, else by the nearest centroid."""
    tracks: list[list[Detection | None]] = []
    for t, detections in enumerate(frames):
        free, found = list(detections), {}
        for i, track in enumerate(tracks):  # 1. the same colour as last seen
            same = [d for d in free if d.colour == _last(track).colour]
            if same:
                found[i] = same[0]
                free.remove(same[0])
        pairs = sorted((_distance(_last(track), d), i, j) for i, track in enumerate(tracks) if i not in found
                       for j, d in enumerate(free))
        taken = set()
        for distance, i, j in pairs:  # 2. the nearest, closest pairs first
            if distance < LINK and i not in found and j not in taken:
                found[i] = free[j]
                taken.add(j)
        for i, track in enumerate(tracks):
            track.append(found.get(i))
        tracks += [[None] * t + [d] for j, d in enumerate(free) if j not in taken]  # 3. new objects
    return tracks


# ---------------------------------------------------------------- motion


def _monotone(values: list[float], way: float, slack: float) -> bool:
    """No step goes against `way` (+1 or -1) by more than `slack`."""
    return all(way * (b - a) >= -slack for a, b in zip(values, values[1:]))


def _switches(values: list) -> int:
    return sum(a != b for a, b in zip(values, values[1:]))


def _along(path: list[float], axis: int) -> str | None:
    """The move or bounce along `axis` that the centroid's path on it (relative to its start) shows, else None."""
    net, turn = path[-1], max(range(len(path)), key=lambda t: abs(path[t]))
    way = math.copysign(1, net)
    if abs(net) >= MIN_TRAVEL and _monotone(path, way, BACKTRACK):
        return next(m for m, d in DIRECTIONS.items() if d[axis] == way)
    way, far = math.copysign(1, path[turn]), abs(path[turn])
    out_and_back = _monotone(path[: turn + 1], way, BACKTRACK) and _monotone(path[turn:], -way, BACKTRACK)
    if far >= MIN_TRAVEL and abs(net) <= far / 2 and out_and_back:
        return next(m for m, a in BOUNCES.items() if a == axis)
    return None


def _diagonal(xs: list[float], ys: list[float]) -> str | None:
    """The diagonal move that the centroid's path (relative to its start) shows, else None."""
    for motion, ways in DIAGONALS.items():
        if all(way * path[-1] >= MIN_TRAVEL and _monotone(path, way, BACKTRACK) for path, way in zip((xs, ys), ways)):
            length = math.hypot(xs[-1], ys[-1])  # at least MIN_TRAVEL sqrt(2)
            off_line = max(abs(x * ys[-1] - y * xs[-1]) for x, y in zip(xs, ys)) / length  # from start-end line
            return motion if off_line < STEADY else None
    return None


def _in_place(areas: list[float], colours: list[str]) -> str | None:
    """The colour change, growth or shrinking that an object staying put shows, else None."""
    if _switches(colours) == 1 and max(areas) / min(areas) < AREA_STEADY:
        return "change colour"
    log_areas = [math.log(a) for a in areas]
    growth = log_areas[-1] - log_areas[0]
    way = math.copysign(1, growth)
    steady_growth = _monotone(log_areas, way, -math.log(AREA_BACKTRACK))
    if _switches(colours) == 0 and abs(growth) >= math.log(GROWTH) and steady_growth:
        return "grow" if way > 0 else "shrink"
    return None


def read_motion(detections: tuple[Detection | None, ...]) -> str | None:
    """The motion of video.MOTIONS or NEW_MOTIONS an object's detections (one per frame) show, None if none
    fits."""
    if None in detections or len(detections) < 3:
        return None
    xs = [d.centre[0] - detections[0].centre[0] for d in detections]
    ys = [d.centre[1] - detections[0].centre[1] for d in detections]
    areas, colours = [d.area for d in detections], [d.colour for d in detections]
    excursion = (max(map(abs, xs)), max(map(abs, ys)))
    if max(excursion) < STEADY:
        return _in_place(areas, colours)
    if _switches(colours) or max(areas) / min(areas) >= AREA_STEADY:
        return None
    if min(excursion) >= STEADY:  # off both axes: a diagonal or nothing
        return _diagonal(xs, ys)
    axis = 0 if excursion[0] >= excursion[1] else 1
    return _along(xs if axis == 0 else ys, axis)


def keeps_identity(detections: tuple[Detection | None, ...], motion: str | None) -> bool:
    """Seen in every frame with one shape, one colour and one size, apart from what its motion changes."""
    if None in detections:
        return False
    switches = 1 if motion == "change colour" else 0
    return (_switches([d.shape for d in detections]) == 0 and _switches([d.colour for d in detections]) == switches
            and (motion in SIZE_CHANGES or _switches([d.size for d in detections]) == 0))


def jitter(detections: tuple[Detection | None, ...]) -> float:
    """Mean length of the centroid's second difference over consecutive seen frames, fraction of the width."""
    seen = [d.centre for d in detections if d is not None]
    if len(seen) < 3:
        return math.nan
    second = [math.dist((2 * b[0] - a[0], 2 * b[1] - a[1]), c) for a, b, c in zip(seen, seen[1:], seen[2:])]
    return sum(second) / len(second)


def judge_clip(video: torch.Tensor, palette: dict[str, tuple[float, float, float]] | None = None,
               shapes: tuple[str, ...] | None = None) -> ClipReading:
    """Read a clip (T, 3, H, W) in [-1, 1]: every frame with the image judge (`palette` and `shapes` as
    data/judge.py's `judge` takes them: default the training palette and shapes; a concept's are
    evaluation/concept.py's `judge_options`), then each object's track."""
    frames = tuple(tuple(judge(frame, palette, shapes)) for frame in video)
    tracks = []
    for detections in link(frames):
        detections = tuple(detections)
        motion = read_motion(detections)
        tracks.append(Track(detections, motion, keeps_identity(detections, motion), jitter(detections)))
    jitters = [t.jitter for t in tracks if not math.isnan(t.jitter)]
    return ClipReading(frames, tuple(tracks), sum(jitters) / len(jitters) if jitters else math.nan)


# ---------------------------------------------------------------- scoring


def _match(clip: Clip, tracks: tuple[Track, ...]) -> list[Track | None]:
    """The track standing for each clip object: the one that starts with its colour in the first frame, else the
    nearest to its start."""
    first = [t for t in tracks if t.detections[0] is not None]
    matched: list[Track | None] = [None] * len(clip.objects)
    for i, obj in enumerate(clip.objects):
        same = [t for t in first if t.detections[0].colour == obj.colour]
        if same:
            matched[i] = same[0]
            first.remove(same[0])
    for i, obj in enumerate(clip.objects):
        if matched[i] is None and first:
            nearest = min(first, key=lambda t: math.dist(t.detections[0].centre, obj.start))
            matched[i] = nearest
            first.remove(nearest)
    return matched


def _size_at(obj: MovingObject, frame: int, frames: int) -> str | None:
    """The size the object shows at a frame; None between the two ends of a growth or shrinking."""
    if obj.motion not in SIZE_CHANGES:
        return obj.size
    first, last = SIZE_CHANGES[obj.motion]
    return first if frame == 0 else last if frame == frames - 1 else None


def frames_right(clip: Clip, reading: ClipReading) -> list[bool]:
    """Whether each frame shows the clip's objects on its own: exactly as many objects, each with its shape, its
    colour at that frame and its size (a growing or shrinking object's only at the first and last frames)."""
    right = []
    for t, (frame, detections) in enumerate(zip(states(clip), reading.frames)):
        seen = {d.colour: d for d in detections}
        shown = [seen.get(o.colour) for o in frame]
        right.append(len(detections) == len(clip.objects) and all(
            d is not None and d.shape == obj.shape and _size_at(obj, t, clip.frames) in (None, d.size)
            for obj, d in zip(clip.objects, shown)))
    return right


def score_clip(clip: Clip, reading: ClipReading) -> dict[str, bool]:
    """Which of the clip's properties the reading shows.

    `objects`: every frame is right on its own (`frames_right`); `count`: every frame shows exactly as many
    objects as the clip has, followed as that many tracks; `motion`: each object's track shows its motion;
    `identity`: each keeps its identity; `all`: every key above.
    """
    matched = _match(clip, reading.tracks)
    result = {
        "objects": all(frames_right(clip, reading)),
        "count": len(reading.tracks) == len(clip.objects) and all(len(f) == len(clip.objects) for f in reading.frames),
        "motion": all(t is not None and t.motion == o.motion for t, o in zip(matched, clip.objects)),
        "identity": all(t is not None and t.keeps_identity for t in matched),
    }
    result["all"] = all(result.values())
    return result


def clip_figures(clips: list[Clip], readings: list[ClipReading]) -> dict:
    """The figures of clips' readings: `per_frame`, the share of frames right on their own (`frames_right`); the
    share of clips right on each key of `score_clip`; `jitter`, the mean of the readings' centroid jitter (None
    where no object was followed over 3 frames); and `one_object`, the same figures of the single-object clips
    alone (with their number, `clips`), where the issue's goals are set."""
    single = [(clip, reading) for clip, reading in zip(clips, readings) if len(clip.objects) == 1]
    return {**_figures(clips, readings),
            "one_object": {"clips": len(single), **(_figures(*zip(*single)) if single else {})}}


def _figures(clips, readings) -> dict[str, float | None]:
    scores = [score_clip(clip, reading) for clip, reading in zip(clips, readings)]
    per_frame = [right for clip, reading in zip(clips, readings) for right in frames_right(clip, reading)]
    jitters = [r.jitter for r in readings if not math.isnan(r.jitter)]
    return {"per_frame": sum(per_frame) / len(per_frame),
            **{key: sum(s[key] for s in scores) / len(scores) for key in scores[0]},
            "jitter": sum(jitters) / len(jitters) if jitters else None}


def clip_metrics(clips: list[Clip], videos: torch.Tensor) -> dict[str, float | None]:
    """`clip_figures` of clips and the videos drawn of them (B, T, 3, H, W), each read by `judge_clip`."""
    return clip_figures(clips, [judge_clip(video) for video in videos])
