import random

import pytest
import torch

from latentlab.data.shapes import (COLOURS, HELD_OUT, PAIR_TEMPLATES, SINGLE_TEMPLATES, ShapesDataset, caption,
                                   render, sample_scene)


def test_examples_are_deterministic_for_a_seed():
    a, b = ShapesDataset(seed=3), ShapesDataset(seed=3)
    xa, ca, sa = a.batch(10, 8)
    xb, cb, sb = b.batch(10, 8)
    assert torch.equal(xa, xb) and ca == cb and sa == sb


def test_different_seeds_and_splits_give_different_streams():
    _, c0, _ = ShapesDataset(seed=0).batch(0, 32)
    _, c1, _ = ShapesDataset(seed=1).batch(0, 32)
    _, ct, _ = ShapesDataset(seed=0, split="test").batch(0, 32)
    assert c0 != c1 and c0 != ct


@pytest.mark.parametrize("split", ["train", "test"])
def test_held_out_pairs_never_appear_in_training_splits(split):
    data = ShapesDataset(seed=0, split=split)
    pairs = {(o.colour, o.shape) for i in range(3000) for o in data.example(i)[0].objects}
    assert not pairs & HELD_OUT
    assert len(pairs) == 3 * len(COLOURS) - len(HELD_OUT)


def test_held_out_split_scenes_each_hold_a_held_out_pair():
    data = ShapesDataset(seed=0, split="heldout")
    for i in range(500):
        scene = data.example(i)[0]
        assert any((o.colour, o.shape) in HELD_OUT for o in scene.objects)


def test_captions_vary_in_wording_and_name_every_attribute():
    data = ShapesDataset(seed=0, p_two=0.0)
    captions = [data.example(i)[1] for i in range(400)]
    assert len(set(captions)) > 200
    for i in range(100):
        scene, text = data.example(i)
        obj = scene.objects[0]
        assert obj.colour in text and obj.shape in text


def test_every_template_is_used():
    rng = random.Random(0)
    scenes = [sample_scene(rng, p_two=0.5) for _ in range(2000)]
    starts = {caption(s, rng).split()[0] for s in scenes}
    assert len(starts) >= 5
    assert len(SINGLE_TEMPLATES) >= 5 and len(PAIR_TEMPLATES) >= 3


def test_canonical_caption():
    scene = ShapesDataset(seed=0, p_two=0.0, canonical_captions=True).example(0)[0]
    o = scene.objects[0]
    assert caption(scene).startswith(f"a {'small' if o.size == 'small' else 'large'} {o.colour} {o.shape}")


@pytest.mark.parametrize("size", [32, 64])
def test_render_shape_and_range(size):
    images, captions, scenes = ShapesDataset(seed=0, image_size=size).batch(0, 6)
    assert images.shape == (6, 3, size, size) and len(captions) == len(scenes) == 6
    assert images.min() >= -1 and images.max() <= 1


def test_render_is_the_same_at_any_batch_composition():
    data = ShapesDataset(seed=0)
    scenes = [data.example(i)[0] for i in range(5)]
    assert torch.allclose(render(scenes)[2], render(scenes[2:3])[0])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="accepted: 32, 64"):
        ShapesDataset(image_size=48)
    with pytest.raises(ValueError, match="accepted: train, test, heldout"):
        ShapesDataset(split="validation")


def test_the_wide_world_mixes_the_new_concepts_into_the_same_stream():
    """shapes-wide (for autoencoders): about p_new of the objects take a new colour, and as many a new shape;
    the scenes are otherwise the world's, two objects keep distinct colours, and p_new = 0 is the world itself."""
    from latentlab.data.shapes import NEW_COLOURS, NEW_SHAPES
    from latentlab.data.sources import WIDE_P_NEW, open_dataset

    wide, plain = open_dataset("shapes-wide"), ShapesDataset()
    objects = new_colours = new_shapes = 0
    for i in range(1000):
        (scene, text), (base, _) = wide.example(i), plain.example(i)
        assert [(o.size, o.position) for o in scene.objects] == [(o.size, o.position) for o in base.objects]
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        for o in scene.objects:
            objects += 1
            new_colours += o.colour in NEW_COLOURS
            new_shapes += o.shape in NEW_SHAPES
            assert o.colour in text and o.shape in text
    assert abs(new_colours / objects - WIDE_P_NEW) < 0.05 and abs(new_shapes / objects - WIDE_P_NEW) < 0.05
    assert all(ShapesDataset(p_new=0.0).example(i) == plain.example(i) for i in range(50))
    with pytest.raises(ValueError, match="p_new"):
        ShapesDataset(p_new=1.5)
