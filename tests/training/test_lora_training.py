"""Training a LoRA on a tiny frozen model, on the CPU: only the adapters change, the loss falls, a resumed run
ends bit-identical to an uninterrupted one, prior preservation draws and caches its images once, and the
command writes a file the pipeline loads."""

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from latentlab.cli import main
from latentlab.pipeline import Pipeline
from latentlab.training.lora import LORA_FILENAME, LoRATrainConfig, LoRATrainer, train_lora
from latentlab.training.state import FILENAME, load_state

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


pytestmark = pytest.mark.usefixtures("one_thread")


def image_folder(root, n: int):
    """n captioned 32 px images: a coloured square on grey, a .txt caption beside each."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        pixels = np.full((32, 32, 3), 128, np.uint8)
        x, y = rng.integers(0, 16, 2)
        pixels[y:y + 16, x:x + 16] = COLOURS[colour]
        Image.fromarray(pixels).save(root / f"{i:02d}.png")
        (root / f"{i:02d}.txt").write_text(f"a large {colour} square")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("data") / "images", 8)


def config(model, images, out, **changes):
    settings = dict(data=str(images), out=str(out), model=str(model), steps=6, batch_size=2, lr=1e-3, warmup=2,
                    device="cpu", checkpoint_every=3)
    return LoRATrainConfig(**{**settings, **changes})


def base_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights but the adapters', named as before wrapping."""
    return {k.replace(".base.", "."): v.clone() for k, v in module.state_dict().items() if ".lora_" not in k}


def test_only_the_adapters_change(model, images, tmp_path):
    trainer = LoRATrainer(config(model, images, tmp_path / "run", steps=3, text_encoder_lora=True))
    pipe = trainer.pipe
    before = {name: base_weights(m) for name, m in (("unet", pipe.unet), ("text", pipe.text_encoder),
                                                    ("vae", pipe.vae))}
    assert all(p.dtype == torch.float32 and p.requires_grad for p in trainer.params)
    assert trainer.trainable_parameters == sum(p.numel() for p in trainer.params) > 0
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {id(p) for p in trainer.params}
    result = trainer.run()
    for name, m in (("unet", pipe.unet), ("text", pipe.text_encoder), ("vae", pipe.vae)):
        after = base_weights(m)
        assert after.keys() == before[name].keys()
        assert all(torch.equal(after[k], before[name][k]) for k in after), name
    assert all(p.grad is None for m in (pipe.unet, pipe.text_encoder, pipe.vae) for n, p in m.named_parameters()
               if ".lora_" not in n)
    trained_B = [p for n, p in pipe.unet.named_parameters() if ".lora_B." in n]
    assert any(p.abs().max() > 0 for p in trained_B)  # B starts at zero
    assert result["trainable_parameters"] == trainer.trainable_parameters
    assert result["file_bytes"] == (tmp_path / "run" / LORA_FILENAME).stat().st_size


def test_the_loss_falls_on_a_fixed_batch(tmp_path):
    """The shipped model (a random one passes too little signal to its attention layers for a quick test)
    fits its adapters to 2 images at 8 noise levels each."""
    data = image_folder(tmp_path / "two", 2)
    trainer = LoRATrainer(config("shapes-default", data, tmp_path / "run", rank=8, lr=1e-2, warmup=1, p_uncond=0.0))
    z_0, captions, _, _ = trainer.batch(0)
    T = trainer.pipe.diffusion.timesteps
    t = torch.linspace(5, T - 5, 8).long().repeat_interleave(2)  # 8 levels for each of the 2 images
    eps = torch.randn((16, *z_0.shape[1:]), generator=torch.Generator().manual_seed(1))
    fixed = (z_0.repeat(8, 1, 1, 1), captions * 8, t, eps)
    with torch.no_grad():
        first = trainer.loss(*fixed).item()
    trainer.batch = lambda step: fixed
    for step in range(25):
        trainer.train_step(step)
    with torch.no_grad():
        last = trainer.loss(*fixed).item()
    assert last < 0.7 * first, (first, last)  # 0.26 -> 0.12 when written


def test_channels_last_trains_the_same_adapters(model, images, tmp_path):
    """NHWC feature maps (the frozen base's convolutions; the adapters, convolutions' included, stay
    contiguous with their optimiser state) change the losses and the trained adapters by rounding only."""
    runs = []
    for channels_last in (False, True):
        trainer = LoRATrainer(config(model, images, tmp_path / f"run{channels_last}", unet_convolutions=True,
                                     text_encoder_lora=True, gradient_checkpointing=True,
                                     channels_last=channels_last))
        losses = [trainer.train_step(step).item() for step in range(3)]
        runs.append((losses, [p.detach().clone() for p in trainer.params], trainer))
    (losses0, params0, _), (losses1, params1, trainer) = runs
    conv = trainer.pipe.unet.conv_in
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.dim() == 4
    assert all(p.is_contiguous() for p in params1)
    assert np.allclose(losses0, losses1, rtol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(params0, params1))


@pytest.mark.parametrize("text_encoder_lora", [False, True])
def test_transformer_block_nodes_train_the_same_adapters(model, images, tmp_path, monkeypatch, text_encoder_lora):
    """With every map large enough for the lean layers, the U-Net's transformer blocks train as one node each
    (fast/frozen_transformer.py), also when the text carries a gradient (an adapted text encoder): the
    losses and the trained adapters are the modules'."""
    from latentlab.fast import activation_memory, frozen_transformer

    monkeypatch.setattr(activation_memory, "MIN_ELEMENTS", 0)
    node, calls = frozen_transformer._FrozenTransformerBlock, []
    monkeypatch.setattr(node, "apply", lambda *args, apply=node.apply: calls.append(1) or apply(*args))
    runs = []
    for fused in (True, False):
        monkeypatch.setattr(frozen_transformer, "ENABLED", fused)
        trainer = LoRATrainer(config(model, images, tmp_path / f"run{fused}", text_encoder_lora=text_encoder_lora))
        losses = [trainer.train_step(step).item() for step in range(3)]
        runs.append((losses, [p.detach().clone() for p in trainer.params]))
    (losses0, params0), (losses1, params1) = runs
    assert len(calls) >= 3  # a node per block and step, in the first run only
    assert np.allclose(losses0, losses1, rtol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params0, params1, strict=True))


def checkpoint_tensors(out) -> tuple[dict, dict]:
    tensors, meta = load_state(out / FILENAME)
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}, meta


def test_resumed_run_is_bit_identical_and_prior_images_are_drawn_once(model, images, tmp_path, monkeypatch):
    prior = dict(prior_prompts=("a small blue circle", "a red triangle"), prior_images=3, prior_steps=2,
                 dropout=0.1, text_encoder_lora=True)
    whole = train_lora(config(model, images, tmp_path / "whole", **prior))
    train_lora(config(model, images, tmp_path / "run", steps=4, **prior))  # checkpoints at 3 and at 4

    # the prior images: PNG + caption, prompt i mod P, and the same in both runs
    folder = tmp_path / "run" / "prior"
    assert sorted(p.name for p in folder.glob("0*")) == [f"{i:06d}.{e}" for i in range(3) for e in ("png", "txt")]
    assert [(folder / f"{i:06d}.txt").read_text().strip() for i in range(3)] == [
        "a small blue circle", "a red triangle", "a small blue circle"]
    assert all((folder / f"{i:06d}.png").read_bytes() == (tmp_path / "whole" / "prior" / f"{i:06d}.png").read_bytes()
               for i in range(3))

    def no_sampling(*args, **kwargs):
        raise AssertionError("a resumed run must read its prior images, not draw them again")

    monkeypatch.setattr(Pipeline, "sample", no_sampling)
    resumed = train_lora(config(model, images, tmp_path / "run", resume=True, **prior))
    assert resumed["steps"] == whole["steps"] == 6
    (a, meta_a), (b, meta_b) = checkpoint_tensors(tmp_path / "whole"), checkpoint_tensors(tmp_path / "run")
    assert meta_a["step"] == meta_b["step"] == 6 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("text_encoder.") for k in a) and any(k.startswith("optimizer.") for k in a)
    assert resumed["loss"] == whole["loss"]


def test_sigterm_saves_the_checkpoint_and_the_lora(model, images, tmp_path):
    trainer = LoRATrainer(config(model, images, tmp_path / "run", steps=50, checkpoint_every=100))
    step = trainer.train_step

    def step_then_signal(i):
        if i == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(i)

    trainer.train_step = step_then_signal
    result = trainer.run()
    assert result["interrupted"] and result["signal"] == "SIGTERM" and result["steps"] == 2
    assert load_state(tmp_path / "run" / FILENAME)[1]["step"] == 2 and (tmp_path / "run" / LORA_FILENAME).is_file()


def test_resuming_needs_the_same_settings(model, images, tmp_path):
    train_lora(config(model, images, tmp_path / "run", steps=1))
    with pytest.raises(ValueError, match=r"other settings \(rank\)"):
        train_lora(config(model, images, tmp_path / "run", rank=2, resume=True))


def test_command_writes_a_lora_the_pipeline_loads(model, images, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["lora", "train", "--model", str(model), "--data", str(images), "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--rank", "2", "--alpha", "4", "--unet-convolutions", "--device", "cpu"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["lora"] == str(out / LORA_FILENAME)
    assert result["file_bytes"] == (out / LORA_FILENAME).stat().st_size and result["trainable_parameters"] > 0
    from latentlab.io.lora_files import read_lora

    header = read_lora(out / LORA_FILENAME).metadata
    assert (header["base_model"], header["steps"], header["data"]) == (str(model), "2", str(images))
    assert (json.loads(header["rank"]), json.loads(header["alpha"])) == (2, 4.0)
    assert "conv1" in json.loads(header["target_patterns"])["unet"]
    if not hasattr(Pipeline, "load_lora"):
        pytest.skip("Pipeline.load_lora is not written yet; the file itself was written and sized")
    pipe = Pipeline.load(model, device="cpu")
    base = pipe.sample(["a large red square"], steps=2, seed=0)
    pipe.load_lora(out / LORA_FILENAME)
    assert not torch.equal(pipe.sample(["a large red square"], steps=2, seed=0), base)


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/nowhere"], "no image folder at"),
    (["--rank", "0"], "must be greater than 0"),
    (["--targets", "no_such_layer"], "matches the LoRA targets"),
    (["--targets", "("], "is not a regular expression"),
    (["--resume"], "does not exist; start the run without --resume"),
    (["--compile", "fastest"], "unknown compile mode 'fastest'; accepted: default, reduce-overhead"),
])
def test_bad_input_is_one_line_and_status_2(model, images, tmp_path, capsys, args, message):
    argv = ["lora", "train", "--model", str(model), "--data", str(images), "--out", str(tmp_path / "run"),
            "--steps", "1", "--device", "cpu"] + [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("latentlab: error:")]
    assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize("args, compiled, mode", [([], False, "default"), (["--compile"], True, "default"),
                                                  (["--compile", "reduce-overhead"], True, "reduce-overhead")])
def test_compile_takes_an_optional_mode(monkeypatch, images, tmp_path, args, compiled, mode):
    configs = []
    monkeypatch.setattr("latentlab.training.lora.train_lora", lambda c: configs.append(c) or {"interrupted": False})
    assert main(["lora", "train", "--data", str(images), "--out", str(tmp_path / "run")] + args) == 0
    assert (configs[0].compile, configs[0].compile_mode) == (compiled, mode)


def test_channels_last_flag(monkeypatch, images, tmp_path):
    configs = []
    monkeypatch.setattr("latentlab.training.lora.train_lora", lambda c: configs.append(c) or {"interrupted": False})
    for args in ([], ["--channels-last"]):
        assert main(["lora", "train", "--data", str(images), "--out", str(tmp_path / "run")] + args) == 0
    assert [c.channels_last for c in configs] == [False, True]


def test_resuming_does_not_depend_on_how_the_paths_are_spelled(model, images, tmp_path, monkeypatch):
    """A symlinked base model, a copied data folder, a moved run folder: the same run resumes. Data with one
    caption changed is other data, refused naming the setting."""
    from latentlab.errors import CheckpointError

    monkeypatch.chdir(tmp_path)
    train_lora(config(model, images, "run", steps=1))
    shutil.copytree(images, "images")
    os.symlink(model, "model")
    shutil.move("run", "moved")
    (tmp_path / "moved" / ".lora.safetensors.0123456789ab.tmp").write_bytes(b"half a file")
    assert train_lora(config("model", "./images", "moved", steps=2, resume=True))["steps"] == 2
    assert not list((tmp_path / "moved").glob("*.tmp"))  # what a kill left is gone
    (tmp_path / "images" / "03.txt").write_text("a large purple square")
    with pytest.raises(CheckpointError, match=r"other settings \(data: other contents\)"):
        train_lora(config(model, "images", "moved", steps=3, resume=True))


def test_sigterm_on_a_run_that_turned_nan_saves_nothing(model, images, tmp_path):
    """Stopped by SIGTERM after its adapters turned NaN: no checkpoint and no LoRA file of them; the last good
    checkpoint stays."""
    from latentlab.errors import LatentlabError

    trainer = LoRATrainer(config(model, images, tmp_path / "run", steps=50, checkpoint_every=2))
    step = trainer.train_step

    def poisoned_then_signal(i):
        loss = step(i)
        if i == 2:
            with torch.no_grad():
                trainer.params[0].fill_(float("nan"))
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    trainer.train_step = poisoned_then_signal
    with pytest.raises(LatentlabError, match="weights became NaN or infinite by step 3"):
        trainer.run()
    assert load_state(tmp_path / "run" / FILENAME)[1]["step"] == 2
    assert not (tmp_path / "run" / LORA_FILENAME).exists()


@pytest.mark.parametrize("setting", ["lr", "prior_weight", "p_uncond", "alpha", "dropout", "weight_decay"])
def test_settings_that_are_not_finite_are_refused(images, tmp_path, setting):
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"{setting} must be a finite number"):
            config("shapes-default", images, tmp_path / "run", **{setting: value})
