"""Every adapter kind `lora train --method` trains, on a tiny frozen model on the CPU: only that kind's tensors
change, the loss is finite, the result loads into a fresh pipeline and changes its samples, a run stopped or
killed and resumed ends bit-identical to an uninterrupted one, and bad methods and options are one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentlab.adapters import inject
from latentlab.cli import main
from latentlab.errors import LatentlabError
from latentlab.pipeline import Pipeline
from latentlab.training.lora import METHODS, LoRATrainConfig, LoRATrainer, check_config, train_lora
from latentlab.training.state import FILENAME, load_state, save_state

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = {"lora": "LoRA", "dora": "DoRA", "loha": "LoHa", "lokr": "LoKr", "bottleneck": "bottleneck",
          "prefix": "prefix"}  # each method's adapter layers
PROMPT = "a large red square"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """8 captioned 32 px images: a coloured square on grey."""
    root = tmp_path_factory.mktemp("data") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        colour, rgb = [("red", (220, 40, 40)), ("blue", (40, 60, 220))][i % 2]
        pixels = np.full((32, 32, 3), 128, np.uint8)
        x, y = rng.integers(0, 16, 2)
        pixels[y:y + 16, x:x + 16] = rgb
        Image.fromarray(pixels).save(root / f"{i:02d}.png")
        (root / f"{i:02d}.txt").write_text(f"a large {colour} square")
    return root


def config(model, images, out, **changes):
    settings = dict(data=str(images), out=str(out), model=str(model), steps=6, batch_size=2, lr=1e-3, warmup=2,
                    device="cpu", checkpoint_every=3)
    return LoRATrainConfig(**{**settings, **changes})


def sample(pipe: Pipeline) -> torch.Tensor:
    return pipe.sample([PROMPT], steps=2, seed=0)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_only_its_adapters_and_its_file_changes_the_samples(model, images, tmp_path, method):
    trainer = LoRATrainer(config(model, images, tmp_path / "run", method=method, steps=2, text_encoder_lora=True))
    networks = (trainer.pipe.unet, trainer.pipe.text_encoder, trainer.pipe.vae)
    layers = [layer for m in networks for _, layer in inject.adapter_layers(m)]
    assert layers and {layer.label for layer in layers} == {LABELS[method]}
    assert {id(p) for m in networks for p in m.parameters() if p.requires_grad} == {id(p) for p in trainer.params}
    result = trainer.run()
    assert np.isfinite(result["loss"]) and result["lora"] == str(tmp_path / "run" / f"{method}.safetensors")
    assert result["file_bytes"] == (tmp_path / "run" / f"{method}.safetensors").stat().st_size
    if method == "prefix":  # frozen: its keys and values, not the MLP that trained them
        assert all(k.endswith(".prefix.kv") for k in load_file(result["lora"]))

    fresh = Pipeline.load(model, device="cpu")
    for m in networks:  # unwrapped, the networks are the base model's, bit for bit
        inject.remove(m)
    for mine, base in zip(networks, (fresh.unet, fresh.text_encoder, fresh.vae)):
        a, b = mine.state_dict(), base.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    before = sample(fresh)
    fresh.load_adapter(result["lora"])
    assert not torch.equal(sample(fresh), before)


def crash_at(trainer, crash_step: int):
    """The trainer's steps, raising at `crash_step` as a kill would stop it: no checkpoint written then."""
    step = trainer.train_step

    def crashing(i):
        if i == crash_step:
            raise RuntimeError("killed")
        return step(i)

    trainer.train_step = crashing


@pytest.mark.parametrize("method, stop, keys", [("loha", "kill", ".hada_w2_b"), ("prefix", "stop", ".prefix.mlp.")])
def test_a_resumed_run_is_bit_identical(model, images, tmp_path, method, stop, keys):
    """LoHa killed after its checkpoint at step 3; prefix stopped at step 4, its result frozen, resumed from a
    checkpoint that kept the MLP."""
    whole = train_lora(config(model, images, tmp_path / "whole", method=method))
    if stop == "kill":
        trainer = LoRATrainer(config(model, images, tmp_path / "run", method=method))
        crash_at(trainer, 4)
        with pytest.raises(RuntimeError, match="killed"):
            trainer.run()
    else:
        train_lora(config(model, images, tmp_path / "run", method=method, steps=4))
    assert load_state(tmp_path / "run" / FILENAME)[1]["step"] == (3 if stop == "kill" else 4)
    resumed = train_lora(config(model, images, tmp_path / "run", method=method, resume=True))
    assert resumed["steps"] == 6 and resumed["loss"] == whole["loss"]
    (a, _), (b, _) = load_state(tmp_path / "whole" / FILENAME), load_state(tmp_path / "run" / FILENAME)
    assert a.keys() == b.keys() and any(keys in k for k in a) and any(k.startswith("optimizer.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng."))
    result_a, result_b = load_file(whole["lora"]), load_file(resumed["lora"])
    assert result_a.keys() == result_b.keys() and all(torch.equal(result_a[k], result_b[k]) for k in result_a)


def test_a_lora_checkpoint_from_before_the_methods_resumes(model, images, tmp_path):
    """A checkpoint whose config lacks the settings added with the methods ran with their defaults."""
    train_lora(config(model, images, tmp_path / "run", steps=1))
    tensors, meta = load_state(tmp_path / "run" / FILENAME)
    added = ("method", "tucker", "lokr_factor", "lokr_decompose_both", "width", "placement", "activation",
             "prefix_length", "prefix_hidden")
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in added}
    save_state(tmp_path / "run" / FILENAME, tensors, meta)
    assert train_lora(config(model, images, tmp_path / "run", steps=2, resume=True))["steps"] == 2


@pytest.mark.parametrize("method", METHODS)
def test_transformer_block_nodes_train_every_method_the_same(model, images, tmp_path, monkeypatch, method):
    """With every map large enough for the speed wing's one-node transformer blocks (which fuse plain LoRA
    only), each method trains as the modules do."""
    from latentlab.fast import activation_memory, frozen_transformer

    monkeypatch.setattr(activation_memory, "MIN_ELEMENTS", 0)
    runs = []
    for fused in (True, False):
        monkeypatch.setattr(frozen_transformer, "ENABLED", fused)
        trainer = LoRATrainer(config(model, images, tmp_path / f"run{fused}", method=method))
        runs.append([trainer.train_step(step).item() for step in range(2)])
    assert np.allclose(*runs, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_on_cuda_and_its_file_gives_the_same_unet_on_the_cpu(model, images, tmp_path, method):
    """On CUDA the frozen base is bfloat16 under autocast and the speed wing's nodes run: each method trains, and
    the U-Net it trained gives what its file gives the float32 model on the CPU, within bfloat16's precision."""
    trainer = LoRATrainer(config(model, images, tmp_path / "run", method=method, steps=3, device="cuda"))
    result = trainer.run()
    assert np.isfinite(result["loss"])
    cpu = Pipeline.load(model, device="cpu")
    cpu.load_adapter(result["lora"])
    g = torch.Generator().manual_seed(0)
    c = cpu.unet.config
    x, t = torch.randn(2, c.in_channels, 16, 16, generator=g), torch.tensor([10, 60])
    context = torch.randn(2, 8, c.context_dim, generator=g)
    with torch.no_grad():
        want = cpu.unet.eval()(x, t, context)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = trainer.pipe.unet.eval()(x.cuda(), t.cuda(), context.cuda()).float().cpu()
    assert (got - want).norm() <= 2e-2 * want.norm()


# ------------------------------------------------------------------ the command line


def test_commands_train_generate_and_merge_with_any_method(model, images, tmp_path, capsys):
    """`lora train --method loha` writes loha.safetensors; `generate --adapter` uses it beside a bottleneck;
    `lora merge --adapter` folds LoHa into the weights and refuses the bottleneck in one line."""
    files = {}
    for method in ("loha", "bottleneck"):
        out = tmp_path / method
        assert main(["lora", "train", "--model", str(model), "--data", str(images), "--out", str(out), "--steps", "2",
                     "--batch-size", "2", "--method", method, "--device", "cpu", "--lr", "1e-2"]
                    + (["--width", "4", "--placement", "feed_forward"] if method == "bottleneck" else [])) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        files[method] = result["lora"]
        assert result["lora"] == str(out / f"{method}.safetensors") and result["steps"] == 2
    assert main(["generate", PROMPT, "--model", str(model), "--steps", "2", "--device", "cpu", "--out",
                 str(tmp_path / "images"), "--adapter", f"{files['loha']}:0.5", "--adapter", files["bottleneck"]]) == 0
    assert (tmp_path / "images" / "grid.png").is_file()

    merged = tmp_path / "merged"
    assert main(["lora", "merge", "--model", str(model), "--adapter", files["loha"], "--out", str(merged),
                 "--device", "cpu"]) == 0
    pipe = Pipeline.load(model, device="cpu")
    pipe.load_adapter(files["loha"])
    assert (sample(Pipeline.load(merged, device="cpu")) - sample(pipe)).abs().max() < 1e-4
    capsys.readouterr()
    assert main(["lora", "merge", "--model", str(model), "--adapter", files["bottleneck"], "--out",
                 str(tmp_path / "refused"), "--device", "cpu"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("latentlab: error:")]
    assert len(errors) == 1 and "bottleneck adapters, which are not weights" in errors[0], errors
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("args, message", [
    (["--method", "adalora"], "invalid choice: 'adalora'"),
    (["--width", "8"], "width is an option of method bottleneck, not lora"),
    (["--method", "bottleneck", "--rank", "8"], "rank is an option of method lora, dora, loha, lokr, not bottleneck"),
    (["--method", "prefix", "--unet-convolutions"], "unet_convolutions is an option of method lora, dora, loha"),
    (["--method", "lokr", "--lokr-factor", "0"], "lokr_factor must be -1 or positive, got 0"),
    (["--method", "bottleneck", "--placement", "everywhere"], "invalid choice: 'everywhere'"),
    (["--method", "prefix", "--prefix-length", "0"], "must be greater than 0"),
])
def test_bad_methods_and_options_are_one_line_and_status_2(model, images, tmp_path, capsys, args, message):
    argv = ["lora", "train", "--model", str(model), "--data", str(images), "--out", str(tmp_path / "run"),
            "--steps", "1", "--device", "cpu"] + args
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("latentlab: error:")]
    assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize("changes, message", [
    (dict(method="adalora"), "unknown method 'adalora'; accepted: lora, dora, loha, lokr, bottleneck, prefix"),
    (dict(method="dora", tucker=True), "tucker is an option of method loha, lokr, not dora"),
    (dict(method="bottleneck", placement=("nowhere",)), "unknown placement ['nowhere']; accepted: self_attention"),
    (dict(method="bottleneck", activation="tanh"), "unknown activation 'tanh'; accepted: gelu"),
    (dict(method="bottleneck", width=0), "width must be a positive integer, got 0"),
    (dict(method="bottleneck", placement=("cross_attention",), text_encoder_lora=True),
     "the text encoder has no cross-attention"),
    (dict(method="prefix", prefix_hidden=0), "prefix_length and prefix_hidden must be positive"),
])
def test_bad_settings_are_refused_before_any_model_is_loaded(images, tmp_path, changes, message):
    with pytest.raises(LatentlabError) as raised:
        check_config(config("no-such-model", images, tmp_path / "run", **changes))
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_the_options_of_the_method_given_keep_other_defaults(images, tmp_path):
    """Options given as lists (as from Python) compare with their tuple defaults."""
    check_config(config("no-such-model", images, tmp_path / "run", method="bottleneck",
                        targets=["to_q", "to_k", "to_v", "to_out.0"]))
