"""Mutated safetensors files (length prefix, JSON header, cut short, weights stored as integers) through the
loaders a user reaches: a model folder's weights (Pipeline.load), a LoRA file (Pipeline.load_lora,
`generate --lora`), a training checkpoint (`--resume`). Each loads correctly or is refused in one line,
and the file is never changed."""

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latentlab.pipeline import Pipeline
from latentlab.training.lora import LoRATrainConfig, train_lora
from latentlab.training.state import FILENAME, META_KEY

from .fuzzing import (Described, assert_as_before, assert_generates, assert_same_state, attempt, copy_pipeline,
                      edited_json, fuzz, join_safetensors, module_state, mutated_safetensors, run_cli, scratch,
                      snapshot, split_safetensors, stored_as_integers, strings, unchanged)

pytestmark = pytest.mark.usefixtures("one_thread")

COMPONENTS = ("unet", "vae", "text_encoder")
# strings a LoRA or checkpoint header's entries might be edited to
HEADER_STRINGS = strings | st.sampled_from(["1", "0", "nan", "inf", "-1", "{}", "[]", '{"x": 1}', "v1:", "v1:a:b",
                                            '{"unet.r": "x"}', '{"step": "3"}', "null"])


@pytest.fixture(scope="module")
def weights(model_dir) -> dict[str, bytes]:
    return {c: Described((model_dir / c / "model.safetensors").read_bytes(), f"{c}/model.safetensors")
            for c in COMPONENTS}


def check_model_folder(model_dir, component: str, weights: bytes) -> None:
    """A copy of the model folder with `weights` as the component's loads and generates, or is refused in one
    line; loading changes no file."""
    with scratch() as folder:
        shutil.copytree(model_dir, folder / "model")
        (folder / "model" / component / "model.safetensors").write_bytes(weights)
        with unchanged(folder):
            pipe, error = attempt(Pipeline.load, folder / "model", device="cpu")
        if error is None:
            assert all(p.is_floating_point() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
            assert_generates(pipe)


def check_lora(fuzz_pipeline, lora: bytes) -> None:
    """A LoRA file loads (the pipeline then generates, and removing the LoRA gives the base model back), or is
    refused in one line with the networks as they were; loading changes no file."""
    pipe = copy_pipeline(fuzz_pipeline)
    before = module_state(pipe.unet, pipe.text_encoder)
    with scratch() as folder:
        (folder / "style.safetensors").write_bytes(lora)
        with unchanged(folder):
            name, error = attempt(pipe.load_lora, folder / "style.safetensors")
    if error is not None:
        assert_same_state(before, module_state(pipe.unet, pipe.text_encoder))
        assert pipe.loras == []
        return
    assert pipe.loras == [name]
    assert_generates(pipe)
    pipe.remove_lora(name)
    assert_same_state(before, module_state(pipe.unet, pipe.text_encoder))


@fuzz(40)
@given(data=st.data())
def test_a_model_folder_with_mutated_weights_loads_and_generates_or_is_refused_in_one_line(model_dir, weights, data):
    component = data.draw(st.sampled_from(COMPONENTS), label="component")
    check_model_folder(model_dir, component, data.draw(mutated_safetensors(weights[component]), label="weights"))


@fuzz(3)
@given(component=st.sampled_from(COMPONENTS))
def test_a_model_folder_with_integer_weights_loads_and_generates_or_is_refused_in_one_line(model_dir, weights,
                                                                                            component):
    check_model_folder(model_dir, component, stored_as_integers(weights[component]))


@fuzz(40)
@given(data=st.data())
def test_a_mutated_lora_file_loads_or_is_refused_in_one_line_leaving_the_model_as_it_was(fuzz_pipeline, lora_files,
                                                                                         data):
    format = data.draw(st.sampled_from(["latentlab", "kohya", "diffusers"]), label="format")
    check_lora(fuzz_pipeline, data.draw(mutated_safetensors(lora_files[format].read_bytes(), HEADER_STRINGS),
                                        label="LoRA file"))


@fuzz(3)
@given(format=st.sampled_from(["latentlab", "kohya", "diffusers"]))
def test_a_lora_file_with_integer_weights_loads_or_is_refused_in_one_line(fuzz_pipeline, lora_files, format):
    check_lora(fuzz_pipeline, stored_as_integers(lora_files[format].read_bytes()))


@fuzz(10)
@given(data=st.data())
def test_generate_with_a_mutated_lora_file_exits_0_or_2_with_one_line(model_dir, lora_files, data):
    mutated = data.draw(mutated_safetensors(lora_files["latentlab"].read_bytes(), HEADER_STRINGS), label="LoRA file")
    with scratch() as folder:
        (folder / "in").mkdir()
        (folder / "in" / "style.safetensors").write_bytes(mutated)
        with unchanged(folder / "in", model_dir):
            code, _, _ = run_cli(["generate", "a red circle", "--model", model_dir, "--lora",
                                  folder / "in" / "style.safetensors", "--steps", "1", "--device", "cpu",
                                  "--out", folder / "samples"])
        assert code == 2 or len(list((folder / "samples").glob("*.png"))) == 2


# ---------------------------------------------------------------------- training checkpoints


def lora_config(model_dir, out, **changes) -> LoRATrainConfig:
    settings = dict(data="shapes", out=str(out), model=str(model_dir), steps=1, batch_size=2, device="cpu",
                    checkpoint_every=1, warmup=0)
    return LoRATrainConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def lora_run(model_dir, tmp_path_factory):
    """(the folder of a LoRA training run of one step, a copy of it as written, its checkpoint's bytes). LoRA
    training is the cheapest of the three trainers, which share the checkpoint format of training/state.py.
    Each example puts the run back in the same folder: a run resumes only with the same settings."""
    base = tmp_path_factory.mktemp("fuzz_run")
    train_lora(lora_config(model_dir, base / "run"))
    shutil.copytree(base / "run", base / "written")
    return base / "run", base / "written", Described((base / "run" / FILENAME).read_bytes(), FILENAME)


@st.composite
def edited_checkpoint(draw, checkpoint: bytes):
    """A checkpoint whose JSON document (step, config, optimiser, generators) has one edit."""
    header, body = split_safetensors(checkpoint)
    meta = json.loads(header["__metadata__"][META_KEY])
    edited, what = draw(edited_json(meta))
    header["__metadata__"][META_KEY] = json.dumps(edited)
    return Described(join_safetensors(json.dumps(header).encode(), body), f"{META_KEY}: {what}")


@fuzz(12, shrink=False)
@given(data=st.data())
def test_resuming_from_a_mutated_checkpoint_continues_or_is_refused_in_one_line(model_dir, lora_run, data):
    run, written, checkpoint = lora_run
    mutated = data.draw(edited_checkpoint(checkpoint) | mutated_safetensors(checkpoint, HEADER_STRINGS),
                        label="checkpoint.safetensors")
    shutil.rmtree(run)
    shutil.copytree(written, run)
    (run / FILENAME).write_bytes(mutated)
    before = snapshot(run)
    result, error = attempt(train_lora, lora_config(model_dir, run, resume=True))
    if error is not None:
        assert_as_before(run, before)
    else:
        assert result["steps"] >= 1 and (run / "lora.safetensors").is_file()
