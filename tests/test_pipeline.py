import dataclasses
import math

import pytest
import torch

from latentlab import Pipeline
from latentlab.diffusion import DiffusionConfig
from latentlab.models import UNet
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.pipeline import default_model_path, image_grid

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
