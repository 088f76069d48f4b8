"""C-LoRA's self-regularisation (training/continual.py) on the tiny U-Net."""

import dataclasses
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from latentlab.adapters import add_lora
from latentlab.data.concept import write_concept_folder
from latentlab.adapters.inject import adapter_layers, merge
from latentlab.cli import main
from latentlab.errors import LatentlabError
from latentlab.models import UNet
from latentlab.pipeline import Pipeline
from latentlab.training.continual import (FULL_FILENAME, TARGETS, ContinualConfig, ContinualFullTrainer,
                                          ContinualTaskTrainer, forgetting_penalty, summed_updates, task_trainer,
                                          train_sequence)
from latentlab.training.state import FILENAME, digest, load_state
from latentlab.training.textual_inversion import EMBEDDING_FILENAME
from latentlab.training.presets import preset


def unet_after_tasks(n=2):
    """The tiny U-Net with n earlier tasks' updates (random) on K and V, merged, and their summed update P."""
    torch.manual_seed(0)
    unet = UNet(preset("tiny", "unet")).requires_grad_(False)
    before = {name: m.weight.clone() for name, m in unet.named_modules() if name.endswith(TARGETS)}
    for k in range(1, n + 1):
        add_lora(unet, f"task{k}", rank=2, alpha=4, targets=TARGETS)
        with torch.no_grad():
            for _, layer in adapter_layers(unet):
                layer.lora_B[f"task{k}"].weight.normal_(std=0.1)
        merge(unet, f"task{k}")
    return unet, before, summed_updates(unet, [f"task{k}" for k in range(1, n + 1)])


def test_the_past_is_the_earlier_tasks_summed_updates_on_the_cross_attentions_k_and_v():
    unet, before, past = unet_after_tasks()
    assert past.keys() == before.keys() and all(name.endswith(("attn2.to_k", "attn2.to_v")) for name in past)
    layers = dict(adapter_layers(unet))
    for name, p in past.items():
        torch.testing.assert_close(layers[name].base.weight - before[name], p, rtol=1e-5, atol=1e-6)  # merged
        assert p.abs().sum() > 0 and not p.requires_grad


def test_the_penalty_is_the_squared_element_wise_product_of_the_past_and_the_new_update():
    unet, _, past = unet_after_tasks()
    add_lora(unet, "task3", rank=3, alpha=3, targets=TARGETS)
    with torch.no_grad():
        for _, layer in adapter_layers(unet):
            layer.lora_B["task3"].weight.normal_(std=0.1)
    expected = 0.0
    for name, layer in adapter_layers(unet):
        A, B = layer.lora_A["task3"].weight.double(), layer.lora_B["task3"].weight.double()
        expected += ((past[name].double() * (B @ A)) ** 2).sum().item()  # alpha / r = 1
    assert forgetting_penalty(unet, past, "task3").item() == pytest.approx(expected, rel=1e-5)


def test_the_first_task_has_no_past_and_a_zero_past_costs_nothing():
    unet = UNet(preset("tiny", "unet")).requires_grad_(False)
    add_lora(unet, "task1", rank=2, targets=TARGETS)
    assert summed_updates(unet, []) == {}
    zeros = {name: torch.zeros_like(layer.base.weight) for name, layer in adapter_layers(unet)}
    penalty = forgetting_penalty(unet, zeros, "task1")
    penalty.backward()
    assert penalty.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for _, layer in adapter_layers(unet)
               for p in (layer.lora_A["task1"].weight, layer.lora_B["task1"].weight))


def test_the_new_update_is_free_where_the_past_left_the_weight_alone():
    """dL/dDelta W = 2 P^2 (.) Delta W: rows of K and V the earlier tasks never changed get no gradient in B."""
    unet, _, past = unet_after_tasks(1)
    for p in past.values():
        p[: p.shape[0] // 2] = 0  # the first half of each layer's outputs untouched by task 1
    add_lora(unet, "task2", rank=2, targets=TARGETS)
    with torch.no_grad():
        for _, layer in adapter_layers(unet):
            layer.lora_B["task2"].weight.normal_(std=0.1)
    forgetting_penalty(unet, past, "task2").backward()
    for _, layer in adapter_layers(unet):
        grad, half = layer.lora_B["task2"].weight.grad, layer.lora_B["task2"].weight.shape[0] // 2
        assert not grad[:half].any() and grad[half:].abs().sum() > 0


def test_a_missing_adapter_is_refused():
    unet, _, past = unet_after_tasks(1)
    with pytest.raises(LatentlabError, match="no layer of the model holds adapter 'task9'"):
        forgetting_penalty(unet, past, "task9")


# ---------------------------------------------------------------- a sequence of tasks on the tiny model

SEQUENCE_TOKENS = ("<cyan>", "<diamond>")


@pytest.fixture(scope="module")
def concept_folders(tmp_path_factory):
    """Two tasks: eight captioned cyan objects, then eight diamonds (concept.json names each word)."""
    root = tmp_path_factory.mktemp("tasks")
    return [write_concept_folder(root / c, c, count=8) for c in ("cyan", "diamond")]


def sequence(model, folders, out, **changes):
    settings = dict(tasks=tuple(map(str, folders)), out=str(out), model=str(model), rank=2, steps=4, batch_size=2,
                    lr=1e-2, device="cpu", checkpoint_every=2, forget_weight=1e6)
    return ContinualConfig(**{**settings, **changes})


def checkpoint_tensors(run):
    return load_state(run / FILENAME)[0]


@pytest.fixture(scope="module")
def whole(model, concept_folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    return out, train_sequence(sequence(model, concept_folders, out))


@pytest.mark.usefixtures("one_thread")
def test_each_task_writes_its_update_of_k_and_v_and_its_token(model, whole):
    out, result = whole
    assert not result["interrupted"] and [r["token"] for r in result["tasks"]] == list(SEQUENCE_TOKENS)
    pipe = Pipeline.load(model, device="cpu")
    for k, token in enumerate(SEQUENCE_TOKENS, start=1):
        assert pipe.load_textual_inversion(out / f"task-{k}" / EMBEDDING_FILENAME) == token
        pipe.load_lora(out / f"task-{k}" / "lora.safetensors", name=f"task{k}")  # the base model's file
    layers = dict(adapter_layers(pipe.unet))
    assert layers and all(name.endswith(("attn2.to_k", "attn2.to_v")) for name in layers)
    assert all(set(layer.adapters) == {"task1", "task2"} for layer in layers.values())


@pytest.mark.usefixtures("one_thread")
def test_the_token_trains_at_a_rate_of_its_own(model, concept_folders, tmp_path):
    from latentlab.training.continual import task_config

    c = sequence(model, concept_folders, tmp_path / "seq", lr=1e-3, token_lr=5e-3)
    trainer = ContinualTaskTrainer(task_config(c, 1), earlier=[], word="cyan", forget_weight=0.0, token_lr=5e-3)
    groups = trainer.optimizer.param_groups
    assert [g["base_lr"] for g in groups] == [1e-3, 5e-3] and groups[1]["params"] == [trainer.vectors]
    assert len(groups[0]["params"]) == len(trainer.params) - 1
    assert all(p is not trainer.vectors for p in groups[0]["params"])
    trainer.train_step(0)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 / 50, 5e-3 / 50])  # the warm-up's first step


@pytest.mark.usefixtures("one_thread")
def test_the_second_task_is_penalised_by_the_first_and_lambda_keeps_them_apart(model, concept_folders, whole,
                                                                                  tmp_path):
    """lambda = 0 (the ablation) against 1e6: task 2's update overlaps task 1's far less with the penalty."""
    out, _ = whole
    free = tmp_path / "free"
    train_sequence(sequence(model, concept_folders, free, forget_weight=0.0))

    def overlap(run):
        pipe = Pipeline.load(model, device="cpu")
        for k in (1, 2):
            pipe.load_lora(run / f"task-{k}" / "lora.safetensors", name=f"task{k}")
        past = summed_updates(pipe.unet, ["task1"])
        return forgetting_penalty(pipe.unet, past, "task2").item()

    assert overlap(out) < 0.5 * overlap(free)


@pytest.mark.usefixtures("one_thread")
def test_a_stopped_sequence_resumes_exactly(model, concept_folders, whole, tmp_path, monkeypatch):
    """SIGTERM at task 2's third step, then resume: every file as the uninterrupted sequence's, bit for bit."""
    out, _ = whole
    step = ContinualTaskTrainer.train_step

    def step_then_signal(self, i):
        if self.token == "<diamond>" and i == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, i)

    monkeypatch.setattr(ContinualTaskTrainer, "train_step", step_then_signal)
    stopped = train_sequence(sequence(model, concept_folders, tmp_path / "run"))
    assert stopped["interrupted"] and len(stopped["tasks"]) == 1
    monkeypatch.setattr(ContinualTaskTrainer, "train_step", step)
    resumed = train_sequence(sequence(model, concept_folders, tmp_path / "run", resume=True))
    assert not resumed["interrupted"] and len(resumed["tasks"]) == 2
    for k in (1, 2):
        a, b = checkpoint_tensors(out / f"task-{k}"), checkpoint_tensors(tmp_path / "run" / f"task-{k}")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        for name in ("lora.safetensors", EMBEDDING_FILENAME):
            x, y = load_file(out / f"task-{k}" / name), load_file(tmp_path / "run" / f"task-{k}" / name)
            assert x.keys() == y.keys() and all(torch.equal(x[key], y[key]) for key in x)


@pytest.mark.usefixtures("one_thread")
def test_bad_sequences_are_refused_in_one_line(model, concept_folders, whole, tmp_path):
    out, _ = whole
    with pytest.raises(LatentlabError, match="'cyan' names more than one task"):
        train_sequence(sequence(model, [concept_folders[0]] * 2, tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentlabError, match="no concept.json"):
        train_sequence(sequence(model, [tmp_path / "empty"], tmp_path / "b"))
    with pytest.raises(LatentlabError, match="no images in"):
        train_sequence(sequence(model, [tmp_path / "empty"], tmp_path / "c", words=("pink",)))
    with pytest.raises(LatentlabError, match="no caption of .* holds the word 'pink'"):
        train_sequence(sequence(model, concept_folders[:1], tmp_path / "d", words=("pink",)))
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()  # nothing written
    with pytest.raises(LatentlabError, match="another sequence's"):
        train_sequence(sequence(model, concept_folders[:1], out, resume=True))
    with pytest.raises(LatentlabError, match="already holds a sequence"):
        train_sequence(sequence(model, concept_folders, out))


@pytest.mark.usefixtures("one_thread")
def test_the_command_trains_a_sequence_and_refuses_a_repeated_word(model, concept_folders, tmp_path, capsys):
    tasks = [arg for folder in concept_folders for arg in ("--task", str(folder))]
    options = ["--model", str(model), "--steps", "2", "--batch-size", "2", "--rank", "2", "--device", "cpu"]
    assert main(["continual", "train", *tasks, "--out", str(tmp_path / "seq"), *options]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["token"] for r in result["tasks"]] == list(SEQUENCE_TOKENS) and not result["interrupted"]
    files = [arg for r in result["tasks"] for arg in ("--adapter", r["lora"], "--embedding", r["embedding"])]
    assert main(["generate", "a large <cyan> <diamond>", *files, "--model", str(model), "--steps", "2",
                 "--device", "cpu", "--out", str(tmp_path / "images")]) == 0
    assert len(list((tmp_path / "images").glob("*.png"))) >= 1
    assert main(["generate", "a large <cyan> <diamond>", "--sequence", str(tmp_path / "seq"), "--model", str(model),
                 "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "from-sequence")]) == 0
    assert len(list((tmp_path / "from-sequence").glob("*.png"))) >= 1
    capsys.readouterr()
    assert main(["continual", "eval", str(tmp_path / "seq"), "--prompts", "2", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert [len(row) for row in report["matrix"]] == [1, 2] and len(report["ordinary"]) == 2
    assert report["words"] == list(SEQUENCE_TOKENS) and report["concepts"] == ["cyan", "diamond"]
    assert list(report["pairs"][1]) == ["cyan diamond"] and report["pairs"][0] == {} and report["combined"][0] is None
    assert "average forgetting" in capsys.readouterr().out
    assert main(["continual", "train", *tasks, "--word", "cyan", "--word", "cyan", "--out", str(tmp_path / "b"),
                 *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cyan' names more than one task" in err


# ---------------------------------------------------------------- the baselines


@pytest.mark.usefixtures("one_thread")
def test_naive_sequential_lora_keeps_the_words_and_learns_no_token(model, concept_folders, tmp_path):
    result = train_sequence(sequence(model, concept_folders, tmp_path / "naive", method="lora"))
    assert [r["word"] for r in result["tasks"]] == ["cyan", "diamond"]
    for k in (1, 2):
        assert (tmp_path / "naive" / f"task-{k}" / "lora.safetensors").is_file()
        assert not (tmp_path / "naive" / f"task-{k}" / EMBEDDING_FILENAME).exists()
    trainer = task_trainer(sequence(model, concept_folders, tmp_path / "naive", method="lora"), 2, "diamond")
    assert trainer.token is None and trainer.forget_weight == 0.0 and set(trainer.past) and not trainer.text_trains
    layers = [layer for _, layer in adapter_layers(trainer.pipe.unet)]  # task 1 kept beside the new one, frozen and
    assert layers and all(not layer.merged and not layer.lora_A["task1"].weight.requires_grad for layer in layers)
    assert all(layer.lora_A["default"].weight.requires_grad for layer in layers)  # unmerged: W0 as it was
    assert any("diamond" in text for text in trainer.batch(0)[1]) and not any("<" in t for t in trainer.batch(0)[1])


@pytest.mark.usefixtures("one_thread")
def test_separate_loras_each_start_from_the_base_model(model, concept_folders, tmp_path):
    c = sequence(model, concept_folders, tmp_path / "separate", method="separate")
    train_sequence(c)
    trainer = task_trainer(c, 2, "diamond")
    assert trainer.earlier == [] and trainer.past == {} and trainer.token == "<diamond>"
    base = Pipeline.load(model, device="cpu")
    assert trainer.identity["model"] == digest(base.text_encoder, base.unet, base.vae,
                                               dataclasses.asdict(base.diffusion))


@pytest.mark.usefixtures("one_thread")
def test_sequential_full_fine_tuning_trains_every_unet_weight_from_the_last_task(model, concept_folders, tmp_path,
                                                                                  monkeypatch):
    """Each task writes its whole U-Net; task 2 starts from task 1's; a stop in task 2 resumes exactly."""
    c = sequence(model, concept_folders, tmp_path / "full", method="full", lr=1e-3)
    train_sequence(c)
    base, first, second = (Pipeline.load(model, device="cpu").unet.state_dict(),
                           *(load_file(tmp_path / "full" / f"task-{k}" / FULL_FILENAME) for k in (1, 2)))
    assert first.keys() == dict(Pipeline.load(model, device="cpu").unet.named_parameters()).keys()
    assert any(not torch.equal(first[k], base[k]) for k in first)
    trainer = task_trainer(c, 2, "diamond")
    assert trainer.trainable_parameters == sum(v.numel() for v in first.values())
    assert all(torch.equal(p, first[k]) for k, p in trainer.pipe.unet.named_parameters())
    step = ContinualFullTrainer.train_step

    def step_then_signal(self, i):
        if self.word == "diamond" and i == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, i)

    monkeypatch.setattr(ContinualFullTrainer, "train_step", step_then_signal)
    assert train_sequence(sequence(model, concept_folders, tmp_path / "again", method="full", lr=1e-3))["interrupted"]
    monkeypatch.setattr(ContinualFullTrainer, "train_step", step)
    train_sequence(sequence(model, concept_folders, tmp_path / "again", method="full", lr=1e-3, resume=True))
    again = load_file(tmp_path / "again" / "task-2" / FULL_FILENAME)
    assert all(torch.equal(again[k], second[k]) for k in second)


@pytest.mark.usefixtures("one_thread")
def test_a_separate_sequence_is_measured_one_file_at_a_time(model, concept_folders, tmp_path):
    from latentlab.evaluation.continual import sequence_report

    train_sequence(sequence(model, concept_folders, tmp_path / "separate", method="separate"))
    report = sequence_report(tmp_path / "separate", prompts=2, pair_prompts=2, steps=2, device="cpu")
    assert report["method"] == "separate" and report["matrix"][1][0] == report["matrix"][0][0]
    assert report["ordinary"] == [report["ordinary_base"]] * 2 and list(report["pairs"][1]) == ["cyan diamond"]


def test_an_unknown_method_is_refused():
    with pytest.raises(LatentlabError, match="unknown continual method 'ewc'; accepted: c-lora, lora, full"):
        ContinualConfig(tasks=("a",), out="b", method="ewc")


def test_the_targets_given_replace_the_default_ones():
    from latentlab.cli import build_parser

    args = build_parser().parse_args(["continual", "train", "--task", "a", "--out", "b", "--target", "to_q"])
    assert args.targets == ["to_q"]
    assert build_parser().parse_args(["continual", "train", "--task", "a", "--out", "b"]).targets == list(TARGETS)
