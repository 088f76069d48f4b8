"""Any text as a prompt or negative prompt (lone surrogates, as Python passes bytes that are not UTF-8;
control characters; empty, blank and very long strings): Pipeline.sample and `latentlab generate` draw
finite images or refuse in one line."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from .fuzzing import any_text, attempt, fuzz, run_cli, scratch, unchanged

pytestmark = pytest.mark.usefixtures("one_thread")

negatives = st.just("") | any_text


@fuzz(40)
@given(prompts=st.lists(any_text, max_size=3), negative=negatives)
@example(prompts=["caf\udce9 red circle"], negative="")
def test_any_prompts_give_finite_images_or_are_refused_in_one_line(fuzz_pipeline, prompts, negative):
    images, error = attempt(fuzz_pipeline.sample, prompts, steps=1, negative_prompt=negative)
    if error is None:
        assert images.shape == (len(prompts), 3, 32, 32) and torch.isfinite(images).all()


@fuzz(20)
@given(prompts=st.lists(any_text, min_size=1, max_size=3), negative=negatives)
@example(prompts=["caf\udce9 red circle"], negative="")
def test_generate_with_any_prompts_exits_0_or_2_with_one_line(model_dir, prompts, negative):
    with scratch() as folder:
        with unchanged(model_dir):
            code, _, _ = run_cli(["generate", *prompts, f"--negative-prompt={negative}", "--model", model_dir,
                                  "--steps", "1", "--device", "cpu", "--out", folder / "samples"])
        if code == 0:
            assert len(list((folder / "samples").glob("*.png"))) == len(prompts) + 1
