"""Our U-Net against diffusers' UNet2DConditionModel: same module tree, same outputs on the same weights."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from latentlab.models import UNet, UNetConfig

TINY = dict(sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=2, cross_attention_dim=24,
            norm_num_groups=16, attention_head_dim=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))

CASES = {  # name: (diffusers' config changes, ours)
    "sd1": ({}, {}),
    "linear projection, scale-shift": ({"use_linear_projection": True, "resnet_time_scale_shift": "scale_shift"},
                                       {"linear_projection": True, "time_conditioning": "scale_shift"}),
    "depth and heads per level": ({"transformer_layers_per_block": (1, 2, 1), "attention_head_dim": (2, 4, 4),
                                   "layers_per_block": 1},
                                  {"transformer_depth": (1, 2, 1), "heads": (2, 4, 4), "blocks_per_level": 1}),
}


def ours_for(changes: dict) -> UNetConfig:
    base = dict(channels=(32, 64, 64), blocks_per_level=2, attention_levels=(True, True, False), heads=4,
                context_dim=24, groups=16, time_conditioning="additive", pooled_text=False, linear_projection=False,
                norm_eps=1e-5)
    return UNetConfig(**{**base, **changes})


def randomise(module: torch.nn.Module) -> None:
    """Random weights everywhere, so no zero-initialised path hides a difference."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("case", CASES)
def test_diffusers_weights_load_unchanged_and_agree(case):
    theirs_changes, ours_changes = CASES[case]
    theirs = UNet2DConditionModel(**{**TINY, **theirs_changes}).eval()
    randomise(theirs)
    ours = UNet(ours_for(ours_changes)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # no renaming
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 24, generator=g)
    t = torch.tensor([3, 901])
    with torch.no_grad():
        want = theirs(x, t, encoder_hidden_states=context).sample
        got = ours(x, t, context)
    assert (got - want).abs().max() < 1e-5 * max(1.0, want.abs().max().item())


def test_stable_diffusion_1_config_is_sd_unet():
    """Every parameter name and shape of SD 1.x's U-Net (859.5M parameters), built on the meta device."""
    with torch.device("meta"):
        theirs = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
        ours = UNet(UNetConfig.stable_diffusion_1())
    want = {k: v.shape for k, v in theirs.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == want
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964
