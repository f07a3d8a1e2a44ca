"""Real data, as a user would use it (``python -m cellsearch.benchmarks.real FILE ...``).

For each sequence CSV with a ``split`` column (the archive's own train/test division): drop the test
rows and the split column, ``cellsearch tune`` the rest (a subprocess, as a user runs it), export the
chosen model, predict the test rows with the bundle and score them; beside it, the simple references
(``cellsearch.references``) fitted on the same training rows and scored on the same test rows.
Prints a table and writes JSON (``--out``). Takes ``--timeout`` seconds per file, plus loading.

Forecasting panels: ``--forecast TRAIN.csv TEST.csv --horizon H --season M`` tunes on TRAIN, forecasts
the next H values of every series with the exported bundle and scores them against TEST by MASE
(mean absolute error over the in-sample mean absolute seasonal difference of the training series,
averaged over series), beside the naive and seasonal naive forecasts.

The whole suite in one command: ``--suite DIR`` runs every ``*.csv`` of DIR with a ``split`` column
(sequence sets) and every ``NAME_train.csv`` / ``NAME_test.csv`` pair (forecasting panels: the
horizon is the test rows per series, the season from ``SEASONS`` or ``--season``), writing the JSON
after each set so a long run can be read while it goes. Each row also says how the search spent its
workers' time (``search``): complete and pruned trials, the share of trial time spent in trials that
were pruned, and complete trials per hour of the search.
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


def _keep(tmp: str, keep: Path | None, name: str) -> None:
    """Copy the run directory (study, checkpoints, out-of-fold outputs) to ``keep/name``, so the
    pick rules can be studied again without a new search."""
    if keep is not None:
        import shutil

        shutil.copytree(f"{tmp}/runs", keep / name, dirs_exist_ok=True)


#: Season lengths of the development panels (the README of ``../shared/data``: m = 12 monthly, 4
#: quarterly). Their time columns are integers, so the tool cannot read the season from dates.
SEASONS = {"monthly_panel": 12, "quarterly_panel": 4, "visnights": 4, "us_employment": 12}


def search_time(run_dir: Path, wall_seconds: float) -> dict[str, Any]:
    """How a search spent its workers' time, from its study: trials by state, the share of the
    trials' summed wall time that went into trials that ended pruned, complete trials per hour."""
    import optuna

    storage = f"sqlite:///{run_dir / 'optuna.db'}"
    done = {"COMPLETE": 0.0, "PRUNED": 0.0, "FAIL": 0.0}
    count = {k: 0 for k in done}
    for name in optuna.get_all_study_names(storage):
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
            if t.state.name in done and t.datetime_start and t.datetime_complete:
                done[t.state.name] += (t.datetime_complete - t.datetime_start).total_seconds()
                count[t.state.name] += 1
    total = sum(done.values()) or 1.0
    return {"complete": count["COMPLETE"], "pruned": count["PRUNED"], "failed": count["FAIL"],
            "pruned_share": round(done["PRUNED"] / total, 3),
            "complete_per_hour": round(count["COMPLETE"] * 3600 / max(wall_seconds, 1.0), 1)}


def suite(folder: Path) -> list[tuple[Any, Path, dict[str, Any]]]:
    """The jobs of a whole data folder: sequence sets (a ``split`` column) and forecasting pairs."""
    import pandas as pd

    jobs: list[tuple[Any, Path, dict[str, Any]]] = []
    for f in sorted(folder.glob("*.csv")):
        if f.stem.endswith("_train"):
            test = f.with_name(f.stem[:-len("_train")] + "_test.csv")
            if test.exists():
                t = pd.read_csv(test)
                horizon = int(t.groupby(t.columns[0]).size().max())
                jobs.append((run_forecast, f, {"test_path": test, "horizon": horizon,
                                               "season": SEASONS.get(f.stem[:-len("_train")], 1)}))
        elif not f.stem.endswith("_test") and "split" in pd.read_csv(f, nrows=1).columns:
            jobs.append((run_one, f, {}))
    return jobs


def run_one(path: Path, *, space: str, timeout: float, seed: int, extra: list[str], variants: bool = True,
            keep: Path | None = None) -> dict[str, Any]:
    """Tune on the training rows, export, predict the test rows; score network and references.
    Besides the exported (chosen) model, the best single trial, the best-scoring front member
    (``--pick best``: an ensemble where one wins) and the chosen one refit on all training rows
    (``--weights refit``) are exported and scored too (``variants``)."""
    import numpy as np
    import pandas as pd

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
    truth = test.groupby(id_col, sort=False)[target].first()

    from cellsearch.tasks import get_task

    def test_score(model: Any) -> float:
        preds = model.predict(test.drop(columns=[target])).set_index(id_col)["prediction"].loc[truth.index]
        if get_task(task).labels:
            return float(np.mean(preds.astype(str).to_numpy() == truth.astype(str).to_numpy()))
        return float(np.sqrt(np.mean((preds.to_numpy(dtype=float) - truth.to_numpy(dtype=float)) ** 2)))

    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / f"{path.stem}.csv"
        train.to_csv(csv, index=False)
        model, result, tune_s, export_s = _tune_export(csv, tmp, space, timeout, seed, extra)
        spent = search_time(Path(tmp) / "runs", tune_s)
        score = test_score(model)
        variants = {name: test_score(m) for name, m in _variants(tmp, result).items()} if variants else {}
        _keep(tmp, keep, path.stem)
    chosen = result.get("chosen") or {}
    return {"file": path.name, "task": task, "metric": get_task(task).metric,
            "network_test": score, "references_test": refs, "chosen": chosen.get("arch"),
            "chosen_val": chosen.get("score"), "trials": result.get("counts"), "tune_seconds": round(tune_s, 1),
            "export_seconds": round(export_s, 1),
            "cv": result.get("cv"), "variants": variants, "search": spent,
            "test_label": result.get("test_label")}


def _variants(tmp: str, result: dict[str, Any]) -> dict[str, Any]:
    """Other exports of the same study: the best single trial (by validation, ranked as the search
    ranks: the score, then the out-of-fold loss that breaks ties), the best-scoring front member
    (``--pick best``) and the chosen one refit (``--weights refit``) and as fold models (``--weights
    folds``: the default but for forecasts validated on one time holdout); loaded bundles."""
    import cellsearch
    from cellsearch.pareto import rank

    direction = result.get("direction", "maximize")
    singles = [p for p in result.get("front", []) if p.get("kind", "trial") == "trial"]
    runs = {"best_single": ["--trial", str(max(singles, key=lambda p: rank(p, direction))["trial"])] if singles
            else None, "pick_best": ["--pick", "best"], "refit": ["--weights", "refit"],
            "folds": ["--weights", "folds"]}
    out = {}
    for name, args in runs.items():
        if args is None:
            continue
        res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "export", "--run-dir", f"{tmp}/runs",
                              "--out", f"{tmp}/{name}", *args], capture_output=True, text=True)
        if res.returncode == 0:
            out[name] = cellsearch.load(f"{tmp}/{name}")
        else:
            print(f"  export {name} failed: {res.stderr.strip()[-200:]}", file=sys.stderr)
    return out


def _tune_export(csv: Path, tmp: str, space: str, timeout: float, seed: int,
                 extra: list[str]) -> tuple[Any, dict, float, float]:
    """``cellsearch tune`` then ``cellsearch export`` as a user runs them; the loaded bundle, the
    result, and the seconds each command took (an export that refits takes minutes on a large panel)."""
    import cellsearch

    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "tune", str(csv), "--space", space,
                          "--timeout", str(timeout), "--seed", str(seed), "--run-dir", f"{tmp}/runs",
                          "--no-track", "--json", *extra], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"tune failed: {res.stderr.strip()[-300:]}")
    t1 = time.time()
    out = subprocess.run([sys.executable, "-m", "cellsearch.cli", "export", "--run-dir", f"{tmp}/runs",
                          "--out", f"{tmp}/model"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"export failed: {out.stderr.strip()[-300:]}")
    return cellsearch.load(f"{tmp}/model"), json.loads(res.stdout), t1 - t0, time.time() - t1


def _local_forecasts(kind: str, train: Any, key: str, tcol: str, vcol: str, window: int, season: int,
                     horizon: int) -> dict[str, Any]:
    """Each series' forecast by the member ``kind`` fitted on each window (``local_kinds``: its
    ``forecaster`` in ``cellsearch.tasks.forecasting``) from its last ``window`` values, by ratio
    where they are positive as the members adjust a season (level 0: the values are the series')."""
    import numpy as np
    import torch

    from cellsearch.refmembers import MEMBERS
    from cellsearch.tasks import forecasting

    forecast = getattr(forecasting, MEMBERS[kind].forecaster)
    out = {}
    for s, g in train.groupby(key, sort=False):
        v = g.sort_values(tcol)[vcol].to_numpy(dtype=float)[-window:]
        x = torch.from_numpy(np.pad(v, (0, window - len(v))))[None, :]
        out[s] = forecast(x, torch.tensor([len(v)]), season, horizon, level=torch.zeros(1))[0].numpy()
    return out


def local_kinds() -> list[str]:
    """The forecasting members fitted on each window (``refmembers.LocalMember``: theta, the damped
    trend, the drift), whose test scores the benchmark reports beside the naive forecasts'."""
    from cellsearch.refmembers import MEMBERS, LocalMember

    return [k for k, m in MEMBERS.items() if issubclass(m, LocalMember)]


def run_forecast(train_path: Path, test_path: Path, *, horizon: int, season: int, space: str, timeout: float,
                 seed: int, extra: list[str], keep: Path | None = None, variants: bool = True) -> dict[str, Any]:
    """Tune on the training panel, forecast each series' next ``horizon`` values, score MASE."""
    import numpy as np
    import pandas as pd

    train, test = pd.read_csv(train_path), pd.read_csv(test_path)
    key, tcol, vcol = train.columns[0], train.columns[1], train.columns[-1]
    helptext = subprocess.run([sys.executable, "-m", "cellsearch.cli", "tune", "--help"], capture_output=True,
                              text=True).stdout
    flags = ["--horizon", str(horizon), *(["--season", str(season)] if "--season" in helptext else [])]

    def mase(forecasts: dict[str, np.ndarray]) -> float:
        scores = []
        for s, g in train.groupby(key, sort=False):
            v = g.sort_values(tcol)[vcol].to_numpy(dtype=float)
            m = season if len(v) > season else 1
            d = np.abs(v[m:] - v[:-m]).mean()
            truth = test[test[key] == s].sort_values(tcol)[vcol].to_numpy(dtype=float)[:horizon]
            scores.append(np.abs(forecasts[s][:len(truth)] - truth).mean() / d)
        return float(np.mean(scores))

    naive, seasonal = {}, {}
    for s, g in train.groupby(key, sort=False):
        v = g.sort_values(tcol)[vcol].to_numpy(dtype=float)
        naive[s] = np.full(horizon, v[-1])
        seasonal[s] = v[-season:][np.arange(horizon) % season] if len(v) >= season else naive[s]
    row: dict[str, Any] = {"file": train_path.name, "task": "forecasting", "metric": "mase",
                           "references_test": {"naive": mase(naive), "seasonal_naive": mase(seasonal)}}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model, result, tune_s, export_s = _tune_export(train_path, tmp, space, timeout, seed, [*flags, *extra])
            preds = model.predict(train)
        except Exception as exc:  # an older cellsearch may refuse a panel: report it
            row.update(network_test=None, error=str(exc).strip().splitlines()[-1][:300])
            return row
        spent = search_time(Path(tmp) / "runs", tune_s)

        def score_of(m: Any, p: Any = None) -> float:
            p = m.predict(train) if p is None else p
            return mase({s: g.sort_values("step")["prediction"].to_numpy() for s, g in p.groupby(key)})

        variants = {name: score_of(m) for name, m in _variants(tmp, result).items()} if variants else {}
        network = score_of(model, preds)
        window = int(model.prep.layout_data.get("window", 0) or 0)
        # on each series' last window, as the members forecast
        for kind in local_kinds() if window else ():
            row["references_test"][kind] = mase(_local_forecasts(kind, train, key, tcol, vcol, window, season, horizon))
        _keep(tmp, keep, train_path.stem)
    chosen = result.get("chosen") or {}
    row.update(network_test=network, chosen=chosen.get("arch"), chosen_val=chosen.get("score"),
               trials=result.get("counts"), tune_seconds=round(tune_s, 1), export_seconds=round(export_s, 1),
               cv=result.get("cv"), variants=variants,
               search=spent)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Other options go to every `cellsearch tune`; give them a value with "
                                        "'=' (--window=30): a separate value would be read as a file.")
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--forecast", nargs=2, type=Path, action="append", default=[], metavar=("TRAIN", "TEST"))
    ap.add_argument("--horizon", type=int, action="append", default=[])
    ap.add_argument("--season", type=int, action="append", default=[])
    ap.add_argument("--space", default="default")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suite", type=Path, help="run every set of this folder (sequence sets and forecasting pairs)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", type=Path, help="copy each run directory here (DIR/FILE-STEM)")
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="score the default export only (the other exports of a large panel refit for minutes)")
    args, extra = ap.parse_known_args()
    missing = [str(f) for f in args.files if not f.exists()]
    if missing:
        ap.error(f"no such file: {', '.join(missing)} (a tune option's value? write it as --option=value)")
    rows = []
    jobs = [(run_one, f, {}) for f in args.files] + [
        (run_forecast, pair[0], {"test_path": pair[1], "horizon": h, "season": m})
        for pair, h, m in zip(args.forecast, args.horizon, args.season)]
    if args.suite:
        jobs += suite(args.suite)
    for fn, f, kw in jobs:
        try:
            row = fn(f, **kw, space=args.space, timeout=args.timeout, seed=args.seed, extra=extra, keep=args.keep,
                     variants=args.variants)
        except Exception as exc:  # one set that fails (e.g. a layout this version refuses) is reported
            row = {"file": f.name, "metric": "", "network_test": None, "references_test": {},
                   "error": str(exc).strip().splitlines()[-1][:300]}
        rows.append(row)
        refs = ", ".join(f"{k} {v:.3f}" for k, v in row["references_test"].items())
        net = "failed: " + row["error"] if row.get("error") else f"{row['network_test']:.3f}"
        other = ", ".join(f"{k} {v:.3f}" for k, v in (row.get("variants") or {}).items())
        print(f"{row['file']}: network test {row['metric']} {net} ({row.get('chosen')}, {row.get('trials')}, "
              f"{row.get('cv')}, tune {row.get('tune_seconds')} s, export {row.get('export_seconds')} s); {other}; "
              f"references {refs}; "
              f"search {row.get('search')}", flush=True)
        if args.out:  # after each set: a long suite can be read while it runs
            args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
