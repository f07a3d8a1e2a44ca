"""The CSV reader: Arrow's streaming reader into NumPy columns, every problem one ``UserError``.

Float columns become float32 (the models train in float32) except those that may be id or time
columns, which keep float64 so that a fractional timestamp or a large float id keeps its order and
identity. The file is streamed in small blocks into preallocated NumPy columns: the peak memory is
about the final columns plus a few MB (see ``cellsearch.benchmarks.data``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data.detect import ID_NAMES, TARGET_NAMES, TIME_NAMES
from cellsearch.errors import UserError


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
    return name.strip() in keys or low in ID_NAMES or low in TIME_NAMES or low.endswith("id")


def _may_be_text(name: str, text: set[str]) -> bool:
    """Whether a column could be an id or a class label: its values are names, whatever they look
    like (``01`` is not ``1``)."""
    low = name.strip().lower()
    return name.strip() in text or low in ID_NAMES or low in TARGET_NAMES or low.endswith("id")


def _names_or_numbers(column: Any) -> Any:
    """A column read as text (an Arrow chunked array) because it may hold ids or labels: back to
    numbers when every value is written as its number would be (``7``, ``-3``), kept as the text in
    the file otherwise (``007``, ``+3``, ``1`` beside ``01``). Checked and converted in Arrow, so a
    million ids cost no Python objects unless they really are names."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.match_substring_regex(column, r"^(0|-?[1-9][0-9]*)$")
    if pc.all(plain, skip_nulls=True).as_py() is not False:
        ints = pc.cast(column, pa.int64())
        if ints.null_count:
            return ints.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls: NaN, as pandas reads them
        return ints.to_numpy()
    return column.to_pandas().astype(object)


def _read_columns(path: Path, keys: set[str], delimiter: str = ",", text: set[str] = frozenset()
                  ) -> tuple[list[str], dict[str, Any]]:
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
    # The probe's block holds the whole head: a header of 300,000 columns is several megabytes.
    probe = pacsv.read_csv(pa.py_buffer(head), read_options=pacsv.ReadOptions(block_size=max(1 << 20, len(head) + 1)),
                           parse_options=parse, convert_options=convert({})).schema
    names = list(probe.names)
    types = {f.name: pa.float32() for f in probe if pa.types.is_floating(f.type) and not _may_be_key(f.name, keys)}
    # Whole numbers that may be ids or labels are read as text, and become numbers again only where
    # each is written as its number would be (``_names_or_numbers``): ``01`` and ``1`` stay apart.
    texts = {f.name for f in probe if pa.types.is_integer(f.type) and _may_be_text(f.name, text)}
    types.update({n: pa.string() for n in texts})

    if len(set(names)) < len(names):  # before any column is keyed by name
        return names, {}
    # A block must hold whole rows, and enough of them that per-block costs stay small when a file
    # has thousands of columns.
    longest = max(len(line) for line in head.split(b"\n"))
    block = min(max(_BLOCK, 64 * longest), 1 << 30)
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block), parse_options=parse,
                                convert_options=convert(types))
        return names, collect_batches(reader, reader.schema, lambda b: 1.25 * size * b.num_rows / min(block, size),
                                      texts)
    except pa.ArrowInvalid as exc:
        if "straddl" in str(exc):  # a line far longer than those of the first megabyte
            block = min(size + 1, 1 << 30)
        elif "conversion error" not in str(exc):
            raise
    # A later block disagrees with the first one's types: read in one go with full type inference.
    table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=max(block, 1 << 20)),
                           parse_options=parse, convert_options=convert({n: pa.string() for n in texts}))
    table = table.cast(pa.schema([pa.field(f.name, pa.float32())
                                  if pa.types.is_floating(f.type) and not _may_be_key(f.name, keys) else f
                                  for f in table.schema]))
    return names, collect_batches(table.to_batches(), table.schema, lambda b: table.num_rows, texts)


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


def collect_batches(batches: Any, schema: Any, rows_hint: Any, texts: set[str] = frozenset()) -> dict[str, Any]:
    """Columns of a stream of Arrow record batches: numeric ones as NumPy arrays written in place
    (no per-batch copies kept), others (text, booleans, dates) as pandas columns via Arrow.

    Batches are taken a few MB at a time (more with many columns), so a file with thousands of
    columns costs a few thousand column copies per group, not per parse block.
    ``rows_hint(first_batch)`` estimates the total number of rows, to size the numeric arrays.
    Columns named in ``texts`` (read as text: they may be ids or labels) become numbers or names
    (``_names_or_numbers``).
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
    return {f.name: c.finish() if isinstance(c, _NumericColumn) else
            _names_or_numbers(pa.chunked_array(c, type=f.type)) if f.name in texts else
            pa.chunked_array(c, type=f.type).to_pandas() for f, c in zip(schema, cols)}


def release_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS after the parse (a no-op elsewhere)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_csv(path: str | Path, keys: Iterable[str | None] = (), text: Iterable[str | None] = ()) -> pd.DataFrame:
    """Read a CSV with Arrow's streaming reader; every problem becomes one ``UserError``.

    Float columns are float32 except possible id and time columns, and the columns named in ``keys``
    (``--id-col``, ``--time-col``), which keep float64. Whole-number columns that may be ids or class
    labels (by name, or named in ``text``: ``--id-col``, ``--target``) keep the text in the file
    where it is not a plain number's (``00005`` stays ``00005``; ``1`` and ``01`` stay apart).
    """
    import pyarrow as pa

    path = Path(path)
    delimiter = _sniff_delimiter(_check_text_file(path))
    try:
        names, columns = _read_columns(path, {k for k in keys if k}, delimiter, {k for k in text if k})
    except pa.ArrowInvalid as exc:
        bad = _ragged_row(path, delimiter)
        if bad:
            raise UserError(f"{path}: line {bad[0]} has {bad[1]} fields, the header has {bad[2]}") from None
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: cannot parse as CSV ({first})") from None
    release_freed_memory()
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
