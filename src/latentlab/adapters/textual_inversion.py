"""New words for a text encoder: tokens added to a tokenizer, each with a row of its own in the text encoder's
token embedding. Textual inversion (Gal et al. 2023) learns such rows for a concept, everything else frozen.

A concept may take n vectors: token T then stands for the tokens T, T_1, ..., T_{n-1} (diffusers' names), which
the tokenizer spells out wherever T is in a prompt (models/tokenizer.py `expand`). New tokens match a prompt's
text as written, before any lower-casing.

Training changes the new rows alone: `train_rows` makes them a parameter of their own through a parametrization
of the embedding's weight (torch.nn.utils.parametrize), so the networks' code knows nothing of training and
every other weight stays as it is; the optimiser holds n x D numbers, not the whole vocabulary.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import LatentlabError
from ..models import BertModel, CLIPTextModel, TextEncoder, Tokenizer

# where each text encoder keeps its token embedding (B, L) -> (B, L, D)
EMBEDDINGS = {TextEncoder: "token_embedding", CLIPTextModel: "text_model.embeddings.token_embedding",
              BertModel: "embeddings.word_embeddings"}


def token_embedding(encoder: nn.Module) -> nn.Embedding:
    for kind, name in EMBEDDINGS.items():
        if isinstance(encoder, kind):
            return encoder.get_submodule(name)
    raise LatentlabError(f"cannot add tokens to a {type(encoder).__name__}; accepted: "
                         f"{', '.join(kind.__name__ for kind in EMBEDDINGS)}")


def token_names(token: str, n: int) -> list[str]:
    """The n tokens of a concept: T, T_1, ..., T_{n-1}."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def check_token(token: str) -> str:
    """A token must be one printable word: it is matched in prompts as written."""
    if not isinstance(token, str) or not token or not token.isprintable() or any(c.isspace() for c in token):
        raise LatentlabError(f"token {token!r} is not accepted: give one word without spaces, e.g. <diamond>")
    return token


def add_tokens(tokenizer: Tokenizer, encoder: nn.Module, token: str, vectors: torch.Tensor) -> list[int]:
    """Add `token`, standing for the n rows of `vectors` (n, D), to the tokenizer and its embedding rows to the
    text encoder (in the encoder's device and dtype; its config's vocab_size grows with it); returns the new ids.
    A token the tokenizer has, or vectors of another width than the encoder's, raise LatentlabError and add
    nothing."""
    weight = token_embedding(encoder).weight
    if vectors.ndim != 2 or len(vectors) < 1 or vectors.shape[1] != weight.shape[1]:
        raise LatentlabError(f"the embedding's vectors are {'x'.join(map(str, vectors.shape))}, this text encoder's "
                             f"tokens are {weight.shape[1]} wide: the embedding was made for another text encoder")
    names = token_names(check_token(token), len(vectors))
    if len(names) > tokenizer.max_length - 2:
        raise LatentlabError(f"the embedding has {len(names)} vectors; a prompt of this tokenizer holds at most "
                             f"{tokenizer.max_length - 2} tokens")
    taken = [name for name in names + [f"{token}_{len(names)}"] if tokenizer.token_to_id(name) is not None]
    if taken:
        raise LatentlabError(f"token {taken[0]} is already in the tokenizer's vocabulary; give the embedding "
                             "another token")
    ids = tokenizer.add_tokens(names)
    _set_rows(encoder, torch.tensor(ids), vectors)
    return ids


def _set_rows(encoder: nn.Module, ids: torch.Tensor, vectors: torch.Tensor) -> None:
    """The embedding grown to hold rows `ids` (rows it gains beyond them are zero), those rows set to `vectors`."""
    embedding = token_embedding(encoder)
    weight = embedding.weight.detach()
    rows = max(len(weight), int(ids.max()) + 1)
    grown = torch.zeros(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)  # (V', D)
    grown[:len(weight)] = weight
    grown[ids.to(weight.device)] = vectors.to(grown)
    embedding.weight = nn.Parameter(grown, requires_grad=embedding.weight.requires_grad)
    embedding.num_embeddings = rows
    encoder.config = dataclasses.replace(encoder.config, vocab_size=rows)


def initial_vectors(tokenizer: Tokenizer, encoder: nn.Module, initializer: str, n: int) -> torch.Tensor:
    """(n, D) float32, each the mean embedding of the initializer's tokens (those between the start and end
    tokens): where training starts. For a one-token initializer this is its embedding, as diffusers starts."""
    ids, mask = tokenizer([initializer])
    pieces = ids[0][mask[0]][1:-1]  # (k,) without the start and end tokens
    if not len(pieces):
        raise LatentlabError(f"the initializer {initializer!r} has no tokens; give a word, e.g. square")
    weight = token_embedding(encoder).weight.detach()
    return weight[pieces.to(weight.device)].float().mean(0).expand(n, -1).clone()


class NewRows(nn.Module):
    """A parametrization of a token embedding's weight W (V, D): rows `ids` are `rows`, the rest W's."""

    def __init__(self, ids: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        self.register_buffer("ids", ids, persistent=False)
        self.rows = nn.Parameter(rows)  # (n, D) float32, trained

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.index_copy(0, self.ids, self.rows.to(weight.dtype))


def train_rows(encoder: nn.Module, ids: list[int]) -> nn.Parameter:
    """The embedding rows `ids` as a float32 parameter of their own (n, D), which the encoder reads its rows
    from; every other weight of the encoder is left as it is (freeze it first). Returns the parameter."""
    embedding = token_embedding(encoder)
    index = torch.tensor(ids, device=embedding.weight.device)
    rows = embedding.weight.detach()[index].float().clone()
    parametrize.register_parametrization(embedding, "weight", NewRows(index, rows))
    return embedding.parametrizations.weight[0].rows
