"""LoRA files of every format (io/lora_files.py) under any adapter or file name, and with edited keys,
shapes, dtypes, alphas and headers: Pipeline.load_lora gives the right adapter or refuses in one line,
and a refused load leaves the networks exactly as they were (all or nothing), the file unchanged."""

import json
import math
import os
import shutil

import pytest
import torch
from hypothesis import example, given, reject
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from latentlab.adapters.lora import lora_layers
from latentlab.models.text_encoder import encode_prompts

from .fuzzing import (Labelled, any_text, assert_generates, assert_same_state, attempt, copy_pipeline, edited_json,
                      fuzz, json_values, module_state, run_cli, scratch, short, strings, unchanged)

pytestmark = pytest.mark.usefixtures("one_thread")

FORMATS = ("latentlab", "kohya", "diffusers", "peft")
# names that are attributes of nn.Module or nn.ModuleDict (which holds the adapters), and other odd ones
ODD_NAMES = ["train", "eval", "to", "half", "float", "double", "cuda", "cpu", "update", "forward", "training",
             "keys", "items", "values", "pop", "clear", "extend", "base", "lora_A", "lora_B", "lora_dropout",
             "weight", "_modules", "_parameters", "__class__", "__init__", "__dict__", "default", "style", "0",
             "a.b", ".", "..", "", " ", "_", "-", "ö", "a b", "\udce9", "x" * 300]
g = torch.Generator().manual_seed(0)
LATENT = torch.randn(1, 4, 8, 8, generator=g)


@torch.no_grad()
def outputs(pipe) -> torch.Tensor:
    """The U-Net's output for one prompt, through both networks a LoRA adapts."""
    context, mask = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a red circle"])
    return pipe.unet(LATENT, torch.tensor([10]), context, mask)


@pytest.fixture(scope="module")
def base(fuzz_pipeline):
    return module_state(fuzz_pipeline.unet, fuzz_pipeline.text_encoder)


@pytest.fixture(scope="module")
def expected(fuzz_pipeline, lora_files) -> dict:
    """{format: the outputs with that file's LoRA}, loaded under a plain name."""
    found = {}
    for format, path in lora_files.items():
        pipe = copy_pipeline(fuzz_pipeline)
        pipe.load_lora(path, name="reference")
        found[format] = outputs(pipe)
    assert (found["latentlab"] - outputs(fuzz_pipeline)).abs().max() > 1e-3  # the LoRA reaches the output
    return found


def check_load(pipe, base, load, *args, **kwargs):
    """Load a LoRA: (its name, None), or (None, a one-line error) with the networks as they were."""
    name, error = attempt(load, *args, **kwargs)
    if error is not None:
        assert_same_state(base, module_state(pipe.unet, pipe.text_encoder))
        assert pipe.loras == []
    else:
        assert pipe.loras == [name]
    return name, error


def check_removed(pipe, base, name):
    """Removing a loaded LoRA gives the base model back, exactly."""
    pipe.remove_lora(name)
    assert_same_state(base, module_state(pipe.unet, pipe.text_encoder))


@fuzz(40)
@given(format=st.sampled_from(FORMATS), name=st.sampled_from(ODD_NAMES) | any_text)
@example(format="latentlab", name="train")
def test_any_adapter_name_loads_the_lora_or_is_refused_in_one_line(
        fuzz_pipeline, lora_files, base, expected, format, name):
    pipe = copy_pipeline(fuzz_pipeline)
    with unchanged(lora_files[format]):
        loaded, error = check_load(pipe, base, pipe.load_lora, lora_files[format], name=name)
    if error is None:
        assert loaded == name
        torch.testing.assert_close(outputs(pipe), expected[format])
        check_removed(pipe, base, loaded)


def file_name(text: str) -> bool:
    """Whether the file system takes `text` as a file's name."""
    try:
        return (text not in ("", ".", "..") and not set(text) & set("/\0\n\r")  # names of one line
                and len(os.fsencode(text)) < 200)
    except UnicodeEncodeError:
        return False


@fuzz(40)
@given(format=st.sampled_from(FORMATS), stem=(st.sampled_from(ODD_NAMES) | any_text).filter(file_name))
@example(format="kohya", stem="train")
def test_a_lora_file_of_any_name_loads_or_is_refused_in_one_line(
        fuzz_pipeline, lora_files, base, expected, format, stem):
    pipe = copy_pipeline(fuzz_pipeline)
    with scratch() as folder:
        if format == "peft":
            path = folder / stem
            shutil.copytree(lora_files[format], path)
        else:
            path = folder / f"{stem}.safetensors"
            shutil.copy(lora_files[format], path)
        with unchanged(folder):
            loaded, error = check_load(pipe, base, pipe.load_lora, path)
    if error is None:
        torch.testing.assert_close(outputs(pipe), expected[format])
        check_removed(pipe, base, loaded)


@fuzz(8)
@given(stem=st.sampled_from(ODD_NAMES[:24]) | any_text.filter(file_name))
@example(stem="half")
def test_generate_with_a_lora_file_of_any_name_exits_0_or_2_with_one_line(model_dir, lora_files, stem):
    with scratch() as folder:
        path = folder / f"{stem}.safetensors"
        shutil.copy(lora_files["kohya"], path)
        with unchanged(path, model_dir):
            code, _, _ = run_cli(["generate", "a red circle", "--model", model_dir, "--lora", path,
                                  "--steps", "1", "--device", "cpu", "--out", folder / "samples"])
        assert code == 2 or len(list((folder / "samples").glob("*.png"))) == 2


# ---------------------------------------------------------------------- edited files


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


ODD_ALPHAS = ["nan", "inf", "-inf", "0", "-1", "1e-30", "abc", "", "[1, 2]", "{}", "null", "true", '"2"',
              '{"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "x"}']
HEADER_KEYS = ["rank", "alpha", "targets", "latentlab_lora", "lora_adapter_metadata", "base_fingerprint.unet",
               "base_fingerprint.text_encoder", "ss_network_dim", "format"]
DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int8, torch.uint8, torch.bool]


@st.composite
def edits(draw, tensors: dict, metadata: dict, peft_config: dict | None):
    """(tensors, metadata, peft config) after one to three edits, printed as the edits."""
    tensors, metadata, done = dict(tensors), dict(metadata), []
    config = None if peft_config is None else dict(peft_config)
    for _ in range(draw(st.integers(1, 3))):
        kinds = ["drop", "rename", "reshape", "dtype", "alpha", "header"] + (["config"] if config else [])
        kind = draw(st.sampled_from(kinds))
        keys = sorted(tensors)
        key = draw(st.sampled_from(keys)) if keys else None
        if kind == "drop" and keys:
            dropped = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=len(keys), unique=True))
            for k in dropped:
                del tensors[k]
            done.append(f"dropped {len(dropped)} of {len(keys)} keys, e.g. {short(dropped[:2])}")
        elif kind == "rename" and keys:
            new = draw(st.text(max_size=30) | st.sampled_from([
                key.replace("lora_A", "lora_B"), key.replace("lora_down", "lora_up"), key + ".weight",
                "lora_unet_nothing.lora_down.weight", "unet.nothing.lora_A.weight", key.replace(".", "_"),
                "base_model.model.x.lora_A.weight", key.replace("unet.", "text_encoder_2.")]))
            tensors[new] = tensors.pop(key)
            done.append(f"{key} renamed {new!r}")
        elif kind == "reshape" and keys:
            shape = draw(st.lists(st.integers(0, 5), max_size=4))
            tensors[key] = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.1
            done.append(f"{key} -> shape {shape}")
        elif kind == "dtype" and keys:
            dtype = draw(st.sampled_from(DTYPES))
            tensors[key] = tensors[key].to(dtype)
            done.append(f"{key} -> {dtype}")
        elif kind == "alpha":
            alphas = [k for k in keys if k.endswith(".alpha")]
            if alphas:  # kohya keeps alpha as a tensor per module
                key = draw(st.sampled_from(alphas))
                value = draw(st.sampled_from([float("nan"), float("inf"), 0.0, -1.0, 1e-30])
                             | st.lists(st.floats(-4, 4), max_size=3))
                tensors[key] = torch.tensor(value)
                done.append(f"{key} -> {value}")
            else:
                metadata["alpha"] = value = draw(st.sampled_from(ODD_ALPHAS))
                done.append(f"header alpha -> {value!r}")
        elif kind == "header":
            key = draw(st.sampled_from(HEADER_KEYS) | st.text(max_size=10))
            metadata[key] = value = draw(st.sampled_from(ODD_ALPHAS) | strings | json_values.map(json.dumps))
            done.append(f"header {key!r} -> {short(value)}")
        elif kind == "config":
            config, what = draw(edited_json(config))
            done.append(f"adapter_config.json: {what}")
    return Labelled((tensors, metadata, config), "; ".join(done) or "nothing")


def writable(save, *args):
    """Write the file, or drop the example: a header value with a lone surrogate cannot be written at all."""
    try:
        save(*args)
    except UnicodeEncodeError:
        reject()


@fuzz(60)
@given(data=st.data())
def test_an_edited_lora_file_loads_or_is_refused_in_one_line_leaving_the_model_as_it_was(
        fuzz_pipeline, lora_files, base, data):
    format = data.draw(st.sampled_from(FORMATS), label="format")
    source = lora_files[format]
    weights = source / "adapter_model.safetensors" if format == "peft" else source
    tensors, metadata = read(weights)
    peft_config = json.loads((source / "adapter_config.json").read_text()) if format == "peft" else None
    tensors, metadata, config = data.draw(edits(tensors, metadata, peft_config), label="edits").value
    pipe = copy_pipeline(fuzz_pipeline)
    with scratch() as folder:
        if format == "peft":
            path = folder / "style"
            path.mkdir()
            writable(save_file, tensors, str(path / "adapter_model.safetensors"), metadata)
            (path / "adapter_config.json").write_text(json.dumps(config))
        else:
            path = folder / "style.safetensors"
            writable(save_file, tensors, str(path), metadata)
        with unchanged(folder):
            name, error = check_load(pipe, base, pipe.load_lora, path)
    if error is None:
        alphas = [layer.alpha[name] for m in (pipe.unet, pipe.text_encoder) for _, layer in lora_layers(m)
                  if name in layer.alpha]
        assert all(math.isfinite(a) for a in alphas), f"alphas accepted: {sorted(set(alphas))[:5]}"
        assert_generates(pipe)
        check_removed(pipe, base, name)
