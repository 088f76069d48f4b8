"""The contrastive image-text encoder (CLIP's two towers) and its vision transformer."""

import pytest
import torch

from latentlab.models.contrastive import MAX_LOGIT_SCALE, ContrastiveConfig, ContrastiveEncoder
from latentlab.models.text_encoder import TextEncoderConfig
from latentlab.models.vit import ViT, ViTConfig

CONFIG = ContrastiveConfig(image=ViTConfig(width=32, layers=1, head_dim=16, patch_size=8),
                           text=TextEncoderConfig(vocab_size=40, max_length=8, width=32, layers=1, head_dim=16),
                           embed_dim=16)


def encoder(seed=0) -> ContrastiveEncoder:
    torch.manual_seed(seed)
    return ContrastiveEncoder(CONFIG).eval()


def tokens(B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (B, 8), generator=g)
    mask = torch.tensor([[True] * n + [False] * (8 - n) for n in (3, 8, 5)][:B])
    return ids, mask


def test_embeddings_are_unit_vectors_and_logits_their_scaled_cosines():
    net = encoder()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    ids, mask = tokens()
    i, t = net.encode_image(images), net.encode_text(ids, mask)
    assert i.shape == (2, 16) and t.shape == (3, 16)
    torch.testing.assert_close(i.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(t.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(net(images, ids, mask), (1 / 0.07) * i @ t.T)


def test_the_text_embedding_is_read_at_the_last_real_token_and_ignores_padding():
    net = encoder()
    ids, mask = tokens()
    padded = ids.clone()
    padded[~mask] = 0  # other padding ids
    torch.testing.assert_close(net.encode_text(padded, mask), net.encode_text(ids, mask))
    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1 - 4) % 36 + 4  # the first caption's last real token
    moved = net.encode_text(changed, mask)
    assert (moved[0] - net.encode_text(ids, mask)[0]).abs().max() > 1e-4
    torch.testing.assert_close(moved[1:], net.encode_text(ids, mask)[1:])


def test_the_logit_scale_is_capped_at_100():
    net = encoder()
    with torch.no_grad():
        net.logit_scale.fill_(10.0)
    assert net.scale().item() == pytest.approx(100.0)
    assert MAX_LOGIT_SCALE == pytest.approx(4.60517, abs=1e-5)


def test_vit_reads_the_cls_token_and_sees_every_patch():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(width=32, layers=1, head_dim=16, patch_size=8)).eval()
    x = torch.randn(2, 3, 32, 32)
    out = vit(x)
    assert out.shape == (2, 32)
    y = x.clone()
    y[:, :, 24:, 24:] += 1  # the last patch only
    assert (vit(y) - out).abs().max() > 1e-4
    torch.testing.assert_close(vit(x[:1]), out[:1], atol=1e-5, rtol=1e-5)  # images do not see each other


@pytest.mark.parametrize("options, message", [
    ({"image_size": 30}, "multiple of patch_size"),
    ({"width": 40, "head_dim": 16}, "multiple of head_dim"),
    ({"layers": 0}, "layers must be positive"),
])
def test_bad_vit_configs(options, message):
    with pytest.raises(ValueError, match=message):
        ViTConfig(**options)


def test_images_of_another_size_are_refused():
    with pytest.raises(ValueError, match="this image encoder takes 32x32"):
        encoder().encode_image(torch.zeros(1, 3, 28, 28))


def test_a_config_round_trips_through_json_dicts():
    import dataclasses
    import json

    data = json.loads(json.dumps(dataclasses.asdict(CONFIG)))
    assert ContrastiveConfig(**data) == CONFIG
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveConfig(temperature=0.0)
