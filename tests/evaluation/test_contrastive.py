"""Zero-shot classification and retrieval of a contrastive image-text model (evaluation/contrastive.py), checked
with an oracle that reads images with the shapes judge: it must score 100% where the judge reads right, and
chance where its image embeddings carry nothing."""

import dataclasses

import torch

from latentlab.data.judge import judge
from latentlab.data.shapes import Scene, ShapeObject, ShapesDataset, caption
from latentlab.evaluation.contrastive import ATTRIBUTES, retrieval, zero_shot_attributes, zero_shot_classes


class Oracle:
    """A stand-in for a contrastive model: a caption's embedding is a fixed random unit vector of its canonical
    wording; an image's is that of the caption the judge reads from it (or noise, when `blind`)."""

    image_size = 32

    def __init__(self, blind=False):
        self.blind, self.vectors = blind, {}

    def vector(self, text: str) -> torch.Tensor:
        if text not in self.vectors:
            g = torch.Generator().manual_seed(len(self.vectors))
            self.vectors[text] = torch.nn.functional.normalize(torch.randn(256, generator=g), dim=0)
        return self.vectors[text]

    def encode_prompts(self, prompts):
        return torch.stack([self.vector(p) for p in prompts])

    def encode_images(self, images):
        if self.blind:
            return torch.nn.functional.normalize(torch.randn(len(images), 256), dim=1)
        out = []
        for image in images:
            d = judge(image)[0]
            scene = Scene((ShapeObject(d.shape, d.colour, d.size, d.position),))
            out.append(self.vector(caption(scene)))
        return torch.stack(out)


def test_an_oracle_reads_every_attribute_and_a_blind_model_is_at_chance():
    right = zero_shot_attributes(Oracle(), images=60)
    assert right == {**{k: 1.0 for k in ATTRIBUTES}, "all": 1.0, "images": 60}
    torch.manual_seed(0)
    blind = zero_shot_attributes(Oracle(blind=True), images=60)
    assert blind["colour"] < 0.5 and blind["all"] < 0.2


def test_the_candidates_differ_from_the_truth_in_one_attribute_only():
    """What the oracle saw as prompts for one image: its canonical caption and each value of one attribute."""
    scene = ShapesDataset(split="test", p_two=0.0).example(0)[0]
    for attribute, values in ATTRIBUTES.items():
        captions = {caption(dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0],
                                                                                    **{attribute: v}),)))
                    for v in values}
        assert caption(scene) in captions and len(captions) == len(values)


class Labelled:
    """A labelled set of images whose label the oracle reads: images of single objects, label = shape index."""

    def __init__(self, n=30):
        self.images, _, scenes = ShapesDataset(split="test", p_two=0.0).batch(0, n)
        self.labels = [("circle", "square", "triangle").index(s.objects[0].shape) for s in scenes]

    def __len__(self):
        return len(self.labels)

    def batch(self, start, n):
        return self.images[start:start + n], None, self.labels[start:start + n]


def test_zero_shot_classes_pick_the_nearest_class_prompt():
    class ShapeOracle(Oracle):
        def encode_images(self, images):
            return torch.stack([self.vector(judge(image)[0].shape) for image in images])

    data = Labelled()
    report = zero_shot_classes(ShapeOracle(), data, ["circle", "square", "triangle"])
    assert report["accuracy"] == 1.0 and report["per_class"] == [1.0, 1.0, 1.0] and report["images"] == 30
    wrong = zero_shot_classes(ShapeOracle(), data, ["square", "triangle", "circle"])  # prompts in another order
    assert wrong["accuracy"] == 0.0


def test_retrieval_counts_a_copy_of_the_caption_as_a_hit():
    images = torch.zeros(4, 3, 32, 32)
    captions = ["a", "b", "a", "c"]

    class Fixed(Oracle):
        def encode_images(self, images):  # image i embedded as caption i's text
            return self.encode_prompts(captions)

    report = retrieval(Fixed(), images, captions)  # images 0 and 2 tie on captions 0 and 2: both "a", both hits
    assert report["image_to_text_r@1"] == 1.0 and report["text_to_image_r@1"] == 1.0
    assert report["distinct"] == 3 and report["pairs"] == 4

    class Shifted(Oracle):
        def encode_images(self, images):  # image i embedded as the next image's caption
            return self.encode_prompts(captions[1:] + captions[:1])

    shifted = retrieval(Shifted(), images, captions)
    assert shifted["image_to_text_r@1"] == 0.0  # each lands on another caption's text
    assert shifted["image_to_text_r@5"] == 1.0  # among 4 captions, 5 nearest hold every one


def test_with_keys_another_wording_of_the_same_scene_is_a_hit():
    images = torch.zeros(2, 3, 32, 32)
    captions = ["a red circle", "a crimson circle"]

    class Swapped(Oracle):
        def encode_images(self, images):  # each image nearest the other's wording
            return self.encode_prompts(captions[::-1])

    assert retrieval(Swapped(), images, captions)["image_to_text_r@1"] == 0.0
    same_scene = retrieval(Swapped(), images, captions, keys=["red circle", "red circle"])
    assert same_scene["image_to_text_r@1"] == 1.0 and same_scene["distinct"] == 1
