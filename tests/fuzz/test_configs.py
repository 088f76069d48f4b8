"""Edited JSON files of a model folder (the components' config.json, scheduler/config.json,
model_index.json, tokenizer/tokenizer.json): Pipeline.load refuses them in one line, naming the file, or
gives a pipeline that draws finite images; the folder is never changed. The error names the file's
component."""

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latentlab.pipeline import Pipeline

from .fuzzing import (Quiet, assert_generates, attempt, edited_json_bytes, floats, fuzz, json_values, run_cli,
                      scratch, strings, unchanged)

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/config.json",
           "model_index.json", "tokenizer/tokenizer.json")
# tokenizer.json: no huge numbers, which a defect could pad every prompt to (the tokenizers library aborts
# the process when it cannot allocate)
small_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 64) | floats | strings,
                            lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


@pytest.fixture(scope="module")
def documents(model_dir) -> dict:
    return Quiet({name: json.loads((model_dir / name).read_text()) for name in CONFIGS})


@fuzz(80)
@given(data=st.data())
def test_an_edited_config_loads_a_pipeline_that_generates_or_is_refused_in_one_line(model_dir, documents, data):
    name = data.draw(st.sampled_from(CONFIGS), label="file")
    values = small_values if name.startswith("tokenizer") else json_values
    edited = data.draw(edited_json_bytes(documents[name], values), label=name)
    with scratch() as folder:
        shutil.copytree(model_dir, folder / "model")
        (folder / "model" / name).write_bytes(edited)
        with unchanged(folder):
            pipe, error = attempt(Pipeline.load, folder / "model", device="cpu")
        if error is None:
            assert_generates(pipe)
        else:
            assert name.split("/")[0] in str(error), f"the error does not name {name}: {error}"


@fuzz(8)
@given(data=st.data())
def test_generate_with_an_edited_config_exits_0_or_2_with_one_line(model_dir, documents, data):
    name = data.draw(st.sampled_from(CONFIGS[:5]), label="file")
    edited = data.draw(edited_json_bytes(documents[name]), label=name)
    with scratch() as folder:
        shutil.copytree(model_dir, folder / "model")
        (folder / "model" / name).write_bytes(edited)
        with unchanged(folder / "model"):
            code, _, err = run_cli(["generate", "a red circle", "--model", folder / "model", "--steps", "1",
                                    "--device", "cpu", "--out", folder / "samples"])
        if code == 2:
            assert name.split("/")[0] in err, f"the error does not name {name}: {err}"
