"""``TokenEmbedding``: the text encoder's model layer, and ``CharSplit``, which reads word pieces as
their characters (a module of its own: the encoder is imported where torch is not)."""

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

    def __init__(self, vocab: int, dim: int, unk: int = 1, chars: CharSplit | None = None) -> None:
        super().__init__()
        self.vocab, self.unk = vocab, unk
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        #: Character level: each word piece is read as its characters, one step each (``resequence``).
        self.chars = chars

    def start_from(self, vectors: torch.Tensor) -> None:
        """Start the embedding from ``vectors`` (pieces, k): the first ``min(k, dim)`` columns, scaled to
        the random start's spread, the rest of the columns left random; padding stays zero."""
        with torch.no_grad():
            w = self.embed.weight
            rows, cols = min(len(vectors), w.shape[0]), min(vectors.shape[1], w.shape[1])
            part = vectors[:rows, :cols].to(w.dtype)
            w[:rows, :cols] = part * (w.std() / part.std().clamp(min=1e-8))
            w[0] = 0

    def resequence(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The steps the stack reads: the word pieces as they are, or (character level) their characters."""
        return (x, lengths) if self.chars is None else self.chars(x, lengths)

    def steps(self, length: int) -> int:
        """How many steps a document of ``length`` word pieces becomes (for the cost of a prediction)."""
        return length if self.chars is None else self.chars.steps(length)

    def token_index(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of the embedding that ids ``x`` (B, T, 1) read."""
        return kept_ids(x, self.vocab, self.unk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.token_index(x))


class CharSplit(nn.Module):
    """Word-piece ids (B, T, 1), as floats, → the ids of their characters (B, T', 1) and their lengths:
    character-level text from the same tokenisation, in the same vocabulary.

    ``table`` (pieces, span) holds each piece's characters as the tokenizer's single-character ids
    (a word's first as ``c``, the others as ``##c``, so word boundaries stay visible), 0 after its
    end. A document longer than ``budget`` characters keeps its first quarter and last three quarters
    of the budget, as the word pieces do. Reading characters again gives them unchanged (each
    single-character id is its own row), so ``explain`` can show the steps themselves.

    The table is a buffer (saved with the weights); one built without it (``loaded=False``) refuses to
    run until ``load_state_dict`` fills it."""

    def __init__(self, table: torch.Tensor, budget: int, unk: int, per_piece: float, loaded: bool = True) -> None:
        super().__init__()
        self.register_buffer("table", table.long())
        self.budget, self.unk, self.per_piece = int(budget), int(unk), float(per_piece)
        self.loaded = loaded

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]
        self.loaded = True

    def steps(self, length: int) -> int:
        """The characters of ``length`` pieces: the training documents' mean per piece, within the budget."""
        return int(min(self.budget, max(1, round(length * self.per_piece))))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.loaded:
            raise RuntimeError("this text model's character table was never loaded (load its weights)")
        pieces, span = self.table.shape
        ids = x[..., 0].long()
        ids = torch.where((ids >= 0) & (ids < pieces), ids, torch.full_like(ids, self.unk))
        b, t = ids.shape
        lengths = lengths.to(ids.device).long()
        chars = self.table[ids].reshape(b, t * span)
        real = ((torch.arange(t, device=ids.device)[None, :] < lengths[:, None])[..., None]
                .expand(b, t, span).reshape(b, t * span) & (chars > 0))
        n = real.sum(dim=1)
        slot = torch.where(real, real.cumsum(dim=1) - 1, torch.full_like(chars, t * span))  # t*span: discarded
        packed = torch.zeros(b, t * span + 1, dtype=chars.dtype, device=chars.device).scatter(1, slot, chars)
        keep = n.clamp(min=1, max=self.budget)
        width = max(1, int(keep.max())) if b else 1
        j = torch.arange(width, device=ids.device)[None, :]
        long_doc = (n > self.budget)[:, None] & (j >= self.budget // 4)
        src = torch.where(long_doc, n[:, None] - self.budget + j, j).clamp(max=t * span)
        out = packed.gather(1, src) * (j < keep[:, None])
        return out.to(x.dtype)[..., None], keep.to(lengths.dtype)
