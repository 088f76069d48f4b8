"""The V button's measurement (evaluation/vary.py) on the shipped model, at a few steps."""

import pytest

from latentlab.evaluation.vary import variation_report
from latentlab.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(device="cpu")


def test_a_stronger_variation_moves_further_from_its_source(pipe):
    weak, strong = (variation_report(pipe, cases=3, count=2, steps=4, strength=s, batch_size=6) for s in (0.0, 1.0))
    assert weak["distance to the source"]["mean"] < 0.03 < strong["distance to the source"]["mean"]
    assert weak["distance between variations"]["mean"] < strong["distance between variations"]["mean"]
    for report in (weak, strong):
        assert report["grid images right"]["n"] == 3 and report["variations right"]["n"] == 6
        assert report["variations right where the source was"]["n"] == 2 * round(3 * report["grid images right"]["share"])
        low, high = report["variations right"]["interval"]
        assert 0 <= low <= report["variations right"]["share"] <= high <= 1
