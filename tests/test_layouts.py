"""The layout registry: a layout defined here, in one file, is detected, read, trained and predicted
through the same path as the built-in ones; nothing else in the package needs to know its name."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

import cellsearch
from cellsearch.data import LAYOUTS, Inputs, Layout, Preprocessing, Scaler, read_dataset, register_layout
from cellsearch.data.detect import Columns, Schema
from cellsearch.data.features import standardise_padded
from cellsearch.data.layouts.base import guess_target, sequence_task
from cellsearch.data.splits import sequence_splits, split_order, split_views
from cellsearch.errors import UserError
from cellsearch.tasks import get_task

PACKAGE = Path(cellsearch.__file__).resolve().parent


def _is_packed(s: pd.Series) -> bool:
    """A text column whose cells are space-separated numbers ("0.1 0.5 0.3")."""
    if pd.api.types.is_numeric_dtype(s):
        return False
    sample = s.dropna().astype(str).head(20)
    return len(sample) > 0 and all(" " in v and all(_number(p) for p in v.split()) for v in sample)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class PackedLayout(Layout):
    """One row per sequence, the whole sequence packed into one text cell: "0.1 0.5 0.3"."""

    name: ClassVar[str] = "packed"
    priority: ClassVar[int] = 5

    def recognises(self, df: pd.DataFrame, found: Columns, opts: Any) -> bool:
        return any(_is_packed(df[c]) for c in found.rest(df))

    def schema(self, df: pd.DataFrame, found: Columns, opts: Any, path: Path, warnings: list[str]) -> Schema:
        packed = next(c for c in found.rest(df) if _is_packed(df[c]))
        target = guess_target(df, found, self.target_names, path, warnings)
        return Schema(self.name, sequence_task(opts, df[target]), target, found.id_col, found.time_col,
                      found.split_col, [packed])

    @staticmethod
    def _unpack(cells: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [np.array(v.split(), dtype=np.float32) for v in cells.astype(str)]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        x = np.zeros((len(rows), int(lengths.max()), 1), dtype=np.float32)
        for i, r in enumerate(rows):
            x[i, :len(r), 0] = r
        return x, lengths, np.arange(x.shape[1])[None, :] < lengths[:, None]

    def build(self, df: pd.DataFrame, schema: Schema, opts: Any, path: Path, warnings: list[str]
              ) -> tuple[dict, dict]:
        x, lengths, inside = self._unpack(df[schema.features[0]])
        keys = df[schema.id_col].to_numpy() if schema.id_col else np.arange(len(df))
        first = df[schema.target]
        assign = sequence_splits(None, first, schema.task, opts, path)
        y, target_info = get_task(schema.task).encode_target(first, assign == "train", path, schema.target)
        mean, std = standardise_padded(x, inside, assign == "train")
        seq_order = split_order(assign)
        splits = split_views(x[seq_order], seq_order, assign, lengths, y, keys)
        return splits, {"inputs": ["value"], "scaler": Scaler(mean.tolist(), std.tolist()), **target_info}

    def transform(self, df: pd.DataFrame, prep: Preprocessing, path: Path) -> Inputs:
        x, lengths, inside = self._unpack(df[prep.features[0]])
        standardise_padded(x, inside, scaler=prep.scaler.arrays())
        keys = df[prep.id_col].to_numpy() if prep.id_col else np.arange(len(df))
        return Inputs(x, lengths, keys)

    def check_types(self, df: pd.DataFrame, columns: list[str], prep: Preprocessing, where: str) -> None:
        if not _is_packed(df[prep.features[0]]):
            raise UserError(f"{where}: column {prep.features[0]!r} should hold space-separated numbers")


@pytest.fixture
def packed_layout():
    layout = register_layout(PackedLayout())
    yield layout
    LAYOUTS.pop("packed")


def _packed_csv(path: Path, n: int = 60, seed: int = 0) -> Path:
    """Rising sequences are class "up", falling ones "down"; lengths 5-12."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        up = i % 2 == 0
        steps = np.cumsum(rng.normal(1.0 if up else -1.0, 0.3, size=int(rng.integers(5, 13))))
        rows.append({"sample": i, "values": " ".join(f"{v:.3f}" for v in steps), "label": "up" if up else "down"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_layout_defined_in_one_file_reads_trains_and_predicts(packed_layout, tmp_path):
    from cellsearch.export import export
    from cellsearch.predict import transform
    from cellsearch.search import tune

    csv = _packed_csv(tmp_path / "packed.csv")
    ds = read_dataset(csv)
    assert (ds.info["layout"], ds.info["task"], ds.info["target"]) == ("packed", "classification", "label")
    assert ds.info["length"]["min"] == 5 and ds.info["length"]["max"] == 12 and ds.n_outputs == 2

    # Prediction-time preprocessing of the same rows gives the training tensors exactly.
    frame = pd.read_csv(csv)
    inputs = transform(frame.drop(columns=["label"]), ds.preprocessing)
    for split in ds.splits.values():
        for x, n, key in zip(split.x, split.lengths, split.keys):
            assert inputs.lengths[key] == n and np.allclose(inputs.x[key, :x.shape[0]], x, atol=1e-6)

    space = tmp_path / "s.yaml"
    space.write_text("layers: {depth: 1, cell: gru, hidden: 8}\nlr: 0.02\nmax_epochs: 15\npatience: 15\n"
                     "batch_size: 16\n")
    result = tune(csv, space=str(space), trials=1, run_dir=tmp_path / "runs", track=False, progress=False)
    assert result.chosen is not None and result.chosen["score"] >= 0.75  # rising vs falling is easy
    model = cellsearch.load(export(out=tmp_path / "model", run_dir=tmp_path / "runs"))
    assert model.prep.layout == "packed"
    preds = model.predict(frame.drop(columns=["label"]))
    assert list(preds.columns) == ["sample", "prediction", "prob_down", "prob_up"] and len(preds) == 60
    assert (preds["prediction"] == frame["label"]).mean() >= 0.75
    with pytest.raises(UserError, match="space-separated numbers"):
        model.predict(frame.assign(values="abc").drop(columns=["label"]))


def test_no_module_branches_on_a_layout_name():
    """Outside ``cellsearch/data/layouts/``, no code compares anything with a layout's name."""
    names = {"long", "wide", "series"}
    offenders = []
    for f in PACKAGE.rglob("*.py"):
        if "layouts" in f.parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if names & {c for c in consts if isinstance(c, str)}:
                    offenders.append(f"{f.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


def test_no_import_cycles_and_no_private_imports():
    """Module-level and function-level imports alike: no cycle in the package, and no module imports
    another module's ``_private`` name."""
    modules = {".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): f
               for f in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cellsearch"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    target = full if full in modules else node.module
                    if target in modules and target != name:
                        graph[name].add(target)
                    if alias.name.startswith("_"):
                        private.append(f"{name} imports {node.module}.{alias.name}")
    assert not private, private

    # A package's __init__ re-exporting its submodules is not a cycle of concerns: a submodule that
    # imports its own package's __init__ is followed to the submodule it names instead.
    def edges(m: str) -> set[str]:
        return {t for t in graph[m] if not (m.startswith(t + ".") and modules[t].name == "__init__.py")}

    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in edges(m):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in modules:
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
