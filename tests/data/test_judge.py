import dataclasses

import pytest
import torch

from latentlab.data.judge import components, judge, score
from latentlab.data.shapes import BACKGROUND, ShapesDataset, render


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("size", [32, 64])
def test_judge_reads_fresh_renders(split, size):
    """At least 99% of freshly rendered images read right, every attribute at once."""
    images, _, scenes = ShapesDataset(seed=11, split=split, image_size=size).batch(0, 500)
    right = sum(score(s, judge(x))["all"] for s, x in zip(scenes, images))
    assert right / len(scenes) >= 0.99


def test_judge_tolerates_mild_noise():
    images, _, scenes = ShapesDataset(seed=12).batch(0, 300)
    noisy = images + 0.08 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    right = sum(score(s, judge(x))["all"] for s, x in zip(scenes, noisy))
    assert right / len(scenes) >= 0.97


def test_empty_image_has_no_objects_and_scores_nothing():
    blank = torch.tensor(BACKGROUND).view(3, 1, 1).expand(3, 32, 32) * 2 - 1
    scene = ShapesDataset(seed=0).example(0)[0]
    assert judge(blank) == []
    result = score(scene, [])
    assert not any(result.values())


def test_judge_sees_the_wrong_attribute():
    """A picture of one scene scored against another scene fails on what differs."""
    data = ShapesDataset(seed=1, p_two=0.0)
    scenes = [data.example(i)[0] for i in range(200)]
    images = data.batch(0, 200)[0]
    for attr in ("shape", "colour", "size", "position"):
        mismatched = [(a, b, x) for a, x in zip(scenes, images) for b in scenes[:5]
                      if getattr(a.objects[0], attr) != getattr(b.objects[0], attr)][:50]
        assert all(not score(b, judge(x))[attr] for _, b, x in mismatched)


@pytest.mark.parametrize("size", [32, 64])
def test_two_objects_of_one_colour_are_two_detections(size):
    """The world never draws two objects of one colour, but a model may: the judge counts them apart (each
    scene re-coloured so that its second object takes the first's colour)."""
    data = ShapesDataset(seed=13, p_two=1.0, image_size=size)
    scenes = [data.example(i)[0] for i in range(100)]
    same = [dataclasses.replace(s, objects=(s.objects[0], dataclasses.replace(s.objects[1], colour=s.objects[0].colour)))
            for s in scenes]
    read = [judge(x) for x in render(same, size)]
    assert sum(len(d) == 2 and {o.colour for o in d} == {s.objects[0].colour} for d, s in zip(read, same)) >= 98
    assert sum(score(s, d)["all"] for s, d in zip(same, read)) >= 98


def test_components_are_eight_connected():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:3, 1:3] = True
    mask[3, 3] = True  # touches the first block at a corner
    mask[5:7, 5:8] = True
    assert sorted(c.sum().item() for c in components(mask)) == [5, 6]
    assert components(torch.zeros(4, 4, dtype=torch.bool)) == []
