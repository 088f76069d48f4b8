"""Training checkpoints read back strictly: a damaged or edited one (its metadata JSON, its fields, its tensors'
shapes) is one CheckpointError naming the file and what is wrong, never a traceback; and it changes nothing
(the random generators keep their states)."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import nn

from latentlab.cli import main
from latentlab.errors import CheckpointError
from latentlab.training.state import (FILENAME, META_KEY, load_module, load_optimizer, load_state, optimizer_state,
                                      prefixed, rng_state, save_state, set_rng_state)

pytestmark = pytest.mark.usefixtures("one_thread")


def rewrite(path, meta=None, tensors=None) -> None:
    """Edit a checkpoint in place: `meta(dict)` and `tensors(dict)` change them (or return a replacement)."""
    with safe_open(str(path), framework="pt") as f:
        metadata, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if meta is not None:
        decoded = json.loads(metadata[META_KEY])
        decoded = meta(decoded) or decoded
        metadata[META_KEY] = decoded if isinstance(decoded, str) else json.dumps(decoded)
    if tensors is not None:
        state = tensors(state) or state
    path.write_bytes(save_safetensors(state, metadata=metadata))


@pytest.fixture()
def saved(tmp_path):
    """A linear layer after one AdamW step, saved as the trainers save it; returns (path, model, optimizer)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer_tensors, optimizer_meta = optimizer_state(optimizer)
    random_tensors, random_meta = rng_state({"noise": torch.Generator().manual_seed(1)})
    path = tmp_path / FILENAME
    save_state(path, {**prefixed("model", model.state_dict()), **optimizer_tensors, **random_tensors},
               {"step": 1, "optimizer": optimizer_meta, "rng": random_meta})
    return path, model, optimizer


def fresh():
    model = nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_an_untouched_checkpoint_loads(saved):
    path, model, optimizer = saved
    tensors, meta = load_state(path)
    other, other_optimizer = fresh()
    load_module(other, "model", tensors, path)
    load_optimizer(other_optimizer, tensors, meta["optimizer"], path)
    set_rng_state(tensors, meta["rng"], {"noise": torch.Generator()}, path)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    assert all(torch.equal(optimizer.state[a]["exp_avg"], other_optimizer.state[b]["exp_avg"])
               for a, b in zip(model.parameters(), other.parameters()))


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object")])
def test_metadata_that_is_not_a_json_object(saved, text, message):
    path, _, _ = saved
    rewrite(path, meta=lambda meta: text)
    with pytest.raises(CheckpointError, match=message) as error:
        load_state(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("param_groups"), "param_groups"),
    (lambda m: m.update(param_groups=[]), "param_groups"),
    (lambda m: m.update(param_groups="all"), "param_groups"),
    (lambda m: m["param_groups"][0].update(betas="fast"), "betas"),
    (lambda m: m["param_groups"][0].update(betas=[0.9]), "betas"),
    (lambda m: m["param_groups"][0].update(weight_decay="0.01"), "weight_decay"),
    (lambda m: m["param_groups"][0].update(amsgrad=1), "amsgrad"),
    (lambda m: m["param_groups"][0].update(params=[0, 1, 2]), "params"),
    (lambda m: m.update(scalars={"x.step": 1}), "x.step"),
    (lambda m: m.update(scalars=[]), "scalars"),
])
def test_edited_optimizer_metadata(saved, edit, message):
    path, _, _ = saved
    rewrite(path, meta=lambda meta: (edit(meta["optimizer"]), None)[1])
    tensors, meta = load_state(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_optimizer(fresh()[1], tensors, meta["optimizer"], path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update({"optimizer.0.exp_avg": torch.zeros(5)}), "shape"),
    (lambda t: t.update({"optimizer.0.step": torch.zeros(2)}), "shape"),
    (lambda t: t.update({"optimizer.7.exp_avg": torch.zeros(2, 3)}), "parameter 7"),
    (lambda t: t.update({"optimizer.x.exp_avg": torch.zeros(2, 3)}), "optimizer.x.exp_avg"),
    (lambda t: t.pop("optimizer.1.exp_avg_sq"), "exp_avg_sq"),
])
def test_optimizer_tensors_of_the_wrong_shape_or_name(saved, edit, message):
    path, _, _ = saved
    rewrite(path, tensors=lambda t: (edit(t), None)[1])
    tensors, meta = load_state(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_optimizer(fresh()[1], tensors, meta["optimizer"], path)
    assert str(path) in str(error.value)


def test_module_tensors_of_the_wrong_shape(saved):
    path, _, _ = saved
    rewrite(path, tensors=lambda t: t.update({"model.weight": torch.zeros(4, 3)}))
    tensors, _ = load_state(path)
    with pytest.raises(CheckpointError, match="model.weight") as error:
        load_module(fresh()[0], "model", tensors, path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("tensors_edit, meta_edit", [
    (lambda t: t.update({"rng.torch": torch.zeros(7, dtype=torch.uint8)}), None),
    (lambda t: t.update({"rng.generator.noise": torch.zeros(3)}), None),
    (lambda t: t.pop("rng.numpy"), None),
    (lambda t: t.update({"rng.numpy": torch.zeros(5, dtype=torch.int64)}), None),
    (None, lambda m: m["rng"].update(numpy=[1, 2])),
    (None, lambda m: m["rng"].update(python="random")),
    (None, lambda m: m["rng"]["python"].__setitem__(1, [1, 2, 3])),
    (None, lambda m: m.update(rng=[])),
])
def test_random_generator_states_that_do_not_fit(saved, tensors_edit, meta_edit):
    """Refused whole: no generator is changed before the error."""
    path, _, _ = saved
    rewrite(path, meta=meta_edit and (lambda m: (meta_edit(m), None)[1]),
            tensors=tensors_edit and (lambda t: (tensors_edit(t), None)[1]))
    tensors, meta = load_state(path)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    generator = torch.Generator().manual_seed(5)
    with pytest.raises(CheckpointError, match="random") as error:
        set_rng_state(tensors, meta["rng"], {"noise": generator}, path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2] and torch.equal(generator.get_state(),
                                                          torch.Generator().manual_seed(5).get_state())


# ------------------------------------------------------------------ through a trainer and the command line

@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A one-step autoencoder run through the command line; returns its arguments."""
    out = tmp_path_factory.mktemp("vae") / "run"
    args = ["train-vae", "--out", str(out), "--steps", "1", "--batch-size", "2", "--preset", "tiny", "--device",
            "cpu", "--disc-start", "0"]
    assert main(args) == 0
    return args, out


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(step="1"), "step"),
    (lambda m: m.update(step=-1), "step"),
    (lambda m: m.update(step=True), "step"),
    (lambda m: m.pop("config"), "config"),
    (lambda m: m.update(config=[1]), "config"),
    (lambda m: m.pop("disc_optimizer"), "disc_optimizer"),
    (lambda m: m.update(optimizer=None), "optimizer"),
    (lambda m: m.pop("rng"), "rng"),
])
def test_resuming_from_edited_metadata_is_one_line(vae_run, tmp_path, capsys, edit, field):
    args, out = vae_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    rewrite(run / FILENAME, meta=lambda m: (edit(m), None)[1])
    capsys.readouterr()
    assert main([str(run) if a == str(out) else a for a in args] + ["--resume"]) == 2
    errors = capsys.readouterr().err.splitlines()
    lines = [line for line in errors if line.startswith("latentlab: error:")]
    assert len(lines) == 1 and str(run / FILENAME) in lines[0] and field in lines[0], errors[-3:]
    assert "Traceback" not in "\n".join(errors)
