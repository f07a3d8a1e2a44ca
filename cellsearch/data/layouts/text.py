"""The text layout: one row per document — ``id?, text, label[, split]`` — for text classification
and regression (sentiment, topics, ratings).

A column of free text (strings, mostly distinct, several words each) is found by detection, or
named by ``--text-col``. Its documents become sequences of WordPiece token ids through the text
encoder (``cellsearch.data.encoders.text``), whose tokenizer is trained on the training rows only;
the model reads them through an embedding. Other columns are ignored (with a note).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cellsearch.data.detect import Columns, Schema
from cellsearch.data.encoders import get_encoder
from cellsearch.data.encoders.text import documents, looks_like_text, remember_training_ids, token_ids
from cellsearch.data.layouts.base import Inputs, Layout, guess_target, sequence_task, wants_series
from cellsearch.data.options import DataOptions
from cellsearch.data.preprocessing import Preprocessing, Scaler
from cellsearch.data.splits import SplitTensors, sequence_splits, split_from_column, split_order, split_views
from cellsearch.errors import UserError
from cellsearch.tasks import get_task


def text_column(df: pd.DataFrame, found: Columns, opts: DataOptions, path: Path | None = None) -> str | None:
    """``--text-col`` (refused if the file lacks it), else the first column of free text without a role."""
    if opts.text_col:
        if opts.text_col not in df.columns:
            raise UserError(f"{path}: --text-col {opts.text_col!r} is not a column (columns: {', '.join(df.columns)})")
        return opts.text_col
    return next((c for c in found.rest(df) if c != found.target and looks_like_text(df[c])), None)


class TextLayout(Layout):
    name: ClassVar[str] = "text"
    priority: ClassVar[int] = 5

    def recognises(self, df: pd.DataFrame, found: Columns, opts: DataOptions) -> bool:
        """One row per document (ids do not repeat) and a column of free text (or ``--text-col``)."""
        if opts.text_col:
            return True
        if found.ids_repeat(df) or wants_series(opts):
            return False
        return text_column(df, found, opts) is not None

    def schema(self, df: pd.DataFrame, found: Columns, opts: DataOptions, path: Path,
               warnings: list[str]) -> Schema:
        if found.ids_repeat(df):
            raise UserError(f"{path}: the text layout has one row per document, but id column "
                            f"{found.id_col!r} repeats")
        text = text_column(df, found, opts, path)
        if text is None:
            raise UserError(f"{path}: no column of free text found; name it with --text-col")
        if text == found.target:
            raise UserError(f"{path}: --text-col and --target name the same column {text!r}")
        target = guess_target(df, dataclasses.replace(found, used=found.used | {text}), self.target_names, path,
                              warnings)
        ignored = [c for c in found.rest(df) if c not in (text, target)]
        if ignored:
            warnings.append(f"text layout: columns other than the text and the target are ignored: "
                            f"{', '.join(ignored)}")
        return Schema(self.name, sequence_task(opts, df[target], warnings), target, found.id_col, None,
                      found.split_col, [text], {"text_col": text})

    def build(self, df: pd.DataFrame, schema: Schema, opts: DataOptions, path: Path, warnings: list[str]
              ) -> tuple[dict[str, SplitTensors], dict[str, Any]]:
        text = schema.layout_data["text_col"]
        first = df[schema.target]
        if first.isna().any():
            raise UserError(f"{path}: target column {schema.target!r} has {int(first.isna().sum())} missing values")
        keys = df[schema.id_col].to_numpy() if schema.id_col else np.arange(len(df))
        given = split_from_column(df, schema.split_col, path) if schema.split_col else None
        assign = sequence_splits(given, first, schema.task, opts, path)
        y, target_info = get_task(schema.task).encode_target(first.reset_index(drop=True), assign == "train",
                                                             path, schema.target)
        docs = documents(df[text])
        train = assign == "train"
        state = {"kind": "text", **get_encoder("text").fit(pd.Series([d for d, t in zip(docs, train) if t]), text,
                                                           path, max_tokens=opts.max_tokens)}
        x, lengths, cut, full = token_ids(docs, state)
        budget = state["max_tokens"]
        if cut:
            warnings.append(f"text: {cut:,} of {len(docs):,} documents are longer than {budget} tokens; each keeps "
                            f"its first {budget // 4} and its last {budget - budget // 4} (--max-tokens sets the "
                            "budget)")
        remember_training_ids(state, x[train], lengths[train])  # the embedding's starting vectors
        seq_order = split_order(assign)
        splits = split_views(x[seq_order], seq_order, assign, lengths, y, keys)
        stats = {"documents": len(docs), "vocabulary": int(state["vocab"]), "max_tokens": budget, "cut": int(cut),
                 "max_chars": int(state["max_chars"]), "chars_per_piece": float(state["chars_per_piece"]),
                 "tokens": {"median": float(np.median(full)), "p95": float(np.percentile(full, 95)),
                            "max": int(full.max())}}
        return splits, {"inputs": [text], "scaler": Scaler([0.0], [1.0]), "encoders": {text: state},
                        "layout_data": {**schema.layout_data, "text_stats": stats}, **target_info}

    def transform(self, df: pd.DataFrame, prep: Preprocessing, path: Path) -> Inputs:
        text = prep.layout_data["text_col"]
        x, lengths, _, _ = token_ids(documents(df[text]), prep.encoders[text])
        keys = df[prep.id_col].to_numpy() if prep.id_col else np.arange(len(df))
        return Inputs(x, lengths, keys)

    def input_columns(self, prep: Preprocessing) -> list[str]:
        return [prep.layout_data["text_col"]]

    def example(self, df: pd.DataFrame, prep: Preprocessing) -> pd.DataFrame:
        return df.head(2).reset_index(drop=True)

    def step_labels(self, prep: Preprocessing, x: np.ndarray, length: int) -> list[str] | None:
        """The document's word pieces (``##ing`` continues the word before it)."""
        from cellsearch.data.encoders.text import load_tokenizer

        tok = load_tokenizer(prep.encoders[prep.layout_data["text_col"]])
        return [tok.id_to_token(int(v)) or "[UNK]" for v in x[:length, 0]]

    def references(self, prep: Preprocessing) -> tuple[str, ...]:
        """TF-IDF of word and character n-grams with a linear model: token ids are not numbers."""
        return ("tfidf",)

    def summary(self, prep: Preprocessing) -> dict[str, Any]:
        return {"text": {"column": prep.layout_data["text_col"], **prep.layout_data.get("text_stats", {})}}

    def split_source(self, schema: Schema) -> str:
        return "by document" + (", stratified" if get_task(schema.task).labels else "")
