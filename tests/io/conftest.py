import pytest
import torch


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (no zero-initialised path hides a difference); norm scales about 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(scale + torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="session")
def tiny_sd_components(clip_vocab_files):
    """components(seed=0, in_channels=4) -> the keyword arguments of a diffusers StableDiffusionPipeline (with
    in_channels=9, a StableDiffusionInpaintPipeline's): SD 1.x's topology at toy widths, random weights. Widths
    are multiples of 32 (SD's group count) and the U-Net has 8 heads, as SD 1.x, so that a single file (whose
    heads and groups its shapes cannot tell) reads back."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    def components(seed: int = 0, in_channels: int = 4) -> dict:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=8, in_channels=in_channels, block_out_channels=(32, 64),
                                    layers_per_block=1, cross_attention_dim=64, attention_head_dim=8,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=64, num_attention_heads=1, num_hidden_layers=2,
                                            intermediate_size=128, vocab_size=49408, max_position_embeddings=77,
                                            eos_token_id=49407, bos_token_id=49406, pad_token_id=49407))
        for i, module in enumerate((unet, vae, text)):
            randomise(module, seed + i)
        scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  num_train_timesteps=1000, steps_offset=1, skip_prk_steps=True)
        return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text.eval(),
                    tokenizer=CLIPTokenizer(*map(str, clip_vocab_files), model_max_length=77), scheduler=scheduler,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return components
