"""Real data, as a user would use it (``python -m cellsearch.benchmarks.real FILE ...``).

For each sequence CSV with a ``split`` column (the archive's own train/test division): drop the test
rows and the split column, ``cellsearch tune`` the rest (a subprocess, as a user runs it), export the
chosen model, predict the test rows with the bundle and score them; beside it, the simple references
(``cellsearch.references``) fitted on the same training rows and scored on the same test rows.
Prints a table and writes JSON (``--out``). Takes ``--timeout`` seconds per file, plus loading.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run_one(path: Path, *, space: str, timeout: float, seed: int, extra: list[str]) -> dict[str, Any]:
    """Tune on the training rows, export, predict the test rows; score network and references."""
    import numpy as np
    import pandas as pd

    import cellsearch
    from cellsearch.data import read_dataset

    df = pd.read_csv(path)
    if "split" not in df.columns:
        raise SystemExit(f"{path}: needs a split column (train/test)")
    ds_full = read_dataset(path, seed=seed)  # honours the split column: the archive's train and test
    target, id_col, task = ds_full.info["target"], ds_full.info["id_col"], ds_full.task
    train = df[df["split"] != "test"].drop(columns=["split"])
    test = df[df["split"] == "test"].drop(columns=["split"])
    try:
        from cellsearch.references import fit_references

        refs = {r["name"]: r["test_score"] for r in fit_references(ds_full, "macs")}
    except ImportError:  # an older cellsearch, measured for comparison
        refs = {}
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / f"{path.stem}.csv"
        train.to_csv(csv, index=False)
        t0 = time.time()
        res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "tune", str(csv), "--space", space,
                              "--timeout", str(timeout), "--seed", str(seed), "--run-dir", f"{tmp}/runs",
                              "--no-track", "--json", *extra], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{path}: tune failed: {res.stderr.strip()[-500:]}")
        tune_s = time.time() - t0
        result = json.loads(res.stdout)
        out = subprocess.run([sys.executable, "-m", "cellsearch.cli", "export", "--run-dir", f"{tmp}/runs",
                              "--out", f"{tmp}/model"], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{path}: export failed: {out.stderr.strip()[-500:]}")
        model = cellsearch.load(f"{tmp}/model")
        preds = model.predict(test.drop(columns=[target])).set_index(id_col)["prediction"]
    truth = test.groupby(id_col, sort=False)[target].first()
    preds = preds.loc[truth.index]
    if task == "classification":
        score = float(np.mean(preds.astype(str).to_numpy() == truth.astype(str).to_numpy()))
    else:
        score = float(np.sqrt(np.mean((preds.to_numpy(dtype=float) - truth.to_numpy(dtype=float)) ** 2)))
    chosen = result.get("chosen") or {}
    return {"file": path.name, "task": task, "metric": "accuracy" if task == "classification" else "rmse",
            "network_test": score, "references_test": refs, "chosen": chosen.get("arch"),
            "chosen_val": chosen.get("score"), "trials": result.get("counts"), "tune_seconds": round(tune_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--space", default="default")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args, extra = ap.parse_known_args()
    rows = []
    for f in args.files:
        row = run_one(f, space=args.space, timeout=args.timeout, seed=args.seed, extra=extra)
        rows.append(row)
        refs = ", ".join(f"{k} {v:.3f}" for k, v in row["references_test"].items())
        print(f"{row['file']}: network test {row['metric']} {row['network_test']:.3f} ({row['chosen']}, "
              f"{row['trials']}, {row['tune_seconds']} s); references {refs}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
