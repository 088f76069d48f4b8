"""Training the contrastive image-text encoder (training/contrastive.py) and `latentlab train-clip`: the loss and
its targets, a resumed run that ends as an uninterrupted one, the model folder, and bad input in one line."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from latentlab.cli import main
from latentlab.contrastive_model import ContrastiveModel
from latentlab.errors import CheckpointError
from latentlab.data.shapes import ShapesDataset
from latentlab.training.contrastive import (contrastive_loss, negative_caption, same_caption_targets, shares,
                                            with_negatives)

from ..cli.commandline import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train-clip", "--data", "shapes", "--batch-size", "8", "--width", "32", "--layers", "1", "--embed-dim", "16",
         "--patch-size", "8", "--device", "cpu", "--warmup", "1"]


def train(out, *args):
    return main([*TRAIN, "--out", str(out), *map(str, args)])


def summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_distinct_captions_give_clips_diagonal_targets_and_copies_share_them():
    torch.testing.assert_close(same_caption_targets(["a", "b", "c"]), torch.eye(3))
    targets = same_caption_targets(["a", "b", "a", "a"])
    torch.testing.assert_close(targets[0], torch.tensor([1 / 3, 0, 1 / 3, 1 / 3]))
    torch.testing.assert_close(targets[1], torch.tensor([0.0, 1, 0, 0]))
    torch.testing.assert_close(targets, targets.T)


def test_the_loss_is_clips_symmetric_cross_entropy():
    logits = torch.randn(4, 4)
    labels = torch.arange(4)
    want = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(contrastive_loss(logits, torch.eye(4)), want)
    assert contrastive_loss(100 * torch.eye(4), torch.eye(4)).item() < 1e-6  # each image with its caption alone
    assert contrastive_loss(torch.zeros(4, 4), torch.eye(4)).item() == pytest.approx(math.log(4))


@pytest.mark.parametrize("batch, sets, want", [(8, 1, [8]), (8, 2, [4, 4]), (9, 2, [5, 4]), (10, 3, [4, 3, 3])])
def test_a_batch_is_shared_evenly_among_the_data_sets(batch, sets, want):
    assert shares(batch, sets) == want and sum(want) == batch


def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, capsys):
    assert train(tmp_path / "whole", "--steps", 4) == 0
    report = summary(capsys)
    assert report["steps"] == 4 and report["temperature"] != pytest.approx(0.07, abs=1e-9)
    assert train(tmp_path / "stopped", "--steps", 2) == 0 and summary(capsys)["steps"] == 2
    assert train(tmp_path / "stopped", "--steps", 4, "--resume") == 0 and summary(capsys)["steps"] == 4
    whole, resumed = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "stopped"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_the_folder_loads_as_a_model_that_scores_images_against_prompts(tmp_path, capsys):
    assert train(tmp_path / "run", "--steps", 2) == 0
    model = ContrastiveModel.load(tmp_path / "run", device="cpu")
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    prompts = ["a small red circle", "a large blue square on the left", ""]
    scores = model.similarity(images, prompts)
    assert scores.shape == (3,) and (scores.abs() <= 1 + 1e-5).all()
    torch.testing.assert_close(scores, (model.encode_images(images) * model.encode_prompts(prompts)).sum(1))
    model.save(tmp_path / "half", dtype=torch.float16)
    half = ContrastiveModel.load(tmp_path / "half", device="cpu")
    assert (half.similarity(images, prompts) - scores).abs().max() < 1e-2
    with pytest.raises(ValueError, match="one prompt per image"):
        model.similarity(images, prompts[:2])


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a contrastive image-text model folder"):
        ContrastiveModel.load(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--data", "shapes", "--data", "shapes"], "a data set is named twice"),
    (["--data", "no-such-set"], "unknown data 'no-such-set'"),
    (["--data", "shapes", "--batch-size", "1"], "at least 2 examples"),
    (["--data", "shapes", "--patch-size", "5"], "multiple of patch_size"),
    (["--data", "shapes", "--lr", "nan"], "lr"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert main(["train-clip", "--out", str(tmp_path / "run"), "--steps", "1", "--device", "cpu", *args]) == 2
    assert_one_line_error(capsys, message)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_resume_with_other_settings_is_refused(tmp_path, capsys):
    assert train(tmp_path / "run", "--steps", 2) == 0
    capsys.readouterr()
    assert train(tmp_path / "run", "--steps", 4, "--resume", "--lr", "1e-2") == 2
    assert_one_line_error(capsys, "lr")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "run"
    assert train(out, "--steps", 2) == 0
    return out


def test_eval_scores_a_models_images_with_the_clip_score_beside_the_judge(clip_dir, model, tmp_path, capsys):
    assert main(["eval", "--model", str(model), "--prompts", "4", "--steps", "2", "--device", "cpu",
                 "--metric", "clip-score", "--clip", str(clip_dir), "--out", str(tmp_path / "report.json")]) == 0
    assert "clip score" in capsys.readouterr().out
    (report,) = json.loads((tmp_path / "report.json").read_text())
    assert -100 <= report["clip_score"] <= 100 and 0 <= report["judge_all"] <= 1 and report["prompts"] == 4
    assert report["auc"] is None or 0 <= report["auc"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--metric", "clip-score", "--data", "fashion-mnist"], "does not go with --data fashion-mnist"),
    (["--metric", "clip-score", "--concept", "diamond"], "does not go with --concept"),
    (["--clip", "somewhere"], "give --metric clip-score too"),
    (["--metric", "clip-score", "--clip", "/nonexistent"], "not a contrastive image-text model folder"),
])
def test_bad_clip_score_options_are_one_line(model, capsys, args, message):
    assert main(["eval", "--model", str(model), "--prompts", "2", "--steps", "2", "--device", "cpu", *args]) == 2
    assert_one_line_error(capsys, message)


def test_auc_is_the_chance_a_right_image_outscores_a_wrong_one():
    from latentlab.evaluation.contrastive import auc

    assert auc(torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([True, True, False, False])) == 1.0
    assert auc(torch.tensor([0.1, 0.2, 0.9, 0.8]), torch.tensor([True, True, False, False])) == 0.0
    assert auc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5
    assert auc(torch.tensor([0.9, 0.3, 0.5]), torch.tensor([True, False, True])) == 1.0
    assert auc(torch.tensor([0.9, 0.3]), torch.tensor([True, True])) is None


def test_hard_negatives_bind_the_same_words_wrongly():
    import random

    data = ShapesDataset(split="train")
    examples = [data.example(i) for i in range(300)]
    scenes, captions = [s for s, _ in examples], [c for _, c in examples]
    negatives = with_negatives(scenes, captions, "k")
    assert negatives == with_negatives(scenes, captions, "k")  # fixed by the key
    for scene, right, wrong in zip(scenes, captions, negatives):
        assert right != wrong and len(right.split()) == len(wrong.split())  # the same template
        assert " a a" not in f" {wrong}" and not any(f"a {c}" in wrong for c in ("orange",))  # articles follow
        if len(scene.objects) == 2:  # the same words, bound wrongly
            assert sorted(right.split()) == sorted(wrong.split())
    from latentlab.data.shapes import Scene, ShapeObject

    scene = Scene((ShapeObject("circle", "red", "small", "left"), ShapeObject("square", "orange", "large", "right")),
                  "left of")
    text = "a small red circle to the left of a large orange square"
    made = {negative_caption(text, scene, random.Random(seed)) for seed in range(40)}
    assert made == {"a small orange circle to the left of a large red square",  # colours exchanged
                    "a small red square to the left of a large orange circle",  # shapes
                    "a large red circle to the left of a small orange square",  # sizes
                    "a large orange square to the left of a small red circle"}  # order
    one = Scene((ShapeObject("circle", "red", "small", "left"),))
    wrong = {negative_caption("a red circle, small, on the left", one, random.Random(seed)) for seed in range(40)}
    assert "an orange circle, small, on the left" in wrong and len(wrong) == 5  # every other colour, article fixed


def test_negatives_enter_the_image_to_text_half_only():
    logits, targets = torch.randn(3, 3), torch.eye(3)
    negatives = torch.randn(3, 2)
    want = (F.cross_entropy(torch.cat([logits, negatives], 1), torch.arange(3))
            + F.cross_entropy(logits.T, torch.arange(3))) / 2
    torch.testing.assert_close(contrastive_loss(logits, targets, negatives), want)
    assert contrastive_loss(logits, targets, torch.full((3, 2), -50.0)) == pytest.approx(
        contrastive_loss(logits, targets).item(), abs=1e-5)


def test_a_run_with_hard_negatives_trains_and_resumes(tmp_path, capsys):
    assert train(tmp_path / "whole", "--steps", 3, "--hard-negatives") == 0 and summary(capsys)["steps"] == 3
    assert train(tmp_path / "stopped", "--steps", 1, "--hard-negatives") == 0
    assert train(tmp_path / "stopped", "--steps", 3, "--hard-negatives", "--resume") == 0
    whole, resumed = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "stopped"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
