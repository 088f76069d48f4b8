"""Prompt adherence's figures (evaluation/adherence.py): intervals, the relation beside its chance, and the check
of the prompts against the training captions."""

import pytest

from latentlab.data.judge import score
from latentlab.data.shapes import Scene, ShapeObject, ShapesDataset, render
from latentlab.evaluation.adherence import prompt_adherence, seen_in_training
from latentlab.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_accuracy_comes_with_its_interval_and_two_objects_with_chance():
    report = prompt_adherence(Pipeline.load(device="cpu"), prompts=4, objects=2, steps=2, batch_size=4)
    assert report["interval"].keys() == report["accuracy"].keys()
    for key, (low, high) in report["interval"].items():
        assert 0 <= low <= report["accuracy"][key] <= high <= 1
    given = report["relation given the axis"]
    assert given["n"] == round(4 * report["accuracy"]["relation axis"])
    assert report["chance"] == {"relation": 0.25, "relation given the axis": 0.5}
    assert len(report["captions"]) == 4


def test_the_relation_axis_is_right_in_either_order():
    left, right = ShapeObject("circle", "red", "small", "left"), ShapeObject("square", "blue", "small", "right")
    scene = Scene((left, right), "left of")
    swapped = Scene((ShapeObject("circle", "red", "small", "right"), ShapeObject("square", "blue", "small", "left")),
                    "right of")
    from latentlab.data.judge import judge

    result = score(scene, judge(render([swapped])[0]))
    assert result["relation axis"] and not result["relation"] and not result["all"]
    above = Scene((ShapeObject("circle", "red", "small", "top"), ShapeObject("square", "blue", "small", "bottom")),
                  "above")
    assert not score(scene, judge(render([above])[0]))["relation axis"]


def test_training_captions_are_seen_and_held_out_pairs_are_not():
    train = [ShapesDataset(seed=0, split="train", p_two=0.0).example(i)[1] for i in range(50)]
    heldout = [ShapesDataset(seed=3, split="heldout", p_two=0.0).example(i)[1] for i in range(50)]
    assert seen_in_training(train, 1, draws=2_000) == 1
    assert seen_in_training(heldout, 1, draws=2_000) == 0
