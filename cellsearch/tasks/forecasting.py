"""``forecasting``: the next ``horizon`` values of a series from a window of its past, scored by MASE.

Models predict in each window's own scaled units; a window's ``weight`` (its scale over its series'
MASE denominator, ``SplitTensors.weight``) turns a scaled absolute error into that window's MASE:
the mean absolute error of the ``horizon`` values over the series' in-sample mean absolute seasonal
difference, averaged over forecast windows. sMAPE and normalised RMSE are reported beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cellsearch.tasks.base import Task


class Forecasting(Task):
    """Windows cut from series (the series layout); L1 training loss by default (what MASE scores)."""

    name = "forecasting"
    metric = "mase"
    whole_sequences = False
    unit = "windows"
    references = ("naive", "seasonal_naive", "theta", "damped", "drift")
    metric_note = "(MASE: mean absolute error over the series' in-sample mean absolute seasonal difference)"

    def loss(self, out: Any, y: Any, forecast_loss: str = "l1") -> Any:
        """L1 on each window's scaled values, or squared error with ``forecast_loss="mse"``."""
        import torch.nn.functional as F  # noqa: N812

        return F.l1_loss(out, y) if forecast_loss == "l1" else F.mse_loss(out, y)

    def loss_rows(self, out: Any, y: Any, forecast_loss: str = "l1") -> Any:
        import torch.nn.functional as F  # noqa: N812

        rows = F.l1_loss(out, y, reduction="none") if forecast_loss == "l1" else F.mse_loss(out, y, reduction="none")
        return rows.reshape(len(out), -1).mean(1)

    def score(self, pred: np.ndarray, y: np.ndarray, target_scale: float = 1.0,
              weight: np.ndarray | None = None) -> float:
        """MASE: each window's mean absolute scaled error times its ``weight``, averaged."""
        err = np.asarray(pred).reshape(len(y), -1).astype(np.float64) - np.asarray(y).reshape(len(y), -1)
        w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
        return float(np.mean(w * np.abs(err).mean(axis=1)))

    def secondary(self, pred: np.ndarray, y: np.ndarray, origin: np.ndarray | None) -> dict[str, float]:
        """sMAPE (0–2) and RMSE over the mean absolute target (normalised RMSE), both in the target's
        units (``origin``: each window's offset and scale)."""
        if origin is None or not len(y):
            return {}
        off, sc = np.asarray(origin, dtype=np.float64)[:, :1], np.asarray(origin, dtype=np.float64)[:, 1:]
        p = np.asarray(pred, dtype=np.float64).reshape(len(y), -1) * sc + off
        t = np.asarray(y, dtype=np.float64).reshape(len(y), -1) * sc + off
        denom = np.abs(p) + np.abs(t)
        smape = np.divide(2 * np.abs(p - t), denom, out=np.zeros_like(denom), where=denom > 0)
        return {"smape": float(smape.mean()),
                "nrmse": float(np.sqrt(np.mean((p - t) ** 2)) / max(float(np.mean(np.abs(t))), 1e-12))}

    def n_outputs(self, prep: Any) -> int:
        return int(prep.layout_data["horizon"])

    def predictions(self, keys: np.ndarray, values: np.ndarray, prep: Any, key_name: str) -> pd.DataFrame:
        """One row per series and forecast step."""
        horizon = values.shape[1]
        return pd.DataFrame({key_name: np.repeat(keys, horizon), "step": np.tile(np.arange(1, horizon + 1), len(keys)),
                             "prediction": values.reshape(-1)})

    def truth(self, y: Any, prep: Any) -> Any:
        return None


def seasonal_naive(target: Any, lengths: Any, season: int, horizon: int) -> Any:
    """(B, horizon) seasonal naive forecast from left-aligned windows ``target`` (B, T): step h repeats
    the value ``season`` steps before it (index ``length - season + h mod season``); 0 (the last value,
    in window-scaled units) where a window is shorter than a season. The model's seasonal base and
    the seasonal naive reference and member all use it (tensors; torch imported here, as the task's
    other torch code, so that reading a task stays light)."""
    import torch

    h = torch.arange(horizon, device=target.device)
    n = lengths.to(target.device)[:, None]
    idx = (n - season + h[None, :] % season).clamp(min=0)
    values = torch.gather(target, 1, idx)
    return torch.where(n >= season, values, torch.zeros_like(values))


#: The smoothing weights the theta forecast's simple exponential smoothing chooses among (lowest
#: in-sample one-step squared error).
THETA_ALPHAS = tuple(float(a) for a in np.linspace(0.02, 1.0, 50))
#: A window is seasonally adjusted where its season explains more than this share of the variance
#: left after removing its trend (seasonal strength, Wang, Smith & Hyndman 2006, with the variances
#: taken over their degrees of freedom as an adjusted R squared). The M3 theta method's
#: autocorrelation test has no power on a window of three seasons (a pure sine of 36 monthly steps
#: fails it); on the development panels' earlier origins (never their test rows) the strength rule
#: lowered theta's MASE from 1.90 to 1.16 (monthly) and 0.70 to 0.42 (US employment), equal elsewhere.
SEASON_STRENGTH = 0.5


def theta_macs(length: int, season: int, horizon: int) -> int:
    """The theta forecast's multiply-adds for one window of ``length`` steps: per step the smoothing
    for every weight tried (two each), the moving average and the phases' sums (a season each) and the
    slope; per output the drift and the seasonal index."""
    return (2 * len(THETA_ALPHAS) + 2 * season + 4) * int(length) + 3 * horizon


def moving_average_weights(season: int) -> np.ndarray:
    """The centred moving average of one season that classical decomposition takes the trend with:
    ``season`` equal weights, or for an even season 2 x m (``season + 1`` weights, half at each end)."""
    if season % 2:
        return np.full(season, 1.0 / season)
    w = np.full(season + 1, 1.0 / season)
    w[0] = w[-1] = 0.5 / season
    return w


def multiplicative(target: Any, lengths: Any, level: Any) -> Any:
    """(B,) whether each left-aligned window's season is adjusted by ratios: where ``level`` (B,) is
    given (what to add to the window's values to get the series' own values in the same unit: the
    window's last value over its scale for window-scaled inputs, 0 for raw ones) and every real value
    plus it is positive, as for sales, visitors, counts, whose seasonal swings grow with their level
    (classical multiplicative decomposition, as the M3/M4 theta method and statsforecast's default);
    else by differences (a series crossing zero has no ratios)."""
    import torch

    b, t_len = target.shape
    if level is None:
        return torch.zeros(b, dtype=torch.bool, device=target.device)
    real = torch.arange(t_len, device=target.device)[None, :] < lengths.to(target.device).long()[:, None]
    raw = target.double() + level.to(target.device).double()[:, None]
    return torch.where(real, raw > 0, torch.ones_like(real)).all(1)


def seasonal_indices(target: Any, lengths: Any, season: int, level: Any = None) -> Any:
    """(B, season) seasonal indices of left-aligned windows ``target`` (B, T) of real lengths
    ``lengths``: classical decomposition (a centred moving average of one season, 2 x m for an even m,
    over each window's real steps; each phase's mean of the values' deviation from that average;
    centred to sum 0), zero for a window shorter than three seasons or whose seasonal strength (1 - the
    variance of what is left after the indices over the variance of the deviations, each over its
    degrees of freedom) is at most ``SEASON_STRENGTH``. Phase ``p`` is the steps ``t`` with
    ``t mod season == p`` counted from the window's first real step. A deviation is the difference
    from the average, or where the window is ``multiplicative`` (``level`` given) its ratio to it less
    1, so that the index is then relative (the factor ``1 + index``, of mean 1). Both commute with the
    windows' own scaling (shift and scale)."""
    mult = multiplicative(target, lengths, level)
    return _indices(target.double(), lengths, season, mult, _ratio_levels(target, mult, level))


def _ratio_levels(target: Any, mult: Any, level: Any) -> Any:
    """(B,) double: each window's ``level`` where it is ``multiplicative``, else 0."""
    import torch

    zero = torch.zeros(target.shape[0], dtype=torch.float64, device=target.device)
    return zero if level is None else torch.where(mult, level.to(target.device).double(), zero)


def _indices(y: Any, lengths: Any, season: int, mult: Any, lv: Any) -> Any:
    """``seasonal_indices`` of double windows ``y`` given which are ``multiplicative`` (``mult``)
    and their levels there (``lv``, 0 elsewhere): ``deseasonalised`` decides those once for both."""
    import torch

    b, t_len = y.shape
    n = lengths.to(y.device).long()
    if season <= 1 or t_len < 3 * season:
        return torch.zeros((b, max(1, season)), dtype=y.dtype, device=y.device)
    w = torch.as_tensor(moving_average_weights(season), dtype=y.dtype, device=y.device)
    off = (len(w) - 1) // 2
    avg = torch.nn.functional.conv1d(y[:, None, :], w[None, None, :])[:, 0]  # step off .. T-1-off
    pos = torch.arange(off, off + avg.shape[1], device=y.device)
    ok = (pos[None, :] + off) < n[:, None]
    okf = ok.to(y.dtype)
    detrended = torch.where(ok, y[:, off:off + avg.shape[1]] - avg, torch.zeros_like(avg))
    # the ratio less 1 where multiplicative: the difference over the average in the series' own units
    # (> 0); computed for every window, with no branch on the data, so that a model using it as its
    # base runs under ``vmap`` (the folds trained together, ``cellsearch.foldbatch``)
    base = avg + lv[:, None]
    ratio = detrended / torch.where(ok & mult[:, None], base, torch.ones_like(base))
    detrended = torch.where(mult[:, None], ratio, detrended)
    phase = torch.nn.functional.one_hot(pos % season, season).to(y.dtype)
    idx = (detrended @ phase) / (okf @ phase).clamp(min=1)
    idx = idx - idx.mean(1, keepdim=True)
    left = torch.where(ok, detrended - idx @ phase.T, torch.zeros_like(avg))
    count = okf.sum(1, keepdim=True).clamp(min=1)

    def squares(v: Any) -> Any:
        return (((v - (v * okf).sum(1, keepdim=True) / count) * okf) ** 2).sum(1)

    # variances with their degrees of freedom (the season's indices cost season - 1), so that noise
    # with a few values per phase does not pass for a season
    spread = squares(detrended) / (count[:, 0] - 1).clamp(min=1)
    rest = squares(left) / (count[:, 0] - season).clamp(min=1)
    seasonal = (n >= 3 * season) & (spread > 0) & (rest < (1 - SEASON_STRENGTH) * spread)
    return torch.where(seasonal[:, None], idx, torch.zeros_like(idx))


class Seasons:
    """A batch of windows' seasonal adjustment (``deseasonalised``): the indices (B, m), the real
    lengths clamped to [1, T], which windows are adjusted by ratios and their levels (``multiplicative``)."""

    def __init__(self, idx: Any, n: Any, mult: Any, level: Any) -> None:
        self.idx, self.n, self.mult, self.level = idx, n, mult, level

    def put_back(self, forecast: Any) -> Any:
        """``forecast`` (B, H) of the adjusted values with each step's season put back (the phase after
        a window's ``n`` steps): its index added, or where multiplicative its factor applied to the
        value in the series' own units."""
        import torch

        h = torch.arange(1, forecast.shape[1] + 1, device=forecast.device)
        at = torch.gather(self.idx, 1, (self.n[:, None] - 1 + h[None, :]) % self.idx.shape[1])
        level = self.level[:, None]
        return torch.where(self.mult[:, None], (forecast + level) * (1 + at) - level, forecast + at)


def deseasonalised(target: Any, lengths: Any, season: int, level: Any = None) -> tuple[Any, Seasons]:
    """(values without their season (B, T) in double precision, the ``Seasons`` that put it back) of
    left-aligned windows: what theta and the damped trend smooth. The season is taken out by
    difference, or where the window is ``multiplicative`` by ratio: ``(y + level) / (1 + index) - level``,
    in the window's units still."""
    import torch

    b, t_len = target.shape
    y = target.double()
    n = lengths.to(y.device).long().clamp(min=1, max=t_len)
    mult = multiplicative(y, n, level)
    lv = _ratio_levels(y, mult, level)
    idx = _indices(y, n, season, mult, lv)
    steps = torch.arange(t_len, device=y.device)
    at = torch.gather(idx, 1, (steps % idx.shape[1])[None, :].expand(b, -1))
    d = torch.where(mult[:, None], (y + lv[:, None]) / (1 + at) - lv[:, None], y - at)
    return d, Seasons(idx, n, mult, lv)


def theta_forecast(target: Any, lengths: Any, season: int, horizon: int, level: Any = None) -> Any:
    """(B, horizon) forecasts of the theta method (Assimakopoulos & Nikolopoulos 2000, in Hyndman &
    Billah's form: simple exponential smoothing with drift) from left-aligned windows ``target``
    (B, T), each fitted on its own real steps: deseasonalise (``deseasonalised``: by difference, or by
    ratio where the window is ``multiplicative`` given its ``level``), smooth
    (the weight ``alpha`` among ``THETA_ALPHAS`` with the lowest one-step squared error, starting
    from the first value), add half the least-squares slope ``b`` as drift, reseasonalise:
    ``level + b / 2 * (h - 1 + 1 / alpha - (1 - alpha) ** n / alpha)`` at step ``h`` of a window of ``n``
    steps. Affine in the values (with ``level`` shifted as they are), so the window-scaled forecast is
    the scaled forecast. The theta reference and ensemble member both use it (torch, imported here as
    for ``seasonal_naive``)."""
    import torch

    d, seasons = deseasonalised(target, lengths, season, level)
    n = seasons.n
    b, t_len = d.shape
    steps = torch.arange(t_len, device=d.device)
    alphas = torch.tensor(THETA_ALPHAS, dtype=d.dtype, device=d.device)
    level = d[:, :1].expand(b, len(alphas)).clone()
    sse = torch.zeros_like(level)
    for t in range(1, t_len):
        live = (t < n)[:, None]
        err = d[:, t:t + 1] - level
        sse = torch.where(live, sse + err * err, sse)
        level = torch.where(live, level + alphas[None, :] * err, level)
    best = sse.argmin(1, keepdim=True)
    alpha, level = alphas[best[:, 0]][:, None], torch.gather(level, 1, best)
    nf = n.double()[:, None]
    real = steps[None, :] < n[:, None]
    tc = torch.where(real, steps[None, :] - (nf - 1) / 2, torch.zeros_like(d))
    dc = torch.where(real, d - (d * real).sum(1, keepdim=True) / nf, torch.zeros_like(d))
    slope = (tc * dc).sum(1, keepdim=True) / (tc * tc).sum(1, keepdim=True).clamp(min=1e-12)
    h = torch.arange(1, horizon + 1, device=d.device, dtype=d.dtype)[None, :]
    drift = slope / 2 * (h - 1 + 1 / alpha - (1 - alpha) ** nf / alpha)
    return seasons.put_back(level + drift).to(target.dtype)


def drift_forecast(target: Any, lengths: Any, season: int, horizon: int, level: Any = None) -> Any:
    """(B, horizon) forecasts of the random walk with drift (the naive forecast plus the window's mean
    step: ``last + h (last - first) / (n - 1)``, Hyndman & Athanasopoulos' ``rwf(drift=TRUE)``) from
    left-aligned windows ``target`` (B, T), after the same seasonal adjustment as theta
    (``deseasonalised``, given ``level``). It has nothing to fit: where a series keeps growing at
    its own pace (employment, yearly totals) it extrapolates that pace, which theta halves and the
    damped trend flattens; an ARIMA search on short yearly series often lands on it. A window of one
    step forecasts its value. Affine in the values, as theta."""
    import torch

    d, seasons = deseasonalised(target, lengths, season, level)
    n = seasons.n
    last = torch.gather(d, 1, (n - 1)[:, None])
    slope = (last - d[:, :1]) / (n[:, None] - 1).clamp(min=1).to(d.dtype)
    h = torch.arange(1, horizon + 1, device=d.device, dtype=d.dtype)[None, :]
    return seasons.put_back(last + slope * h).to(target.dtype)


def drift_macs(length: int, season: int, horizon: int) -> int:
    """The drift forecast's multiply-adds for one window: the seasonal adjustment as theta's (a
    season's moving average and the phases' sums per step), the slope; per output the drift and the
    seasonal index."""
    return (2 * season + 2) * int(length) + 3 * horizon


def damped_grid() -> tuple[tuple[float, float, float], ...]:
    """The (alpha, beta, phi) the damped trend chooses among: 20 level weights in [0.05, 1], the trend's
    weight as a share of the level's (0.01-0.4), 4 damping factors (0.8-0.98)."""
    return tuple((float(a), b, p) for a in np.linspace(0.05, 1.0, 20) for b in DAMPED_BETAS for p in DAMPED_PHIS)


#: The damped trend's grid (``damped_grid``): the trend weights as shares of the level's, and the dampings.
DAMPED_BETAS = (0.01, 0.05, 0.1, 0.2, 0.4)
DAMPED_PHIS = (0.8, 0.9, 0.95, 0.98)


def damped_forecast(target: Any, lengths: Any, season: int, horizon: int, level: Any = None) -> Any:
    """(B, horizon) forecasts of exponential smoothing with an additive damped trend (Gardner &
    McKenzie 1985; ETS(A,Ad,N)) from left-aligned windows ``target`` (B, T), each fitted on its own
    real steps after the same seasonal adjustment as theta (``deseasonalised``, given ``level``): from the first value
    and the first step, ``f = l + phi b``, ``l = f + alpha e``, ``b = phi b + alpha beta e`` for the
    one-step error ``e``; the (alpha, beta, phi) of ``damped_grid`` with the lowest squared error;
    step ``h`` forecasts ``l + (phi + ... + phi^h) b``. The M3 and M4 competitions' yearly and
    quarterly series are where a damped trend beats both a straight line and none. Affine in the
    values, as theta."""
    import torch

    d, seasons = deseasonalised(target, lengths, season, level)
    n = seasons.n
    b, t_len = d.shape
    grid = torch.tensor(damped_grid(), dtype=d.dtype, device=d.device)
    alpha, share, phi = grid[:, 0][None, :], grid[:, 1][None, :], grid[:, 2][None, :]
    first = d[:, 1:2] - d[:, :1] if t_len > 1 else torch.zeros_like(d[:, :1])
    level = d[:, :1].expand(b, len(grid)).clone()
    trend = torch.where((n >= 2)[:, None], first, torch.zeros_like(first)).expand(b, len(grid)).clone()
    sse = torch.zeros_like(level)
    for t in range(1, t_len):
        live = (t < n)[:, None]
        ahead = level + phi * trend
        err = d[:, t:t + 1] - ahead
        sse = torch.where(live, sse + err * err, sse)
        level = torch.where(live, ahead + alpha * err, level)
        trend = torch.where(live, phi * trend + alpha * share * err, trend)
    best = sse.argmin(1, keepdim=True)
    steps_ahead = torch.arange(1, horizon + 1, device=d.device, dtype=d.dtype)[None, :]
    damping = torch.cumsum(grid[best[:, 0], 2][:, None] ** steps_ahead, 1)
    out = torch.gather(level, 1, best) + damping * torch.gather(trend, 1, best)
    return seasons.put_back(out).to(target.dtype)


def damped_macs(length: int, season: int, horizon: int) -> int:
    """The damped trend's multiply-adds for one window: per step five for every grid point, the
    seasonal adjustment as theta's; per output the damped sum."""
    return (5 * len(damped_grid()) + 2 * season + 4) * int(length) + 3 * horizon
