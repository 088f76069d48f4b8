import dataclasses

import torch

from latentlab.models import TextEncoder, Tokenizer, encode_prompts
from latentlab.training.presets import preset


def test_tokens_are_framed_padded_and_masked(tokenizer):
    ids, mask = tokenizer(["a large red circle on the left", ""])
    assert ids.shape == mask.shape == (2, tokenizer.max_length)
    assert mask.sum(1).tolist() == [9, 2]  # [BOS] 7 words [EOS]; the empty prompt is [BOS] [EOS]
    assert tokenizer.tokens("A RED Circle")[:4] == ["[BOS]", "a", "red", "circle"]


def test_unknown_words_and_long_prompts(tokenizer):
    long = "a crimson dodecahedron, éclair! " * 20
    ids, mask = tokenizer([long])
    assert ids.shape == (1, tokenizer.max_length) and mask.all()  # truncated to max_length
    assert tokenizer.tokens(long)[-1] == "[EOS]"  # and still closed
    assert "[UNK]" not in tokenizer.tokens("xyzzy!")  # unseen words fall back to characters


def test_fit_is_deterministic_and_round_trips(tokenizer, tmp_path):
    from latentlab.data.shapes import caption_corpus
    again = Tokenizer.fit(caption_corpus(2000), max_length=32)
    assert again.to_json() == tokenizer.to_json()
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    prompts = ["a tiny blue square above a big green circle", ""]
    assert all(torch.equal(a, b) for a, b in zip(loaded(prompts), tokenizer(prompts)))


def test_encoder_context_ignores_padding(tokenizer):
    torch.manual_seed(0)
    encoder = TextEncoder(dataclasses.replace(preset("tiny", "text"), vocab_size=tokenizer.vocab_size)).eval()
    context, mask = encode_prompts(tokenizer, encoder, ["a red circle", "a red circle on the left"])
    assert context.shape == (2, tokenizer.max_length, encoder.config.width)
    ids, mask = tokenizer(["a red circle"])
    changed = ids.clone()
    changed[0, ~mask[0]] = 7  # other tokens where the mask is False
    with torch.no_grad():
        a, b = encoder(ids, mask), encoder(changed, mask)
    assert torch.allclose(a[mask], b[mask], atol=1e-5)


def test_config_refuses_values_no_network_has():
    """head_dim 0 was a ZeroDivisionError; a width it does not divide failed only when the module was built."""
    import pytest

    for changes, message in [({"head_dim": 0}, "head_dim must be positive"), ({"width": 100}, "not a multiple"),
                             ({"vocab_size": 0}, "vocab_size must be positive"), ({"layers": -1}, "layers")]:
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(preset("tiny", "text"), **changes)
