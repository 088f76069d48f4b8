import pytest
import torch

from latentlab.evaluation import frechet_distance, pooled_pixels


def test_frechet_distance_of_gaussians_in_closed_form():
    """For N(m1, s1^2 I) and N(m2, s2^2 I) in D dimensions: |m1 - m2|^2 + D (s1 - s2)^2."""
    g = torch.Generator().manual_seed(0)
    a = 1.0 + 2.0 * torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    b = -0.5 + 0.5 * torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, b) == pytest.approx(3 * 1.5**2 + 3 * 1.5**2, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_pooled_pixels_and_bad_shapes():
    images = torch.rand(5, 3, 32, 32)
    features = pooled_pixels(images)
    assert features.shape == (5, 192) and torch.allclose(features[:, 0], images[:, 0, :4, :4].mean((1, 2)))
    with pytest.raises(ValueError, match="one width"):
        frechet_distance(torch.zeros(4, 2), torch.zeros(4, 3))
