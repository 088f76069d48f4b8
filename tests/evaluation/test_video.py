"""Measuring a video model with the clip judge."""

import pytest

from latentlab import Pipeline
from latentlab.data.video import MotionConcept, VideoDataset
from latentlab.data.video_judge import clip_metrics as read_clips
from latentlab.evaluation.video import video_adherence
from latentlab.video_pipeline import VideoPipeline


def test_ground_truth_clips_read_right():
    videos, _, clips = VideoDataset(seed=3, split="test", frames=8).batch(0, 40)
    figures = read_clips(clips, videos)
    assert {k: figures[k] for k in ("per_frame", "objects", "count", "motion", "identity", "all")} == {
        "per_frame": 1.0, "objects": 1.0, "count": 1.0, "motion": 1.0, "identity": 1.0, "all": 1.0}
    assert figures["jitter"] < 0.02  # the turns of bouncing clips: 0.038 at 8 frames; the rest about 0.0015


def test_frames_from_other_clips_read_wrong():
    videos, _, clips = VideoDataset(seed=3, split="test", frames=8).batch(0, 40)
    figures = read_clips(clips, videos.roll(1, dims=0))  # each clip judged against its neighbour's video
    assert figures["all"] < 0.1 and figures["per_frame"] < 0.2


@pytest.mark.parametrize("split", ["test", "heldout"])
def test_a_new_video_model_measures_as_its_image_model_frame_by_frame(split):
    video = VideoPipeline.from_image(Pipeline.load(device="cpu"), frames=8)
    ours = video_adherence(video, prompts=2, steps=2, split=split)
    baseline = video_adherence(video, prompts=2, steps=2, split=split, baseline=True)
    assert ours["model"] == "video model" and baseline["model"] == "image model, frame by frame"
    def figures(report):
        flat = {k: v for k, v in report.items() if k not in ("model", "one_object")}
        return flat | {f"one_object {k}": v for k, v in report["one_object"].items()}
    assert figures(ours) == pytest.approx(figures(baseline), nan_ok=True)


def test_a_new_motion_is_measured_on_fresh_clips_of_it(monkeypatch):
    """With `motion`, the prompts are MotionConcept's fresh clips: a model that drew those very clips scores
    100% on every figure."""
    video = VideoPipeline.from_image(Pipeline.load(device="cpu"), frames=8)
    truth = MotionConcept(motion="diagonal", split="test", frames=8)
    asked = []

    def sample(prompts, **options):
        asked.extend(prompts)
        return truth.batch(len(asked) - len(prompts), len(prompts))[0]
    monkeypatch.setattr(video, "sample", sample)
    report = video_adherence(video, prompts=6, batch_size=4, motion="diagonal")
    assert asked == truth.batch(0, 6)[1]  # "a small orange circle moves down and to the right", ...
    assert report["split"] == "diagonal (fresh clips)" and report["motion"] == report["all"] == 1.0
