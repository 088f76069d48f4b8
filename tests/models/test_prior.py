"""DALL-E 2's diffusion prior network: a transformer over the caption's states, t, z_t and a query."""

import pytest
import torch

from latentlab.models.prior import DiffusionPrior, PriorConfig

CONFIG = PriorConfig(embed_dim=16, context_dim=24, width=32, layers=2, head_dim=16)


def prior(seed=0):
    torch.manual_seed(seed)
    return DiffusionPrior(CONFIG).eval()


def inputs(B=3, L=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True] * n + [False] * (L - n) for n in (2, 5, 3)][:B])
    return torch.randn(B, 16, generator=g), torch.tensor([0, 500, 999])[:B], torch.randn(B, L, 24, generator=g), mask


def test_it_predicts_an_embedding_from_the_text_the_time_and_z_t():
    net = prior()
    z, t, context, mask = inputs()
    out = net(z, t, context, mask)
    assert out.shape == (3, 16)
    for changed in (net(z + 1, t, context, mask), net(z, t.flip(0), context, mask), net(z, t, context + 1, mask)):
        assert (changed - out).abs().max() > 1e-4


def test_padding_is_ignored_and_samples_do_not_see_each_other():
    net = prior()
    z, t, context, mask = inputs()
    other = context.clone()
    other[~mask] = 9.0
    torch.testing.assert_close(net(z, t, other, mask), net(z, t, context, mask))
    torch.testing.assert_close(net(z[:1], t[:1], context[:1, :2], mask[:1, :2]), net(z, t, context, mask)[:1],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options, message", [({"width": 40, "head_dim": 16}, "multiple of head_dim"),
                                              ({"layers": 0}, "layers must be positive")])
def test_bad_configs(options, message):
    with pytest.raises(ValueError, match=message):
        PriorConfig(**options)
