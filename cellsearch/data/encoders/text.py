"""``text``: a column of free text becomes a sequence of token ids, read through a learned embedding.

The tokenizer is Hugging Face ``tokenizers``' WordPiece (lower-cased, accents and HTML tags removed,
split on white space and punctuation), trained on the training rows only, so a word seen only in
the test rows falls apart into known pieces or ``[UNK]``. Its ids are ordered by how early the
trainer merged them (the most frequent pieces first), so a smaller vocabulary is a prefix of the
trained one: the search draws the vocabulary the model keeps (``vocab``; ids beyond it read as
``[UNK]``) and the embedding's width (``embedding``) per trial from one tokenisation of the data.

Character level is searched too (``tokens``: ``pieces`` or ``chars``): a character-level model reads
each word piece as its characters, the tokenizer's own single-character ids (``c`` starting a word,
``##c`` inside one), one recurrent step each, up to ``max_chars`` steps per document
(``embedding.CharSplit``) — from the same tokenisation, so every trial shares one copy of the data.

A word-piece model's embedding starts from **co-occurrence vectors** of the training documents (the
pieces' positive pointwise mutual information within ``WINDOW`` pieces, reduced by a truncated SVD:
the classic count-based word vectors, made from the same rows the tokenizer learned from, no labels,
nothing downloaded) instead of random numbers: a few thousand labelled documents are too few to
learn an embedding from scratch (on 4,000 food reviews: 0.757 → 0.807 validation accuracy, one GRU).
The first components carry the most, so an embedding of width ``d`` takes the first ``d``.

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
#: Character level: a piece is read as at most this many characters ...
CHAR_SPAN = 24
#: ... and a document as at most the training documents' 95th percentile of characters, within this.
MAX_CHARS_CAP = 1024
#: Co-occurrence vectors: pieces within this many of each other count as context ...
WINDOW = 4
#: ... and the SVD keeps this many components (an embedding wider than this fills the rest at random).
VECTOR_DIMS = 128
#: The training documents' ids by tokenizer (the text layout fills it) and the vectors made from them.
_TRAINING_IDS: dict[str, tuple[np.ndarray, np.ndarray]] = {}
_VECTORS: dict[str, np.ndarray] = {}
#: Fitted text states by their training documents (``reuse_fitted``).
_FITTED: dict[str, dict[str, Any]] = {}
#: Character tables by tokenizer (``fit`` and ``known_char_table`` fill it: a model built in this process
#: takes its table from here; one loaded from saved weights takes the table from them).
_CHAR_TABLES: dict[str, np.ndarray] = {}


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


def char_table(tok: Any, unk: int) -> np.ndarray:
    """(pieces, span) int64: each word piece's characters as the tokenizer's single-character ids (the
    first of a word as ``c``, the others as ``##c``; ``[UNK]`` where it has none), 0 after the end;
    ``[PAD]`` has none and ``[UNK]`` is itself."""
    vocab = tok.get_vocab()
    rows: list[list[int]] = [[] for _ in range(tok.get_vocab_size())]
    for piece, i in vocab.items():
        if piece in (PAD, UNK):
            rows[i] = [] if piece == PAD else [unk]
            continue
        inside = piece.startswith("##") and len(piece) > 2
        body = piece[2:] if inside else piece
        rows[i] = [vocab.get(c if k == 0 and not inside else "##" + c, unk) for k, c in enumerate(body)]
    span = max(1, min(CHAR_SPAN, max((len(r) for r in rows), default=1)))
    table = np.zeros((len(rows), span), dtype=np.int64)
    for i, r in enumerate(rows):
        table[i, :len(r[:span])] = r[:span]
    return table


def cooccurrence_vectors(x: np.ndarray, lengths: np.ndarray, vocab: int, dims: int = VECTOR_DIMS,
                         window: int = WINDOW) -> np.ndarray:
    """(vocab, ≤ dims) vectors of the pieces in documents ``x`` (N, T, 1) from their co-occurrence:
    counts of pairs within ``window`` pieces, positive PMI with the context distribution smoothed
    (power 0.75), truncated SVD, each row scaled to unit length (rows of pieces never seen: zeros)."""
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD

    ids = x[..., 0].astype(np.int64)
    real = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    rows, cols = [], []
    for k in range(1, window + 1):
        both = real[:, k:]
        a, b = ids[:, :-k][both], ids[:, k:][both]
        rows += [a, b]
        cols += [b, a]
    r, c = np.concatenate(rows), np.concatenate(cols)
    keep = (r < vocab) & (c < vocab)
    counts = sparse.coo_matrix((np.ones(int(keep.sum())), (r[keep], c[keep])), shape=(vocab, vocab)).tocsr().tocoo()
    dims = min(dims, vocab - 1)
    if counts.nnz == 0 or dims < 1:
        return np.zeros((vocab, max(1, dims)), dtype=np.float32)
    total = counts.data.sum()
    word = np.asarray(counts.sum(axis=1)).ravel() / total
    context = word ** 0.75
    context /= context.sum()
    pmi = np.log(counts.data / total / word[counts.row] / context[counts.col])
    pos = pmi > 0
    ppmi = sparse.csr_matrix((pmi[pos], (counts.row[pos], counts.col[pos])), shape=(vocab, vocab))
    vectors = TruncatedSVD(dims, random_state=0).fit_transform(ppmi)
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)).astype(np.float32)


def remember_training_ids(state: dict[str, Any], x: np.ndarray, lengths: np.ndarray) -> None:
    """Keep the training documents' ids for this tokenizer (the embedding's starting vectors are made
    from them when a model is first built in this process), and its character table (a model built
    here from a stored spec, as a refit is, reads its characters through it)."""
    _TRAINING_IDS[fingerprint(state)] = (x, lengths)
    if "max_chars" in state:
        known_char_table(state)


def known_char_table(state: dict[str, Any]) -> np.ndarray:
    """The character table of the state's tokenizer, made once per process (``_CHAR_TABLES``)."""
    key = fingerprint(state)
    if key not in _CHAR_TABLES:
        _CHAR_TABLES[key] = char_table(load_tokenizer(state), int(state["unk"]))
    return _CHAR_TABLES[key]


def reuse_fitted(state: dict[str, Any]) -> None:
    """Remember a fitted text state (a study's), so that fitting the same training documents again in
    this process returns it (``TextEncoder.fit``) instead of training a new tokenizer: the trainer
    breaks ties between equally frequent merges differently from process to process (a second read of
    4,000 reviews gave 29% of the pieces other ids, 3% of the test tokens), and a search's workers and
    ``export`` read the file themselves — their models must read the ids of the study's tokenizer."""
    if "documents" in state:
        _FITTED[state["documents"]] = state


def starting_vectors(key: str, vocab: int) -> np.ndarray | None:
    """The co-occurrence vectors of the tokenizer ``key``'s training documents (made once per process),
    or ``None`` where this process has not read them (a model loaded with its weights)."""
    if key not in _VECTORS:
        if key not in _TRAINING_IDS:
            return None
        _VECTORS[key] = cooccurrence_vectors(*_TRAINING_IDS[key], vocab)
    return _VECTORS[key]


def fingerprint(state: dict[str, Any]) -> str:
    """A short name of the fitted tokenizer (which character table a model's parameters mean)."""
    import hashlib

    return hashlib.sha1(state["tokenizer"].encode()).hexdigest()[:16]


def documents(s: pd.Series) -> list[str]:
    """The column's documents as strings (a missing value is an empty document)."""
    return ["" if not isinstance(v, str) else v for v in s.astype(object).where(s.notna(), "")]


def _budget(lengths: list[int], cap: int) -> int:
    """Steps per document: the training lengths' ``MAX_TOKENS_PERCENTILE``, rounded up to 16, in [16, cap]."""
    p = float(np.percentile(lengths, MAX_TOKENS_PERCENTILE))
    return int(min(cap, max(16, 16 * np.ceil(p / 16))))


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


def _int64_zero() -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("zero", TensorProto.INT64, [1], [0])


class TextEncoder(Encoder):
    """WordPiece tokens through an embedding (state: the tokenizer's JSON, its vocabulary size, the
    ``[UNK]`` id and the token budget ``max_tokens``)."""

    name = "text"
    priority = 80
    #: The space's keys this encoder's layer takes (``cellsearch.space``: drawn only for data with text).
    searched = ("embedding", "vocab", "tokens")

    def accepts(self, s: pd.Series) -> bool:
        return False  # the text layout's own: see the module doc

    def fit(self, s: pd.Series, column: str, path: Path, max_tokens: int | None = None,
            vocab_size: int = VOCAB_SIZE) -> dict[str, Any]:
        """The tokenizer trained on the training documents, the token and character budgets — or the
        state a study fitted on the same documents (``reuse_fitted``)."""
        import hashlib

        docs = documents(s)
        if not any(d.strip() for d in docs):
            raise UserError(f"{path}: text column {column!r} has no text in the training rows")
        digest = hashlib.sha1("\x00".join([*docs, str(max_tokens), str(vocab_size)]).encode()).hexdigest()
        if digest in _FITTED:
            return {k: v for k, v in _FITTED[digest].items() if k != "kind"}
        tok = train_tokenizer(docs, vocab_size)
        unk = tok.token_to_id(UNK)
        encoded = [e.ids for e in tok.encode_batch(docs)] or [[unk]]
        lengths = [len(ids) for ids in encoded]
        if max_tokens is None:
            max_tokens = _budget(lengths, MAX_TOKENS_CAP)
        table = char_table(tok, unk)
        per_piece = (table > 0).sum(axis=1)
        chars = [int(per_piece[ids].sum()) if ids else 1 for ids in encoded]
        state = {"tokenizer": tok.to_str(), "vocab": tok.get_vocab_size(), "unk": unk, "max_tokens": int(max_tokens),
                 "documents": digest, "max_chars": _budget(chars, MAX_CHARS_CAP),
                 "chars_per_piece": round(float(sum(chars)) / max(1, sum(lengths)), 3)}
        _CHAR_TABLES[fingerprint(state)] = table  # made here once, not again from the tokenizer's JSON
        return state

    def names(self, column: str, state: dict[str, Any]) -> list[str]:
        return [column]

    def inputs(self, s: pd.Series, state: dict[str, Any]) -> Iterator[np.ndarray]:
        raise UserError(f"a column of free text ({s.name!r}) is read in the text layout: one row per document")

    def input_params(self, state: dict[str, Any], width: int) -> dict[str, Any]:
        params = {"vocab": int(state["vocab"]), "embedding": EMBEDDING, "unk": int(state["unk"])}
        if "max_chars" in state:  # fitted with co-occurrence vectors and character level
            params["init"] = "cooccurrence"  # a state fitted before character level has none
            key = fingerprint(state)
            params.update({"pieces": int(state["vocab"]), "tokens": "pieces", "max_chars": int(state["max_chars"]),
                           "tokenizer": key, "table": list(known_char_table(state).shape),
                           "chars_per_piece": float(state["chars_per_piece"])})
        return params

    def searched_params(self, params: dict[str, Any], drawn: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the trial's drawn ``embedding``, ``vocab`` (kept within the tokenizer's) and
        ``tokens`` (``chars``: character level)."""
        out = dict(params)
        if drawn.get("embedding") is not None:
            out["embedding"] = int(drawn["embedding"])
        if drawn.get("vocab") is not None:
            out["vocab"] = int(min(int(drawn["vocab"]), params["vocab"]))
        if drawn.get("tokens") is not None and "max_chars" in params:
            out["tokens"] = str(drawn["tokens"])
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
        import torch

        from cellsearch.data.encoders.embedding import CharSplit, TokenEmbedding

        dim, unk, chars = int(params["embedding"]), int(params.get("unk", 1)), None
        if params.get("tokens", "pieces") == "chars":
            known = _CHAR_TABLES.get(str(params["tokenizer"]))
            if known is None and not (len(params["table"]) == 2 and 0 < np.prod(params["table"]) <= 50_000_000):
                raise ValueError(f"text input: a character table of shape {params['table']} is out of range")
            table = known if known is not None else np.zeros([int(v) for v in params["table"]], dtype=np.int64)
            chars = CharSplit(torch.from_numpy(table), int(params["max_chars"]), unk,
                              float(params["chars_per_piece"]), loaded=known is not None)
        layer = TokenEmbedding(int(params["vocab"]), dim, unk, chars)
        if params.get("init") == "cooccurrence" and chars is None:
            vectors = starting_vectors(str(params["tokenizer"]), int(params["pieces"]))
            if vectors is not None:
                layer.start_from(torch.from_numpy(vectors))
        return layer, dim

    def reuse(self, state: dict[str, Any]) -> None:
        reuse_fitted(state)

    def arch_tag(self, params: dict[str, Any]) -> str:
        return "/chars" if params.get("tokens") == "chars" else ""

    def onnx_resequence(self, g: Any, x: str, lengths: str, params: dict[str, Any], layer: Any) -> tuple[str, str]:
        """Character level (``embedding.CharSplit``) in ONNX: each piece's row of the character table,
        the real characters packed to the front (``CumSum`` places, ``ScatterElements``), the head and
        tail kept within the budget (``GatherElements``); word pieces as they are."""
        split = getattr(layer, "chars", None)
        if split is None:
            return x, lengths
        k = len(g.nodes)
        i64 = "int64"
        table = split.table.detach().cpu().numpy().astype(np.int64)
        pieces, span = table.shape
        ids = onnx_kept_ids(g, x, pieces, split.unk, f"ch{k}")
        shape = g.node("Shape", [ids])
        b = g.node("Gather", [shape, g.const("zero_v", [0], i64)])
        t = g.node("Gather", [shape, g.const("one_i", 1, i64)])
        width = g.node("Mul", [t, g.const(f"ch{k}_span", span, i64)])  # T * span: also the discard slot
        chars = g.node("Reshape", [g.node("Gather", [g.const(f"ch{k}_table", table, i64), ids], axis=0),
                                   g.node("Concat", [b, g.const("minus1_v", [-1], i64)], axis=0)])
        steps = g.node("Range", [g.const("zero_i", 0, i64), t, g.const("one_i", 1, i64)])
        real_t = g.node("Less", [g.node("Unsqueeze", [steps, g.const("ax0s", [0], i64)]),
                                 g.node("Unsqueeze", [lengths, g.const("ax1s", [1], i64)])])
        real_t = g.node("Expand", [g.node("Unsqueeze", [real_t, g.const("ax2s", [2], i64)]),
                                   g.node("Concat", [b, g.node("Unsqueeze", [t, g.const("ax0s", [0], i64)]),
                                                     g.const(f"ch{k}_span_v", [span], i64)], axis=0)])
        real = g.node("And", [g.node("Reshape", [real_t, g.node("Concat", [b, g.const("minus1_v", [-1], i64)],
                                                                           axis=0)]),
                              g.node("Greater", [chars, g.const("zero_i", 0, i64)])])
        counted = g.node("Cast", [real], to=g.INT64)
        n = g.node("ReduceSum", [counted, g.const("ax1s", [1], i64)], keepdims=0)
        slot = g.node("Where", [real, g.node("Sub", [g.node("CumSum", [counted, g.const("one_i", 1, i64)]),
                                                     g.const("one_i", 1, i64)]), width])
        full = g.node("Concat", [b, g.node("Unsqueeze", [g.node("Add", [width, g.const("one_i", 1, i64)]),
                                                         g.const("ax0s", [0], i64)])], axis=0)
        packed = g.node("ScatterElements", [g.node("ConstantOfShape", [full], value=_int64_zero()), slot, chars],
                        axis=1)  # the discard slot is written many times: its column is never read
        budget = g.const(f"ch{k}_budget", split.budget, i64)
        keep = g.node("Min", [g.node("Max", [n, g.const("one_i", 1, i64)]), budget])
        cols = g.node("Unsqueeze", [g.node("Range", [g.const("zero_i", 0, i64), g.node("ReduceMax", [keep], keepdims=0),
                                                     g.const("one_i", 1, i64)]), g.const("ax0s", [0], i64)])
        n1 = g.node("Unsqueeze", [n, g.const("ax1s", [1], i64)])
        long_doc = g.node("And", [g.node("Greater", [n1, budget]),
                                  g.node("GreaterOrEqual", [cols, g.const(f"ch{k}_head", split.budget // 4, i64)])])
        src = g.node("Where", [long_doc, g.node("Add", [g.node("Sub", [n1, budget]), cols]), cols])
        src = g.node("Min", [src, width])
        out = g.node("GatherElements", [packed, src], axis=1)
        out = g.node("Where", [g.node("Less", [cols, g.node("Unsqueeze", [keep, g.const("ax1s", [1], i64)])]), out,
                               g.const("zero_i", 0, i64)])
        return g.node("Unsqueeze", [g.node("Cast", [out], to=g.FLOAT), g.const("ax2s", [2], i64)]), keep

    def onnx_input(self, g: Any, x: str, params: dict[str, Any], layer: Any) -> str:
        """Ids as floats → int64, those outside the kept vocabulary → ``[UNK]``, one ``Gather``."""
        k = len(g.nodes)
        ids = onnx_kept_ids(g, x, layer.vocab, layer.unk, f"tok{k}")
        table = layer.embed.weight.detach().cpu().numpy().astype(np.float32)
        return g.node("Gather", [g.const(f"tok{k}_table", table, "float32"), ids], axis=0)
