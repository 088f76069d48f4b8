import dataclasses
import math

import pytest
import torch

from latentlab import Pipeline
from latentlab.diffusion import DiffusionConfig
from latentlab.models import UNet
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.images import image_grid
from latentlab.pipeline import default_model_path

PROMPTS = ["a large red circle on the left", "a small blue square at the top"]


def test_sample_shapes_and_pil_output(tiny_pipeline):
    images = tiny_pipeline.sample(PROMPTS, steps=3)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1
    pil = tiny_pipeline(PROMPTS, steps=3)
    assert [im.size for im in pil] == [(32, 32)] * 2 and pil[0].mode == "RGB"
    assert image_grid(pil, columns=2, scale=2).size == (128, 64)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "heun", "dpmpp_2m"])
def test_sampling_is_deterministic_for_a_seed(tiny_pipeline, sampler):
    a = tiny_pipeline.sample(PROMPTS, steps=4, seed=7, sampler=sampler)
    b = tiny_pipeline.sample(PROMPTS, steps=4, seed=7, sampler=sampler)
    c = tiny_pipeline.sample(PROMPTS, steps=4, seed=8, sampler=sampler)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_an_image_does_not_depend_on_the_rest_of_the_batch(tiny_pipeline):
    both = tiny_pipeline.sample(PROMPTS, steps=3, seed=5)
    alone = tiny_pipeline.sample(PROMPTS[:1], steps=3, seed=5)
    assert torch.allclose(both[0], alone[0], atol=1e-5)


def test_guidance_and_prompts_change_the_image(tiny_pipeline):
    base = tiny_pipeline.sample(PROMPTS[:1], steps=3, guidance=4.0)
    assert (base - tiny_pipeline.sample(PROMPTS[:1], steps=3, guidance=1.0)).abs().max() > 1e-3
    assert (base - tiny_pipeline.sample(PROMPTS[1:], steps=3, guidance=4.0)).abs().max() > 1e-3


def test_save_and_load_round_trip(tiny_pipeline, tmp_path):
    tiny_pipeline.save(tmp_path / "model")
    loaded = Pipeline.load(tmp_path / "model", device="cpu")
    assert torch.equal(tiny_pipeline.sample(PROMPTS, steps=3), loaded.sample(PROMPTS, steps=3))
    tiny_pipeline.save(tmp_path / "half", dtype=torch.float16)
    half = Pipeline.load(tmp_path / "half", device="cpu")
    assert torch.allclose(tiny_pipeline.sample(PROMPTS, steps=3), half.sample(PROMPTS, steps=3), atol=0.05)


def test_bad_requests(tiny_pipeline):
    with pytest.raises(LatentlabError, match="no prompts"):
        tiny_pipeline.sample([])
    with pytest.raises(LatentlabError, match="image size 30 is not accepted: use a multiple of 8"):
        tiny_pipeline.sample(PROMPTS, size=30)
    with pytest.raises(ValueError, match="unknown sampler"):
        tiny_pipeline.sample(PROMPTS, sampler="lms")
    with pytest.raises(LatentlabError, match="takes no option 'variance'"):
        tiny_pipeline.sample(PROMPTS, sampler="ddim", variance="large")
    with pytest.raises(LatentlabError, match="needs a model trained with a learned variance"):
        tiny_pipeline.sample(PROMPTS, sampler="ddpm", variance="learned")


def learned_variance_pipeline(pipe: Pipeline, prediction: str = "eps") -> Pipeline:
    """The tiny pipeline with a U-Net that also outputs its variance."""
    config = dataclasses.replace(pipe.unet.config, out_channels=2 * pipe.unet.config.out_channels)
    torch.manual_seed(0)
    unet = UNet(config).eval()
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    diffusion = DiffusionConfig(schedule="linear", timesteps=100, prediction=prediction, learned_variance=True)
    return Pipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=unet, vae=pipe.vae,
                    diffusion=diffusion, image_size=32)


def test_a_learned_variance_model_samples_and_round_trips(tiny_pipeline, tmp_path):
    pipe = learned_variance_pipeline(tiny_pipeline, "v")
    assert pipe.check_sampler("ddpm") == {"variance": "learned"}
    learned = pipe.sample(PROMPTS, steps=4, sampler="ddpm")
    assert not torch.equal(learned, pipe.sample(PROMPTS, steps=4, sampler="ddpm", variance="small"))
    for sampler in ("ddim", "euler", "dpmpp_2m"):  # they ignore the variance channels
        assert torch.isfinite(pipe.sample(PROMPTS, steps=3, sampler=sampler)).all()
    pipe.save(tmp_path / "model")
    assert torch.equal(learned, Pipeline.load(tmp_path / "model", device="cpu").sample(PROMPTS, steps=4, sampler="ddpm"))


def test_the_unet_must_fit_the_variance_setting(tiny_pipeline, tmp_path):
    pipe = learned_variance_pipeline(tiny_pipeline)
    pipe.diffusion = DiffusionConfig(schedule="linear", timesteps=100)
    pipe.save(tmp_path / "model")
    with pytest.raises(CheckpointError, match="outputs 8 channels, but the scheduler config needs 4"):
        Pipeline.load(tmp_path / "model", device="cpu")


def test_bits_per_dim_of_a_tiny_model(tiny_pipeline):
    from latentlab.evaluation import bits_per_dim

    for pipe in (tiny_pipeline, learned_variance_pipeline(tiny_pipeline)):
        report = bits_per_dim(pipe, images=4, batch_size=4)
        bits = report["bits_per_dim"]
        assert all(map(math.isfinite, bits.values())) and bits["pixel"] > bits["pixel_reconstruction"] - 1
        assert report["variance"] == ("learned" if pipe.diffusion.learned_variance else "small")


def test_bad_model_folders(tiny_pipeline, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Pipeline.load(tmp_path / "nowhere")
    tiny_pipeline.save(tmp_path / "model")
    (tmp_path / "model" / "model_index.json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="not a latentlab model index"):
        Pipeline.load(tmp_path / "model")


def test_the_shipped_model_follows_prompts():
    """The default model in the package: the judge reads back what the prompt asked for."""
    from latentlab.data.judge import judge, score
    from latentlab.data.shapes import ShapesDataset

    assert (default_model_path() / "model_index.json").is_file()
    pipe = Pipeline.load(device="cpu")
    data = ShapesDataset(seed=99, split="test", p_two=0.0)
    examples = [data.example(i) for i in range(16)]
    images = pipe.sample([c for _, c in examples], steps=25, seed=0)
    right = sum(score(scene, judge(image))["all"] for (scene, _), image in zip(examples, images))
    assert right >= 14


def test_half_precision_and_channels_last_draw_the_same_images(tiny_pipeline):
    """Weights and activations in bfloat16 (the sampler's arithmetic stays in float32 or wider), and NHWC
    feature maps, change the images only by rounding."""
    want = tiny_pipeline.sample(["a red circle"], steps=4, seed=3)
    tiny_pipeline.to("cpu", channels_last=True)
    assert tiny_pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(tiny_pipeline.sample(["a red circle"], steps=4, seed=3), want, atol=1e-5)
    tiny_pipeline.to("cpu", dtype="bfloat16")
    assert tiny_pipeline.dtype == torch.bfloat16
    got = tiny_pipeline.sample(["a red circle"], steps=4, seed=3)
    assert got.dtype == torch.float32 and 0 < (got - want).abs().max() < 0.1


def test_bad_dtype_and_cuda_graph_without_a_gpu(tiny_pipeline):
    with pytest.raises(LatentlabError, match="unknown dtype 'float8'; accepted: float32, float16, bfloat16"):
        tiny_pipeline.to("cpu", dtype="float8")
    with pytest.raises(LatentlabError, match="cuda_graph needs the pipeline on a CUDA GPU; it is on cpu"):
        tiny_pipeline.sample(["a red circle"], steps=2, cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_the_same_images(tiny_pipeline):
    tiny_pipeline.to("cuda")
    want = tiny_pipeline.sample(["a red circle", "a blue square"], steps=6, seed=1)
    got = tiny_pipeline.sample(["a red circle", "a blue square"], steps=6, seed=1, cuda_graph=True)
    assert torch.allclose(got, want, atol=1e-5)


def test_the_shipped_fashion_mnist_model_draws_the_classes_asked_for():
    """The Fashion-MNIST model and classifier that ship in the package (docs/training.md): class-prompted
    samples are read back as their class (98.7% over 1,000 samples on the GPU; here 2 per class, 25 steps)."""
    from latentlab.data.mnist import fashion_caption
    from latentlab.evaluation.classifier import load_classifier, predict, shipped_classifier

    pipe = Pipeline.load("fashion-mnist", device="cpu")
    prompts = [fashion_caption(k) for k in range(10) for _ in range(2)]
    images = pipe.sample(prompts, steps=25, seed=5)
    classes, _ = predict(load_classifier(shipped_classifier("fashion-mnist")), images)
    assert (classes == torch.arange(10).repeat_interleave(2)).float().mean() >= 0.8


# ---------------------------------------------------------------------- LoRA files: any name, all or nothing


def add_random_lora(pipe: Pipeline, name: str, seed: int = 0) -> None:
    """A LoRA on the U-Net's attention and the text encoder, with nonzero A and B."""
    from latentlab.adapters import TEXT_ENCODER, add_lora, lora_layers

    add_lora(pipe.unet, name, rank=2, alpha=4.0)
    add_lora(pipe.text_encoder, name, rank=2, targets=TEXT_ENCODER)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in pipe.lora_parts().values():
            for _, layer in lora_layers(module):
                for p in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def lora_file(pipe: Pipeline, path, seed: int = 0):
    """Write a random LoRA for `pipe` to `path`, leaving `pipe` as it was."""
    add_random_lora(pipe, "made", seed)
    pipe.save_lora(path, "made")
    pipe.remove_lora("made")
    return path


def snapshot(pipe: Pipeline) -> dict:
    """Everything a LoRA load could change: module types, every tensor, requires_grad, adapters, scales."""
    from latentlab.adapters import lora_layers

    parts = pipe.lora_parts().items()
    return {"types": {(p, n): type(m) for p, part in parts for n, m in part.named_modules()},
            "state": {(p, k): v.clone() for p, part in parts for k, v in part.state_dict().items()},
            "grad": {(p, k): v.requires_grad for p, part in parts for k, v in part.named_parameters()},
            "loras": pipe.loras,
            "layers": {(p, n): (dict(l.scale), dict(l.alpha), dict(l.merged)) for p, part in parts
                       for n, l in lora_layers(part)}}


def assert_same(before: dict, after: dict) -> None:
    assert after["types"] == before["types"] and after["grad"] == before["grad"]
    assert after["loras"] == before["loras"] and after["layers"] == before["layers"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())


@pytest.mark.parametrize("stem", ["train", "half", "cuda", "eval", "float", "to", "update", "training", "_modules",
                                  "keys", "~x"])
def test_lora_named_like_a_module_attribute_loads(tiny_pipeline, tmp_path, stem):
    from safetensors import safe_open

    pipe = tiny_pipeline
    base = pipe.sample(PROMPTS[:1], steps=2, seed=0)
    add_random_lora(pipe, "made")
    want = pipe.sample(PROMPTS[:1], steps=2, seed=0)
    assert not torch.equal(want, base)
    pipe.save_lora(tmp_path / f"{stem}.safetensors", "made")
    pipe.remove_lora("made")
    assert pipe.load_lora(tmp_path / f"{stem}.safetensors") == stem.replace("~", "_")
    assert torch.equal(pipe.sample(PROMPTS[:1], steps=2, seed=0), want)
    pipe.remove_lora()
    assert pipe.load_lora(tmp_path / f"{stem}.safetensors", name=stem) == stem
    assert torch.equal(pipe.sample(PROMPTS[:1], steps=2, seed=0), want)
    pipe.set_lora_scale(stem, 0.5)
    pipe.merge_lora(stem)
    pipe.unmerge_lora(stem)
    pipe.save_lora(tmp_path / "again.safetensors", stem)
    pipe.remove_lora(stem)
    with safe_open(str(tmp_path / "again.safetensors"), "pt") as again, \
            safe_open(str(tmp_path / f"{stem}.safetensors"), "pt") as made:
        assert set(again.keys()) == set(made.keys())
        assert all(torch.equal(again.get_tensor(k), made.get_tensor(k)) for k in made.keys())
    pipe.remove_lora()
    assert pipe.loras == [] and torch.allclose(pipe.sample(PROMPTS[:1], steps=2, seed=0), base, atol=1e-5)


@pytest.fixture()
def loaded(tiny_pipeline, tmp_path):
    """The tiny pipeline holding two LoRAs already, one of them merged."""
    tiny_pipeline.load_lora(lora_file(tiny_pipeline, tmp_path / "kept.safetensors", seed=1))
    tiny_pipeline.load_lora(lora_file(tiny_pipeline, tmp_path / "folded.safetensors", seed=2), scale=0.5)
    tiny_pipeline.merge_lora("folded")
    return tiny_pipeline


def test_a_lora_whose_last_tensor_does_not_fit_changes_nothing(loaded, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = lora_file(loaded, tmp_path / "train.safetensors", seed=3)
    tensors = load_file(path)
    last = sorted(k for k in tensors if k.startswith("text_encoder."))[-1]
    tensors[last] = torch.zeros(tensors[last].shape[0] + 1, *tensors[last].shape[1:])
    with safe_open(str(path), "pt") as f:
        save_file(tensors, str(path), metadata=f.metadata())
    before = snapshot(loaded)
    with pytest.raises(CheckpointError, match=r"train\.safetensors: .*do not fit"):
        loaded.load_lora(path)
    assert_same(before, snapshot(loaded))


class Boom(Exception):
    pass


@pytest.mark.parametrize("method, nth", [("add", 1), ("add", 5), ("add", -1), ("set_scale", 1), ("set_scale", -1),
                                         ("copy_", -1)])
def test_a_lora_load_failing_anywhere_changes_nothing(loaded, tmp_path, monkeypatch, method, nth):
    """An exception raised by the first, a middle or the last call of `method` in a load (-1: the last, in
    the text encoder after the U-Net was loaded) leaves every network as it was."""
    from latentlab.adapters import LoRALayer

    path = lora_file(loaded, tmp_path / "train.safetensors", seed=3)
    owner = torch.Tensor if method == "copy_" else LoRALayer
    original, calls, fail_at = getattr(owner, method), [], []

    def counted(*args, **kwargs):
        calls.append(method)
        if len(calls) in fail_at:
            raise Boom(f"{method} failed")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, method, counted)
    loaded.load_lora(path, name="count")  # counts the calls of a whole load
    monkeypatch.undo()
    loaded.remove_lora("count")
    fail_at.append(len(calls) if nth == -1 else nth)
    calls.clear()
    monkeypatch.setattr(owner, method, counted)
    before = snapshot(loaded)
    with pytest.raises(Boom):
        loaded.load_lora(path)
    monkeypatch.undo()
    assert_same(before, snapshot(loaded))
    assert loaded.load_lora(path) == "train"


def test_a_lora_under_a_taken_name_is_refused_and_changes_nothing(loaded, tmp_path):
    path = lora_file(loaded, tmp_path / "kept.safetensors", seed=4)
    before = snapshot(loaded)
    with pytest.raises(LatentlabError, match="a LoRA named 'kept' is already loaded; pass another name"):
        loaded.load_lora(path, name="kept")
    assert_same(before, snapshot(loaded))
    assert loaded.load_lora(path) == "kept_2"  # without a name: the file's, made unique
    for name in ("", "a.b"):
        with pytest.raises(LatentlabError, match="must be non-empty and hold no '.'"):
            loaded.load_lora(path, name=name)


def test_the_cli_generates_with_a_lora_named_train(tiny_pipeline, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from latentlab.cli import main

    tiny_pipeline.save(tmp_path / "model")
    path = lora_file(tiny_pipeline, tmp_path / "train.safetensors")
    out = tmp_path / "samples"
    assert main(["generate", "a red circle", "--model", str(tmp_path / "model"), "--lora", str(path), "--lora",
                 f"{path}:0.5", "--steps", "2", "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "grid.png").is_file()
    capsys.readouterr()
    tensors = load_file(path)
    key = sorted(tensors)[-1]
    tensors[key] = tensors[key][:1]
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    assert main(["generate", "a red circle", "--model", str(tmp_path / "model"), "--lora",
                 str(tmp_path / "bad.safetensors"), "--steps", "2", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentlab: error: ") and "bad.safetensors" in err


# ---------------------------------------------------------------------- model folders: saved as a whole, configs checked


def save_killed_after(pipe: Pipeline, path, monkeypatch, writes: int) -> None:
    """Pipeline.save stopped, as by a kill, once it has made `writes` of its writes (a network's folder, the
    tokenizer, the scheduler, model_index.json)."""
    import latentlab.pipeline

    done = []

    def stopping(write):
        def call(*args, **kwargs):
            if len(done) == writes:
                raise KeyboardInterrupt
            write(*args, **kwargs)
            done.append(args[0])
        return call
    for name in ("save_component", "atomic_write"):
        monkeypatch.setattr(latentlab.pipeline, name, stopping(getattr(latentlab.pipeline, name)))
    with pytest.raises(KeyboardInterrupt):
        pipe.save(path)
    monkeypatch.undo()


def retrained(pipe: Pipeline) -> Pipeline:
    """The pipeline after more training: every network's weights moved."""
    import copy

    later = copy.deepcopy(pipe)
    with torch.no_grad():
        for module in (later.text_encoder, later.unet, later.vae):
            for p in module.parameters():
                p.add_(0.01)
    return later


@pytest.mark.parametrize("writes", [1, 2, 3, 4, 5])
def test_a_model_folder_whose_save_was_killed_is_refused(tiny_pipeline, tmp_path, monkeypatch, writes):
    """The text encoder of step 3 beside the U-Net of step 2 is refused in one line, not loaded."""
    tiny_pipeline.save(tmp_path / "model")
    save_killed_after(retrained(tiny_pipeline), tmp_path / "model", monkeypatch, writes)
    with pytest.raises(CheckpointError, match="written by another save than .*model_index.json: the save was "
                                              "interrupted") as error:
        Pipeline.load(tmp_path / "model", device="cpu")
    assert "\n" not in str(error.value)
    later = retrained(tiny_pipeline)
    later.save(tmp_path / "model")  # saving again makes it whole
    loaded = Pipeline.load(tmp_path / "model", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(later.unet.state_dict().values(), loaded.unet.state_dict().values()))


def test_folders_of_older_saves_load_and_a_killed_save_over_them_is_refused(tiny_pipeline, tmp_path, monkeypatch):
    """Folders written before saves were stamped (the shipped models among them) load; an interrupted save
    over one is still noticed, by the stamp its new files carry and its old index lacks."""
    import json

    from safetensors.torch import load_file, save_file

    path = tmp_path / "model"
    tiny_pipeline.save(path)
    index = json.loads((path / "model_index.json").read_text())
    index.pop("save_id", None)
    (path / "model_index.json").write_text(json.dumps(index))
    for part in ("text_encoder", "unet", "vae"):
        save_file(load_file(path / part / "model.safetensors"), path / part / "model.safetensors")  # no metadata
    Pipeline.load(path, device="cpu")
    save_killed_after(retrained(tiny_pipeline), path, monkeypatch, 1)
    with pytest.raises(CheckpointError, match="written by another save"):
        Pipeline.load(path, device="cpu")


@pytest.mark.parametrize("changes, message", [
    ({"image_size": "32"}, "image_size"), ({"image_size": 0}, "image_size"), ({"version": True}, "version"),
    ({"save_id": 5}, "save_id"), ({"text_encoder": ["clip"]}, "text encoder"),
])
def test_bad_model_indexes_are_one_line_errors(tiny_pipeline, tmp_path, changes, message):
    import json

    tiny_pipeline.save(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    (tmp_path / "model" / "model_index.json").write_text(json.dumps({**index, **changes}))
    with pytest.raises(CheckpointError, match=message):
        Pipeline.load(tmp_path / "model", device="cpu")


@pytest.mark.parametrize("part, changes, message", [
    ("unet", {"groups": "32"}, "groups"), ("unet", {"head_dim": 0}, "head_dim"),
    ("text_encoder", {"head_dim": 0}, "head_dim"), ("vae", {"channels": [32, "64"]}, "channels"),
    ("scheduler", {"timesteps": 0}, "timesteps"), ("scheduler", {"learned_variance": "yes"}, "learned_variance"),
])
def test_wrongly_typed_config_values_in_a_model_folder_are_one_line_errors(tiny_pipeline, tmp_path, part, changes,
                                                                           message):
    import json

    tiny_pipeline.save(tmp_path / "model")
    config = tmp_path / "model" / part / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **changes}))
    with pytest.raises(CheckpointError, match=f"{config}.*{message}") as error:
        Pipeline.load(tmp_path / "model", device="cpu")
    assert "\n" not in str(error.value)


def test_a_unet_that_does_not_take_the_latents_is_refused(tiny_pipeline, tmp_path):
    config = dataclasses.replace(tiny_pipeline.unet.config, in_channels=8)
    pipe = Pipeline(tokenizer=tiny_pipeline.tokenizer, text_encoder=tiny_pipeline.text_encoder, unet=UNet(config),
                    vae=tiny_pipeline.vae, diffusion=tiny_pipeline.diffusion, image_size=32)
    pipe.save(tmp_path / "model")
    with pytest.raises(CheckpointError, match="takes 8 channels, but the autoencoder's latents have 4"):
        Pipeline.load(tmp_path / "model", device="cpu")


# ---------------------------------------------------------------------- sample: values, seeds, batches


@pytest.mark.parametrize("options", [dict(guidance=math.nan), dict(guidance=math.inf), dict(eta=math.nan),
                                     dict(eta=-math.inf)])
def test_sample_refuses_non_finite_guidance_and_eta(tiny_pipeline, options):
    with pytest.raises(LatentlabError, match="must be a finite number"):
        tiny_pipeline.sample(PROMPTS, steps=2, **options)


@pytest.mark.parametrize("seed", [-1, 2**32 - 1, 2**32, 2**64])
def test_sample_refuses_seeds_the_generator_would_wrap(tiny_pipeline, seed):
    """The CPU generator keeps a seed's low 32 bits: 2^32 would draw what 0 draws. Image i uses seed + i."""
    with pytest.raises(LatentlabError, match="seeds from 0 to 4294967295"):
        tiny_pipeline.sample(PROMPTS, steps=2, seed=seed)
    assert tiny_pipeline.sample(PROMPTS, steps=2, seed=2**32 - 2).shape[0] == 2


def test_sample_refuses_a_prompt_that_is_not_utf8(tiny_pipeline):
    text = b"caf\xe9 red circle".decode("utf-8", "surrogateescape")
    with pytest.raises(LatentlabError, match="is not valid UTF-8"):
        tiny_pipeline.sample([text], steps=2)
    with pytest.raises(LatentlabError, match="is not valid UTF-8"):
        tiny_pipeline.sample(PROMPTS, steps=2, negative_prompt=text)
    with pytest.raises(LatentlabError, match="is not valid UTF-8") as refused:  # a surrogate no byte gives
        tiny_pipeline.sample(["a\r\nred \ud800"], steps=2)
    assert "\n" not in str(refused.value) and "\r" not in str(refused.value)


@pytest.mark.parametrize("sampler, options", [("ddim", {}), ("ddim", {"eta": 1.0}), ("ddpm", {}), ("euler", {}),
                                              ("dpmpp_2m", {})])
def test_the_batch_size_does_not_change_the_images(tiny_pipeline, sampler, options):
    prompts = PROMPTS + ["a green triangle"]
    want = tiny_pipeline.sample(prompts, steps=3, seed=4, sampler=sampler, **options)
    for batch_size in (1, 2, 3, 8):
        got = tiny_pipeline.sample(prompts, steps=3, seed=4, sampler=sampler, batch_size=batch_size, **options)
        assert torch.allclose(got, want, atol=1e-5)


def test_one_batch_keeps_the_noise_stream_of_before(tiny_pipeline):
    """A batch size covering all the prompts draws exactly what sampling without batches drew."""
    want = tiny_pipeline.sample(PROMPTS, steps=3, seed=4, sampler="ddpm")
    assert torch.equal(tiny_pipeline.sample(PROMPTS, steps=3, seed=4, sampler="ddpm", batch_size=2), want)


def test_the_noise_added_at_a_step_is_not_the_starting_noise(tiny_pipeline, monkeypatch):
    """Each image's generator draws x_T first, then the step noise: ddpm's first added noise is a new draw
    (it once repeated image 0's x_T, as both came from generators seeded alike)."""
    import latentlab.diffusion.samplers as samplers

    draws, noise = [], samplers._noise
    monkeypatch.setattr(samplers, "_noise", lambda like, generator: draws.append(noise(like, generator)) or draws[-1])
    tiny_pipeline.sample(PROMPTS[:1], steps=3, seed=4, sampler="ddpm")
    latent = tiny_pipeline.vae.config.latent_channels, 32 // tiny_pipeline.vae.config.downsampling
    x_T = torch.randn((latent[0], latent[1], latent[1]), generator=torch.Generator().manual_seed(4))
    assert draws and not torch.allclose(draws[0][0].float(), x_T)
    with pytest.raises(LatentlabError, match="batch_size must be a positive whole number"):
        tiny_pipeline.sample(PROMPTS, steps=2, batch_size=0)
