"""The video decoder: temporal layers between an image decoder's frozen residual blocks (Blattmann et al. 2023),
and a video model folder that holds it (vae_temporal/)."""

import pytest
import torch

from latentlab.errors import CheckpointError
from latentlab.models.temporal import ALPHA_START, to_frames
from latentlab.models.vae import AutoencoderKL, VAEConfig
from latentlab.models.video_decoder import VideoDecoder, VideoDecoderConfig, residual_blocks
from latentlab.video_pipeline import VideoPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = VAEConfig(channels=(8, 16, 16), groups=4, scale_factor=0.7, quant_conv=True)


def autoencoder(seed=0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(CONFIG).eval()


def video_decoder(vae, alpha=None, seed=1) -> VideoDecoder:
    """The decoder with new temporal layers, their weights random and alpha set if given."""
    torch.manual_seed(seed)
    decoder = VideoDecoder(vae.decoder)
    with torch.no_grad():
        for name, p in decoder.temporal.named_parameters():
            if name.endswith("alpha"):
                p.fill_(1.0 if alpha is None else alpha)
            elif p.dim():
                p.normal_(0, 0.2)
    return decoder


def test_one_temporal_layer_follows_each_residual_block():
    vae = autoencoder()
    decoder = VideoDecoder(vae.decoder)
    # the mid block's two, then blocks_per_level + 1 for each of the 3 up levels
    assert list(decoder.temporal) == ["mid_block_resnets_0", "mid_block_resnets_1", "up_blocks_0_resnets_0",
                                      "up_blocks_0_resnets_1", "up_blocks_1_resnets_0", "up_blocks_1_resnets_1",
                                      "up_blocks_2_resnets_0", "up_blocks_2_resnets_1"]
    widths = [mix.layer.conv1.in_channels for mix in decoder.temporal.values()]
    assert widths == [resnet.conv2.out_channels for _, resnet in residual_blocks(vae.decoder)] == [16] * 6 + [8] * 2
    assert all(mix.alpha.item() == ALPHA_START for mix in decoder.temporal.values())


@pytest.mark.parametrize("new", [True, False])
def test_a_new_video_decoder_is_the_image_decoder_frame_by_frame(new):
    """As constructed (each temporal layer the identity), and at alpha = 1 whatever the temporal layers' weights:
    each frame is decoded as the image decoder decodes it alone."""
    vae = autoencoder()
    decoder = VideoDecoder(vae.decoder) if new else video_decoder(vae)
    z = torch.randn(2 * 5, 4, 4, 4)  # 2 clips of 5 frames
    with torch.no_grad():
        torch.testing.assert_close(decoder(z, 5), vae.decoder(z), atol=1e-5, rtol=0)
        torch.testing.assert_close(decoder.decode(vae, z, 5), vae.decode(z), atol=1e-5, rtol=0)


def test_trained_temporal_layers_see_the_other_frames_of_the_clip_only():
    vae = autoencoder()
    decoder = video_decoder(vae, alpha=0.5)
    z = torch.randn(2 * 4, 4, 4, 4)
    changed = z.clone()
    changed[1] += 1.0  # the second frame of the first clip
    with torch.no_grad():
        before, after = decoder(z, 4), decoder(changed, 4)
    assert (after[0] - before[0]).abs().max() > 1e-3  # the first frame saw its neighbour change
    torch.testing.assert_close(after[4:], before[4:])  # the other clip did not


def test_only_the_temporal_layers_get_gradients():
    vae = autoencoder()
    decoder = video_decoder(vae, alpha=0.5).freeze_spatial()
    decoder(torch.randn(6, 4, 4, 4), 3).square().mean().backward()
    assert all(p.grad is None for p in vae.decoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.temporal.parameters())


@pytest.mark.parametrize("kernel", [0, 2, -1, True])
def test_a_kernel_must_be_a_positive_odd_number(kernel):
    with pytest.raises(ValueError, match="positive odd number"):
        VideoDecoderConfig(kernel=kernel)


# ------------------------------------------------------------------ in a video model folder


@pytest.fixture()
def video(tiny_pipeline):
    """A tiny video model of 4 frames with a trained-looking video decoder."""
    pipe = VideoPipeline.from_image(tiny_pipeline, frames=4)
    return VideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=pipe.unet, vae=pipe.vae,
                         diffusion=pipe.diffusion, image_size=pipe.image_size, frames=4,
                         video_decoder=video_decoder(pipe.vae, alpha=0.8))


def test_decode_reads_the_frames_of_each_clip_together(video):
    z = torch.randn(2, 4, 4, 8, 8)  # (B, C, T, h, w)
    with torch.no_grad():
        clips = video.decode(z)
        expected = video.video_decoder.decode(video.vae, to_frames(z), 4).clamp(-1, 1)
        per_frame = video.vae.decode(to_frames(z)).clamp(-1, 1)
    assert clips.shape == (2, 4, 3, 32, 32)
    torch.testing.assert_close(clips.flatten(0, 1), expected)
    assert (clips.flatten(0, 1) - per_frame).abs().max() > 1e-3


def test_a_video_decoder_saves_and_loads_with_the_video_model(tmp_path, video):
    video.save(tmp_path / "v")
    assert sorted(p.name for p in (tmp_path / "v" / "vae_temporal").iterdir()) == ["config.json", "model.safetensors"]
    again = VideoPipeline.load(tmp_path / "v", device="cpu")
    assert again.video_decoder is not None and again.video_decoder.decoder is again.vae.decoder
    saved, loaded = video.video_decoder.temporal.state_dict(), again.video_decoder.temporal.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    z = torch.randn(1, 4, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(again.decode(z), video.decode(z))
    # the folder without vae_temporal/ is the video model with the frozen decoder
    video.video_decoder = None
    video.save(tmp_path / "plain")
    assert not (tmp_path / "plain" / "vae_temporal").exists()
    assert VideoPipeline.load(tmp_path / "plain", device="cpu").video_decoder is None


def test_a_video_decoder_of_another_save_is_refused(tmp_path, video):
    video.save(tmp_path / "v")
    first = (tmp_path / "v" / "vae_temporal" / "model.safetensors").read_bytes()
    video.save(tmp_path / "w")
    (tmp_path / "w" / "vae_temporal" / "model.safetensors").write_bytes(first)  # a kill between two saves
    with pytest.raises(CheckpointError, match="another save"):
        VideoPipeline.load(tmp_path / "w")


def test_a_video_decoder_is_made_around_the_pipelines_own_decoder(tiny_pipeline):
    pipe = VideoPipeline.from_image(tiny_pipeline, frames=4)
    with pytest.raises(ValueError, match="around its vae's decoder"):
        VideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=pipe.unet, vae=pipe.vae,
                      diffusion=pipe.diffusion, image_size=32, frames=4,
                      video_decoder=VideoDecoder(autoencoder().decoder))
