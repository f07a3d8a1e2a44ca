"""The extra forecasting panels of ``cellsearch.benchmarks.panels``: cut as the development panels
are, and run by ``benchmarks.real --suite`` as forecasting pairs without a season."""

import numpy as np
import pandas as pd
import pytest


def _panel() -> pd.DataFrame:
    rows = []
    for name, years, values in [("b", range(1990, 2002), np.arange(12.0)),  # 12 years
                                ("a", range(1950, 1970, 2), np.arange(10.0) * 3),  # every other year
                                ("short", range(2000, 2006), np.arange(6.0)),  # 6 < 3 + 4
                                ("gap", range(1990, 2005), [1.0, np.nan] + [2.0] * 13)]:
        rows += [{"series": name, "t": t, "value": v} for t, v in zip(years, values)]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # rows in no order


def test_a_panel_is_cut_into_each_series_last_horizon_and_the_rest():
    from cellsearch.benchmarks.panels import cut

    train, test = cut(_panel(), horizon=3)
    assert sorted(train["series"].unique()) == ["a", "b"]  # too short and missing values left out
    a_tr, a_te = train[train.series == "a"], test[test.series == "a"]
    assert a_tr["t"].tolist() == list(range(7)) and a_te["t"].tolist() == [7, 8, 9]  # renumbered
    assert a_tr["value"].tolist() == [0, 3, 6, 9, 12, 15, 18] and a_te["value"].tolist() == [21, 24, 27]
    assert test[test.series == "b"]["value"].tolist() == [9, 10, 11]
    assert list(train.columns) == ["series", "t", "value"]
    with pytest.raises(ValueError, match="no series long enough"):
        cut(_panel(), horizon=9)


def test_written_panels_run_in_the_suite_as_forecasting_pairs_without_a_season(tmp_path, monkeypatch, capsys):
    from cellsearch.benchmarks import panels, real
    from cellsearch.data import read_dataset

    monkeypatch.setattr(panels, "PANELS", {"toy_yearly": _panel})
    written = panels.write(tmp_path, horizon=3)
    assert written == [tmp_path / "toy_yearly_train.csv"]
    assert "toy_yearly: 2 series, 7-9 training points" in capsys.readouterr().out
    jobs = real.suite(tmp_path)
    assert [(fn, path, kw["horizon"], kw["season"]) for fn, path, kw in jobs] == [
        (real.run_forecast, tmp_path / "toy_yearly_train.csv", 3, 1)]
    ds = read_dataset(tmp_path / "toy_yearly_train.csv", horizon=3)
    assert ds.task == "forecasting" and ds.preprocessing.layout_data["season"] == 1


def test_a_tune_option_value_given_apart_is_refused_before_any_search(monkeypatch, capsys):
    from cellsearch.benchmarks import real

    monkeypatch.setattr(real, "run_forecast", lambda *a, **k: pytest.fail("a search started"))
    monkeypatch.setattr("sys.argv", ["real", "--forecast", "tr.csv", "te.csv", "--horizon", "6", "--season", "1",
                                     "--window", "30"])
    with pytest.raises(SystemExit) as exc:
        real.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no such file: 30" in err and "--option=value" in err
