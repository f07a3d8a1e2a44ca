"""Training speed of text models in tokens per second (``cellsearch bench --text``).

One training step of the model a text search builds — token ids through the text encoder's
embedding, one recurrent layer of each cell variant, mean pooling, a linear head, cross-entropy,
Adam — on a batch of documents whose lengths follow a review-like spread (median about a quarter of
the longest, as ``LengthBuckets`` leaves them within a batch: trimmed to the batch's longest). The
reference is the same step built from torch's own modules (``nn.Embedding`` + ``nn.LSTM`` or
``nn.GRU``, packed sequences); the ratio is theirs over ours (above 1: cellsearch is faster), the
median of per-repeat ratios with the timings interleaved, as ``cellsearch.benchmarks.cells`` does.
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
    tokens_per_s: float
    reference: str
    reference_tokens_per_s: float
    ratio: float


def _lengths(batch: int, tokens: int, seed: int) -> Any:
    """Document lengths: log-normal around a quarter of ``tokens``, cut to 4..``tokens``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(tokens / 4), 0.8, size=batch)), 4, tokens).astype(np.int64)


def run_text_bench(*, hidden: tuple[int, ...] = (64, 128), batch: int = 32, tokens: int = 256, vocab: int = 16_000,
                   embedding: int = 64, threads: int = 2, repeats: int = 7) -> list[TextRow]:
    """Tokens per second of training for each cell variant at each width (module doc).

    Example:
        >>> rows = run_text_bench(hidden=(16,), batch=4, tokens=32, repeats=2)
        >>> {r.variant for r in rows} >= {"lstm", "gru"}
        True
    """
    import numpy as np
    import torch
    from torch import nn

    from cellsearch.cells import CELLS
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

    class TorchText(nn.Module):
        def __init__(self, kind: str, h: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, embedding, padding_idx=0)
            self.rnn = (nn.GRU if kind == "gru" else nn.LSTM)(embedding, h, batch_first=True)
            self.head = nn.Linear(h, 2)

        def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            packed = nn.utils.rnn.pack_padded_sequence(self.embed(x[..., 0].long()), n, batch_first=True)
            out, _ = self.rnn(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
            return self.head(out.sum(1) / n[:, None])

    def trainer(model: nn.Module) -> Any:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(ids, lengths), y).backward()
            opt.step()
        return step

    def seconds(step: Any) -> float:
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    rows = []
    for h in hidden:
        for name in CELLS:
            ref_kind = "gru" if name == "gru" else "lstm"
            spec = ModelSpec(input_size=1, inputs=(InputSpec("text", 1, {"vocab": vocab, "embedding": embedding,
                                                                         "unk": 1}),),
                             layers=(LayerSpec(name, h, False),), n_outputs=2, task="classification", pooling="mean")
            ours, theirs = trainer(build(spec)), trainer(TorchText(ref_kind, h))
            for _ in range(2):
                ours(), theirs()
            pairs = [(seconds(ours), seconds(theirs)) for _ in range(repeats)]
            ours_s = statistics.median(p[0] for p in pairs)
            theirs_s = statistics.median(p[1] for p in pairs)
            rows.append(TextRow(name, h, real / ours_s, f"nn.Embedding + nn.{ref_kind.upper()}", real / theirs_s,
                                statistics.median(t / o for o, t in pairs)))
    return rows


def rows_to_json(rows: list[TextRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
