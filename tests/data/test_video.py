import dataclasses
import math
import random

import pytest
import torch

from latentlab.data import shapes
from latentlab.data.judge import Detection
from latentlab.data.video import (DIAGONAL_TRAVEL, EXTENTS, FRAMES, HELD_OUT, MARGIN, MOTION_WORDS, MOTIONS,
                                  NEW_MOTIONS, PAIR_TEMPLATES, SINGLE_TEMPLATES, TRAVEL, Clip, ConceptClips,
                                  MotionConcept, MovingObject, VideoDataset, axis_of, caption, caption_corpus, render,
                                  sample_clip, states)
from latentlab.data.video_judge import clip_metrics, frames_right, judge_clip, read_motion, score_clip

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def test_examples_are_deterministic_for_a_seed():
    a, b = VideoDataset(seed=3, frames=8), VideoDataset(seed=3, frames=8)
    xa, ca, sa = a.batch(10, 6)
    xb, cb, sb = b.batch(10, 6)
    assert torch.equal(xa, xb) and ca == cb and sa == sb
    assert len(set(sa)) == 6 and a.example(10) != a.example(11)
    video, text, clip = a[12]
    assert torch.equal(video, xa[2]) and (text, clip) == (ca[2], sa[2])


def test_different_seeds_and_splits_give_different_streams():
    _, c0, _ = VideoDataset(seed=0, frames=8).batch(0, 16)
    _, c1, _ = VideoDataset(seed=1, frames=8).batch(0, 16)
    _, ct, _ = VideoDataset(seed=0, split="test", frames=8).batch(0, 16)
    assert c0 != c1 and c0 != ct


def test_a_clip_is_the_same_at_every_frame_count():
    eight, sixteen = VideoDataset(seed=2, frames=8), VideoDataset(seed=2, frames=16)
    for i in range(50):
        (a, ta), (b, tb) = eight.example(i), sixteen.example(i)
        assert a.objects == b.objects and ta == tb and (a.frames, b.frames) == (8, 16)


@pytest.mark.parametrize("split", ["train", "test"])
def test_held_out_pairs_never_appear_in_training_splits(split):
    data = VideoDataset(seed=0, split=split, p_two=0.5)
    pairs = {(o.shape, o.motion) for i in range(1500) for o in data.example(i)[0].objects}
    assert not pairs & HELD_OUT
    assert len(pairs) == len(shapes.SHAPES) * len(MOTIONS) - len(HELD_OUT)


def test_held_out_split_clips_each_hold_a_held_out_pair():
    data = VideoDataset(seed=0, split="heldout")
    for i in range(500):
        clip = data.example(i)[0]
        assert any((o.shape, o.motion) in HELD_OUT for o in clip.objects)


def _mentions(text: str, obj: MovingObject) -> bool:
    motion_words = [w.format(colour=obj.end_colour) for w in MOTION_WORDS[obj.motion]]
    return obj.shape in text and obj.colour in text and any(w in text for w in motion_words)


def test_captions_vary_in_wording_and_name_shape_colour_and_motion():
    data = VideoDataset(seed=0, p_two=0.5)
    examples = [data.example(i) for i in range(400)]
    assert len({text for _, text in examples}) > 300
    for clip, text in examples:
        assert all(_mentions(text, o) for o in clip.objects), text
    starts = {text.split()[0] for text in caption_corpus(n=500)}
    assert len(starts) >= 5 and len(SINGLE_TEMPLATES) >= 4 and len(PAIR_TEMPLATES) >= 3


def test_canonical_captions():
    obj = MovingObject("circle", "red", "small", (0.3, 0.5), "right")
    other = MovingObject("square", "blue", "large", (0.7, 0.7), "change colour", end_colour="yellow")
    assert caption(Clip((obj,), 8)) == "a small red circle moves to the right"
    assert caption(Clip((obj, other), 8)) == (
        "a small red circle moves to the right and a large blue square turns yellow")
    clip, text = VideoDataset(seed=0, canonical_captions=True).example(0)
    assert text == caption(clip)


@pytest.mark.parametrize("frames", FRAMES)
@pytest.mark.parametrize("size", [32, 64])
def test_render_shape_and_range(frames, size):
    videos, captions, clips = VideoDataset(seed=0, frames=frames, image_size=size).batch(0, 4)
    assert videos.shape == (4, frames, 3, size, size) and len(captions) == len(clips) == 4
    assert videos.min() >= -1 and videos.max() <= 1


def _scene(frame) -> shapes.Scene:
    """The still of one frame in the image world, where its radii are sizes of the image world."""
    sizes = {r: name for name, r in shapes.SIZES.items()}
    objects = tuple(shapes.ShapeObject(o.shape, o.colour, sizes[o.radius], "centre") for o in frame)
    return shapes.Scene(objects, jitter=tuple((o.centre[0] - 0.5, o.centre[1] - 0.5) for o in frame))


def test_frames_are_the_image_worlds_stills():
    """Every frame whose radii are sizes of the image world renders as shapes.render renders that scene."""
    videos, _, clips = VideoDataset(seed=4, frames=8, p_two=0.5).batch(0, 40)
    compared = 0
    for video, clip in zip(videos, clips):
        for t, frame in enumerate(states(clip)):
            if all(o.radius in shapes.SIZES.values() for o in frame):
                assert (shapes.render([_scene(frame)])[0] - video[t]).abs().max() < 1e-6
                compared += 1
    assert compared > 40 * 4


def _box(state):  # (x0, x1, y0, y1) of an object in one frame
    left, right, up, down = (e * state.radius for e in EXTENTS[state.shape])
    x, y = state.centre
    return x - left, x + right, y - up, y + down


def test_motions_follow_their_description():
    data = VideoDataset(seed=6, frames=16, p_two=0.5)
    for i in range(300):
        clip = data.example(i)[0]
        frames = states(clip)
        for k, obj in enumerate(clip.objects):
            first, middle, last = frames[0][k], frames[8][k], frames[-1][k]
            moved = (last.centre[0] - first.centre[0], last.centre[1] - first.centre[1])
            if obj.motion in ("left", "right", "up", "down"):
                assert math.isclose(math.hypot(*moved), TRAVEL) and obj.motion in MOTION_WORDS
            if obj.motion.startswith("bounce"):
                axis = axis_of(obj.motion)
                far = max(abs(f[k].centre[axis] - obj.start[axis]) for f in frames)
                assert math.hypot(*moved) < 1e-9 and far > 0.9 * TRAVEL
            if obj.motion in ("grow", "shrink"):
                assert {first.radius, last.radius} == set(shapes.SIZES.values()) and first.centre == last.centre
                assert (last.radius > first.radius) == (obj.motion == "grow")
            expected_last = obj.end_colour or obj.colour
            assert (frames[7][k].colour, middle.colour, last.colour) == (obj.colour, expected_last, expected_last)
        boxes = [[_box(f[k]) for f in frames] for k in range(len(clip.objects))]
        for x0, x1, y0, y1 in sum(boxes, []):  # wholly in the frame
            assert x0 >= MARGIN - 1e-9 and y0 >= MARGIN - 1e-9 and x1 <= 1 - MARGIN + 1e-9 and y1 <= 1 - MARGIN + 1e-9
        if len(boxes) == 2:  # the two paths never meet
            hull = [(min(b[0] for b in bs), max(b[1] for b in bs), min(b[2] for b in bs), max(b[3] for b in bs))
                    for bs in boxes]
            (a, b) = hull
            assert a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2]
            assert len({o.colour for o in clip.objects} | {o.end_colour for o in clip.objects} - {None}) == \
                len(clip.objects) + sum(o.end_colour is not None for o in clip.objects)


@pytest.mark.parametrize("split", ["train", "test", "heldout"])
@pytest.mark.parametrize("frames", FRAMES)
def test_judge_reads_fresh_renders(split, frames):
    """At least 99% of freshly rendered clips read right: motion, identity, everything at once."""
    videos, _, clips = VideoDataset(seed=11, split=split, frames=frames).batch(0, 200)
    metrics = clip_metrics(clips, videos)
    assert all(metrics[key] >= 0.99 for key in ("objects", "count", "motion", "identity", "all")), metrics
    assert metrics["jitter"] < 0.02
    one = metrics["one_object"]
    assert one["clips"] == sum(len(c.objects) == 1 for c in clips) > 100 and one["motion"] >= 0.99


def test_shuffled_frames_read_as_the_wrong_motion():
    data = VideoDataset(seed=12, frames=8, p_two=0.5)
    clips = [c for c in (data.example(i)[0] for i in range(120)) if any(o.motion != "change colour" for o in c.objects)]
    videos = render(clips[:100])
    generator = torch.Generator().manual_seed(0)
    wrong = 0
    for clip, video in zip(clips, videos):
        order = torch.randperm(8, generator=generator)
        while torch.equal(order, torch.arange(8)):
            order = torch.randperm(8, generator=generator)
        wrong += not score_clip(clip, judge_clip(video[order]))["motion"]
    assert wrong / len(videos) >= 0.98


def test_an_object_pasted_in_mid_clip_breaks_identity():
    """From the middle frame on, the first object is another shape, or another size, in the same place."""
    data = VideoDataset(seed=13, frames=8, p_two=0.3)
    clips = [data.example(i)[0] for i in range(60)]
    twins = []
    for i, clip in enumerate(clips):
        first = clip.objects[0]
        if i % 2 or first.motion in ("grow", "shrink"):
            other = shapes.SHAPES[(shapes.SHAPES.index(first.shape) + 1) % len(shapes.SHAPES)]
            first = dataclasses.replace(first, shape=other)
        else:
            first = dataclasses.replace(first, size="large" if first.size == "small" else "small")
        twins.append(dataclasses.replace(clip, objects=(first, *clip.objects[1:])))
    videos = torch.cat([render(clips)[:, :4], render(twins)[:, 4:]], dim=1)
    for clip, video in zip(clips, videos):
        reading = judge_clip(video)
        result = score_clip(clip, reading)
        assert not result["identity"] and not result["all"]
        assert frames_right(clip, reading) == [True] * 4 + [False] * 4


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="accepted: 8, 16"):
        VideoDataset(frames=12)
    with pytest.raises(ValueError, match="accepted: 8, 16"):
        sample_clip(random.Random(0), frames=1)
    with pytest.raises(ValueError, match="accepted: train, test, heldout"):
        VideoDataset(split="validation")
    with pytest.raises(ValueError, match="accepted: 32, 64"):
        VideoDataset(image_size=48)
    with pytest.raises(ValueError, match="accepted: left, right, up, down, bounce horizontal"):
        MovingObject("circle", "red", "small", (0.5, 0.5), "spin")
    with pytest.raises(ValueError, match="end colour"):
        MovingObject("circle", "red", "small", (0.5, 0.5), "change colour")
    obj = MovingObject("circle", "red", "small", (0.5, 0.5), "grow")
    with pytest.raises(ValueError, match="accepted: 8, 16"):
        Clip((obj,), 12)
    with pytest.raises(ValueError, match="starts small"):
        MovingObject("circle", "red", "large", (0.5, 0.5), "grow")
    with pytest.raises(ValueError, match="one number of frames"):
        render([Clip((obj,), 8), Clip((obj,), 16)])


# ---------------------------------------------------------------- a new motion


def test_no_split_draws_a_new_motion():
    for split in ("train", "test", "heldout"):
        data = VideoDataset(seed=1, split=split, p_two=0.5)
        assert not {o.motion for i in range(400) for o in data.example(i)[0].objects} & set(NEW_MOTIONS)


def test_diagonal_clips_move_down_and_to_the_right_in_the_frame():
    data = MotionConcept(motion="diagonal", split="test", frames=16)
    for i in range(300):
        clip, text = data.example(i)
        (obj,) = clip.objects
        frames = [f[0] for f in states(clip)]
        dx, dy = (frames[-1].centre[a] - frames[0].centre[a] for a in (0, 1))
        assert math.isclose(dx, DIAGONAL_TRAVEL) and math.isclose(dy, DIAGONAL_TRAVEL)
        assert math.isclose(math.hypot(dx, dy), TRAVEL) and obj.motion == "diagonal"
        assert all(math.isclose(f.radius, shapes.SIZES[obj.size]) and f.colour == obj.colour for f in frames)
        for x0, x1, y0, y1 in map(_box, frames):
            assert x0 >= MARGIN - 1e-9 and y0 >= MARGIN - 1e-9 and x1 <= 1 - MARGIN + 1e-9 and y1 <= 1 - MARGIN + 1e-9
        assert _mentions(text, obj), text
    assert caption(data.example(0)[0]).endswith("moves diagonally")
    assert len(MOTION_WORDS["diagonal"]) >= 4 and "moves down and to the right" in MOTION_WORDS["diagonal"]


def test_a_motion_concepts_training_clips_are_a_fixed_set_and_its_test_clips_fresh():
    train = MotionConcept(seed=0, split="train", count=50, frames=8)
    assert [train.example(i) for i in range(50)] == [train.example(i) for i in range(50, 100)]
    assert len({train.example(i)[0] for i in range(50)}) == 50
    longer = MotionConcept(seed=0, split="train", count=80, frames=16)  # the first 50 of 80, at 16 frames
    assert longer.example(7)[0].objects == train.example(7)[0].objects
    test = MotionConcept(seed=0, split="test", frames=8)
    assert not {test.example(i)[0] for i in range(200)} & {train.example(i)[0] for i in range(50)}
    assert MotionConcept(seed=1, frames=8).example(0) != train.example(0)
    videos, captions, clips = train.batch(48, 4)
    assert videos.shape == (4, 8, 3, 32, 32) and clips[2:] == [train.example(0)[0], train.example(1)[0]]
    objects = [test.example(i)[0].objects[0] for i in range(200)]
    assert {o.shape for o in objects} == set(shapes.SHAPES) and {o.colour for o in objects} == set(shapes.COLOURS)


@pytest.mark.parametrize("frames", FRAMES)
def test_judge_reads_ground_truth_diagonals(frames):
    """At least 99% of fresh diagonal clips read right: motion, identity, everything at once."""
    videos, _, clips = MotionConcept(split="test", frames=frames).batch(0, 150)
    metrics = clip_metrics(clips, videos)
    assert all(metrics[key] >= 0.99 for key in ("objects", "count", "motion", "identity", "all")), metrics


def test_judge_reads_no_clip_of_the_world_as_a_diagonal():
    videos, _, clips = VideoDataset(seed=14, split="test", frames=8, p_two=0.5).batch(0, 250)
    motions = [t.motion for video in videos for t in judge_clip(video).tracks]
    assert len(motions) > 300 and "diagonal" not in motions


def _path(points) -> tuple[Detection, ...]:
    return tuple(Detection("circle", "red", "small", "centre", point, 0.03) for point in points)


@pytest.mark.parametrize("points, motion", [
    ([(0.2 + 0.04 * t, 0.3 + 0.04 * t) for t in range(8)], "diagonal"),
    ([(0.2 + 0.04 * t, 0.3 + 0.025 * t) for t in range(8)], "diagonal"),  # flatter: still a diagonal
    ([(0.5 - 0.04 * t, 0.6 - 0.04 * t) for t in range(8)], None),  # up and to the left
    ([(0.2 + 0.04 * t, 0.6 - 0.04 * t) for t in range(8)], None),  # up and to the right
    ([(0.2 + 0.08 * min(t, 4), 0.3 + 0.08 * max(t - 4, 0)) for t in range(9)], None),  # right, then down: an L
    ([(0.2 + 0.04 * t, 0.3 + 0.04 * (t if t != 4 else 1)) for t in range(8)], None),  # a step back
    ([(0.2 + 0.04 * t, 0.3 + 0.01 * t) for t in range(8)], None),  # not far enough down
])
def test_judge_reads_a_diagonal_only_down_and_to_the_right_and_straight(points, motion):
    assert read_motion(_path(points)) == motion


def test_bad_motion_concepts_are_refused():
    assert MovingObject("circle", "red", "small", (0.3, 0.3), "diagonal").motion == "diagonal"
    with pytest.raises(ValueError, match="accepted: diagonal"):
        MotionConcept(motion="left")
    with pytest.raises(ValueError, match="accepted: train, test"):
        MotionConcept(split="heldout")
    with pytest.raises(ValueError, match="positive whole number"):
        MotionConcept(count=0)
    with pytest.raises(ValueError, match="accepted: 8, 16"):
        MotionConcept(frames=12)


@pytest.mark.parametrize("concept", ["diamond", "cyan"])
def test_concept_clips_stay_in_the_frame_and_name_the_concept(concept):
    data = ConceptClips(concept=concept, word="zorb", frames=16)
    for i in range(200):
        clip, text = data.example(i)
        assert concept in (clip.objects[0].shape, clip.objects[0].colour) and "zorb" in text and concept not in text
        for frame in states(clip):
            x0, x1, y0, y1 = _box(frame[0])
            assert MARGIN - 1e-9 <= x0 and x1 <= 1 - MARGIN + 1e-9 and MARGIN - 1e-9 <= y0 and y1 <= 1 - MARGIN + 1e-9
    assert data.example(7)[0].objects == ConceptClips(concept=concept, word="zorb", frames=8).example(7)[0].objects


def test_judge_clip_reads_a_concept_only_when_given_it():
    clip = ConceptClips(concept="diamond", frames=8).example(0)[0]
    video = render([clip])[0]
    assert {d.shape for f in judge_clip(video).frames for d in f} <= set(shapes.SHAPES)
    reading = judge_clip(video, shapes=(*shapes.SHAPES, "diamond"))
    assert all(d.shape == "diamond" for f in reading.frames for d in f) and all(reading.frames)
