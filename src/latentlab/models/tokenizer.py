"""A byte-pair-encoding tokenizer (Sennrich et al. 2016) fitted on a caption corpus.

Thin wrapper over the `tokenizers` library: lower-cased, split on whitespace and punctuation, BPE
with an unknown token; every sequence is [BOS] tokens [EOS], truncated and padded to `max_length`.
Saved and loaded as one `tokenizer.json`.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as _Tokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
ALPHABET = string.ascii_lowercase + string.digits + string.punctuation  # any word of these has tokens


class Tokenizer:
    def __init__(self, tokenizer: _Tokenizer):
        self._tok = tokenizer
        padding = tokenizer.padding
        if padding is None or tokenizer.truncation is None:
            raise ValueError("tokenizer.json must set padding and truncation to a fixed length")
        self.max_length = int(tokenizer.truncation["max_length"])

    @classmethod
    def fit(cls, corpus: list[str], *, vocab_size: int = 512, max_length: int = 32) -> "Tokenizer":
        """Learn BPE merges from `corpus` (deterministic for a given corpus)."""
        tok = _Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.BPEDecoder()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK], min_frequency=1,
                                      initial_alphabet=list(ALPHABET), show_progress=False)
        tok.train_from_iterator(corpus, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))])
        tok.enable_truncation(max_length)
        tok.enable_padding(length=max_length, pad_id=tok.token_to_id(PAD), pad_token=PAD)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls(_Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def to_json(self) -> str:
        return self._tok.to_str()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, max_length) and a mask (B, max_length), True on real tokens."""
        encodings = self._tok.encode_batch([self.expand(p) for p in prompts])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
        return ids, mask

    def tokens(self, prompt: str) -> list[str]:
        return self._tok.encode(self.expand(prompt)).tokens

    # ------------------------------------------------------------------ added tokens (textual inversion)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def add_tokens(self, tokens: list[str]) -> list[int]:
        """New tokens, each with the next free id (returned); they match a prompt's text as written, before
        any lower-casing (textual inversion gives each a row of the text encoder's token embedding)."""
        self._tok.add_tokens([AddedToken(t, normalized=False) for t in tokens])
        return [self._tok.token_to_id(t) for t in tokens]

    def expand(self, prompt: str) -> str:
        """`prompt` with each token T that was added together with T_1, T_2, ... (a concept of several vectors)
        spelled out as "T T_1 T_2 ...": diffusers' convention, derived from the vocabulary alone, so it holds
        for a saved and reloaded tokenizer too."""
        added = {t.content for t in self._tok.get_added_tokens_decoder().values() if not t.special}
        for token in added:
            if f"{token}_1" in added:
                n = next(i for i in range(2, len(added) + 2) if f"{token}_{i}" not in added)
                spelled = " ".join([token] + [f"{token}_{i}" for i in range(1, n)])
                prompt = re.sub(re.escape(token) + r"(?!_\d)", lambda _: spelled, prompt)
        return prompt
