"""``TokenEmbedding``: the text encoder's model layer (a module of its own: the encoder is imported
where torch is not)."""

from __future__ import annotations

import torch
from torch import nn


def kept_ids(x: torch.Tensor, vocab: int, unk: int) -> torch.Tensor:
    """Token ids ``x`` (B, T, 1), as floats, → int64 (B, T); those outside ``[0, vocab)`` (the part of
    the vocabulary a model keeps) read as ``unk``. ``onnx_kept_ids`` is the same in ONNX."""
    ids = x[..., 0].long()
    return torch.where((ids < vocab) & (ids >= 0), ids, torch.full_like(ids, unk))


class TokenEmbedding(nn.Module):
    """Token ids (B, T, 1), as floats, → their embeddings (B, T, dim); ids at or beyond ``vocab`` (the
    part of the tokenizer's vocabulary this model keeps) read as ``unk``. The padding id 0 embeds
    as zeros and learns nothing."""

    def __init__(self, vocab: int, dim: int, unk: int = 1) -> None:
        super().__init__()
        self.vocab, self.unk = vocab, unk
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)

    def token_index(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of the embedding that ids ``x`` (B, T, 1) read."""
        return kept_ids(x, self.vocab, self.unk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.token_index(x))
