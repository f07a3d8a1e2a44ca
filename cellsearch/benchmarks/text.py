"""Training speed of text models in tokens per second (``cellsearch bench --text``).

One training step of the model a text search builds — token ids through the text encoder's
embedding, one recurrent layer of each cell variant, mean pooling, a linear head, cross-entropy,
Adam — on a batch of documents whose lengths follow a review-like spread (median about a quarter of
the longest, as ``LengthBuckets`` leaves them within a batch: trimmed to the batch's longest). The
reference is the same step built from torch's own modules (``nn.Embedding`` + ``nn.LSTM`` or
``nn.GRU``, packed sequences); the ratio is theirs over ours (above 1: cellsearch is faster), the
median of per-repeat ratios with the timings interleaved, as ``cellsearch.benchmarks.cells`` does.

Character level (``tokens: chars``, the searched option) is measured too: the same documents' word
pieces read as their characters (``embedding.CharSplit``, a synthetic table of 1-8 characters per
piece, ``CHARS_PER_PIECE`` on average) — the recurrence runs over several times more steps. Its
reference is torch's modules over the same character ids (split once, outside the timing); its
speed is still counted in the documents' word pieces, so the two kinds of row compare directly.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TextRow:
    """One cell variant at one width: its training tokens per second and torch's."""

    variant: str
    hidden: int
    tokens: str  # what the model reads: "pieces" or "chars" (speed counted in word pieces either way)
    tokens_per_s: float
    reference: str
    reference_tokens_per_s: float
    ratio: float


#: Characters per word piece in the character-level rows' synthetic table (English reviews: about 4.5).
CHARS_PER_PIECE = 4.5


def _char_table(vocab: int, seed: int) -> Any:
    """(vocab, 8) character ids of each piece, 1-8 of them (mean ``CHARS_PER_PIECE``), 0 after the end."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = np.clip(rng.poisson(CHARS_PER_PIECE - 1, size=vocab) + 1, 1, 8)
    table = rng.integers(2, 200, size=(vocab, 8))
    table[np.arange(8)[None, :] >= n[:, None]] = 0
    return table


def _lengths(batch: int, tokens: int, seed: int) -> Any:
    """Document lengths: log-normal around a quarter of ``tokens``, cut to 4..``tokens``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(tokens / 4), 0.8, size=batch)), 4, tokens).astype(np.int64)


def run_text_bench(*, hidden: tuple[int, ...] = (64, 128), batch: int = 32, tokens: int = 256, vocab: int = 16_000,
                   embedding: int = 64, threads: int = 2, repeats: int = 7,
                   kinds: tuple[str, ...] = ("pieces", "chars")) -> list[TextRow]:
    """Tokens per second of training for each cell variant at each width, reading word pieces and
    their characters (``kinds``; module doc).

    Example:
        >>> rows = run_text_bench(hidden=(16,), batch=4, tokens=32, repeats=2)
        >>> {r.variant for r in rows} >= {"lstm", "gru"}, sorted({r.tokens for r in rows})
        (True, ['chars', 'pieces'])
    """
    import numpy as np
    import torch
    from torch import nn

    from cellsearch.cells import CELLS
    from cellsearch.data.encoders.embedding import CharSplit
    from cellsearch.model import InputSpec, ModelSpec, build
    from cellsearch.stack import LayerSpec

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lengths = torch.from_numpy(np.sort(_lengths(batch, tokens, 0))[::-1].copy())
    steps = int(lengths.max())
    inside = torch.arange(steps)[None, :, None] < lengths[:, None, None]
    ids = torch.randint(2, vocab, (batch, steps, 1)).float() * inside
    y = torch.randint(0, 2, (batch,))
    real = int(lengths.sum())
    table = torch.from_numpy(_char_table(vocab, 0))
    budget = int(round(steps * CHARS_PER_PIECE * 2))
    with torch.no_grad():
        char_x, char_n = CharSplit(table, budget, 1, CHARS_PER_PIECE)(ids, lengths)

    class TorchText(nn.Module):
        def __init__(self, kind: str, h: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, embedding, padding_idx=0)
            self.rnn = (nn.GRU if kind == "gru" else nn.LSTM)(embedding, h, batch_first=True)
            self.head = nn.Linear(h, 2)

        def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            packed = nn.utils.rnn.pack_padded_sequence(self.embed(x[..., 0].long()), n, batch_first=True,
                                                          enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
            return self.head(out.sum(1) / n[:, None])

    def trainer(model: nn.Module, x: torch.Tensor, n: torch.Tensor) -> Any:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x, n), y).backward()
            opt.step()
        return step

    def seconds(step: Any) -> float:
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    rows = []
    for kind in kinds:
        for h in hidden:
            for name in CELLS:
                ref_kind = "gru" if name == "gru" else "lstm"
                params: dict[str, Any] = {"vocab": vocab, "embedding": embedding, "unk": 1}
                if kind == "chars":
                    params.update({"tokens": "chars", "tokenizer": "bench", "table": list(table.shape),
                                   "max_chars": budget, "chars_per_piece": CHARS_PER_PIECE, "pieces": vocab})
                spec = ModelSpec(input_size=1, inputs=(InputSpec("text", 1, params),),
                                 layers=(LayerSpec(name, h, False),), n_outputs=2, task="classification",
                                 pooling="mean")
                model = build(spec)
                if kind == "chars":
                    model.load_state_dict({**model.state_dict(), **{k: table for k in model.state_dict()
                                                                     if k.endswith("chars.table")}})
                ref_x, ref_n = (ids, lengths) if kind == "pieces" else (char_x, char_n)
                ours, theirs = trainer(model, ids, lengths), trainer(TorchText(ref_kind, h), ref_x, ref_n)
                for _ in range(2):
                    ours(), theirs()
                pairs = [(seconds(ours), seconds(theirs)) for _ in range(repeats)]
                ours_s = statistics.median(p[0] for p in pairs)
                theirs_s = statistics.median(p[1] for p in pairs)
                rows.append(TextRow(name, h, kind, real / ours_s, f"nn.Embedding + nn.{ref_kind.upper()}",
                                    real / theirs_s, statistics.median(t / o for o, t in pairs)))
    return rows


def rows_to_json(rows: list[TextRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
