import pytest
import torch

from latentlab import Pipeline
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.pipeline import default_model_path, image_grid

PROMPTS = ["a large red circle on the left", "a small blue square at the top"]


def test_sample_shapes_and_pil_output(tiny_pipeline):
    images = tiny_pipeline.sample(PROMPTS, steps=3)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1
    pil = tiny_pipeline(PROMPTS, steps=3)
    assert [im.size for im in pil] == [(32, 32)] * 2 and pil[0].mode == "RGB"
    assert image_grid(pil, columns=2, scale=2).size == (128, 64)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
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
        tiny_pipeline.sample(PROMPTS, sampler="euler")


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
