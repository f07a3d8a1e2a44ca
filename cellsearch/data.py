"""Read a sequence CSV in any of the three layouts into padded tensors, with fitted preprocessing.

Layouts (see DESIGN.md): **long** (one row per step, an id column groups sequences, the target is
constant within a sequence), **wide** (one row per sequence; ordered numeric columns such as
``x0..x99`` are the steps; several prefixes with the same suffixes, ``a0..a9, b0..b9``, give several
features per step) and **series** (one or several time series, forecasting ``horizon`` values from a
``window`` of past steps). Every guess can be overridden.

Design choices, documented in the README:

* Text feature columns with at most ``MAX_CATEGORIES`` distinct values are one-hot encoded (the
  categories seen in the training split; an unseen value encodes as all zeros); text columns with
  more distinct values are refused with a clear message.
* Missing or infinite feature values are refused (column and count) unless ``fill`` is ``ffill``
  (forward fill within each sequence, then zero) or ``zero``.
* Scalers are fitted on the training split only. For forecasting, each series is normalised by the
  mean and standard deviation of its own training part, so scores are scale-free across series.

Everything is vectorised (Arrow's CSV reader, NumPy grouping and scatter), never a loop over rows.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.errors import UserError

LAYOUTS = ("long", "wide", "series")
TASKS = ("classification", "regression", "forecasting")
FILLS = ("ffill", "zero")
SPLITS = ("train", "val", "test")
MAX_CATEGORIES = 32
MAX_CLASSES = 20

_ID_NAMES = ("id", "seq", "seq_id", "sequence", "sequence_id", "series", "series_id", "unique_id",
             "sample", "sample_id", "subject", "item_id", "group")
_TIME_NAMES = ("time", "t", "step", "timestep", "time_step", "timestamp", "date", "datetime", "ds",
               "order", "frame", "index", "idx", "month", "year", "day", "period")
_TARGET_NAMES = ("label", "target", "y", "class", "category", "outcome")
_SERIES_TARGET_NAMES = ("value", "y", "target", "sales", "demand", "load")


@dataclass(frozen=True)
class DataOptions:
    """How to read a file; every field left ``None`` is detected."""

    layout: str | None = None
    target: str | None = None
    id_col: str | None = None
    time_col: str | None = None
    task: str | None = None
    window: int | None = None
    horizon: int | None = None
    fill: str | None = None
    seed: int = 0
    val_size: float = 0.15
    test_size: float = 0.15

    def validate(self) -> None:
        if self.layout is not None and self.layout not in LAYOUTS:
            raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.task is not None and self.task not in TASKS:
            raise UserError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.fill is not None and self.fill not in FILLS:
            raise UserError(f"--fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        for name in ("window", "horizon"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"--{name} must be at least 1, got {v}")
        if not (0 <= self.val_size < 1 and 0 <= self.test_size < 1 and self.val_size + self.test_size < 1):
            raise UserError("validation and test fractions must be in [0, 1) and sum below 1")


@dataclass
class SplitTensors:
    """One split: padded inputs (N, T, F) float32, lengths (N,), targets, and sequence keys."""

    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)


@dataclass
class Dataset:
    """What ``read_dataset`` returns: tensors per split, the fitted preprocessing and a summary."""

    splits: dict[str, SplitTensors]
    preprocessing: dict[str, Any]
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.preprocessing["task"]

    @property
    def n_features(self) -> int:
        return len(self.preprocessing["inputs"])

    @property
    def n_outputs(self) -> int:
        """Classes for classification, 1 for regression, the horizon for forecasting."""
        p = self.preprocessing
        if p["task"] == "classification":
            return len(p["classes"])
        return p["horizon"] if p["task"] == "forecasting" else 1


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

def _check_text_file(path: Path) -> bytes:
    """Refuse a missing, empty, binary or non-UTF-8 file; returns its first 64 kB."""
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a CSV file")
    with path.open("rb") as fh:
        head = fh.read(65536)
    if not head.strip():
        raise UserError(f"{path}: file is empty")
    if b"\x00" in head:
        raise UserError(f"{path}: not a text CSV file (binary content)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut at the end is fine
            raise UserError(f"{path}: not a UTF-8 text CSV file (byte {exc.start})") from None
    return head


def _ragged_row(path: Path, delimiter: str = ",") -> tuple[int, int, int] | None:
    """On a parse error only: find the first line whose field count differs from the header's."""
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, [])
        for lineno, row in enumerate(reader, start=2):
            if row and len(row) != len(header):
                return lineno, len(row), len(header)
    return None


_BLOCK = 1 << 18  # bytes per parse block: Arrow queues up to 32 blocks ahead, so small keeps that small
# Arrow's missing-value spellings, plus "?" (UCI data sets) and "None".
_NULLS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "N/A", "NA",
          "NULL", "NaN", "n/a", "nan", "null", "None", "?"]


def _sniff_delimiter(head: bytes) -> str:
    """The field separator, from the header line at the start of ``head``: a comma unless the header
    has none and does have semicolons, tabs or pipes (European and tab-separated exports)."""
    header = head.split(b"\n", 1)[0]
    if b"," in header:
        return ","
    counts = {d: header.count(d.encode()) for d in (";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _may_be_key(name: str, keys: set[str]) -> bool:
    """Whether a column could be detected as the id or time column: those keep float64, so that a
    fractional timestamp or a large float id keeps its order and identity."""
    low = name.strip().lower()
    return name.strip() in keys or low in _ID_NAMES or low in _TIME_NAMES or low.endswith("id")


def _read_columns(path: Path, keys: set[str], delimiter: str = ",") -> tuple[list[str], dict[str, Any]]:
    """The file's column names and columns, float columns as float32 (the models train in float32)
    except those that may be keys (``_may_be_key``).

    Streams the file in small blocks into preallocated NumPy columns, so peak memory is about the
    final columns plus a few MB; the float columns are learnt from the first megabyte. If a later
    block disagrees with those types (an integer column turning float), the file is read again in
    one piece with full type inference.
    """
    import pyarrow as pa
    from pyarrow import csv as pacsv

    # Arrow's default allocator (mimalloc) keeps freed blocks: the system one gives them back.
    pa.set_memory_pool(pa.system_memory_pool())

    def convert(types: dict[str, Any]) -> Any:
        return pacsv.ConvertOptions(strings_can_be_null=True, column_types=types, null_values=_NULLS)

    parse = pacsv.ParseOptions(delimiter=delimiter)

    size = path.stat().st_size
    with path.open("rb") as fh:  # the first megabyte (at least the header and a row), cut at a line end
        head = fh.read(1 << 20)
        while head.count(b"\n") < 2 and len(head) < size:
            head += fh.read(1 << 20)
    if len(head) < size and b"\n" in head:
        head = head[:head.rindex(b"\n") + 1]
    probe = pacsv.read_csv(pa.py_buffer(head), parse_options=parse, convert_options=convert({})).schema
    names = list(probe.names)
    types = {f.name: pa.float32() for f in probe if pa.types.is_floating(f.type) and not _may_be_key(f.name, keys)}
    if len(set(names)) < len(names):  # before any column is keyed by name
        return names, {}
    # A block must hold whole rows, and enough of them that per-block costs stay small when a file
    # has thousands of columns.
    longest = max(len(line) for line in head.split(b"\n"))
    block = min(max(_BLOCK, 64 * longest), 1 << 30)
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block), parse_options=parse,
                                convert_options=convert(types))
        return names, _collect(reader, reader.schema, lambda b: 1.25 * size * b.num_rows / min(block, size))
    except pa.ArrowInvalid as exc:
        if "straddl" in str(exc):  # a line far longer than those of the first megabyte
            block = min(size + 1, 1 << 30)
        elif "conversion error" not in str(exc):
            raise
    # A later block disagrees with the first one's types: read in one go with full type inference.
    table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=max(block, 1 << 20)),
                           parse_options=parse, convert_options=convert({}))
    table = table.cast(pa.schema([pa.field(f.name, pa.float32())
                                  if pa.types.is_floating(f.type) and not _may_be_key(f.name, keys) else f
                                  for f in table.schema]))
    return names, _collect(table.to_batches(), table.schema, lambda b: table.num_rows)


class _NumericColumn:
    """A numeric column filled batch by batch into one preallocated NumPy array.

    Pages of ``np.empty`` that are never written are never resident, so a generous capacity costs
    nothing; the array grows (one copy) only if the estimate was short. Nulls become NaN: float
    columns carry them in place, integer columns turn float64 at the end (as pandas would).
    """

    def __init__(self, dtype: np.dtype, capacity: int) -> None:
        self.data = np.empty(capacity, dtype=dtype)
        self.n = 0
        self.null_rows: list[np.ndarray] = []

    def append(self, arr: Any) -> None:
        m = len(arr)
        if self.n + m > len(self.data):
            grown = np.empty(max(2 * len(self.data), self.n + m), dtype=self.data.dtype)
            grown[:self.n] = self.data[:self.n]
            self.data = grown
        if arr.null_count and self.data.dtype.kind != "f":
            self.null_rows.append(self.n + np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False)))
            arr = arr.fill_null(0)
        self.data[self.n:self.n + m] = arr.to_numpy(zero_copy_only=False)
        self.n += m

    def finish(self) -> np.ndarray:
        out = self.data[:self.n]
        if self.null_rows:
            out = out.astype(np.float64)
            out[np.concatenate(self.null_rows)] = np.nan
        return out


def _collect(batches: Any, schema: Any, rows_hint: Any) -> dict[str, Any]:
    """Columns of a stream of Arrow record batches: numeric ones as NumPy arrays written in place
    (no per-batch copies kept), others (text, booleans, dates) as pandas columns via Arrow.

    Batches are taken a few MB at a time (more with many columns), so a file with thousands of
    columns costs a few thousand column copies per group, not per parse block.
    ``rows_hint(first_batch)`` estimates the total number of rows, to size the numeric arrays.
    """
    import pyarrow as pa

    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in schema]
    cols: list[Any] | None = None
    group: list[Any] = []
    row_bytes = 1.0  # from the first batch (``nbytes`` walks every column: once, not per batch)
    group_bytes = max(4 << 20, 2048 * len(schema))

    def flush() -> None:
        for j, col in enumerate(cols):
            chunks = [b.column(j) for b in group]
            col.append(chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks))
        group.clear()

    for batch in batches:
        if cols is None:
            capacity = max(int(rows_hint(batch)), batch.num_rows)
            cols = [_NumericColumn(f.type.to_pandas_dtype(), capacity) if k else []
                    for f, k in zip(schema, numeric)]
            row_bytes = batch.nbytes / max(batch.num_rows, 1)
        group.append(batch)
        if row_bytes * sum(b.num_rows for b in group) >= group_bytes:
            flush()
        del batch
    if cols is None:
        return {f.name: pa.chunked_array([], type=f.type).to_pandas() for f in schema}
    if group:
        flush()
    return {f.name: c.finish() if isinstance(c, _NumericColumn) else pa.chunked_array(c, type=f.type).to_pandas()
            for f, c in zip(schema, cols)}


def _release_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS after the parse (a no-op elsewhere)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_csv(path: str | Path, keys: Iterable[str | None] = ()) -> pd.DataFrame:
    """Read a CSV with Arrow's streaming reader; every problem becomes one ``UserError``.

    Float columns are float32 except possible id and time columns, and the columns named in ``keys``
    (``--id-col``, ``--time-col``), which keep float64.
    """
    import pyarrow as pa

    path = Path(path)
    delimiter = _sniff_delimiter(_check_text_file(path))
    try:
        names, columns = _read_columns(path, {k for k in keys if k}, delimiter)
    except pa.ArrowInvalid as exc:
        bad = _ragged_row(path, delimiter)
        if bad:
            raise UserError(f"{path}: line {bad[0]} has {bad[1]} fields, the header has {bad[2]}") from None
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: cannot parse as CSV ({first})") from None
    _release_freed_memory()
    stripped = [str(c).strip() for c in names]
    if not stripped:
        raise UserError(f"{path}: no columns")
    if len(set(stripped)) != len(stripped):
        dup = sorted({c for c in stripped if stripped.count(c) > 1})
        raise UserError(f"{path}: duplicate column names: {', '.join(dup)}")
    df = pd.DataFrame({new: columns[old] for old, new in zip(names, stripped)}, copy=False)
    if len(df) == 0:
        raise UserError(f"{path}: has a header but no data rows")
    return df


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------

def _find(columns: list[str], names: tuple[str, ...], exclude: set[str]) -> str | None:
    lower = {c.lower(): c for c in columns if c not in exclude}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _need_column(df: pd.DataFrame, name: str, flag: str, path: Path) -> str:
    if name not in df.columns:
        raise UserError(f"{path}: {flag} column {name!r} not found; columns are: {', '.join(df.columns)}")
    return name


def _id_from_time(df: pd.DataFrame, time_col: str, candidates: list[str]) -> str | None:
    """The column that, together with the time column, identifies rows uniquely: text columns
    first, then integer columns, fewest distinct values first."""
    n = len(df)
    scored = []
    for c in candidates:
        s = df[c]
        if pd.api.types.is_float_dtype(s):
            continue
        k = s.nunique(dropna=False)
        if 1 < k <= n // 2:
            scored.append((_is_numeric(s), k, c))
    for _, _, c in sorted(scored):
        if not df.duplicated([c, time_col]).any():
            return c
    return None


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


_SUFFIX = re.compile(r"^(.*?)(\d+)$")


def _wide_groups(columns: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """Columns that look like ordered steps: ``x0..xN`` (one or more prefixes sharing suffixes)."""
    groups: dict[str, dict[int, str]] = {}
    for c in columns:
        m = _SUFFIX.match(c)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = c
    groups = {p: g for p, g in groups.items() if len(g) >= 3}
    if not groups:
        return None
    sizes = sorted({len(g) for g in groups.values()}, reverse=True)
    best = [p for p, g in groups.items() if len(g) == sizes[0]]
    suffixes = sorted(groups[best[0]])
    prefixes = [p for p in best if sorted(groups[p]) == suffixes]
    steps = [[groups[p][s] for p in prefixes] for s in suffixes]
    return prefixes, steps


def _integral(values: np.ndarray) -> bool:
    v = values[np.isfinite(values)]
    return bool(len(v)) and bool(np.all(np.mod(v, 1) == 0))


def _detect_task(target: pd.Series) -> str:
    if not _is_numeric(target):
        return "classification"
    v = target.to_numpy(dtype=float, na_value=np.nan)
    if _integral(v) and len(np.unique(v[np.isfinite(v)])) <= MAX_CLASSES:
        return "classification"
    return "regression"


@dataclass
class _Schema:
    layout: str
    task: str
    target: str
    id_col: str | None
    time_col: str | None
    split_col: str | None
    features: list[str]
    wide_steps: list[list[str]] | None = None


def detect(df: pd.DataFrame, opts: DataOptions, path: Path) -> tuple[_Schema, list[str]]:
    """Decide layout, columns and task from the frame and the overrides."""
    warnings: list[str] = []
    cols = list(df.columns)
    split_col = next((c for c in cols if c.lower() == "split"), None)
    used: set[str] = {split_col} if split_col else set()
    target = _need_column(df, opts.target, "--target", path) if opts.target else None
    id_col = _need_column(df, opts.id_col, "--id-col", path) if opts.id_col else None
    time_col = _need_column(df, opts.time_col, "--time-col", path) if opts.time_col else None
    if target:
        used.add(target)
    if id_col is None:
        id_col = _find(cols, _ID_NAMES, used | {time_col} if time_col else used)
        if id_col is None:
            id_col = next((c for c in cols if c not in used and c != time_col
                           and c.lower().endswith(("_id", "id")) and c.lower() != "id"
                           and not _SUFFIX.match(c)), None)
    if id_col:
        used.add(id_col)
    if time_col is None:
        time_col = _find(cols, _TIME_NAMES, used)
    if time_col:
        used.add(time_col)
    if id_col is None and time_col and df[time_col].duplicated().any():
        # Repeated time values: some other column must tell the sequences apart (e.g. "store").
        id_col = _id_from_time(df, time_col, [c for c in cols if c not in used])
        if id_col:
            used.add(id_col)

    layout = opts.layout
    if id_col and df[id_col].nunique(dropna=False) == len(df) and layout is None:
        # Unique ids: one row per sequence. The id is a key, not a grouping.
        layout = "wide" if _wide_groups([c for c in cols if c not in used]) else None
    if layout is None:
        if id_col and df[id_col].nunique(dropna=False) < len(df):
            rest = [c for c in cols if c not in used]
            tgt = target or _find(cols, _TARGET_NAMES, used) or (rest[-1] if rest else None)
            if tgt and opts.task != "forecasting":
                varying = (df.groupby(id_col, sort=False)[tgt].nunique(dropna=False) > 1).mean()
                layout = "series" if (varying > 0.5 and _is_numeric(df[tgt])) else "long"
            else:
                layout = "series"
        elif opts.task == "forecasting" or time_col:
            layout = "series"
        elif _wide_groups([c for c in cols if c not in used]):
            layout = "wide"
        else:
            layout = "series"
    if opts.task == "forecasting" and layout != "series":
        raise UserError("--task forecasting needs the series layout (or --layout series)")
    if layout == "series" and opts.task not in (None, "forecasting"):
        raise UserError(f"the series layout is for forecasting; --task {opts.task} needs long or wide data")

    if layout != "long" and layout != "series" and id_col and df[id_col].nunique() < len(df):
        raise UserError(f"{path}: the wide layout has one row per sequence, but id column {id_col!r} repeats")

    if target is None:
        names = _SERIES_TARGET_NAMES if layout == "series" else _TARGET_NAMES
        target = _find(cols, names, used)
        if target is None:
            rest = [c for c in cols if c not in used]
            if layout == "series":
                numeric = [c for c in rest if _is_numeric(df[c])]
                target = numeric[-1] if numeric else None
            elif rest:
                target = rest[-1]
            if target is None:
                raise UserError(f"{path}: no target column found; pass --target (columns: {', '.join(cols)})")
            warnings.append(f"target column guessed as {target!r} (override with --target)")
        used.add(target)
    if layout == "long" and not id_col:
        raise UserError(f"{path}: the long layout needs an id column; pass --id-col (columns: {', '.join(cols)})")

    task = opts.task or ("forecasting" if layout == "series" else _detect_task(df[target]))
    if task == "forecasting" and not _is_numeric(df[target]):
        raise UserError(f"{path}: forecasting needs a numeric target; column {target!r} is text")
    if task == "regression" and not _is_numeric(df[target]):
        raise UserError(f"{path}: regression needs a numeric target; column {target!r} is text")

    wide_steps = None
    if layout == "wide":
        found = _wide_groups([c for c in cols if c not in used])
        if not found:
            raise UserError(f"{path}: the wide layout needs ordered step columns such as x0, x1, x2, ...")
        prefixes, wide_steps = found
        features = [p or "value" for p in prefixes]
        step_cols = {c for row in wide_steps for c in row}
        ignored = [c for c in cols if c not in used and c not in step_cols]
        if ignored:
            warnings.append(f"wide layout: columns not used as steps are ignored: {', '.join(ignored)}")
    else:
        features = [c for c in cols if c not in used]
        if layout == "series" and target not in features:
            features = [target] + features
    schema = _Schema(layout, task, target, id_col, time_col, split_col, features, wide_steps)
    return schema, warnings


# --------------------------------------------------------------------------------------------------
# Grouping into sequences
# --------------------------------------------------------------------------------------------------

def _group_order(df: pd.DataFrame, id_col: str | None, time_col: str | None, path: Path
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row order grouped by sequence (first appearance) and sorted by time within each.

    Returns (order, codes_sorted, starts, keys): ``order`` permutes rows, ``codes_sorted[k]`` is the
    sequence index of sorted row k, ``starts`` the first sorted row of each sequence, ``keys`` the ids.
    """
    n = len(df)
    if id_col:
        codes, keys = pd.factorize(df[id_col], use_na_sentinel=False)
    else:
        codes, keys = np.zeros(n, dtype=np.int64), np.array(["series"], dtype=object)
    codes = np.asarray(codes, dtype=np.int64)
    if time_col:
        t = df[time_col]
        if t.isna().any():
            raise UserError(f"{path}: time column {time_col!r} has {int(t.isna().sum())} missing values")
        if not _is_numeric(t):
            parsed = pd.to_datetime(t, errors="coerce", format="mixed")
            if parsed.isna().any():
                codes_t, _ = pd.factorize(t, sort=True)
                tv = codes_t.astype(np.int64)
            else:
                tv = parsed.to_numpy().astype("datetime64[ns]").astype(np.int64)
        else:
            tv = t.to_numpy()
        order = np.lexsort((tv, codes))
        ts = tv[order]
        cs = codes[order]
        dup = (cs[1:] == cs[:-1]) & (ts[1:] == ts[:-1])
        if dup.any():
            k = int(np.argmax(dup))
            row = int(order[k + 1]) + 2  # 1-based line number with the header
            raise UserError(f"{path}: duplicate time value {_py(t.iloc[order[k + 1]])!r} in sequence "
                            f"{_py(keys[cs[k]])!r} (column {time_col!r}, line {row})")
    else:
        order = np.argsort(codes, kind="stable")
        cs = codes[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    return order, cs, starts, np.asarray(keys)


# --------------------------------------------------------------------------------------------------
# Features, missing values, scaling
# --------------------------------------------------------------------------------------------------

def _plan_inputs(df: pd.DataFrame, features: list[str], train_rows: np.ndarray, path: Path,
                 categories: dict[str, list[str]] | None = None
                 ) -> tuple[list[tuple[str, str | None]], list[str], dict[str, list[str]]]:
    """The model's inputs as (column, one-hot level or None), their names and the text categories.

    Numeric and boolean columns are inputs as they are; a text column with at most
    ``MAX_CATEGORIES`` values (learnt from ``train_rows`` unless ``categories`` are given) becomes one
    0/1 input per value.
    """
    plan: list[tuple[str, str | None]] = []
    cats = {} if categories is None else categories
    for c in features:
        s = df[c]
        if pd.api.types.is_bool_dtype(s) or _is_numeric(s):
            plan.append((c, None))
            continue
        if categories is None:
            seen = pd.unique(s[train_rows].dropna().astype(str))
            if len(seen) > MAX_CATEGORIES:
                raise UserError(f"{path}: text column {c!r} has {len(seen)} distinct values; cellsearch "
                                f"one-hot encodes at most {MAX_CATEGORIES} (drop it or make it numeric)")
            cats[c] = sorted(seen.tolist())
        plan.extend((c, v) for v in cats[c])
    if not plan:
        raise UserError(f"{path}: no numeric feature column (columns: {', '.join(df.columns)})")
    return plan, [_input_name(c, level) for c, level in plan], cats


def _input_name(column: str, level: str | None) -> str:
    """An input's name: the column, or ``column=level`` for a one-hot input."""
    return column if level is None else f"{column}={level}"


def _input_column(df: pd.DataFrame, column: str, level: str | None, categories: dict[str, list[str]],
                  codes_cache: dict[str, np.ndarray]) -> np.ndarray:
    """One model input in file order as float32 (missing values NaN; an unseen text value is all 0)."""
    if level is None:
        return df[column].to_numpy(dtype=np.float32, na_value=np.nan)
    if column not in codes_cache:
        codes_cache.clear()  # one text column's codes at a time
        codes_cache[column] = pd.Categorical(df[column].astype("string"), categories=categories[column]).codes
    return (codes_cache[column] == categories[column].index(level)).astype(np.float32)


def _encode_features(df: pd.DataFrame, features: list[str], train_rows: np.ndarray, path: Path,
                     categories: dict[str, list[str]] | None = None
                     ) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """All inputs as one (rows, inputs) float32 matrix in file order (see ``_plan_inputs``)."""
    plan, names, cats = _plan_inputs(df, features, train_rows, path, categories)
    out = np.empty((len(df), len(plan)), dtype=np.float32)
    cache: dict[str, np.ndarray] = {}
    for j, (c, level) in enumerate(plan):
        out[:, j] = _input_column(df, c, level, cats, cache)
    return out, names, cats


def _missing_error(path: Path, counts: dict[str, int]) -> UserError:
    worst = [f"{name!r} ({n})" for name, n in counts.items()]
    return UserError(f"{path}: missing or infinite values in feature column(s) {', '.join(worst)}; "
                     "pass --fill ffill or --fill zero")


def _handle_missing(values: np.ndarray, names: list[str], codes: np.ndarray, starts: np.ndarray,
                    fill: str | None, path: Path) -> np.ndarray:
    """Refuse non-finite values (column and count) or fill them: ``ffill`` within each sequence
    (rows sorted by sequence and time), then zero."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    if fill is None:
        counts = bad.sum(axis=0)
        raise _missing_error(path, {names[j]: int(counts[j]) for j in np.flatnonzero(counts)})
    values = values.copy()
    values[np.isinf(values)] = np.nan
    if fill == "ffill":
        # Forward fill within each sequence: index of the last finite row at or before each row.
        n = len(values)
        idx = np.where(np.isfinite(values), np.arange(n)[:, None], -1)
        np.maximum.accumulate(idx, axis=0, out=idx)
        seq_start = starts[codes][:, None]
        ok = idx >= seq_start
        filled = values[np.where(ok, idx, 0), np.arange(values.shape[1])[None, :]]
        values = np.where(ok, filled, np.nan)
    return np.nan_to_num(values, nan=0.0)


def _fill_padded(values: np.ndarray, fill: str) -> None:
    """Fill the non-finite values of one input in the padded array, in place: ``ffill`` along each
    sequence's steps (padding comes after a sequence's last step, so it never feeds a real one;
    a leading gap becomes 0), ``zero`` writes 0."""
    finite = np.isfinite(values)
    if fill == "ffill":
        idx = np.where(finite, np.arange(values.shape[1])[None, :], -1)
        np.maximum.accumulate(idx, axis=1, out=idx)
        filled = np.take_along_axis(values, np.maximum(idx, 0), axis=1)
        values[...] = np.where(idx >= 0, filled, 0.0)
    else:
        values[~finite] = 0.0


def _scatter_inputs(df: pd.DataFrame, plan: list[tuple[str, str | None]], categories: dict[str, list[str]],
                    dest: np.ndarray, out: np.ndarray, lengths: np.ndarray, fill: str | None, path: Path,
                    train_seq: np.ndarray | None = None, scaler: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Write every input into the padded array ``out`` (sequences, steps, inputs) and standardise it.

    File row i goes to flat position ``dest[i]`` (sequence x steps + step). Missing values are
    refused (every column's count in one message) or filled within each sequence, in raw units;
    then the inputs are standardised in place by ``scaler``, or by one fitted on the real steps of
    the sequences marked in ``train_seq``; padding stays zero. Returns (mean, std).

    One column at a time and in place: no (rows x inputs) matrix and no reordered copy, so the long
    layout's memory peak is the file's columns plus the padded array.
    """
    n_seq, steps, n_in = out.shape
    flat = out.reshape(-1, n_in)
    missing: dict[str, int] = {}
    cache: dict[str, np.ndarray] = {}
    for j, (c, level) in enumerate(plan):
        col = _input_column(df, c, level, categories, cache)
        bad = len(col) - int(np.count_nonzero(np.isfinite(col)))
        if bad and fill is None:
            missing[_input_name(c, level)] = bad
            continue
        flat[dest, j] = col
        if bad:
            _fill_padded(out[:, :, j], fill)
    if missing:
        raise _missing_error(path, missing)
    return _standardise_padded(out, np.arange(steps)[None, :] < lengths[:, None], train_seq, scaler)


def _standardise_padded(x: np.ndarray, real: np.ndarray, train_seq: np.ndarray | None = None,
                        scaler: tuple[Any, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Standardise a padded (sequences, steps, inputs) float32 array in place and zero its padding.

    ``real`` marks the real steps; the scaler is ``scaler`` or fitted on the real steps of the
    sequences marked in ``train_seq``. Returns (mean, std).
    """
    if scaler is None:
        mean, std = _fit_scaler(x.reshape(-1, x.shape[-1]), (real & train_seq[:, None]).ravel())
    else:
        mean, std = np.asarray(scaler[0], dtype=np.float64), np.asarray(scaler[1], dtype=np.float64)
    x -= mean.astype(np.float32)
    x /= std.astype(np.float32)
    x[~real] = 0.0
    return mean, std


def _padded_rows(order: np.ndarray, codes: np.ndarray, starts: np.ndarray, steps: int,
                 seq_index: np.ndarray | None = None) -> np.ndarray:
    """Each file row's row in a (sequences x ``steps``) padded array, from ``_group_order``'s
    ``order``, ``codes`` and ``starts`` (``seq_index`` renumbers the sequences)."""
    pos = np.arange(len(codes), dtype=np.int64)
    pos -= starts[codes]
    pos += (codes if seq_index is None else seq_index[codes]) * steps
    dest = np.empty(len(order), dtype=np.int64)
    dest[order] = pos
    return dest


def _fit_scaler(values: np.ndarray, rows: np.ndarray, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``values[rows]`` (``rows`` a boolean mask) in float64, a chunk
    of rows at a time (no full-size copies or index arrays)."""
    f = values.shape[1]
    n = int(np.count_nonzero(rows))
    if n == 0:
        return np.zeros(f), np.ones(f)
    s1, s2 = np.zeros(f), np.zeros(f)
    shift = values[int(np.argmax(rows))].astype(np.float64)  # shifted sums keep the variance accurate
    for k in range(0, len(values), chunk):
        block = values[k:k + chunk][rows[k:k + chunk]].astype(np.float64) - shift
        s1 += block.sum(axis=0)
        s2 += np.square(block).sum(axis=0)
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0))
    return mean + shift, np.where(std > 1e-12, std, 1.0)


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------

def _split_from_column(df: pd.DataFrame, split_col: str, path: Path) -> np.ndarray:
    s = df[split_col].astype("string").str.strip().str.lower()
    s = s.replace({"validation": "val", "valid": "val", "dev": "val"})
    bad = ~s.isin(SPLITS) | s.isna()
    if bad.any():
        values = sorted(set(df[split_col][bad].astype(str).unique()))[:5]
        raise UserError(f"{path}: column {split_col!r} has values other than train/val/test: "
                        f"{', '.join(values)} (line {int(np.flatnonzero(bad.to_numpy())[0]) + 2})")
    return s.to_numpy(dtype=object)


def _assign_sequences(n: int, labels: np.ndarray | None, opts: DataOptions) -> np.ndarray:
    """Random (stratified where possible) train/val/test assignment of whole sequences."""
    rng = np.random.default_rng(opts.seed)
    out = np.empty(n, dtype=object)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == v) for v in np.unique(labels)]
    for idx in groups:
        idx = rng.permutation(idx)
        n_test = int(round(len(idx) * opts.test_size))
        n_val = int(round(len(idx) * opts.val_size))
        if len(idx) >= 3:
            n_test = max(n_test, 1 if opts.test_size > 0 else 0)
            n_val = max(n_val, 1 if opts.val_size > 0 else 0)
        out[idx[:n_test]] = "test"
        out[idx[n_test:n_test + n_val]] = "val"
        out[idx[n_test + n_val:]] = "train"
    return out


def _sequence_splits(given: np.ndarray | None, first: pd.Series, task: str, opts: DataOptions,
                     path: Path) -> np.ndarray:
    """One set per sequence: as the split column gives it, else random (stratified by class for
    classification); the training set must not be empty."""
    if given is None:
        strat = first.astype(str).to_numpy() if task == "classification" else None
        given = _assign_sequences(len(first), strat, opts)
    if not (given == "train").any():
        raise UserError(f"{path}: the training split is empty")
    return given


# --------------------------------------------------------------------------------------------------
# Building each layout
# --------------------------------------------------------------------------------------------------

def _sequence_targets(df: pd.DataFrame, schema: _Schema, order: np.ndarray, starts: np.ndarray,
                      codes: np.ndarray, keys: np.ndarray, path: Path) -> pd.Series:
    """The one target value per sequence; refuses sequences whose target changes."""
    tgt = df[schema.target].iloc[order].reset_index(drop=True)
    if tgt.isna().any():
        raise UserError(f"{path}: target column {schema.target!r} has {int(tgt.isna().sum())} missing values")
    first = tgt.iloc[starts].reset_index(drop=True)
    differs = tgt.to_numpy() != first.to_numpy()[codes]
    if differs.any():
        k = int(np.flatnonzero(differs)[0])
        seq = _py(keys[codes[k]])
        raise UserError(f"{path}: sequence {seq!r} has more than one target value in {schema.target!r} "
                        f"({first.iloc[codes[k]]!r} and {tgt.iloc[k]!r}, line {int(order[k]) + 2})")
    return first


def _encode_target(first: pd.Series, task: str, train: np.ndarray, path: Path, target: str
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    if task == "classification":
        labels = first.astype(str).to_numpy() if not _is_numeric(first) else first.to_numpy()
        classes = np.unique(labels)
        if len(classes) < 2:
            raise UserError(f"{path}: target {target!r} has only one class ({classes[0]!r}); "
                            "classification needs at least two")
        y = np.searchsorted(classes, labels).astype(np.int64)
        counts = {str(_py(c)): int((labels == c).sum()) for c in classes}
        return y, {"classes": [_py(c) for c in classes], "class_counts": counts}
    v = first.to_numpy(dtype=np.float64)
    if not np.isfinite(v).all():
        raise UserError(f"{path}: target {target!r} has non-finite values")
    mean, std = float(v[train].mean()), float(v[train].std())
    if std < 1e-12:
        raise UserError(f"{path}: target {target!r} is constant; nothing to learn")
    return ((v - mean) / std).astype(np.float32), {"target_mean": mean, "target_std": std}


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _split_order(assign: np.ndarray) -> np.ndarray:
    """Sequences renumbered split by split (train, val, test; file order within each), so that each
    split is a contiguous view of one array."""
    return np.concatenate([np.flatnonzero(assign == s) for s in SPLITS])


def _split_views(x: np.ndarray, seq_order: np.ndarray, assign: np.ndarray, lengths: np.ndarray, y: np.ndarray,
                 keys: np.ndarray) -> dict[str, SplitTensors]:
    """Each split as views of ``x`` (already in ``seq_order``), with its lengths, targets and keys."""
    bounds = np.cumsum([0] + [int((assign == s).sum()) for s in SPLITS])
    lengths, y, keys = lengths[seq_order], y[seq_order], keys[seq_order]
    return {s: SplitTensors(x[a:b], lengths[a:b], y[a:b], keys[a:b])
            for s, a, b in zip(SPLITS, bounds[:-1], bounds[1:])}


def _build_long(df: pd.DataFrame, schema: _Schema, opts: DataOptions, path: Path, warnings: list[str]
                ) -> tuple[dict[str, SplitTensors], dict[str, Any]]:
    order, codes, starts, keys = _group_order(df, schema.id_col, schema.time_col, path)
    n_seq = len(starts)
    first = _sequence_targets(df, schema, order, starts, codes, keys, path)
    if schema.split_col:
        split_rows = _split_from_column(df, schema.split_col, path)[order]
        if (split_rows != split_rows[starts][codes]).any():
            k = int(np.flatnonzero(split_rows != split_rows[starts][codes])[0])
            raise UserError(f"{path}: sequence {_py(keys[codes[k]])!r} is split across sets in column "
                            f"{schema.split_col!r}; one sequence belongs to one set")
        assign = _sequence_splits(split_rows[starts], first, schema.task, opts, path)
    else:
        assign = _sequence_splits(None, first, schema.task, opts, path)
    train_seq = assign == "train"
    y, target_info = _encode_target(first, schema.task, train_seq, path, schema.target)
    # The frame is read_dataset's own: drop the columns now encoded (their memory goes back before
    # the padded array is allocated).
    for c in {schema.id_col, schema.time_col, schema.target, schema.split_col} - {None, *schema.features}:
        del df[c]
    train_rows_file = np.empty(len(order), dtype=bool)
    train_rows_file[order] = train_seq[codes]
    plan, names, cats = _plan_inputs(df, schema.features, train_rows_file, path)
    del train_rows_file
    seq_order = _split_order(assign)
    new_code = np.empty(n_seq, dtype=np.int64)
    new_code[seq_order] = np.arange(n_seq)
    lengths = np.diff(np.r_[starts, len(codes)])
    steps = int(lengths.max())
    dest = _padded_rows(order, codes, starts, steps, new_code)
    del order, codes, new_code
    _release_freed_memory()  # also detection's and the sort's temporaries, before the padded array
    x = np.zeros((n_seq, steps, len(plan)), dtype=np.float32)
    mean, std = _scatter_inputs(df, plan, cats, dest, x, lengths[seq_order], opts.fill, path,
                                train_seq=train_seq[seq_order])
    del dest
    splits = _split_views(x, seq_order, assign, lengths, y, keys)
    prep = {"inputs": names, "categories": cats, "scaler": {"mean": mean.tolist(), "std": std.tolist()},
            **target_info}
    return splits, prep


def wide_steps(df: pd.DataFrame, steps: list[list[str]], fill: str | None, path: Path
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The step columns of a wide frame as (N, T, F) float32, each row's length and its mask.

    Trailing missing steps shorten a sequence; missing values before its last step are gaps, refused
    without ``fill``. Used for training and for prediction alike.
    """
    n, T, F = len(df), len(steps), len(steps[0])  # noqa: N806
    flat = [c for row in steps for c in row]
    for c in flat:
        if not _is_numeric(df[c]):
            raise UserError(f"{path}: step column {c!r} is not numeric")
    raw = df[flat].to_numpy(dtype=np.float32, na_value=np.nan).reshape(n, T, F)
    if not raw.flags.writeable:  # pandas hands out read-only views of one-block frames; callers fill in place
        raw = raw.copy()
    if np.isinf(raw).any() and fill is None:
        raise UserError(f"{path}: infinite values in step columns ({int(np.isinf(raw).sum())}); pass --fill")
    present = np.isfinite(raw).any(axis=2)
    lengths = np.where(present.any(axis=1), T - np.argmax(present[:, ::-1], axis=1), 0)
    if (lengths == 0).any():
        raise UserError(f"{path}: data row {int(np.argmax(lengths == 0)) + 1} has no step values")
    inside = np.arange(T)[None, :] < lengths[:, None]
    gaps = ~np.isfinite(raw) & inside[:, :, None]
    if gaps.any():
        if fill is None:
            raise UserError(f"{path}: {int(gaps.sum())} missing or infinite step values inside sequences; "
                            "pass --fill ffill or --fill zero")
        for j in range(F):
            _fill_padded(raw[:, :, j], fill)
    return raw, lengths.astype(np.int64), inside


def _build_wide(df: pd.DataFrame, schema: _Schema, opts: DataOptions, path: Path, warnings: list[str]
                ) -> tuple[dict[str, SplitTensors], dict[str, Any]]:
    raw, lengths, inside = wide_steps(df, schema.wide_steps or [], opts.fill, path)
    n = len(df)
    keys = df[schema.id_col].to_numpy() if schema.id_col else np.arange(n)
    first = df[schema.target]
    if first.isna().any():
        raise UserError(f"{path}: target column {schema.target!r} has {int(first.isna().sum())} missing values")
    given = _split_from_column(df, schema.split_col, path) if schema.split_col else None
    assign = _sequence_splits(given, first, schema.task, opts, path)
    train = assign == "train"
    y, target_info = _encode_target(first.reset_index(drop=True), schema.task, train, path, schema.target)
    np.nan_to_num(raw, copy=False)
    mean, std = _standardise_padded(raw, inside, train)
    seq_order = _split_order(assign)
    x = raw[seq_order]
    del raw
    splits = _split_views(x, seq_order, assign, lengths, y, keys)
    prep = {"inputs": schema.features, "categories": {}, "step_columns": schema.wide_steps,
            "scaler": {"mean": mean.tolist(), "std": std.tolist()}, **target_info}
    return splits, prep


def default_window(lengths: np.ndarray, horizon: int) -> int:
    """A window that the data can afford: about a sixth of the median series, 4..48 steps, and
    short enough that the median series still yields training, validation and test windows."""
    med = float(np.median(lengths))
    w = max(4, 2 * horizon, int(round(med / 6)))
    cap = int(med - 3 * horizon)
    return max(2, min(48, w, max(2, cap)))


def _build_series(df: pd.DataFrame, schema: _Schema, opts: DataOptions, path: Path, warnings: list[str]
                  ) -> tuple[dict[str, SplitTensors], dict[str, Any]]:
    order, codes, starts, keys = _group_order(df, schema.id_col, schema.time_col, path)
    sorted_df = df.iloc[order].reset_index(drop=True)
    lengths = np.diff(np.r_[starts, len(codes)])
    horizon = opts.horizon or 1
    window = opts.window or default_window(lengths, horizon)
    tgt = sorted_df[schema.target].to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(tgt).all() and opts.fill is None:
        raise UserError(f"{path}: target column {schema.target!r} has {int((~np.isfinite(tgt)).sum())} "
                        "missing or infinite values; pass --fill ffill or --fill zero")
    need = window + horizon
    short = lengths < need
    if short.all():
        k = int(np.argmax(short))
        raise UserError(f"{path}: series {_py(keys[k])!r} has {int(lengths[k])} rows, shorter than "
                        f"window {window} + horizon {horizon}; use a smaller --window or --horizon")
    if short.any():
        warnings.append(f"{int(short.sum())} series shorter than window {window} + horizon {horizon} "
                        f"skipped: {', '.join(str(_py(k)) for k in keys[short][:5])}"
                        f"{' ...' if short.sum() > 5 else ''}")
    pos = np.arange(len(codes)) - starts[codes]
    L = lengths[codes]  # noqa: N806
    # Split points per series, by time: the last part of each series is validation, then test.
    if schema.split_col:
        row_split = _split_from_column(sorted_df, schema.split_col, path)
    else:
        n_test = np.maximum(horizon, np.round(lengths * opts.test_size).astype(int)) if opts.test_size else 0 * lengths
        n_val = np.maximum(horizon, np.round(lengths * opts.val_size).astype(int)) if opts.val_size else 0 * lengths
        test_start = (lengths - n_test)[codes]
        val_start = (lengths - n_test - n_val)[codes]
        row_split = np.where(pos >= test_start, "test", np.where(pos >= val_start, "val", "train")).astype(object)
    train_rows = (row_split == "train") & ~short[codes]
    if not train_rows.any():
        raise UserError(f"{path}: no training rows left after the time split")
    values, names, cats = _encode_features(sorted_df, schema.features, train_rows, path)
    values = _handle_missing(values, names, codes, starts, opts.fill, path)
    # Per-series normalisation of the target (fit on each series' training rows), global for covariates.
    t_idx = names.index(schema.target)
    tv = values[:, t_idx].astype(np.float64)
    n_seq = len(starts)
    cnt = np.bincount(codes, weights=train_rows, minlength=n_seq)
    s1 = np.bincount(codes, weights=np.where(train_rows, tv, 0), minlength=n_seq)
    s2 = np.bincount(codes, weights=np.where(train_rows, tv * tv, 0), minlength=n_seq)
    s_mean = np.divide(s1, cnt, out=np.zeros(n_seq), where=cnt > 0)
    s_var = np.divide(s2, cnt, out=np.ones(n_seq), where=cnt > 0) - s_mean ** 2
    s_std = np.sqrt(np.maximum(s_var, 0))
    s_std = np.where(s_std > 1e-9 * np.maximum(1, np.abs(s_mean)), s_std, np.maximum(np.abs(s_mean), 1.0))
    mean, std = _fit_scaler(values, train_rows)
    mean[t_idx], std[t_idx] = 0.0, 1.0
    scaled = (values - mean) / std
    scaled[:, t_idx] = (tv - s_mean[codes]) / s_std[codes]
    scaled = scaled.astype(np.float32)
    # Windows: forecast start s (position of the first predicted step) for every valid s.
    valid = (pos >= window) & (pos + horizon <= L) & ~short[codes]
    first_rows = np.flatnonzero(valid)
    # A window belongs to the split of its last forecast step; it must not reach into a later split.
    rank = {"train": 0, "val": 1, "test": 2}
    rs = np.vectorize(rank.get, otypes=[np.int64])(row_split) if len(row_split) else np.zeros(0, int)
    first_rank = rs[first_rows]
    last_rank = rs[first_rows + horizon - 1]
    keep = first_rank == last_rank
    first_rows = first_rows[keep]
    win_split = np.array(SPLITS, dtype=object)[last_rank[keep]]
    xi = first_rows[:, None] + np.arange(-window, 0)[None, :]
    yi = first_rows[:, None] + np.arange(horizon)[None, :]
    x = scaled[xi]
    y = scaled[yi, t_idx]
    win_keys = keys[codes[first_rows]]
    splits = {}
    for s in SPLITS:
        m = win_split == s
        splits[s] = SplitTensors(x[m], np.full(int(m.sum()), window, dtype=np.int64), y[m], win_keys[m])
    if len(splits["train"]) == 0:
        raise UserError(f"{path}: no training window fits (window {window}, horizon {horizon}); "
                        "use a smaller --window or --horizon")
    stats = {str(_py(k)): [float(m_), float(s_)] for k, m_, s_ in zip(keys, s_mean, s_std)}
    prep = {"inputs": names, "categories": cats, "scaler": {"mean": mean.tolist(), "std": std.tolist()},
            "window": window, "horizon": horizon, "target_index": t_idx, "series_stats": stats,
            "n_series": int(n_seq - short.sum())}
    return splits, prep


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------

def read_dataset(path: str | Path, **options: Any) -> Dataset:
    """Read, validate and tensorise a sequence CSV.

    Args:
        path: the CSV file.
        **options: fields of ``DataOptions`` (``layout``, ``target``, ``id_col``, ``time_col``,
            ``task``, ``window``, ``horizon``, ``fill``, ``seed``, ``val_size``, ``test_size``).

    Raises:
        UserError: on any problem with the file, with one line naming it.

    Example:
        >>> ds = read_dataset("examples/digits.csv")          # doctest: +SKIP
        >>> ds.info["layout"], ds.task, len(ds.splits["train"])  # doctest: +SKIP
        ('long', 'classification', 1257)
    """
    opts = DataOptions(**{k: v for k, v in options.items() if v is not None})
    opts.validate()
    path = Path(path)
    df = read_csv(path, keys=(opts.id_col, opts.time_col))
    schema, warnings = detect(df, opts, path)
    builder = {"long": _build_long, "wide": _build_wide, "series": _build_series}[schema.layout]
    splits, prep = builder(df, schema, opts, path, warnings)
    if schema.task != "forecasting" and len(splits["val"]) == 0:
        warnings.append("the validation split is empty; scores will use the training split")
    prep.update(layout=schema.layout, task=schema.task, target=schema.target, id_col=schema.id_col,
                time_col=schema.time_col, features=schema.features, split_col=schema.split_col,
                options=asdict(opts))
    all_lengths = np.concatenate([s.lengths for s in splits.values()])
    info = {
        "file": str(path),
        "layout": schema.layout,
        "task": schema.task,
        "target": schema.target,
        "id_col": schema.id_col,
        "time_col": schema.time_col,
        "features": schema.features,
        "inputs": prep["inputs"],
        "n_rows": len(df),
        "n_sequences": int(len(all_lengths)),
        "splits": {s: len(splits[s]) for s in SPLITS},
        "length": {"min": int(all_lengths.min()), "median": float(np.median(all_lengths)),
                   "max": int(all_lengths.max())},
        "split_source": f"column {schema.split_col!r}" if schema.split_col else
                        ("by time (last part of each series)" if schema.task == "forecasting"
                         else "by sequence" + (", stratified" if schema.task == "classification" else "")),
        "warnings": warnings,
    }
    if schema.task == "classification":
        info["classes"] = prep["class_counts"]
    if schema.task == "forecasting":
        info.update(window=prep["window"], horizon=prep["horizon"], n_series=prep["n_series"])
    return Dataset(splits=splits, preprocessing=prep, info=info, warnings=warnings)


def inspect(path: str | Path, **options: Any) -> dict[str, Any]:
    """What cellsearch understood of a file (the ``cellsearch inspect --json`` document)."""
    return read_dataset(path, **options).info

