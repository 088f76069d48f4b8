"""The video pipeline: an image model with temporal layers, sampling clips with every sampler and guidance."""

import json

import pytest
import torch

from latentlab import Pipeline
from latentlab.diffusion import get_sampler
from latentlab.errors import CheckpointError, LatentlabError
from latentlab.models.temporal import to_frames
from latentlab.video_pipeline import VideoPipeline

PROMPTS = ["a small red circle moves to the right", "a large blue square grows"]


@pytest.fixture(scope="module")
def image():
    return Pipeline.load(device="cpu")


@pytest.fixture(scope="module")
def video(image):
    return VideoPipeline.from_image(image, frames=4)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_a_new_video_model_samples_each_frame_as_the_image_model(image, video, sampler):
    """Before training (each temporal layer the identity) the video model is the image model applied to each frame's latents: the same
    sampler from the same noise gives the same frames."""
    clips = video.sample(PROMPTS, steps=4, seed=5, sampler=sampler, guidance=3.0)
    assert clips.shape == (2, 4, 3, 32, 32)
    generators = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    x_T = torch.stack([torch.randn(video.latent_shape(32), generator=g) for g in generators])  # (B, C, T, h, w)
    frames = []
    for k in range(4):
        context = image.text_encoder(*image.tokenizer(PROMPTS))
        uncond = image.text_encoder(*image.tokenizer([""] * 2))
        _, mask = image.tokenizer(PROMPTS)
        _, uncond_mask = image.tokenizer([""] * 2)
        denoise = image.denoiser(context, mask, uncond, uncond_mask, 3.0)
        z = get_sampler(sampler)(denoise, x_T[:, :, k], image.alphas_cumprod, 4)
        frames.append(image.decode(z))
    torch.testing.assert_close(clips, torch.stack(frames, dim=1), atol=2e-4, rtol=1e-3)


def test_frames_can_be_asked_per_call(video):
    assert video.sample(PROMPTS[:1], steps=2, frames=8).shape == (1, 8, 3, 32, 32)
    assert video.frames == 4
    with pytest.raises(LatentlabError, match="frames"):
        video.sample(PROMPTS[:1], steps=2, frames=0)


def test_save_and_load_round_trip(tmp_path, video):
    with torch.no_grad():
        for i, mix in enumerate(video.unet.temporal.values()):
            mix.alpha.fill_(0.9 - 0.01 * i)
    try:
        video.save(tmp_path / "v")
        again = VideoPipeline.load(tmp_path / "v", device="cpu")
        assert again.frames == 4
        assert json.loads((tmp_path / "v" / "model_index.json").read_text())["video"] == {"frames": 4}
        for (k, a), (k2, b) in zip(video.unet.state_dict().items(), again.unet.state_dict().items()):
            assert k == k2 and torch.equal(a, b)
        torch.testing.assert_close(again.sample(PROMPTS, steps=2), video.sample(PROMPTS, steps=2))
        # the folder is also its image model, which Pipeline.load reads
        assert isinstance(Pipeline.load(tmp_path / "v", device="cpu").unet, type(video.unet.unet))
    finally:
        with torch.no_grad():
            for mix in video.unet.temporal.values():
                mix.alpha.fill_(1.0)


def test_an_image_model_is_not_a_video_model(tmp_path, image):
    image.save(tmp_path / "image")
    with pytest.raises(CheckpointError, match="not a video model"):
        VideoPipeline.load(tmp_path / "image")


def test_a_half_written_video_folder_is_refused(tmp_path, video):
    video.save(tmp_path / "v")
    first = (tmp_path / "v" / "temporal" / "model.safetensors").read_bytes()
    video.save(tmp_path / "w")
    (tmp_path / "w" / "temporal" / "model.safetensors").write_bytes(first)  # another save's temporal layers
    with pytest.raises(CheckpointError, match="another save"):
        VideoPipeline.load(tmp_path / "w")


def test_decode_reads_each_frame_alone(video):
    z = torch.randn(2, 4, 3, 8, 8)
    clips = video.decode(z)
    assert clips.shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(clips.flatten(0, 1), video.vae.decode(to_frames(z)).clamp(-1, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_video_model_samples_on_the_gpu_as_on_the_cpu():
    """The same clips from the same seeds on a GPU as on the CPU (the noise is drawn on the CPU), within
    float32's error over 10 steps of guidance; temporal layers with random weights, so that they count."""
    torch.manual_seed(0)
    pipe = VideoPipeline.from_image(Pipeline.load(device="cpu"), frames=8)
    with torch.no_grad():
        for p in pipe.unet.temporal.parameters():
            p.add_(0.02 * torch.randn_like(p))
    want = pipe.sample(PROMPTS, steps=10, seed=3)
    got = pipe.to("cuda").sample(PROMPTS, steps=10, seed=3)
    assert got.shape == want.shape == (2, 8, 3, 32, 32)
    assert (got.cpu() - want).abs().mean() < 0.01
