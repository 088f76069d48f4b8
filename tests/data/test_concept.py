import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentlab.data.concept import ConceptDataset, ConceptPairDataset, main, write_concept_folder
from latentlab.data.folder import ImageFolder
from latentlab.data.judge import judge, score
from latentlab.data.shapes import COLOURS, NEW_COLOURS, NEW_SHAPES, SHAPES, ShapesDataset, caption_corpus, render
from latentlab.errors import LatentlabError
from latentlab.evaluation.concept import judge_options


# The renders of these streams, stored as 8-bit PNGs (tests/data/reference/) when shapes.py was checked to give
# the images it gave before new colours and shapes existed. Pixels are compared within half an 8-bit level, not
# bit for bit: float32 renders differ in their last bits between CPUs (AVX2, AVX-512, NEON, ATen's default).
# Scenes and captions are Python arithmetic and strings, the same on every machine: compared exactly.
REFERENCE = Path(__file__).parent / "reference"
STREAMS = {
    "train-32-0": ("train", 32, 0, False, "f500b85f69803044"),
    "test-32-0": ("test", 32, 0, False, "21491c022844f5c7"),
    "heldout-32-0": ("heldout", 32, 0, False, "b4298c55b310dcb8"),
    "train-64-7": ("train", 64, 7, False, "f4c2258cc7023f68"),
    "test-64-1234": ("test", 64, 1234, False, "0199250c8603d4c4"),
    "heldout-32-11": ("heldout", 32, 11, False, "fef2a498ba703ca9"),
    "test-32-1234-canonical": ("test", 32, 1234, True, "7d5f0603c0f8546d"),
}
CYAN = ("cyan-32-0", "db1e6d9838d18096")


pytestmark = pytest.mark.usefixtures("one_thread")  # the judge and renderer work on tiny tensors


def text_digest(captions, scenes) -> str:
    """The captions and scenes of a batch (exact on every machine: strings and Python floats)."""
    return hashlib.sha256(("\n".join(captions) + repr(scenes)).encode()).hexdigest()[:16]


def levels(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) in [-1, 1] -> 8-bit levels as float64, (B * S, S, 3): a column of images, as the PNG holds."""
    B, _, S, _ = images.shape
    return ((images.double() + 1) * 127.5).permute(0, 2, 3, 1).reshape(B * S, S, 3).numpy()


def check_against_reference(name: str, images: torch.Tensor, captions, scenes, expected_text: str) -> None:
    path = REFERENCE / f"{name}.png"
    if os.environ.get("LATENTLAB_WRITE_REFERENCE") == "1":  # only after checking the renderer by other means
        Image.fromarray(levels(images).round().astype(np.uint8)).save(path, optimize=True)
        print(f"{name}: {text_digest(captions, scenes)}")
    assert text_digest(captions, scenes) == expected_text
    stored = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert stored.shape == levels(images).shape
    assert np.abs(levels(images) - stored).max() <= 0.5 + 1e-3  # rounding to the nearest level, nothing more


@pytest.mark.cpu_capability
@pytest.mark.parametrize("name", STREAMS)
def test_shapes_data_is_unchanged_since_before_new_colours(name):
    split, size, seed, canonical, expected_text = STREAMS[name]
    images, captions, scenes = ShapesDataset(seed=seed, split=split, image_size=size,
                                             canonical_captions=canonical).batch(0, 64)
    check_against_reference(name, images, captions, scenes, expected_text)


@pytest.mark.cpu_capability
def test_a_changed_pixel_is_caught():
    """The comparison above would fail on a renderer that moves one pixel by one 8-bit level."""
    images, captions, scenes = ShapesDataset(seed=0, split="train").batch(0, 64)
    images[5, 1, 10, 20] += 1.0 / 127.5
    with pytest.raises(AssertionError):
        check_against_reference("train-32-0", images, captions, scenes, STREAMS["train-32-0"][-1])


def test_caption_corpus_is_unchanged():
    assert hashlib.sha256("\n".join(caption_corpus(500)).encode()).hexdigest()[:16] == "ded101b0b2fbac16"


def test_no_split_ever_draws_a_new_colour_or_shape():
    for split in ("train", "test", "heldout"):
        data = ShapesDataset(seed=0, split=split)
        objects = [o for i in range(500) for o in data.example(i)[0].objects]
        assert not {o.colour for o in objects} & set(NEW_COLOURS)
        assert not {o.shape for o in objects} & set(NEW_SHAPES)


def test_concept_streams_are_deterministic_and_apart():
    a, b = ConceptDataset(seed=0).batch(0, 16), ConceptDataset(seed=0).batch(0, 16)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    train = [ConceptDataset(seed=0).example(i)[1] for i in range(50)]
    test = [ConceptDataset(seed=0, split="test").example(i)[1] for i in range(50)]
    assert train != test


def test_concept_scenes_vary_and_name_the_concept():
    data = ConceptDataset(concept="cyan", seed=3)
    examples = [data.example(i) for i in range(300)]
    objects = [scene.objects[0] for scene, _ in examples]
    assert {o.colour for o in objects} == {"cyan"} and all(len(s.objects) == 1 for s, _ in examples)
    assert len({(o.shape, o.size, o.position) for o in objects}) == 3 * 2 * 5
    assert all("cyan" in text for _, text in examples) and len({text for _, text in examples}) > 100


def test_shape_concept_scenes_vary_over_the_palette_and_name_the_shape():
    examples = [ConceptDataset(concept="diamond", seed=3).example(i) for i in range(400)]
    objects = [scene.objects[0] for scene, _ in examples]
    assert {o.shape for o in objects} == {"diamond"} and all(len(s.objects) == 1 for s, _ in examples)
    assert len({(o.colour, o.size, o.position) for o in objects}) == 6 * 2 * 5
    assert all("diamond" in text for _, text in examples) and len({text for _, text in examples}) > 100


@pytest.mark.cpu_capability
def test_the_colour_concepts_stream_is_unchanged():
    """Stored before shape concepts existed: cyan's folder and prompts stay as they were."""
    images, captions, scenes = ConceptDataset(seed=0).batch(0, 32)
    check_against_reference(CYAN[0], images, captions, scenes, CYAN[1])


@pytest.mark.parametrize("concept, name", [("cyan", "cyan"), ("diamond", "diamond")])
def test_a_concept_word_replaces_the_concept_name(concept, name):
    texts = [ConceptDataset(concept=concept, seed=0, word="sks").example(i)[1] for i in range(100)]
    assert all("sks" in t and name not in t for t in texts)
    assert any(t.startswith("a sks ") for t in texts) and not any(" an sks" in t for t in texts)


@pytest.mark.parametrize("kwargs, message", [
    ({"concept": "red"}, "unknown concept 'red'; accepted: cyan, pink, brown, diamond, star, hexagon, cross, ring"),
    ({"concept": "square"}, "unknown concept 'square'"),
    ({"word": "two words"}, "one lower-case word"),
    ({"split": "heldout"}, "unknown concept split"),
    ({"image_size": 48}, "image size 48"),
])
def test_bad_concepts_raise(kwargs, message):
    with pytest.raises(LatentlabError, match=message):
        ConceptDataset(**kwargs)


@pytest.mark.parametrize("concept, kind", [("cyan", "colour"), ("diamond", "shape")])
def test_folder_writer_writes_captioned_images_the_folder_reader_reads(tmp_path, concept, kind):
    out = write_concept_folder(tmp_path / "data", concept, count=12, seed=0)
    assert len(list(out.glob(f"{concept}-*.png"))) == 12 and len(list(out.glob("*.txt"))) == 12
    folder = ImageFolder(out, image_size=32, log=lambda line: None)
    images, captions, scenes = ConceptDataset(concept=concept, seed=0).batch(0, 12)
    assert folder.captions == captions and all(concept in c for c in captions)
    expected = ((images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.array_equal(folder.pixels, expected)
    manifest = json.loads((out / "concept.json").read_text())
    assert manifest["concept"] == concept and manifest["kind"] == kind and manifest["count"] == 12


def test_folder_writer_adds_prior_images_and_refuses_a_used_folder(tmp_path):
    out = write_concept_folder(tmp_path / "data", count=3, prior=2)
    assert sorted(p.name for p in out.glob("*.png")) == ["cyan-0000.png", "cyan-0001.png", "cyan-0002.png",
                                                       "prior-0000.png", "prior-0001.png"]
    with pytest.raises(LatentlabError, match="already holds images"):
        write_concept_folder(out, count=3)


def test_module_main(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "a"), "--count", "4"]) == 0
    assert len(list((tmp_path / "a").glob("*.png"))) == 4
    assert main(["--out", str(tmp_path / "c"), "--concept", "diamond", "--count", "2"]) == 0
    assert len(list((tmp_path / "c").glob("diamond-*.png"))) == 2
    capsys.readouterr()
    assert main(["--out", str(tmp_path / "b"), "--colour", "teal"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown concept 'teal'" in err


# ---------------------------------------------------------------- the judge with a concept colour


def concept_palette():
    return {**COLOURS, "cyan": NEW_COLOURS["cyan"]}


@pytest.mark.parametrize("size", [32, 64])
def test_judge_reads_the_concept_colour_on_renders(size):
    images, _, scenes = ConceptDataset(seed=5, split="test", image_size=size).batch(0, 300)
    results = [score(s, judge(x, concept_palette())) for s, x in zip(scenes, images)]
    assert sum(r["all"] for r in results) / len(results) >= 0.95
    assert sum(r["colour"] for r in results) / len(results) >= 0.99


def test_judge_reads_the_concept_through_mild_noise():
    images, _, scenes = ConceptDataset(seed=6, split="test").batch(0, 200)
    noisy = images + 0.08 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    assert sum(score(s, judge(x, concept_palette()))["colour"] for s, x in zip(scenes, noisy)) / 200 >= 0.97


def test_judge_never_calls_palette_colours_cyan():
    """The ordinary test split, read with the concept in the palette: no object is cyan, and the
    objects read are the palette-only judge's (noise may nudge a centroid by a pixel's fraction)."""
    images, _, scenes = ShapesDataset(seed=1234, split="test").batch(0, 500)
    noisy = images + 0.08 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))

    def names(detections):
        return sorted((d.shape, d.colour, d.size, d.position) for d in detections)

    for batch in (images, noisy):
        extended = [judge(x, concept_palette()) for x in batch]
        assert not any(d.colour == "cyan" for ds in extended for d in ds)
        assert [names(ds) for ds in extended] == [names(judge(x)) for x in batch]
    assert sum(score(s, judge(x, concept_palette()))["all"] for s, x in zip(scenes, images)) / 500 >= 0.99


def test_judge_default_palette_is_the_training_palette():
    images = ShapesDataset(seed=2).batch(0, 20)[0]
    assert [judge(x) for x in images] == [judge(x, COLOURS) for x in images]


def test_render_accepts_new_colours_and_refuses_unknown_ones():
    scene = ConceptDataset(seed=0).example(0)[0]
    image = render([scene])[0]
    inside = ((image + 1) / 2 - torch.tensor(NEW_COLOURS["cyan"]).view(3, 1, 1)).abs().amax(0) < 1e-6
    assert inside.sum() > 10
    bad = scene.__class__((scene.objects[0].__class__("circle", "teal", "small", "left"),))
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        render([bad])


# ---------------------------------------------------------------- the judge with a concept shape


@pytest.mark.parametrize("size", [32, 64])
def test_judge_reads_the_concept_shape_on_renders(size):
    images, _, scenes = ConceptDataset(concept="diamond", seed=5, split="test", image_size=size).batch(0, 300)
    results = [score(s, judge(x, shapes=(*SHAPES, "diamond"))) for s, x in zip(scenes, images)]
    assert sum(r["all"] for r in results) / len(results) >= 0.95
    assert sum(r["shape"] for r in results) / len(results) >= 0.99


def test_judge_never_reads_the_ordinary_test_split_as_the_concept_shape():
    """The ordinary test split, read with the diamond among the shapes: no object is a diamond, and the
    objects read are the default judge's."""
    images, _, scenes = ShapesDataset(seed=1234, split="test").batch(0, 500)
    noisy = images + 0.08 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    for batch in (images, noisy):
        extended = [judge(x, shapes=(*SHAPES, "diamond")) for x in batch]
        assert not any(d.shape == "diamond" for ds in extended for d in ds)
        assert extended == [judge(x) for x in batch]
    assert sum(score(s, judge(x, shapes=(*SHAPES, "diamond")))["all"] for s, x in zip(scenes, images)) / 500 >= 0.99


def test_judge_default_shapes_are_the_training_shapes():
    images = ShapesDataset(seed=2).batch(0, 20)[0]
    assert [judge(x) for x in images] == [judge(x, shapes=SHAPES) for x in images]


def test_render_draws_a_diamond_of_the_squares_area_and_refuses_unknown_shapes():
    scene = ConceptDataset(concept="diamond", seed=0).example(0)[0]
    square = replace(scene, objects=(replace(scene.objects[0], shape="square"),))
    diamond, square = render([scene, square], 64)
    background = torch.tensor((0.16, 0.16, 0.16)).view(3, 1, 1) * 2 - 1
    areas = [(x - background).abs().amax(0).gt(1e-6).sum() for x in (diamond, square)]
    assert abs(int(areas[0]) - int(areas[1])) <= 0.1 * int(areas[1]) and not torch.equal(diamond, square)
    with pytest.raises(ValueError, match="unknown shape 'heart'"):
        render([replace(scene, objects=(replace(scene.objects[0], shape="heart"),))])


# ---------------------------------------------------------------- every concept of a sequence at once

EVERY_PALETTE, EVERY_SHAPE = {**COLOURS, **NEW_COLOURS}, (*SHAPES, *NEW_SHAPES)


def test_every_new_shape_has_the_circles_area_and_a_look_of_its_own():
    scene = ConceptDataset(concept="diamond", seed=0).example(0)[0]
    drawn = render([replace(scene, objects=(replace(scene.objects[0], shape=s),)) for s in EVERY_SHAPE], 64)
    background = torch.tensor((0.16, 0.16, 0.16)).view(3, 1, 1) * 2 - 1
    coverage = [(x - background).abs().amax(0) / (x - background).abs().amax() for x in drawn]
    areas = torch.stack([c.sum() for c in coverage])
    assert ((areas - areas[0]).abs() <= 0.05 * areas[0]).all()  # the circle's area, within anti-aliasing
    differ = [(c1 - c2).abs().sum() / areas[0] for i, c1 in enumerate(coverage) for c2 in coverage[i + 1:]]
    assert min(differ) > 0.05  # no two alike: the closest pair, circle and hexagon, differ in 7.5% of the area


@pytest.mark.parametrize("concept", [*NEW_COLOURS, *NEW_SHAPES])
@pytest.mark.parametrize("size", [32, 64])
def test_the_judge_reads_each_concept_among_all_of_them(concept, size):
    """Each concept on fresh renders, read by a judge that knows every concept at once (a sequence's): the
    concept itself at least 99%; every attribute at least 99% read with the concept alone added, 95% with
    all (at 32 pixels a small brown circle, whose faint edge falls under the foreground threshold, reads as
    a hexagon 3 times in 100)."""
    images, _, scenes = ConceptDataset(concept=concept, seed=5, split="test", image_size=size).batch(0, 100)
    kind = "colour" if concept in NEW_COLOURS else "shape"
    alone = {"palette": {**COLOURS, concept: NEW_COLOURS[concept]}} if kind == "colour" else \
        {"shapes": (*SHAPES, concept)}
    every = [score(s, judge(x, palette=EVERY_PALETTE, shapes=EVERY_SHAPE)) for s, x in zip(scenes, images)]
    assert sum(r[kind] for r in every) >= 99 and sum(r["all"] for r in every) >= 95
    assert sum(score(s, judge(x, **alone))["all"] for s, x in zip(scenes, images)) >= 99


def test_the_judge_knowing_every_concept_reads_the_ordinary_split_as_before():
    images, _, scenes = ShapesDataset(seed=1234, split="test").batch(0, 300)
    noisy = images + 0.08 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    for batch in (images, noisy):
        every = [judge(x, palette=EVERY_PALETTE, shapes=EVERY_SHAPE) for x in batch]
        assert sum(d.shape in NEW_SHAPES or d.colour in NEW_COLOURS for ds in every for d in ds) <= 3
        before = sum(score(s, judge(x))["all"] for s, x in zip(scenes, batch))
        assert abs(sum(score(s, ds)["all"] for s, ds in zip(scenes, every)) - before) <= 3


# ---------------------------------------------------------------- a new colour and a new shape in one object


def test_pair_streams_are_deterministic_and_apart():
    a = ConceptPairDataset(colour="pink", shape="star").batch(0, 16)
    b = ConceptPairDataset(colour="pink", shape="star").batch(0, 16)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    test = [ConceptPairDataset(colour="pink", shape="star").example(i)[1] for i in range(50)]
    assert test != [ConceptPairDataset(colour="pink", shape="star", split="train").example(i)[1] for i in range(50)]
    assert test != [ConceptPairDataset(colour="pink", shape="star", seed=1).example(i)[1] for i in range(50)]


@pytest.mark.parametrize("colour", NEW_COLOURS)
@pytest.mark.parametrize("shape", NEW_SHAPES)
def test_pair_scenes_hold_the_pair_and_name_both_words(colour, shape):
    examples = [ConceptPairDataset(colour=colour, shape=shape, seed=3).example(i) for i in range(200)]
    objects = [scene.objects[0] for scene, _ in examples]
    assert all(len(s.objects) == 1 for s, _ in examples)
    assert {(o.colour, o.shape) for o in objects} == {(colour, shape)}
    assert len({(o.size, o.position) for o in objects}) == 2 * 5
    assert all(colour in text and shape in text for _, text in examples) and len({t for _, t in examples}) > 50


def test_pair_captions_name_learned_tokens():
    words = {"pink": "<pink>", "star": "<star>"}
    texts = [ConceptPairDataset(colour="pink", shape="star", words=words).example(i)[1] for i in range(100)]
    assert all("<pink>" in t and "<star>" in t and "pink " not in t and " star" not in t for t in texts)
    one = [ConceptPairDataset(colour="pink", shape="star", words={"star": "sks"}).example(i)[1] for i in range(100)]
    assert all("pink" in t and "sks" in t and "star" not in t for t in one)


@pytest.mark.parametrize("kwargs, message", [
    ({"colour": "red"}, "a concept pair's colour must be a new colour, got 'red'; accepted: cyan, pink, brown"),
    ({"colour": "star"}, "a concept pair's colour must be a new colour, got 'star'"),
    ({"shape": "circle"}, "a concept pair's shape must be a new shape, got 'circle'; accepted: diamond, star, "),
    ({"shape": "cyan"}, "a concept pair's shape must be a new shape, got 'cyan'"),
    ({"words": {"cyan": "x"}}, "words name the pair's colour and shape only, got 'cyan'; accepted: 'pink', 'star'"),
    ({"words": {"pink": "Pink"}}, "one lower-case word"),
    ({"words": {"pink": "x", "star": "x"}}, "the colour and the shape need different words, got 'x' for both"),
    ({"split": "heldout"}, "unknown concept split"),
    ({"image_size": 48}, "image size 48"),
])
def test_bad_pairs_raise(kwargs, message):
    with pytest.raises(LatentlabError, match=re.escape(message)) as error:
        ConceptPairDataset(**{"colour": "pink", "shape": "star", **kwargs})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("size", [32, 64])
def test_the_judge_reads_every_pair_on_renders(size):
    """Every (new colour, new shape) pair on 100 fresh renders, read by the judge with the palette plus the colour
    and the shapes plus the shape (evaluation/concept.py): right on colour and shape together at least 99 times.
    The closest to the bound is a brown hexagon at 32 pixels: over 2000 renders 99.3% (small ones 98.7%; the
    rest read as circles, the dark colour's faint edge falling under the foreground threshold); these 100 all read
    right."""
    for colour in NEW_COLOURS:
        for shape in NEW_SHAPES:
            images, _, scenes = ConceptPairDataset(colour=colour, shape=shape, seed=5, image_size=size).batch(0, 100)
            options = judge_options([colour, shape])
            results = [score(s, judge(x, **options)) for s, x in zip(scenes, images)]
            assert sum(r["colour"] and r["shape"] for r in results) >= 99, (colour, shape)
