"""``text``: a column of free text becomes a sequence of token ids, read through a learned embedding.

The tokenizer is Hugging Face ``tokenizers``' WordPiece (lower-cased, accents and HTML tags removed,
split on white space and punctuation), trained on the training rows only, so a word seen only in
the test rows falls apart into known pieces or ``[UNK]``. Its ids are ordered by how early the
trainer merged them (the most frequent pieces first), so a smaller vocabulary is a prefix of the
trained one: the search draws the vocabulary the model keeps (``vocab``; ids beyond it read as
``[UNK]``) and the embedding's width (``embedding``) per trial from one tokenisation of the data.

A document longer than ``max_tokens`` keeps its first quarter and its last three quarters of that
budget (head and tail: the verdict of a review is often at its end); the state records the budget,
derived from the training documents' lengths unless ``--max-tokens`` gives it.

The encoder is the text layout's (``cellsearch.data.layouts.text``): per-step layouts never pick it
(``accepts`` is false); there a column of free text still meets the one-hot encoder's limit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data.encoders.base import Encoder
from cellsearch.errors import UserError

PAD, UNK = "[PAD]", "[UNK]"
#: Pieces the tokenizer learns at most (fewer where the training text has fewer that occur twice).
VOCAB_SIZE = 16_000
#: The token budget, unless given: this percentile of the training documents' lengths ...
MAX_TOKENS_PERCENTILE = 95
#: ... rounded up to a multiple of 16, and at most this many (a recurrent step per token).
MAX_TOKENS_CAP = 512
#: The embedding width when the space does not draw one.
EMBEDDING = 64


def looks_like_text(s: pd.Series) -> bool:
    """Whether a column holds free text: strings, mostly distinct, of several words (median ≥ 3),
    most of them with a letter (``"0.1 0.5 0.3"`` is numbers packed in a cell, not text)."""
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return False
    values = s.dropna()
    if len(values) == 0 or not all(isinstance(v, str) for v in values.head(100)):
        return False
    sample = values.astype(str).head(2000)
    words = sample.str.split()
    if not (sample.nunique() >= 0.5 * len(sample) and words.str.len().median() >= 3):
        return False
    tokens = [w for ws in words.head(200) for w in ws]
    return sum(any(ch.isalpha() for ch in w) for w in tokens) >= 0.5 * len(tokens)


def train_tokenizer(docs: list[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A WordPiece tokenizer (``tokenizers.Tokenizer``) trained on ``docs``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"<[^>]*>"), " "),
                                           normalizers.BertNormalizer(lowercase=True)])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(docs, trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2,
                                                            special_tokens=[PAD, UNK], show_progress=False))
    return tok


@functools.lru_cache(maxsize=4)
def _tokenizer_from(json_text: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json_text)


def load_tokenizer(state: dict[str, Any]) -> Any:
    """The fitted state's tokenizer (built once per process for each tokenizer)."""
    try:
        return _tokenizer_from(state["tokenizer"])
    except Exception as exc:  # a bundle is untrusted input: one line, not a traceback
        raise UserError(f"the text encoder's tokenizer cannot be read ({str(exc).splitlines()[0]})") from None


def documents(s: pd.Series) -> list[str]:
    """The column's documents as strings (a missing value is an empty document)."""
    return ["" if not isinstance(v, str) else v for v in s.astype(object).where(s.notna(), "")]


def head_and_tail(ids: list[int], budget: int) -> list[int]:
    """``ids`` cut to ``budget`` tokens: the first quarter of the budget and the last three quarters."""
    if len(ids) <= budget:
        return ids
    head = budget // 4
    return ids[:head] + ids[len(ids) - (budget - head):]


def token_ids(docs: list[str], state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Documents → (N, T, 1) float32 token ids (0 after each end), their lengths (an empty document
    is one ``[UNK]``), how many were cut to the budget, and every document's length before the cut."""
    tok = load_tokenizer(state)
    unk, budget = int(state["unk"]), int(state["max_tokens"])
    encoded = [e.ids for e in tok.encode_batch(docs)] if docs else []
    cut = sum(len(ids) > budget for ids in encoded)
    seqs = [head_and_tail(ids, budget) or [unk] for ids in encoded]
    lengths = np.array([len(ids) for ids in seqs], dtype=np.int64)
    full = np.array([len(ids) for ids in encoded], dtype=np.int64)
    x = np.zeros((len(seqs), int(lengths.max()) if len(seqs) else 1, 1), dtype=np.float32)
    for k, ids in enumerate(seqs):
        x[k, :len(ids), 0] = ids
    return x, lengths, cut, full


def onnx_kept_ids(g: Any, x: str, vocab: int, unk: int, prefix: str) -> str:
    """``embedding.kept_ids`` in ONNX (graph builder ``g``, ids ``x`` (B, T, 1) as floats): int64 ids,
    those outside ``[0, vocab)`` read as ``unk``; ``prefix`` names its constants."""
    ids = g.node("Cast", [g.node("Squeeze", [x, g.const("ax2s", [2], "int64")])], to=g.INT64)
    inside = g.node("And", [g.node("Less", [ids, g.const(f"{prefix}_vocab", vocab, "int64")]),
                            g.node("GreaterOrEqual", [ids, g.const("zero_i", 0, "int64")])])
    return g.node("Where", [inside, ids, g.const(f"{prefix}_unk", unk, "int64")])


class TextEncoder(Encoder):
    """WordPiece tokens through an embedding (state: the tokenizer's JSON, its vocabulary size, the
    ``[UNK]`` id and the token budget ``max_tokens``)."""

    name = "text"
    priority = 80
    #: The space's keys this encoder's layer takes (``cellsearch.space``: drawn only for data with text).
    searched = ("embedding", "vocab")

    def accepts(self, s: pd.Series) -> bool:
        return False  # the text layout's own: see the module doc

    def fit(self, s: pd.Series, column: str, path: Path, max_tokens: int | None = None,
            vocab_size: int = VOCAB_SIZE) -> dict[str, Any]:
        docs = documents(s)
        if not any(d.strip() for d in docs):
            raise UserError(f"{path}: text column {column!r} has no text in the training rows")
        tok = train_tokenizer(docs, vocab_size)
        if max_tokens is None:
            lengths = [len(e.ids) for e in tok.encode_batch(docs)] or [1]
            p = float(np.percentile(lengths, MAX_TOKENS_PERCENTILE))
            max_tokens = int(min(MAX_TOKENS_CAP, max(16, 16 * np.ceil(p / 16))))
        return {"tokenizer": tok.to_str(), "vocab": tok.get_vocab_size(), "unk": tok.token_to_id(UNK),
                "max_tokens": int(max_tokens)}

    def names(self, column: str, state: dict[str, Any]) -> list[str]:
        return [column]

    def inputs(self, s: pd.Series, state: dict[str, Any]) -> Iterator[np.ndarray]:
        raise UserError(f"a column of free text ({s.name!r}) is read in the text layout: one row per document")

    def input_params(self, state: dict[str, Any], width: int) -> dict[str, Any]:
        return {"vocab": int(state["vocab"]), "embedding": EMBEDDING, "unk": int(state["unk"])}

    def searched_params(self, params: dict[str, Any], drawn: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the trial's drawn ``embedding`` and ``vocab`` (kept within the tokenizer's)."""
        out = dict(params)
        if drawn.get("embedding") is not None:
            out["embedding"] = int(drawn["embedding"])
        if drawn.get("vocab") is not None:
            out["vocab"] = int(min(int(drawn["vocab"]), params["vocab"]))
        return out

    def bundle_files(self, column: str, state: dict[str, Any]) -> dict[str, str]:
        return {"tokenizer.json": state["tokenizer"]}

    def card_note(self, column: str, state: dict[str, Any]) -> str:
        budget = int(state["max_tokens"])
        return f"""Column {column!r} is free text, read as WordPiece token ids by the tokenizer in `tokenizer.json`
(trained on the training rows; vocabulary {int(state['vocab']):,}). `cellsearch.load`, `cellsearch predict`
and the MLflow model take the raw text. The ONNX graph takes the ids themselves: `x` (documents, tokens, 1)
float32 and `lengths` (documents,) int64, made as training made them:
```python
from tokenizers import Tokenizer
import numpy as np
tok = Tokenizer.from_file("tokenizer.json")
ids = [e.ids for e in tok.encode_batch(texts)]
# a longer document keeps its head and tail; an empty one is one [UNK]
ids = [i if len(i) <= {budget} else i[:{budget // 4}] + i[len(i) - {budget - budget // 4}:] for i in ids]
ids = [i or [{int(state['unk'])}] for i in ids]
lengths = np.array([len(i) for i in ids], dtype=np.int64)
x = np.zeros((len(ids), lengths.max(), 1), dtype=np.float32)
for k, i in enumerate(ids):
    x[k, :len(i), 0] = i
```"""

    def input_layer(self, params: dict[str, Any], width: int) -> tuple[Any, int]:
        if width != 1:
            raise ValueError(f"a text input is one channel of token ids, got {width}")
        from cellsearch.data.encoders.embedding import TokenEmbedding

        dim = int(params["embedding"])
        return TokenEmbedding(int(params["vocab"]), dim, int(params.get("unk", 1))), dim

    def onnx_input(self, g: Any, x: str, params: dict[str, Any], layer: Any) -> str:
        """Ids as floats → int64, those outside the kept vocabulary → ``[UNK]``, one ``Gather``."""
        k = len(g.nodes)
        ids = onnx_kept_ids(g, x, layer.vocab, layer.unk, f"tok{k}")
        table = layer.embed.weight.detach().cpu().numpy().astype(np.float32)
        return g.node("Gather", [g.const(f"tok{k}_table", table, "float32"), ids], axis=0)
