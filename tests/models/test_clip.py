"""Parity of our CLIP text transformer with transformers' CLIPTextModel on the same random weights."""

import dataclasses

import pytest
import torch
import transformers

from latentlab.io.checkpoint import load_component, save_component
from latentlab.io.convert import from_transformers_clip_text
from latentlab.models import CLIPTextConfig, CLIPTextModel

VOCAB, BOS, EOS = 1000, 998, 999
TINY = CLIPTextConfig(vocab_size=VOCAB, width=32, layers=2, heads=4, mlp_width=37, max_positions=77, eos_token_id=EOS)
ATOL = 1e-5


def reference_config(c: CLIPTextConfig) -> "transformers.CLIPTextConfig":
    return transformers.CLIPTextConfig(
        vocab_size=c.vocab_size, hidden_size=c.width, num_hidden_layers=c.layers, num_attention_heads=c.heads,
        intermediate_size=c.mlp_width, max_position_embeddings=c.max_positions, hidden_act=c.activation,
        layer_norm_eps=c.layer_norm_eps, eos_token_id=c.eos_token_id, bos_token_id=min(BOS, c.vocab_size - 2),
        pad_token_id=1)


def checkpoint_keys(state: dict) -> dict:
    """transformers >= 5 dropped the `text_model.` level from CLIPTextModel; checkpoint files carry it."""
    return from_transformers_clip_text(state)


def make_pair(activation: str = "quick_gelu", attention: str = "sdpa"):
    """transformers' model with every weight perturbed (layer norms and biases too), and ours loaded from it.

    `attention` picks transformers' attention code: "sdpa" (its default) or "eager" (explicit softmax).
    """
    config = dataclasses.replace(TINY, activation=activation)
    torch.manual_seed(0)
    ref = transformers.CLIPTextModel._from_config(reference_config(config), attn_implementation=attention).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = CLIPTextModel(config).eval()
    ours.load_state_dict(checkpoint_keys(ref.state_dict()), strict=True)
    return ref, ours


def make_batch(lengths: list[int], L: int, pad: int, seed: int = 1):
    """Rows of [BOS] words [EOS] followed by `pad` up to L; the mask is 1 at the real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), L), pad)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(2, BOS, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = BOS, EOS
        mask[i, :n] = 1
    return ids, mask


BATCHES = {  # name: (real lengths per row, sequence length, pad id, use the mask)
    "full rows": ([9, 9], 9, EOS, False),
    "eos at different positions, no mask": ([3, 9, 6], 9, EOS, False),
    "padded with eos, masked": ([3, 9, 6], 9, EOS, True),
    "padded with 0, masked": ([2, 5, 12], 12, 0, True),
    "77 tokens, masked": ([77, 20, 4], 77, EOS, True),
}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_matches_transformers(activation, attention, batch):
    lengths, L, pad, masked = BATCHES[batch]
    ref, ours = make_pair(activation, attention)
    ids, mask = make_batch(lengths, L, pad)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask if masked else None)
        last, pooled = ours(ids, mask.bool() if masked else None)
    assert last.shape == (len(lengths), L, TINY.width) and pooled.shape == (len(lengths), TINY.width)
    torch.testing.assert_close(last, expected.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=ATOL, rtol=0)
    first_eos = torch.tensor([n - 1 for n in lengths])
    torch.testing.assert_close(pooled, last[torch.arange(len(lengths)), first_eos], atol=0, rtol=0)


@pytest.mark.parametrize("skip", [0, 1])
@pytest.mark.parametrize("masked", [False, True])
def test_clip_skip_matches_diffusers_recipe(skip, masked):
    """diffusers' encode_prompt: final_layer_norm(hidden_states[-(clip_skip + 1)])."""
    ref, ours = make_pair()
    ids, mask = make_batch([4, 10, 7], 10, EOS)
    mask = mask if masked else None
    with torch.no_grad():
        out = ref(ids, attention_mask=mask, output_hidden_states=True)
        expected = getattr(ref, "text_model", ref).final_layer_norm(out.hidden_states[-(skip + 1)])
        last, pooled = ours(ids, mask, skip=skip)
    torch.testing.assert_close(last, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, out.pooler_output, atol=ATOL, rtol=0)  # pooled ignores the skip


def test_checkpoint_keys_and_no_position_ids():
    ref, ours = make_pair()
    keys = set(ours.state_dict())
    assert keys == set(checkpoint_keys(ref.state_dict()))
    assert "text_model.embeddings.position_ids" not in keys  # older files carry it; dropped at load time
    assert "text_model.encoder.layers.1.self_attn.q_proj.bias" in keys and "text_model.final_layer_norm.weight" in keys


def test_save_load_round_trip(tmp_path):
    _, ours = make_pair("gelu")
    save_component(tmp_path / "text_encoder", ours)
    loaded = load_component(tmp_path / "text_encoder", CLIPTextModel, CLIPTextConfig).eval()
    assert loaded.config == ours.config
    ids, mask = make_batch([5, 8], 8, EOS)
    with torch.no_grad():
        for a, b in zip(loaded(ids, mask), ours(ids, mask)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("change, message", [
    ({"activation": "relu"}, "accepted: \\['gelu', 'quick_gelu'\\]"),
    ({"width": 30}, "not divisible by heads"),
    ({"eos_token_id": VOCAB}, "outside the vocabulary"),
    ({"layers": 0}, "layers must be positive"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
])
def test_bad_config_raises(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


@pytest.mark.parametrize("ids, kwargs, message", [
    (torch.full((1, 78), EOS), {}, "exceed the 77 positions"),
    (torch.tensor([[BOS, 5, EOS], [BOS, 5, 6]]), {}, "needs the end token"),
    (torch.tensor([[BOS, 5, EOS]]), {"skip": 2}, "skip must be in"),
    (torch.tensor([[BOS, 5, EOS]]), {"skip": -1}, "skip must be in"),
])
def test_bad_inputs_raise(ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CLIPTextModel(TINY)(ids, **kwargs)


def test_sd1_default_matches_transformers_shapes():
    """At SD 1.x's default (clip-vit-large-patch14's text tower) every weight has transformers' name and shape."""
    config = CLIPTextConfig()
    with torch.device("meta"):  # shapes only, no memory or initialisation
        ours = CLIPTextModel(config)
        ref = transformers.CLIPTextModel(reference_config(config))
    expected = {k: v.shape for k, v in checkpoint_keys(ref.state_dict()).items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 123_060_480
