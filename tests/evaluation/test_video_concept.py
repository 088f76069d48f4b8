"""Measuring a concept learned from images (a new shape or colour) in a video model's clips."""

from dataclasses import replace

import pytest

from latentlab import Pipeline
from latentlab.data.video import Clip, ConceptClips, render
from latentlab.evaluation.video_concept import read_concept_clips, video_concept_accuracy
from latentlab.video_pipeline import VideoPipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def _ground_truth(concept, n=30):
    clips = [ConceptClips(concept=concept, frames=8).example(i)[0] for i in range(n)]
    return clips, render(clips)


@pytest.mark.parametrize("concept", ["diamond", "cyan"])
def test_ground_truth_clips_show_the_concept(concept):
    clips, videos = _ground_truth(concept)
    figures = read_concept_clips(clips, videos, concept)
    assert figures["concept_frames"] >= 0.99 and figures["concept_clips"] >= 0.99
    assert figures["motion"] >= 0.99 and figures["all"] >= 0.95
    assert figures["read"][concept] > 0.5


def test_clips_of_the_training_shapes_do_not_show_the_concept():
    clips, _ = _ground_truth("diamond")
    squares = [Clip((replace(clip.objects[0], shape="square"),), clip.frames) for clip in clips]
    figures = read_concept_clips(clips, render(squares), "diamond")
    assert figures["concept_frames"] == 0 and figures["concept_clips"] == 0 and "diamond" not in figures["read"]


def test_video_concept_accuracy_reports_its_settings():
    video = VideoPipeline.from_image(Pipeline.load(device="cpu"), frames=8)
    report = video_concept_accuracy(video, concept="diamond", word="rhombus", prompts=2, steps=2)
    assert report["word"] == "rhombus" and report["frames"] == 8 and report["prompts"] == 2
    assert 0 <= report["concept_frames"] <= 1 and len(report["failures"]) <= 2
    assert all("rhombus" in caption for caption in report["failures"])
