"""Forecasting: per-window scaling, every series counted, MASE, naive references, and the same
scaling in training, predict, the MLflow pyfunc and ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cellsearch
from cellsearch.data import read_dataset


def _panel(path: Path, sizes=((3, 5.0), (10, 500.0), (100, 50_000.0)), seed: int = 0) -> Path:
    """Series of very different lengths and scales, each a noisy trend with a 4-step season."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, (n, scale) in enumerate(sizes):
        t = np.arange(n)
        v = scale * (1 + 0.02 * t + 0.1 * np.sin(2 * np.pi * t / 4) + 0.01 * rng.normal(size=n))
        rows.append(pd.DataFrame({"series": f"s{k}", "t": t, "value": v.round(4)}))
    pd.concat(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def panel_bundle(tmp_path_factory):
    from cellsearch.export import export
    from cellsearch.search import tune

    tmp = tmp_path_factory.mktemp("panel")
    csv = _panel(tmp / "panel.csv")
    space = tmp / "s.yaml"
    space.write_text("layers: {depth: 1, cell: gru, hidden: 8}\nlr: 0.01\nmax_epochs: 4\nmin_steps: 40\n"
                     "base: theta\n")
    result = tune(csv, space=str(space), trials=1, horizon=2, window=6, season=4, run_dir=tmp / "runs",
                  track=False, progress=False)
    bundle = export(out=tmp / "model", run_dir=tmp / "runs", formats=["onnx"])
    return csv, bundle, result


def test_every_series_is_trained_and_forecast_in_its_own_units(panel_bundle):
    csv, bundle, result = panel_bundle
    assert result.metric == "mase" and result.direction == "minimize" and result.front[0]["arch"] == "gru8/theta4"
    assert result.chosen["arch"] in ("gru8/theta4", "ensemble of 2: #0+seasonal_naive")  # the network, alone or not
    assert {r["name"] for r in result.references} == {"naive", "seasonal_naive", "theta", "damped", "drift"}
    ds = read_dataset(csv, horizon=2, window=6, season=4)
    assert ds.info["series_trained"] == 3 and set(ds.splits["train"].keys) == {"s0", "s1", "s2"}
    frame = pd.read_csv(csv)
    preds = cellsearch.load(bundle).predict(frame)
    assert preds.shape[0] == 6 and list(preds.series) == ["s0", "s0", "s1", "s1", "s2", "s2"]
    for key, scale in (("s0", 5.0), ("s1", 500.0), ("s2", 50_000.0)):
        last = frame[frame.series == key].value.iloc[-1]
        got = preds[preds.series == key].prediction.to_numpy()
        assert np.all(np.abs(got - last) < 0.5 * scale), (key, got, last)  # its own units, near its level
    # A series never seen in training, one row long, is forecast from its own history.
    new = pd.DataFrame({"series": ["fresh"], "t": [0], "value": [123.0]})
    fresh = cellsearch.load(bundle).predict(new).prediction.to_numpy()
    assert len(fresh) == 2 and np.all((fresh > 123.0 / 2) & (fresh < 123.0 * 2))  # its own units


def test_scaling_is_the_same_in_training_predict_pyfunc_and_onnx(panel_bundle):
    import mlflow.pyfunc
    import onnxruntime as ort

    from cellsearch.predict import transform

    csv, bundle, _ = panel_bundle
    model = cellsearch.load(bundle)
    frame = pd.read_csv(csv)
    # Training: the test window that forecasts s2's last two values is what predict makes from the
    # rows before them.
    ds = read_dataset(csv, horizon=2, window=6, season=4, test_size=0.15)
    te = ds.splits["test"]
    i = int(np.flatnonzero(te.keys == "s2")[-1])
    head = frame[frame.series == "s2"].iloc[:-2]
    inputs = transform(head, model.prep)
    assert np.allclose(inputs.x[0], te.x[i], atol=1e-5) and inputs.lengths[0] == te.lengths[i]
    last, scale = inputs.scale[0][0], inputs.scale[1][0]
    truth = frame[frame.series == "s2"].value.to_numpy()[-2:]
    assert np.allclose(te.y[i] * scale + last, truth, rtol=1e-5)
    # predict, the MLflow pyfunc and the ONNX graph (on the scaled window, mapped back the same way).
    ours = model.predict(head).prediction.to_numpy()
    served = mlflow.pyfunc.load_model(str(bundle)).predict(head)["prediction"].to_numpy()
    onnx_out = ort.InferenceSession(str(bundle / "model.onnx")).run(None, {"x": inputs.x, "lengths": inputs.lengths})[0]
    assert np.allclose(served, ours, rtol=1e-6) and np.allclose(onnx_out[0] * scale + last, ours, rtol=1e-4)
    # The level channel (the last input) is for the statistical members: the network leaves it out,
    # in torch and in ONNX.
    import torch

    net = next(m for m in getattr(model.model, "members", [model.model]) if hasattr(m, "inputs"))
    assert model.prep.inputs[-1] == "value (level)" and net.inputs.size == len(model.prep.inputs) - 1
    moved = inputs.x.copy()
    moved[:, :, -1] += 1000.0
    with torch.no_grad():
        same = [net(torch.from_numpy(v), torch.from_numpy(inputs.lengths)).numpy() for v in (inputs.x, moved)]
    np.testing.assert_array_equal(same[0], same[1])
    sess = ort.InferenceSession(str(bundle / "model.onnx"))
    np.testing.assert_allclose(sess.run(None, {"x": moved, "lengths": inputs.lengths})[0], onnx_out, rtol=1e-6)
    # and explain shows the channels the network reads
    from cellsearch.explain import explain_sequences

    (e,) = explain_sequences(net, model.prep, inputs.x, inputs.lengths, np.array(["s2"]), scale=inputs.scale)
    assert e.channels == ["value"] and e.inputs.shape == (int(inputs.lengths[0]), 1)


def test_mase_and_the_naive_references_match_a_hand_computation(tmp_path):
    from cellsearch.references import fit_references

    csv = _panel(tmp_path / "p.csv", sizes=((60, 10.0), (80, 300.0)), seed=1)
    ds = read_dataset(csv, horizon=3, window=8, season=4, test_size=0.15)
    refs = {r["name"]: r for r in fit_references(ds, "macs")}
    frame = pd.read_csv(csv)
    te = ds.splits["test"]
    want = []
    for key in ("s0", "s1"):
        v = frame[frame.series == key].value.to_numpy()
        n = len(v)
        n_test = n_val = max(3, round(n * 0.15))
        d = np.abs(v[4:n - n_test - n_val] - v[:n - n_test - n_val - 4]).mean()  # seasonal, training part
        for s in range(n - n_test, n - 2):  # every window whose 3 targets are test rows
            want.append(np.abs(v[s:s + 3] - v[s - 1]).mean() / d)
    assert len(te) == len(want)
    assert refs["naive"]["test_score"] == pytest.approx(np.mean(want), rel=1e-4)
    assert refs["seasonal_naive"]["test_score"] < refs["naive"]["test_score"]  # the data has a 4-step season


@pytest.mark.parametrize("freq,season", [("MS", 12), ("QS", 4), ("D", 7), ("W", 52), ("h", 24), (None, 1)])
def test_season_from_the_time_column(tmp_path, freq, season):
    n = 40
    t = pd.date_range("2020-01-01", periods=n, freq=freq).strftime("%Y-%m-%d %H:%M") if freq else np.arange(n)
    pd.DataFrame({"t": t, "value": np.arange(n) * 1.5 + 3}).to_csv(tmp_path / "s.csv", index=False)
    assert read_dataset(tmp_path / "s.csv", horizon=2).info["season"] == season
    assert read_dataset(tmp_path / "s.csv", horizon=2, season=3).info["season"] == 3


def test_the_naive_forecasts_are_members_an_ensemble_can_hold(panel_bundle, tmp_path):
    """naive, seasonal naive, theta and the damped trend join the ensemble library like ridge does for
    sequences: their out-of-fold scores are the references' own, and an ensemble holding them exports
    — ``predict``, the pyfunc and ONNX agree, each forecast is the weighted average of the network's,
    the two naive forecasts, theta's and the damped trend's (by hand, on the raw window) in the
    series' own units, the card names them, a refit keeps them."""
    import mlflow.pyfunc
    import onnxruntime as ort
    import torch

    from cellsearch.export import export
    from cellsearch.predict import transform
    from cellsearch.refmembers import DampedMember, DriftMember, NaiveMember, SeasonalNaiveMember, ThetaMember

    csv, bundle, result = panel_bundle
    st = result.study
    refs = {r["name"]: r for r in st.user_attrs["reference_members"]}
    assert set(refs) == {"naive", "seasonal_naive", "theta", "damped", "drift"}
    assert all(r["trial"] < 0 for r in refs.values())
    shown = {r["name"]: r["score"] for r in result.references}
    for name, r in refs.items():  # the member is the reference: the same folds, the same score
        assert r["score"] == pytest.approx(shown[name], rel=1e-5), name
    net = next(t.number for t in st.get_trials() if t.user_attrs.get("val_score") is not None)
    weights = {str(net): 0.4, str(refs["seasonal_naive"]["trial"]): 0.2, str(refs["naive"]["trial"]): 0.1,
               str(refs["theta"]["trial"]): 0.1, str(refs["damped"]["trial"]): 0.1, str(refs["drift"]["trial"]): 0.1}
    st.set_user_attr("ensembles", [{"name": "E9", "members": weights, "score": 1.0, "arch": "mix",
                                    "macs": 1.0, "params": 1.0, "latency_ms": 1.0}])
    out = export(out=tmp_path / "m", run_dir=result.run_dir, ensemble="E9", formats=["onnx"])
    card = (out / "README.md").read_text()
    assert "naive (reference)" in card and "seasonal_naive (reference)" in card and "theta (reference)" in card
    assert "damped (reference)" in card and "drift (reference)" in card
    model = cellsearch.load(out)
    kinds = {type(m) for m in model.model.members}
    assert {NaiveMember, SeasonalNaiveMember, ThetaMember, DampedMember, DriftMember} <= kinds
    # nothing fitted: one copy of each, not one per fold (run and counted once)
    assert sorted(type(m).__name__ for m in model.model.members if not hasattr(m, "spec")) == [
        "DampedMember", "DriftMember", "NaiveMember", "SeasonalNaiveMember", "ThetaMember"]
    frame = pd.read_csv(csv)
    got = model.predict(frame)
    alone = cellsearch.load(export(out=tmp_path / "n", run_dir=result.run_dir, trial=net)).predict(frame)
    for key in ("s0", "s1", "s2"):
        v = frame[frame.series == key].value.to_numpy()
        season = v[len(v) - 4 + np.arange(2)] if len(v) >= 4 else np.full(2, v[-1])  # s0: shorter than a season
        w = v[-6:]  # the window: its last 6 values
        theta, damped, drift = _theta_by_hand(w, 2, 4), _damped_by_hand(w, 2, 4), _drift_by_hand(w, 2, 4)
        want = (0.4 * alone[alone.series == key].prediction.to_numpy() + 0.2 * season + 0.1 * v[-1] + 0.1 * theta
                + 0.1 * damped + 0.1 * drift)
        np.testing.assert_allclose(got[got.series == key].prediction.to_numpy(), want, rtol=1e-4)
    served = mlflow.pyfunc.load_model(str(out)).predict(frame)["prediction"].to_numpy()
    np.testing.assert_allclose(served, got.prediction.to_numpy(), rtol=1e-6)
    inputs = transform(frame, model.prep)
    with torch.no_grad():
        want_scaled = model.model(torch.from_numpy(inputs.x), torch.from_numpy(inputs.lengths)).numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"))
    onnx_out = sess.run(["output"], {"x": inputs.x, "lengths": inputs.lengths})[0]
    np.testing.assert_allclose(onnx_out, want_scaled, atol=1e-4)
    for m in model.model.members:  # each member rebuilds from its description
        if not hasattr(m, "spec"):
            assert type(m).from_description(m.describe()).describe() == m.describe()
    refit = export(out=tmp_path / "r", run_dir=result.run_dir, ensemble="E9", weights="refit")
    refit_kinds = {type(m) for m in cellsearch.load(refit).model.members}
    assert {NaiveMember, DampedMember, ThetaMember, DriftMember} <= refit_kinds



def test_the_naive_members_forecast_what_the_references_do(tmp_path):
    """Out of fold, the naive member forecasts each window's last value (0 in its scaled units, as the
    reference says) and the seasonal one the reference's seasonal forecast; with a season of 1 only
    the naive member is made (the seasonal one would repeat it)."""
    from cellsearch.folds import make_folds
    from cellsearch.references import REFERENCES, Context
    from cellsearch.refmembers import fold_members

    csv = _panel(tmp_path / "p.csv", sizes=((40, 10.0), (50, 300.0)), seed=2)
    ds = read_dataset(csv, horizon=3, window=8, season=4)
    folds = make_folds(ds, 3)
    _, naive = fold_members(ds, folds, "naive")
    members, seasonal = fold_members(ds, folds, "seasonal_naive")
    assert np.abs(naive).max() < 1e-6 and np.abs(seasonal).max() > 0.01
    ctx = Context("forecasting", 8, 8, len(folds.oof), 3, 0, 4, ds.preprocessing)
    want = REFERENCES["seasonal_naive"].fit(folds.oof, ctx)(folds.oof)
    np.testing.assert_allclose(seasonal, want, atol=1e-6)
    assert members[0].arch == "seasonal naive/4"
    flat = read_dataset(csv, horizon=3, window=8, season=1)
    assert fold_members(flat, make_folds(flat, 3), "seasonal_naive") is None
    assert fold_members(flat, make_folds(flat, 3), "naive") is not None


def _seasonal_by_hand(y: np.ndarray, season: int, level: float | None = None) -> tuple[np.ndarray, bool]:
    """The seasonal indices theta and the damped trend remove, written out: classical decomposition,
    kept where the season's strength passes ``SEASON_STRENGTH`` (zeros otherwise); by ratio where
    ``level`` is given and every ``y + level`` is positive (then the second value is True)."""
    from cellsearch.tasks.forecasting import SEASON_STRENGTH

    n = len(y)
    mult = level is not None and bool((y + level > 0).all())
    if season > 1 and n >= 3 * season:
        w = [1.0 / season] * season
        if season % 2 == 0:
            w = [0.5 / season] + w[1:] + [0.5 / season]
        off = (len(w) - 1) // 2
        steps = range(off, n - off)
        avg = {t: sum(wj * y[t - off + j] for j, wj in enumerate(w)) for t in steps}
        detrended = {t: ((y[t] + level) / (a + level) - 1 if mult else y[t] - a)
                     for t, a in avg.items()}
        idx = np.array([np.mean([v for t, v in detrended.items() if t % season == p]) for p in range(season)])
        idx -= idx.mean()
        left = [v - idx[t % season] for t, v in detrended.items()]
        values = list(detrended.values())
        spread = np.var(values) * len(values) / (len(values) - 1)
        if np.var(left) * len(left) / (len(left) - season) < (1 - SEASON_STRENGTH) * spread:
            return idx, mult
    return np.zeros(max(1, season)), mult


def _adjusted_by_hand(y: np.ndarray, season: int, level: float | None) -> tuple[np.ndarray, Any]:
    """The values without their season and the function that puts it back on a forecast."""
    seas, mult = _seasonal_by_hand(y, season, level)
    m = len(seas)
    if mult:
        d = np.array([(y[t] + level) / (1 + seas[t % m]) - level for t in range(len(y))])
        return d, lambda f, t: (f + level) * (1 + seas[t % m]) - level
    return np.array([y[t] - seas[t % m] for t in range(len(y))]), lambda f, t: f + seas[t % m]


def _theta_by_hand(y: np.ndarray, horizon: int, season: int, level: float | None = None) -> np.ndarray:
    """The theta method written out step by step on one series ``y`` (what ``theta_forecast`` does to
    a batch of windows): the seasonal adjustment, exponential smoothing with the weight of least
    one-step squared error among ``THETA_ALPHAS`` from the first value, half the least-squares slope
    as drift."""
    from cellsearch.tasks.forecasting import THETA_ALPHAS

    n = len(y)
    if n == 1:
        return np.full(horizon, float(y[0]))
    d, put_back = _adjusted_by_hand(y, season, level)
    best = None
    for a in THETA_ALPHAS:
        smoothed, sse = d[0], 0.0
        for t in range(1, n):
            sse += (d[t] - smoothed) ** 2
            smoothed += a * (d[t] - smoothed)
        if best is None or sse < best[0]:
            best = (sse, smoothed, a)
    _, smoothed, a = best
    slope = np.polyfit(np.arange(n), d, 1)[0]
    return np.array([put_back(smoothed + slope / 2 * (h - 1 + 1 / a - (1 - a) ** n / a), n - 1 + h)
                     for h in range(1, horizon + 1)])


def _damped_by_hand(y: np.ndarray, horizon: int, season: int, level: float | None = None) -> np.ndarray:
    """Exponential smoothing with a damped trend written out on one series: the seasonal adjustment,
    level and trend from the first value and step, every (alpha, beta, phi) of the grid tried, the
    least one-step squared error kept, ``l + (phi + ... + phi^h) b`` forecast."""
    from cellsearch.tasks.forecasting import DAMPED_BETAS, DAMPED_PHIS

    n = len(y)
    d, put_back = _adjusted_by_hand(y, season, level)
    best = None
    for a in np.linspace(0.05, 1.0, 20):
        for share in DAMPED_BETAS:
            for phi in DAMPED_PHIS:
                smoothed, trend, sse = d[0], (d[1] - d[0] if n > 1 else 0.0), 0.0
                for t in range(1, n):
                    err = d[t] - (smoothed + phi * trend)
                    sse += err ** 2
                    smoothed, trend = smoothed + phi * trend + a * err, phi * trend + a * share * err
                if best is None or sse < best[0]:
                    best = (sse, smoothed, trend, phi)
    _, smoothed, trend, phi = best
    return np.array([put_back(smoothed + sum(phi ** k for k in range(1, h + 1)) * trend, n - 1 + h)
                     for h in range(1, horizon + 1)])


def _drift_by_hand(y: np.ndarray, horizon: int, season: int, level: float | None = None) -> np.ndarray:
    """The random walk with drift written out on one series: the seasonal adjustment, the last value
    plus ``h`` times the mean step from the first value to the last."""
    n = len(y)
    d, put_back = _adjusted_by_hand(y, season, level)
    step = (d[-1] - d[0]) / (n - 1) if n > 1 else 0.0
    return np.array([put_back(d[-1] + h * step, n - 1 + h) for h in range(1, horizon + 1)])


def _ragged_windows(rng: np.random.Generator, count: int, length: int, season: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-aligned windows (count, length, 3) of random real lengths, the target in channel 1: a
    trend with noise, a strong season in every other one; channel 2 the level channel, and the
    levels: in two windows of four one that puts the series above 0 with a season that grows
    with it (multiplicative), in the others 0 (values around 0: additive)."""
    x = np.zeros((count, length, 3), dtype=np.float32)
    lengths = rng.integers(1, length + 1, count)
    lengths[:4] = length  # some full windows
    levels = np.zeros(count)
    for i, n in enumerate(lengths):
        t = np.arange(n)
        season_ = 5 * np.sin(2 * np.pi * t / max(season, 1)) if i % 2 else 0
        if i % 4 >= 2:
            levels[i] = 30.0 + 5 * i % 7
            series = (levels[i] + 0.5 * t) * (1 + season_ / 12) + rng.normal(size=n)
            x[i, :n, 1] = series - levels[i]
        else:
            x[i, :n, 1] = 0.1 * t + season_ + rng.normal(size=n)
        x[i, :n, 0] = rng.normal(size=n)
        x[i, :n, 2] = levels[i]
    levels = x[:, 0, 2].astype(np.float64)  # as the member reads it
    return x, lengths.astype(np.int64), levels


@pytest.mark.parametrize("with_level", [False, True], ids=["no level", "level"])
@pytest.mark.parametrize("kind", ["theta", "damped", "drift"])
@pytest.mark.parametrize("length,season,horizon", [(30, 4, 8), (36, 12, 12), (10, 12, 3), (24, 1, 6), (1, 1, 3)])
def test_the_forecasts_fitted_on_each_window_as_written_out_by_hand(kind, length, season, horizon, with_level):
    """Theta, the damped trend and the drift on a batch of ragged windows equal the methods written out per
    window; some windows are seasonally adjusted, some not, and with a level channel some by ratio;
    they commute with the windows' scaling (shift and scale); and each member's ONNX graph computes
    the same forecasts (a window of one step included: a Scan over no steps stopped onnxruntime)."""
    import onnxruntime as ort
    import torch

    from cellsearch.onnx_export import reference_onnx
    from cellsearch.refmembers import MEMBERS
    from cellsearch.tasks import forecasting

    forecast = getattr(forecasting, f"{kind}_forecast")
    by_hand = {"theta": _theta_by_hand, "damped": _damped_by_hand, "drift": _drift_by_hand}[kind]
    rng = np.random.default_rng(length + season)
    x, lengths, levels = _ragged_windows(rng, 12 if kind == "damped" else 40, length, season)
    target, n = torch.from_numpy(x[:, :, 1]).double(), torch.from_numpy(lengths)
    level = torch.from_numpy(levels) if with_level else None
    got = forecast(target, n, season, horizon, level=level).numpy()
    for i, k in enumerate(lengths):
        np.testing.assert_allclose(got[i], by_hand(x[i, :k, 1].astype(np.float64), horizon, season,
                                                   levels[i] if with_level else None),
                                   rtol=1e-9, atol=1e-9, err_msg=f"window {i} ({k} steps)")
    flagged = (forecasting.seasonal_indices(target, n, season, level).abs().sum(1) > 0).numpy()
    mult = forecasting.multiplicative(target, n, level).numpy()
    if length >= 3 * season > 3:
        # both branches are compared: the test flags seasonal windows (odd), and far fewer of the others
        assert flagged[1::2].sum() >= 2 * max(1, flagged[0::2].sum()), flagged
        if with_level:  # and both kinds of adjustment
            assert (flagged & mult).any() and (flagged & ~mult).any()
    else:
        assert not flagged.any()
    assert mult.any() == with_level
    moved = forecast(target * 7.0 - 3.0, n, season, horizon, level=None if level is None else level * 7.0 + 3.0).numpy()
    np.testing.assert_allclose(moved, got * 7.0 - 3.0, rtol=1e-9, atol=1e-8)
    member = MEMBERS[kind](season, 1, horizon, "forecasting", 3, level_index=2 if with_level else -1)
    with torch.no_grad():
        want = member(torch.from_numpy(x), n).numpy()
    np.testing.assert_allclose(want, got, rtol=1e-5, atol=1e-5)
    onnx_out = ort.InferenceSession(reference_onnx(member).SerializeToString()).run(
        ["output"], {"x": x, "lengths": lengths})[0]
    np.testing.assert_allclose(onnx_out, want, atol=1e-6)


@pytest.mark.parametrize("season,with_level", [(4, True), (4, False), (1, False)], ids=["ratio", "difference", "none"])
def test_a_network_corrects_thetas_forecast_in_torch_and_onnx(season, with_level):
    """``base: theta``: the model's output is its head's plus theta fitted on each window as the
    member fits it (reading the level channel where the spec names one), the ONNX graph computes the
    same on ragged windows (one step included), the spec survives its JSON, its cost counts theta's
    multiply-adds, and a spec written before ``base`` (season alone) still means the seasonal naive
    base."""
    import onnxruntime as ort
    import torch

    from cellsearch.model import ModelSpec, build
    from cellsearch.onnx_export import build_onnx
    from cellsearch.stack import LayerSpec
    from cellsearch.tasks import forecasting

    rng = np.random.default_rng(season)
    x, lengths, levels = _ragged_windows(rng, 24, 20, max(season, 4))
    spec = ModelSpec(3, (LayerSpec("gru", 8),), 5, "forecasting", season=season, target_index=1, base="theta",
                     level_index=2 if with_level else -1)
    assert ModelSpec.from_dict(spec.to_dict()) == spec and spec.arch == ("gru8/theta4" if season > 1 else "gru8/theta")
    torch.manual_seed(0)
    model = build(spec).eval()
    xt, n = torch.from_numpy(x), torch.from_numpy(lengths)
    with torch.no_grad():
        out = model(xt, n)
        head = model.head(model.features(xt, n))
    theta = forecasting.theta_forecast(xt[:, :, 1].double(), n, season, 5,
                                       level=torch.from_numpy(levels) if with_level else None)
    np.testing.assert_allclose((out - head).numpy(), theta.numpy(), rtol=1e-5, atol=1e-5)
    assert forecasting.multiplicative(xt[:, :, 1], n, torch.from_numpy(levels)).any()  # ratios matter here
    onnx_out = ort.InferenceSession(build_onnx(model).SerializeToString()).run(
        ["output"], {"x": x, "lengths": lengths})[0]
    np.testing.assert_allclose(onnx_out, out.numpy(), atol=1e-5)
    bare = build(ModelSpec(3, (LayerSpec("gru", 8),), 5, "forecasting"))
    assert model.macs_per_sequence(20) - bare.macs_per_sequence(20) == forecasting.theta_macs(20, season, 5)
    old = {k: v for k, v in spec.to_dict().items() if k not in ("base", "level_index")}
    legacy = build(ModelSpec.from_dict({**old, "season": 4}))
    assert legacy.spec.base_forecast == "seasonal_naive" and legacy.spec.arch == "gru8/sn4"
    with torch.no_grad():
        legacy.load_state_dict(model.state_dict())
        np.testing.assert_allclose((legacy(xt, n) - head).numpy(),
                                   forecasting.seasonal_naive(xt[:, :, 1], n, 4, 5).numpy(), atol=1e-6)


def test_a_season_that_grows_with_the_series_is_adjusted_by_ratios_through_the_level_channel(tmp_path):
    """The series layout's level channel carries each window's level past the window scaling: the
    members fitted on a panel forecast, in the series' own units, what theta and the damped trend
    forecast on the raw windows by ratio (level 0); a series that crosses 0 is adjusted by difference;
    and on seasons that grow with the series, the ratio forecasts beat the difference forecasts."""
    import torch

    from cellsearch.predict import transform
    from cellsearch.refmembers import MEMBERS
    from cellsearch.tasks import forecasting

    rng = np.random.default_rng(3)
    factors = np.array([0.7, 0.9, 1.1, 1.3])
    rows, truth = [], {}
    for k in range(5):
        t = np.arange(40 + 4)
        v = (50 + 5 * k + (2 + k) * t) * factors[t % 4] * (1 + 0.01 * rng.normal(size=len(t)))
        if k == 4:
            v = v - v.mean()  # crosses 0: no ratios
        rows += [{"series": f"s{k}", "t": int(i), "value": float(x)} for i, x in enumerate(v[:40])]
        truth[f"s{k}"] = v
    csv = tmp_path / "grows.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    ds = read_dataset(csv, horizon=4, window=24, season=4)
    prep = ds.preprocessing
    assert prep.inputs[-1] == "value (level)" and prep.layout_data["level_index"] == len(prep.inputs) - 1
    inputs = transform(pd.read_csv(csv), prep)
    last, scale = inputs.scale
    errors = {}
    for kind in ("theta", "damped", "drift"):
        member = MEMBERS[kind].fit(ds.splits["train"], "forecasting", 24, 4, prep)
        with torch.no_grad():
            scaled = member(torch.from_numpy(inputs.x), torch.from_numpy(inputs.lengths)).double().numpy()
        got = scaled * scale[:, None] + last[:, None]
        raw = torch.from_numpy(np.stack([truth[str(key)][16:40] for key in inputs.keys]))
        lengths = torch.full((len(raw),), 24)
        forecast = getattr(forecasting, f"{kind}_forecast")
        by_ratio = forecast(raw, lengths, 4, 4, level=torch.zeros(len(raw))).numpy()
        by_difference = forecast(raw, lengths, 4, 4).numpy()
        np.testing.assert_allclose(got, by_ratio, rtol=1e-4)
        assert forecasting.multiplicative(raw, lengths, torch.zeros(len(raw))).tolist() == [True] * 4 + [False]
        np.testing.assert_allclose(by_ratio[4], by_difference[4])
        future = np.stack([truth[str(key)][40:] for key in inputs.keys])
        errors[kind] = [np.abs(f[:4] - future[:4]).mean() for f in (by_ratio, by_difference)]
    assert all(ratio < 0.5 * difference for ratio, difference in errors.values()), errors


def test_theta_and_the_damped_trend_forecast_a_trend_the_naive_forecasts_miss():
    """On trending seasonal windows the error of theta, the damped trend and the drift is well below both
    naive forecasts' (what they are in the library for)."""
    import torch

    from cellsearch.tasks.forecasting import damped_forecast, drift_forecast, seasonal_naive, theta_forecast

    rng = np.random.default_rng(0)
    t = np.arange(44)
    series = np.stack([s * (0.5 * t + 4 * np.sin(2 * np.pi * t / 4)) + rng.normal(size=44) for s in (1, 2, 3)])
    x, future = torch.from_numpy(series[:, :36]), series[:, 36:]
    lengths = torch.full((3,), 36)
    err = {name: np.abs(f.numpy() - future).mean() for name, f in (
        ("theta", theta_forecast(x, lengths, 4, 8)), ("damped", damped_forecast(x, lengths, 4, 8)),
        ("drift", drift_forecast(x, lengths, 4, 8)),
        ("seasonal", seasonal_naive(x, lengths, 4, 8)), ("naive", x[:, -1:].expand(3, 8)))}
    assert max(err["theta"], err["damped"], err["drift"]) < 0.5 * min(err["seasonal"], err["naive"]), err


@pytest.mark.parametrize("cv,refits", [(1, True), (3, False)])
def test_a_forecast_validated_on_one_time_holdout_is_refit_by_default(tmp_path, cv, refits):
    """``--weights auto``: a forecast validated on each series' final stretch (one holdout) is exported
    retrained on all non-test windows — its fold model never saw that stretch, the latest data it
    forecasts from — and says so on the card; rolling-origin folds keep their fold models; an
    explicit ``--weights`` wins either way."""
    import json

    from cellsearch.export import export
    from cellsearch.search import tune

    csv = _panel(tmp_path / "p.csv", sizes=((40, 10.0), (50, 300.0), (45, 7.0)), seed=3)
    space = tmp_path / "s.yaml"
    space.write_text("layers: {depth: 1, cell: gru, hidden: 8}\nlr: 0.01\nmax_epochs: 3\nmin_steps: 20\n")
    tune(csv, space=str(space), trials=1, horizon=3, window=8, season=4, cv=cv, run_dir=tmp_path / "runs",
         track=False, progress=False)
    default = export(out=tmp_path / "d", run_dir=tmp_path / "runs")
    folds = export(out=tmp_path / "f", run_dir=tmp_path / "runs", weights="folds")
    how = json.loads((default / "metrics.json").read_text())["weights"]
    card = (default / "README.md").read_text()
    assert ("retrained on all non-test data" in how) is refits and ("final stretch" in card) is refits
    assert "retrained" not in json.loads((folds / "metrics.json").read_text())["weights"]
    frame = pd.read_csv(csv)
    forecasts = [cellsearch.load(b).predict(frame).prediction.to_numpy() for b in (default, folds)]
    assert np.allclose(*forecasts) is not refits


def test_cv_auto_validates_forecasts_on_rolling_origins_up_to_ten_thousand_windows(tmp_path):
    """A panel of about 2,900 windows (more than the 2,000 sequences ``--cv auto`` cross-validates)
    still gets five rolling origins: a window is a few horizons of steps, and one holdout is one
    stretch of time. Sequences keep their 2,000."""
    from cellsearch.config import TuneConfig
    from cellsearch.folds import AUTO_MAX_EXAMPLES, AUTO_MAX_WINDOWS, resolve_cv
    from cellsearch.searchdata import read_folds

    csv = _panel(tmp_path / "p.csv", sizes=tuple((100, 10.0 + k) for k in range(30)), seed=1)
    dataset, folds = read_folds(TuneConfig.create(csv, horizon=2, window=8, season=4, test_size=0.0))
    n = len(dataset.splits["train"]) + len(dataset.splits["val"])
    assert AUTO_MAX_EXAMPLES < n <= AUTO_MAX_WINDOWS
    assert folds.kind == "rolling origin" and folds.k == 5
    assert resolve_cv("auto", AUTO_MAX_EXAMPLES + 1) == 1 and resolve_cv("auto", n, AUTO_MAX_WINDOWS) == 5
    assert resolve_cv("auto", AUTO_MAX_WINDOWS + 1, AUTO_MAX_WINDOWS) == 1
