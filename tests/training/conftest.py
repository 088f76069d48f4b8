"""Fixtures of the trainers of a frozen model (LoRA and the other methods, textual inversion)."""

import pytest

from ..conftest import tiny


@pytest.fixture(scope="module")
def model(tokenizer, tmp_path_factory):
    """A tiny model folder: the real modules at the `tiny` preset, randomly initialised."""
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny(tokenizer).save(folder)
    return folder
