"""Inpainting masks of the shapes world: an object's box holds all of the object, and training draws object
boxes, random rectangles and whole images in the stated shares."""

import random

import torch

from latentlab.data.masks import box_mask, object_box, random_box, training_mask
from latentlab.data.shapes import BACKGROUND, ShapesDataset, render


def test_an_objects_box_holds_all_of_it():
    data = ShapesDataset(seed=3, split="train", p_two=1.0)
    for i in range(40):
        scene, _ = data.example(i)
        for k in range(2):
            alone = render([type(scene)(objects=scene.objects[k:k + 1], jitter=scene.jitter[k:k + 1])], 32)[0]
            drawn = ((alone + 1) / 2 - torch.tensor(BACKGROUND)[:, None, None]).abs().amax(0) > 0.02
            inside = box_mask(object_box(scene, k, 32), 32)[0].bool()
            assert drawn.any() and not (drawn & ~inside).any(), (i, k, scene.objects[k])


def test_training_draws_each_kind_in_its_share():
    scene, _ = ShapesDataset(seed=0, split="train", p_two=1.0).example(0)
    kinds = {"object": 0, "rectangle": 0, "whole": 0}
    boxes = {object_box(scene, k, 32) for k in range(2)}
    for i in range(600):
        mask = training_mask(scene, 32, random.Random(i))
        rows, cols = mask[0].any(1).nonzero(), mask[0].any(0).nonzero()
        box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
        kinds["whole" if mask.all() else "object" if box in boxes else "rectangle"] += 1
    assert 250 <= kinds["object"] <= 350 and 150 <= kinds["rectangle"] <= 250 and 60 <= kinds["whole"] <= 140


def test_random_boxes_stay_inside_and_cover_a_quarter_to_three_quarters_a_side():
    rng = random.Random(0)
    for _ in range(200):
        top, left, bottom, right = random_box(rng, 32)
        assert 0 <= top < bottom <= 32 and 0 <= left < right <= 32
        assert 8 <= bottom - top <= 24 and 8 <= right - left <= 24
