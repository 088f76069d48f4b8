"""Concept accuracy: the judge's report on images of a taught colour, scored on ground truth instead of a model."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from latentlab.cli import main
from latentlab.data.concept import ConceptDataset, ConceptPairDataset
from latentlab.data.shapes import COLOURS, NEW_COLOURS, SHAPES, render
from latentlab.errors import LatentlabError
from latentlab.evaluation.concept import (concept_accuracy, concept_judge_options, judge_options, pair_accuracy,
                                         read_concept, read_concepts)


pytestmark = pytest.mark.usefixtures("one_thread")  # the judge works on tiny tensors


def recolour(images: torch.Tensor, source: str, target: tuple[float, float, float]) -> torch.Tensor:
    """Pixels of colour `source` (and their anti-aliased edges) painted `target` instead."""
    background = torch.tensor((0.16, 0.16, 0.16)).view(1, 3, 1, 1)
    rgb, old, new = (images + 1) / 2, torch.tensor(NEW_COLOURS[source]).view(1, 3, 1, 1), torch.tensor(target)
    alpha = ((rgb - background) * (old - background)).sum(1, keepdim=True) / ((old - background) ** 2).sum()
    return (background + alpha.clamp(0, 1) * (new.view(1, 3, 1, 1) - background)) * 2 - 1


class GroundTruth:
    """A stand-in pipeline whose samples are the renders of the prompts' own scenes."""

    def __init__(self, concept="cyan", seed=1234, paint=None):
        self.data = ConceptDataset(concept=concept, seed=seed, split="test")
        self.seed, self.paint, self.concept = seed, paint, concept
        self.image_size, self.device, self.dtype = 32, torch.device("cpu"), torch.float32
        self.vae = SimpleNamespace(encode=lambda x, sample: x, decode=lambda z: z)
        self.prompts = []

    def sample(self, prompts, *, seed, **options):
        start = seed - self.seed  # concept_accuracy seeds chunk [start, start + n) with seed + start
        images, captions, _ = self.data.batch(start, len(prompts))
        assert captions == prompts
        self.prompts += prompts
        return images if self.paint is None else recolour(images, self.concept, self.paint)


def test_ground_truth_scores_nearly_perfect():
    images, _, scenes = ConceptDataset(seed=1234, split="test").batch(0, 200)
    report = read_concept(scenes, images, "cyan")
    assert report["accuracy"]["all"] >= 0.95 and report["accuracy"]["colour"] == 1.0
    assert report["read"] == {"cyan": 1.0}


def test_ground_truth_of_a_shape_concept_scores_nearly_perfect():
    images, _, scenes = ConceptDataset(concept="diamond", seed=1234, split="test").batch(0, 200)
    report = read_concept(scenes, images, "diamond")
    assert report["accuracy"]["all"] >= 0.95 and report["accuracy"]["shape"] >= 0.99
    assert report["read"]["diamond"] >= 0.99


def test_the_judge_options_extend_the_palette_or_the_shapes():
    assert concept_judge_options("cyan") == {"palette": {**COLOURS, "cyan": NEW_COLOURS["cyan"]}}
    assert concept_judge_options("diamond") == {"shapes": ("circle", "square", "triangle", "diamond")}


def test_a_palette_shape_drawn_for_a_shape_concept_is_a_wrong_shape():
    data = ConceptDataset(concept="diamond", seed=1234, split="test")
    _, _, scenes = data.batch(0, 100)
    squares = [replace(s, objects=(replace(s.objects[0], shape="square"),)) for s in scenes]
    report = read_concept(scenes, render(squares), "diamond")
    assert report["accuracy"]["shape"] == 0.0 and report["read"] == {"square": 1.0}
    assert report["accuracy"]["colour"] == 1.0 and report["accuracy"]["position"] >= 0.95


@pytest.mark.parametrize("drawn", ["blue", "green"])
def test_a_palette_colour_drawn_for_the_concept_is_a_wrong_colour(drawn):
    images, _, scenes = ConceptDataset(seed=1234, split="test").batch(0, 100)
    report = read_concept(scenes, recolour(images, "cyan", COLOURS[drawn]), "cyan")
    assert report["accuracy"]["colour"] == 0.0 and report["accuracy"]["all"] == 0.0
    assert report["read"] == {drawn: 1.0}
    assert report["accuracy"]["shape"] >= 0.95 and report["accuracy"]["position"] >= 0.95


def test_concept_accuracy_report():
    pipe = GroundTruth()
    report = concept_accuracy(pipe, prompts=150, batch_size=64)
    assert pipe.prompts == [ConceptDataset(seed=1234, split="test").example(i)[1] for i in range(150)]
    assert report["accuracy"]["all"] >= 0.95 and report["read"]["cyan"] == 1.0
    assert set(report["accuracy"]) == {"shape", "colour", "size", "position", "count", "all"}
    assert report["vae_round_trip"] == report["accuracy"]  # the stand-in's autoencoder is the identity
    assert report["concept"] == "cyan" and report["kind"] == "colour" and report["word"] == "cyan"
    assert report["prompts"] == 150
    json.dumps(report)


def test_concept_accuracy_report_of_a_shape():
    pipe = GroundTruth("diamond")
    report = concept_accuracy(pipe, concept="diamond", prompts=100)
    assert report["kind"] == "shape" and report["accuracy"]["all"] >= 0.95 and report["read"]["diamond"] >= 0.99


def test_concept_prompts_are_not_the_training_folders():
    train = {ConceptDataset(seed=0).example(i)[1] for i in range(100)}
    pipe = GroundTruth()
    concept_accuracy(pipe, prompts=100, round_trip=False)
    assert len(set(pipe.prompts) - train) > 50


def test_concept_accuracy_on_a_real_pipeline(tiny_pipeline):
    report = concept_accuracy(tiny_pipeline, prompts=3, steps=2, word="sks")
    assert report["word"] == "sks" and set(report["vae_round_trip"]) == set(report["accuracy"])
    assert abs(sum(report["read"].values()) - 1) < 1e-9


# ---------------------------------------------------------------- a new colour and a new shape at once


def test_the_judge_options_of_a_pair_extend_the_palette_and_the_shapes():
    assert judge_options(["pink", "star"]) == {"palette": {**COLOURS, "pink": NEW_COLOURS["pink"]},
                                               "shapes": (*SHAPES, "star")}
    assert judge_options(["cyan"]) == concept_judge_options("cyan")


def test_ground_truth_of_a_pair_scores_nearly_perfect():
    images, _, scenes = ConceptPairDataset(colour="pink", shape="star", seed=1234).batch(0, 100)
    report = read_concepts(scenes, images, ["pink", "star"])
    assert report["read"] == {"colour": {"pink": 1.0}, "shape": {"star": 1.0}}
    assert report["accuracy"]["all"] >= 0.95 and len(report["passed"]) == 100


def test_a_palette_shape_drawn_for_a_pair_is_read_as_such():
    _, _, scenes = ConceptPairDataset(colour="brown", shape="ring", seed=1234).batch(0, 50)
    circles = [replace(s, objects=(replace(s.objects[0], shape="circle"),)) for s in scenes]
    report = read_concepts(scenes, render(circles), ["brown", "ring"])
    assert report["read"]["shape"] == {"circle": 1.0} and report["read"]["colour"] == {"brown": 1.0}
    assert report["accuracy"]["shape"] == 0.0 and report["accuracy"]["colour"] == 1.0


class PairGroundTruth(GroundTruth):
    """The stand-in pipeline for a pair's prompts."""

    def __init__(self, colour, shape, words=None, seed=1234):
        super().__init__(seed=seed)
        self.data = ConceptPairDataset(colour=colour, shape=shape, seed=seed, words=words)


def test_pair_accuracy_report():
    pipe = PairGroundTruth("cyan", "hexagon", {"cyan": "<cyan>"})
    report = pair_accuracy(pipe, colour="cyan", shape="hexagon", words={"cyan": "<cyan>"}, prompts=70, batch_size=32)
    assert pipe.prompts == [ConceptPairDataset(colour="cyan", shape="hexagon", seed=1234,
                                               words={"cyan": "<cyan>"}).example(i)[1] for i in range(70)]
    assert report["words"] == {"cyan": "<cyan>", "hexagon": "hexagon"} and report["prompts"] == 70
    assert report["accuracy"]["all"] >= 0.95 and report["read"] == {"colour": {"cyan": 1.0}, "shape": {"hexagon": 1.0}}
    json.dumps(report)


def test_pair_accuracy_on_a_real_pipeline(tiny_pipeline):
    report = pair_accuracy(tiny_pipeline, colour="pink", shape="star", words={"pink": "sks"}, prompts=3, steps=2,
                           batch_size=2)
    assert set(report) == {"colour", "shape", "words", "prompts", "steps", "guidance", "sampler", "seed",
                           "accuracy", "read", "failures"}
    assert report["colour"] == "pink" and report["shape"] == "star" and report["prompts"] == 3
    assert report["words"] == {"pink": "sks", "star": "star"} and report["steps"] == 2
    assert set(report["accuracy"]) == {"shape", "colour", "size", "position", "count", "all"}
    assert all(0 <= v <= 1 and v * 3 == round(v * 3) for v in report["accuracy"].values())
    assert set(report["read"]) == {"colour", "shape"}
    assert all(abs(sum(fractions.values()) - 1) < 1e-9 for fractions in report["read"].values())
    assert len(report["failures"]) == round(3 * (1 - report["accuracy"]["all"]))
    assert all("sks" in text and "star" in text for text in report["failures"])
    json.dumps(report)


def test_pair_accuracy_refuses_a_bad_pair(tiny_pipeline):
    with pytest.raises(LatentlabError, match="a concept pair's shape must be a new shape, got 'square'"):
        pair_accuracy(tiny_pipeline, colour="pink", shape="square", prompts=1, steps=1)


# ---------------------------------------------------------------- the command line


@pytest.fixture()
def model_dir(tiny_pipeline, tmp_path):
    tiny_pipeline.save(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize("concept, kind", [("cyan", "colour"), ("diamond", "shape")])
def test_eval_concept_prints_and_writes_the_report(model_dir, tmp_path, capsys, concept, kind):
    out = tmp_path / "report.json"
    assert main(["eval", "--model", str(model_dir), "--prompts", "2", "--steps", "2", "--device", "cpu",
                 "--concept", concept, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"concept  {concept} 1 object" in printed and f"{kind} drawn: " in printed
    assert "ground truth through the autoencoder" in printed
    reports = json.loads(out.read_text())
    assert [r.get("concept") for r in reports] == [None, concept]


@pytest.mark.parametrize("args, message", [
    (["eval", "--concept", "red"], "argument --concept: invalid choice: 'red'"),
    (["eval", "--concept", "diamond", "--data", "mnist"], "--concept measures a shapes-world concept"),
])
def test_eval_concept_bad_input_is_one_line_and_status_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentlab: error: ") and message in err
