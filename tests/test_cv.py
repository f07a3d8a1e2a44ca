"""Cross-validated trials, out-of-fold predictions, ensemble selection and ensemble bundles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

import cellsearch
from cellsearch.data import read_dataset
from cellsearch.ensemble import loss_reader
from cellsearch.errors import UserError
from cellsearch.folds import fold_losses, fold_scores, make_folds, oof_loss, resolve_cv
from cellsearch.model import EnsembleModel, ModelSpec, build
from cellsearch.pareto import pareto_front, pick_trial, trial_points
from cellsearch.stack import LayerSpec
from cellsearch.tasks.classification import TIE_WEIGHT
from tests.conftest import make_classification_csv, make_sales_csv

# ---- folds -----------------------------------------------------------------------------------------


def test_resolve_cv():
    assert resolve_cv("auto", 2000) == 5 and resolve_cv("auto", 2001) == 1
    assert resolve_cv("3", 10) == 3 and resolve_cv(1, 10**6) == 1
    for bad in ("0", "many", -2):
        with pytest.raises(UserError):
            resolve_cv(bad, 10)


def test_stratified_folds_partition_the_non_test_sequences(tiny_csv):
    ds = read_dataset(tiny_csv, val_size=0.0)
    folds = make_folds(ds, 5, seed=3)
    assert folds.k == 5 and folds.kind == "stratified"
    pool = folds.folds[0].train.split
    assert len(pool) == len(ds.splits["train"])  # no validation split: the folds are made over train
    seen = np.concatenate([f.val.index for f in folds.folds])
    assert sorted(seen) == list(range(len(pool)))  # every sequence validated exactly once
    for f in folds.folds:
        assert not set(f.train.index) & set(f.val.index)
        counts = np.bincount(np.asarray(pool.y)[f.val.index], minlength=3)
        assert counts.max() - counts.min() <= 1  # stratified: classes dealt round the folds
    again = make_folds(ds, 5, seed=3)
    assert all((a.val.index == b.val.index).all() for a, b in zip(folds.folds, again.folds))
    other = make_folds(ds, 5, seed=4)
    assert any((a.val.index != b.val.index).any() for a, b in zip(folds.folds, other.folds))
    # The out-of-fold rows are the validation rows in fold order.
    assert (np.asarray(folds.oof.y) == np.asarray(pool.y)[seen]).all()


def test_split_column_is_honoured(tmp_path):
    csv = make_classification_csv(tmp_path / "c.csv", n_seq=40)
    df = pd.read_csv(csv)
    df["split"] = np.where(df["id"] < 8, "test", np.where(df["id"] < 14, "val", "train"))
    df.to_csv(csv, index=False)
    ds = read_dataset(csv)
    folds = make_folds(ds, 4)
    pool = folds.folds[0].train.split
    assert sorted(pool.keys.tolist()) == list(range(8, 40))  # train and val rows; test rows stay out
    assert len(ds.splits["test"]) == 8


def test_rolling_origin_trains_only_on_the_past(tmp_path):
    csv = make_sales_csv(tmp_path / "s.csv", [(1.0, 80), (3.0, 60), (2.0, 30)])
    ds = read_dataset(csv, horizon=4, val_size=0.0)
    folds = make_folds(ds, 3)
    assert folds.kind == "rolling origin" and folds.k == 3
    pool = folds.folds[0].train.split
    origins = []
    for f in folds.folds:
        keys, pos = pool.keys[f.val.index], pool.position[f.val.index]
        assert len(set(keys)) == len(keys)  # one validation window per series
        origin = dict(zip(keys, pos))
        origins.append(origin)
        for i in f.train.index:  # each training window's forecast ends before its series' origin
            assert pool.position[i] + 4 <= origin.get(pool.keys[i], 10**9)
    for a, b in zip(origins, origins[1:]):  # successive origins, one horizon apart
        assert all(b[k] - a[k] == 4 for k in a if k in b)
    # The last fold validates each series' last non-test window.
    end = {k: max(p for kk, p in zip(pool.keys, pool.position) if kk == k) for k in set(pool.keys)}
    assert origins[-1] == end


def test_oof_loss_and_fold_scores():
    y = np.array([0, 1, 1, 0])
    folds = SimpleNamespace(k=2, oof=SimpleNamespace(y=y, weight=None), oof_fold=np.array([0, 0, 1, 1]))
    confident = np.log(np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.6, 0.4]]))
    timid = np.log(np.array([[0.6, 0.4], [0.4, 0.6], [0.45, 0.55], [0.55, 0.45]]))
    assert fold_scores("classification", confident, folds) == [1.0, 1.0]
    assert fold_scores("classification", timid, folds) == [1.0, 1.0]
    assert oof_loss("classification", confident, folds.oof) < oof_loss("classification", timid, folds.oof)
    assert oof_loss("regression", np.array([[1.0], [2.0]]), SimpleNamespace(y=np.array([1.0, 4.0]))) == 2.0
    # Fold by fold: each fold's own log-loss, computed here by hand.
    p_true = np.array([0.9, 0.9, 0.8, 0.6])
    expected = [-np.mean(np.log(p_true[:2])), -np.mean(np.log(p_true[2:]))]
    assert fold_losses("classification", confident, folds) == pytest.approx(expected)
    reg = SimpleNamespace(k=2, oof=SimpleNamespace(y=np.array([1.0, 4.0, 0.0])), oof_fold=np.array([1, 0, 1]))
    assert fold_losses("regression", np.array([[1.0], [2.0], [3.0]]), reg) == pytest.approx([4.0, 4.5])


def test_ties_are_broken_by_the_out_of_fold_loss():
    pts = [{"name": "a", "score": 1.0, "oof_loss": 0.40, "cost": 10.0},
           {"name": "b", "score": 1.0, "oof_loss": 0.10, "cost": 10.0},
           {"name": "c", "score": 1.0, "oof_loss": 0.05, "cost": 50.0},
           {"name": "d", "score": 0.9, "oof_loss": 0.01, "cost": 5.0}]
    front = pareto_front(pts, "maximize")
    assert [p["name"] for p in front] == ["d", "b", "c"]  # a: same score and cost as b, worse loss
    assert pick_trial(front, "maximize", "best")["name"] == "c"


def test_cross_validated_knee_is_the_cheapest_shown_to_be_as_good():
    """The knee takes a cheaper model only where the folds show it loses little (an equivalence
    test): its shortfall plus one standard error within SCORE_MARGIN of the best's score. A model the
    folds merely cannot tell apart from the best is not enough."""
    from cellsearch.pareto import SCORE_MARGIN

    def pt(name, score, spread, cost):
        return {"name": name, "score": score, "spread": spread, "folds": 5, "cost": cost, "oof_loss": 0.1}

    assert SCORE_MARGIN == pytest.approx(0.01)
    front = [pt("tiny", 0.80, 0.004, 10.0), pt("small", 0.905, 0.004, 100.0), pt("big", 0.91, 0.004, 1e4)]
    # SE of the best = 0.004 / sqrt(4) = 0.002: "small" is 0.005 + 0.002 behind at most, within 1% of
    # 0.91; "tiny" is not.
    assert pick_trial(front, "maximize", "knee")["name"] == "small"
    assert pick_trial(front, "maximize", "best")["name"] == "big"
    front[1]["score"] = 0.90  # 0.01 + 0.002 behind: more than the margin, so the best is kept
    assert pick_trial(front, "maximize", "knee")["name"] == "big"
    noisy = [pt("small", 0.905, 0.04, 100.0), pt("big", 0.91, 0.04, 1e4)]  # as close, but SE 0.02
    assert pick_trial(noisy, "maximize", "knee")["name"] == "big"  # nothing shown: the best is kept
    rmse = [pt("a", 1.955, 0.02, 10.0), pt("b", 1.95, 0.02, 1e3)]  # minimised: 0.005 + 0.01 behind
    assert pick_trial(rmse, "minimize", "knee")["name"] == "a"
    rmse[0]["score"] = 2.0
    assert pick_trial(rmse, "minimize", "knee")["name"] == "b"


def test_knee_pairs_the_folds_when_every_fold_score_is_known():
    """Rolling-origin folds differ in difficulty; that spread is shared by every model and says
    nothing about which is better. Paired by fold, a model worse in every fold is not equivalent,
    and one that matches the best window by window is, though the windows differ far more."""
    def pt(name, folds, cost):
        mean = sum(folds) / len(folds)
        spread = (sum((f - mean) ** 2 for f in folds) / len(folds)) ** 0.5
        return {"name": name, "score": mean, "spread": spread, "folds": len(folds), "fold_scores": folds,
                "cost": cost, "oof_loss": 0.1}

    hard_and_easy = [1.0, 2.0, 0.5, 1.5, 3.0]  # MASE by window: the windows differ far more than the models
    best = pt("big", hard_and_easy, 1e4)
    worse = pt("small", [v + 0.1 for v in hard_and_easy], 10.0)  # 0.1 worse in every window
    assert pick_trial([worse, best], "minimize", "knee")["name"] == "big"
    twin = pt("twin", [1.005, 1.995, 0.505, 1.495, 3.005], 10.0)  # window by window within 0.005
    assert pick_trial([twin, best], "minimize", "knee")["name"] == "twin"
    unpaired = [{k: v for k, v in p.items() if k != "fold_scores"} for p in (twin, best)]
    assert pick_trial(unpaired, "minimize", "knee")["name"] == "big"  # unpaired, the windows' spread hides it
    noisy = pt("noisy", [1.2, 1.8, 0.7, 1.3, 3.01], 10.0)  # about as good on average, 0.2 apart window by window
    assert pick_trial([noisy, best], "minimize", "knee")["name"] == "big"


def test_knee_needs_the_out_of_fold_loss_shown_within_its_margin_too():
    """Scores saturate on small data (every validation sequence right); the paired fold losses tell
    a right-but-unsure model from a right-and-sure one, and the unsure one is not the knee."""
    def pt(name, losses, cost):
        return {"name": name, "score": 1.0, "spread": 0.0, "folds": 5, "fold_scores": [1.0] * 5,
                "fold_losses": losses, "oof_loss": sum(losses) / 5, "cost": cost}

    sure = pt("ensemble", [0.05, 0.04, 0.06, 0.05, 0.03], 1e4)
    unsure = pt("small", [0.40, 0.35, 0.50, 0.30, 0.45], 10.0)  # far worse in every fold
    assert pick_trial([unsure, sure], "maximize", "knee")["name"] == "ensemble"
    close = pt("small", [0.06, 0.03, 0.07, 0.04, 0.035], 10.0)  # 0.01 either side: not shown within 5%
    assert pick_trial([close, sure], "maximize", "knee")["name"] == "ensemble"
    twin = pt("small", [0.051, 0.039, 0.061, 0.049, 0.03], 10.0)  # within 0.001 fold by fold
    assert pick_trial([twin, sure], "maximize", "knee")["name"] == "small"
    no_losses = [{k: v for k, v in p.items() if k != "fold_losses"} for p in (unsure, sure)]
    assert pick_trial(no_losses, "maximize", "knee")["name"] == "small"  # studies from before: scores only


def test_with_one_validation_split_the_knee_pairs_the_split_s_examples():
    """One validation split (large data): the knee is the cheapest model whose score is within the
    margin and whose loss, paired by the split's examples, is shown within its margin — not the
    geometric knee of the front, which took a cheap network 1.4 points below the ensemble (fine
    food, seed 3: 0.771 on the test reviews against the ensemble's 0.802)."""
    rng = np.random.default_rng(0)
    sure = rng.uniform(0.2, 0.6, size=500)  # the ensemble's loss on each of 500 validation examples
    by_name = {"ensemble": sure, "twin": sure + rng.normal(0, 0.005, 500),
               "lucky": sure + rng.uniform(0.0, 0.2, 500), "cheap": sure + 0.3}

    def pt(name, score, cost, kind="trial"):
        return {"name": name, "kind": kind, "score": score, "spread": 0.0, "folds": 1, "fold_scores": [score],
                "fold_losses": [float(by_name[name].mean())], "oof_loss": float(by_name[name].mean()), "cost": cost}

    def losses(p):
        return by_name[p["name"]]

    ens, cheap = pt("ensemble", 0.829, 4e6, "ensemble"), pt("cheap", 0.70, 1e5)
    lucky = pt("lucky", 0.815, 5e5)  # 1.4 points behind, and less sure on every example
    front = [cheap, lucky, ens]
    assert pick_trial(front, "maximize", "knee", losses=losses)["name"] == "ensemble"
    assert pick_trial(front, "maximize", "knee")["name"] == "lucky"  # no losses at hand: the geometric knee
    lucky["score"] = 0.826  # within the score's margin, but its loss is not shown within its own
    assert pick_trial(front, "maximize", "knee", losses=losses)["name"] == "ensemble"
    twin = pt("twin", 0.826, 5e5)  # as sure as the ensemble, example by example
    assert pick_trial([cheap, twin, ens], "maximize", "knee", losses=losses)["name"] == "twin"


def test_knee_pairs_the_loss_by_example_where_the_outputs_are_saved(tmp_path):
    """With each example's out-of-fold loss at hand (``ensemble.loss_reader``: the saved outputs and
    the saved truth), the knee pairs the loss by example: a cheap model less sure on every example
    is not a tie, however the five fold losses happen to fall; an ensemble's losses are those of
    its members' weighted average."""
    from cellsearch.ensemble import TRUTH_FILE, loss_reader
    from cellsearch.folds import row_losses

    rng = np.random.default_rng(0)
    n = 40
    y = rng.integers(0, 2, n)
    np.save(tmp_path / TRUTH_FILE, y)

    def saved(trial, p_true):
        p1 = np.where(y == 1, p_true, 1 - p_true)
        np.save(tmp_path / f"{trial}.npy", np.log(np.stack([1 - p1, p1], axis=1)).astype(np.float32))
        return {"trial": trial, "name": str(trial), "kind": "trial", "score": 1.0, "spread": 0.0, "folds": 5,
                "fold_scores": [1.0] * 5, "oof": str(tmp_path / f"{trial}.npy")}

    sure, unsure = saved(1, rng.uniform(0.9, 0.99, n)), saved(0, rng.uniform(0.6, 0.7, n))  # unsure: right, barely
    points = [unsure, sure]
    losses = loss_reader(points, "classification")
    for p, cost in ((unsure, 10.0), (sure, 1e4)):
        p.update(cost=cost, oof_loss=float(np.mean(losses(p))))
    assert np.mean(losses(unsure)) > np.mean(losses(sure))
    assert pick_trial(points, "maximize", "knee")["name"] == "0"  # scores alone: a tie
    assert pick_trial(points, "maximize", "knee", losses=losses)["name"] == "1"
    twin = {**saved(2, np.clip(np.exp(-losses(sure)) + rng.normal(0, 0.001, n), 0.5, 0.999)), "cost": 5.0}
    twin["oof_loss"] = float(np.mean(loss_reader([twin], "classification")(twin)))
    assert pick_trial([twin, sure], "maximize", "knee", losses=loss_reader([twin, sure], "classification")
                      )["name"] == "2"  # as sure, example by example: the cheaper one is taken
    ens = {"kind": "ensemble", "members": {0: 0.25, 1: 0.75}}
    probs = [np.exp(np.load(tmp_path / f"{t}.npy").astype(np.float64)) for t in (0, 1)]
    expected = row_losses("classification", np.log(0.25 * probs[0] + 0.75 * probs[1]), y)
    assert losses(ens) == pytest.approx(expected)
    (tmp_path / TRUTH_FILE).unlink()  # a study from before: no truth saved, no per-example losses
    assert loss_reader(points, "classification")(sure) is None


# ---- ensemble selection ------------------------------------------------------------------------------


def test_caruana_selection_finds_the_complementary_pair(tmp_path):
    from cellsearch.ensemble import select_ensembles

    n = 60
    y = np.arange(n) % 2
    folds = SimpleNamespace(k=3, oof=SimpleNamespace(y=y, weight=None), oof_fold=np.arange(n) % 3)

    def logits(p_true: np.ndarray) -> np.ndarray:
        """Two-class log-probabilities giving the true class ``p_true``."""
        p1 = np.where(y == 1, p_true, 1 - p_true)
        return np.log(np.stack([1 - p1, p1], axis=1))

    half = np.arange(n) < n // 2
    # A is sure and right on the first half, narrowly wrong on the second; B the other way round:
    # each scores 0.5, their average 1.0. C is right on two thirds, timidly.
    outs = [logits(np.where(half, 0.95, 0.45)), logits(np.where(half, 0.45, 0.95)),
            logits(np.where(np.arange(n) % 3 > 0, 0.55, 0.45))]
    trials = []
    for t, out in enumerate(outs):
        f = tmp_path / f"{t}.npy"
        np.save(f, out.astype(np.float32))
        trials.append({"trial": t, "score": float(np.mean(out.argmax(1) == y)), "oof_loss": 0.5, "oof": str(f),
                       "macs": 100.0 * (t + 1), "params": 10.0, "latency_ms": None})
    found = select_ensembles(trials, folds, "classification", "maximize", 1.0, "macs")
    best = max(found, key=lambda e: e["score"])
    assert best["score"] == 1.0 and {0, 1} <= set(best["members"])
    assert abs(sum(best["members"].values()) - 1.0) < 1e-9
    assert best["macs"] == sum(trials[m]["macs"] for m in best["members"])
    assert best["latency_ms"] is None and best["cost"] == best["macs"]
    # Its fold losses are those of its weighted average, as the knee pairs them.
    avg = sum(w * np.exp(np.load(trials[m]["oof"]).astype(np.float64)) for m, w in best["members"].items())
    assert best["fold_losses"] == pytest.approx(fold_losses("classification", np.log(avg), folds))
    assert np.mean(best["fold_losses"]) == pytest.approx(best["oof_loss"])


def test_bootstrap_resamples_within_each_fold_reproducibly():
    from cellsearch.ensemble import bootstrap

    fold = np.array([0] * 7 + [1] * 5 + [2] * 9)
    y = np.arange(len(fold)) * 10
    w = np.linspace(0.5, 1.5, len(fold))
    folds = SimpleNamespace(k=3, oof=SimpleNamespace(y=y, weight=w), oof_fold=fold)
    view, rows = bootstrap(folds, np.random.default_rng(7))
    assert [int(np.sum(view.oof_fold == j)) for j in range(3)] == [7, 5, 9]  # every fold keeps its size
    assert np.array_equal(fold[rows], view.oof_fold)  # each drawn row stays in its own fold
    assert np.array_equal(view.oof.y, y[rows]) and np.array_equal(view.oof.weight, w[rows])
    assert len(set(rows.tolist())) < len(rows)  # drawn with replacement
    again, rows2 = bootstrap(folds, np.random.default_rng(7))
    assert np.array_equal(rows, rows2)
    assert not np.array_equal(rows, bootstrap(folds, np.random.default_rng(8))[1])


def _noisy_trials(tmp_path, n=40, n_noisy=6, seed=0):
    """Two-class out-of-fold outputs: trial 0 right on 80% of the rows with moderate confidence;
    trials 1.. sure and right on a random quarter of the rows, timidly wrong on the rest — each
    fixes a few rows of the good trial, by chance."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    folds = SimpleNamespace(k=4, oof=SimpleNamespace(y=y, weight=None), oof_fold=np.arange(n) % 4)

    def logits(p_true):
        p1 = np.where(y == 1, p_true, 1 - p_true)
        return np.log(np.stack([1 - p1, p1], axis=1))

    outs = [logits(np.where(rng.random(n) < 0.8, 0.7, 0.4))]
    outs += [logits(np.where(rng.random(n) < 0.25, 0.99, 0.45)) for _ in range(n_noisy)]
    trials = []
    for t, out in enumerate(outs):
        f = tmp_path / f"{t}.npy"
        np.save(f, out.astype(np.float32))
        trials.append({"trial": t, "score": float(np.mean(out.argmax(1) == y)), "oof_loss": 0.5, "oof": str(f),
                       "macs": 100.0, "params": 10.0, "latency_ms": 1.0})
    return trials, folds


def test_bagged_selection_is_reproducible_and_scored_on_all_rows(tmp_path):
    from cellsearch.ensemble import (
        ARCH_MEMBERS,
        BAGS,
        ROUNDS,
        TRIM,
        greedy,
        members_output,
        select_ensembles,
    )
    from cellsearch.tasks import get_task

    _probabilities = get_task("classification").to_average

    trials, folds = _noisy_trials(tmp_path)
    found = select_ensembles(trials, folds, "classification", "maximize", 1.0, "macs", seed=3)
    assert [f["name"] for f in found] == ["E1", "E2"] and found[0]["bags"] == BAGS
    e, trimmed = found
    # The trimmed twin: the members weighing at least TRIM, reweighted to sum to 1.
    heavy = {m: w for m, w in e["members"].items() if w >= TRIM}
    assert 2 <= len(heavy) < len(e["members"])
    assert trimmed["members"] == pytest.approx({m: w / sum(heavy.values()) for m, w in heavy.items()})
    assert trimmed["macs"] == 100.0 * len(heavy) < e["macs"]
    # The tag names the heaviest members first, at most ARCH_MEMBERS of them.
    heaviest = sorted(e["members"], key=lambda m: -e["members"][m])
    more = len(heaviest) - ARCH_MEMBERS
    assert e["arch"] == (f"ensemble of {len(heaviest)}: " + "+".join(f"#{m}" for m in heaviest[:ARCH_MEMBERS])
                         + (f" +{more} more" if more > 0 else ""))
    assert sum(e["members"].values()) == pytest.approx(1.0)
    # Weights are whole shares of BAGS x ROUNDS picks.
    assert all(abs(w * BAGS * ROUNDS - round(w * BAGS * ROUNDS)) < 1e-9 for w in e["members"].values())
    assert found == select_ensembles(trials, folds, "classification", "maximize", 1.0, "macs", seed=3)
    assert e["members"] != select_ensembles(trials, folds, "classification", "maximize", 1.0, "macs",
                                            seed=4)[0]["members"]
    # Its scores are those of its weighted average on every out-of-fold row, not on a resample.
    preds = {t["trial"]: _probabilities(np.load(t["oof"]).astype(np.float64)) for t in trials}
    out = members_output("classification", preds, e["members"])
    assert e["fold_scores"] == pytest.approx(fold_scores("classification", out, folds))
    assert e["oof_loss"] == pytest.approx(oof_loss("classification", out, folds.oof))
    assert e["macs"] == 100.0 * len(e["members"]) and e["cost"] == e["macs"]
    # Spread over resamples: more members than the one greedy run on all the rows keeps, and the
    # trial that is good everywhere weighs the most.
    one_run = greedy("classification", preds, folds, 1.0, 1.0)
    assert len(e["members"]) > len(one_run)
    assert max(e["members"], key=e["members"].get) == 0


def test_bagged_selection_uses_fewer_bags_on_many_rows(tmp_path, monkeypatch):
    import cellsearch.ensemble as ensemble
    from cellsearch.tasks import get_task

    trials, folds = _noisy_trials(tmp_path)  # 40 rows
    monkeypatch.setattr(ensemble, "BAG_ROWS", 40 * 5)
    assert ensemble.select_ensembles(trials, folds, "classification", "maximize", 1.0, "macs")[0]["bags"] == 5
    monkeypatch.setattr(ensemble, "BAG_ROWS", 39)  # one bag: one greedy run on all the rows
    e = ensemble.select_ensembles(trials, folds, "classification", "maximize", 1.0, "macs")[0]
    preds = {t["trial"]: get_task("classification").to_average(np.load(t["oof"]).astype(np.float64)) for t in trials}
    counts = ensemble.greedy("classification", preds, folds, 1.0, 1.0)
    assert e["bags"] == 1 and e["members"] == pytest.approx({n: c / ensemble.ROUNDS for n, c in counts.items()})


def test_a_single_trial_never_dominates_the_ensemble_and_the_knee_measures_against_it():
    def pt(name, score, cost, loss, kind="trial", fold=None):
        return {"name": name, "score": score, "spread": 0.004, "folds": 4, "cost": cost, "oof_loss": loss,
                "kind": kind, "fold_scores": fold or [score] * 4, "fold_losses": [loss] * 4}

    lucky = pt("lucky", 0.95, 10.0, 0.50)  # the search's top trial: best score, cheaper, but unsure
    ens = pt("E1", 0.93, 50.0, 0.20, kind="ensemble")
    front = pareto_front([lucky, ens], "maximize")
    assert [p["name"] for p in front] == ["lucky", "E1"]
    assert pick_trial(front, "maximize", "best")["name"] == "lucky"
    assert pick_trial(front, "maximize", "knee")["name"] == "E1"  # its loss is far worse than E1's
    # A cheaper trial shown as good as the ensemble, score and loss, is still taken by the knee.
    close = pt("close", 0.93, 5.0, 0.205, fold=[0.93, 0.93, 0.932, 0.928])
    front = pareto_front([lucky, ens, close], "maximize")
    assert pick_trial(front, "maximize", "knee")["name"] == "close"
    # Between trials, dominance is as before.
    assert [p["name"] for p in pareto_front([lucky, pt("worse", 0.9, 20.0, 0.6)], "maximize")] == ["lucky"]


# ---- the ensemble model, ONNX ----------------------------------------------------------------------


@pytest.mark.parametrize("task,n_out", [("classification", 3), ("regression", 1), ("forecasting", 4)])
def test_ensemble_model_averages_and_onnx_matches(task, n_out):
    ort = pytest.importorskip("onnxruntime")
    from cellsearch.onnx_export import build_onnx

    torch.manual_seed(0)
    members = [build(ModelSpec(input_size=2, layers=(LayerSpec(cell, 5, bi),), n_outputs=n_out, task=task,
                               patch=patch, pooling=pool, normalize=zn))
               for cell, bi, patch, pool, zn in [("lstm", False, 1, "last", False), ("peephole", True, 2, "mean", True),
                                                 ("cifg", False, 3, "max", False), ("gru", True, 1, "attention", True)]]
    weights = [0.1, 0.2, 0.3, 0.4]
    ens = EnsembleModel(members, weights).eval()
    x, lengths = torch.randn(6, 11, 2), torch.tensor([11, 1, 4, 7, 9, 2])
    with torch.no_grad():
        out = ens(x, lengths)
        outs = [m.eval()(x, lengths) for m in members]
    if task == "classification":
        expected = torch.log(sum(w * torch.softmax(o, 1) for w, o in zip(weights, outs)))
    else:
        expected = sum(w * o for w, o in zip(weights, outs))
    assert torch.allclose(out, expected, atol=1e-6)
    got = ort.InferenceSession(build_onnx(ens).SerializeToString()).run(None, {"x": x.numpy(),
                                                                             "lengths": lengths.numpy()})
    assert np.abs(got[0] - out.numpy()).max() < 1e-4
    if task == "classification":
        assert np.abs(got[1] - torch.softmax(out, 1).numpy()).max() < 1e-4


# ---- the search ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cv_space(tiny_space, tmp_path_factory) -> Path:
    """The tiny space with a short step floor: each trial here trains several folds."""
    p = tmp_path_factory.mktemp("cvspace") / "cv.yaml"
    p.write_text(tiny_space.read_text().replace("min_steps: 60", "min_steps: 40"))
    return p


@pytest.fixture(scope="module")
def cv_tuned(tiny_csv, cv_space, tmp_path_factory):
    from cellsearch.search import tune

    run_dir = tmp_path_factory.mktemp("cv")
    # No pruning: every trial completes all folds, so there are trials to ensemble.
    return tune(tiny_csv, space=str(cv_space), trials=4, run_dir=run_dir, progress=False, seed=2, cv=3, prune=False)


def test_the_search_value_breaks_ties_by_the_loss_and_only_ties():
    from cellsearch.tasks import get_task

    def search_value(task, *args):
        return get_task(task).search_value(*args)

    n = 40
    sure, unsure = search_value("classification", 1.0, 0.05, n), search_value("classification", 1.0, 0.6, n)
    assert 1.0 > sure > unsure  # equal accuracy: the surer model ranks higher
    # One sequence more right outweighs any plausible difference of log-loss (up to 10).
    assert search_value("classification", 1.0 - 1 / n, 0.01, n) < search_value("classification", 1.0, 9.0, n)
    assert search_value("regression", 0.7, 0.3, n) == 0.7 == search_value("forecasting", 0.7, 0.3, n)
    assert search_value("classification", 0.9, None, n) == 0.9 == search_value("classification", 0.9, float("nan"), n)


def test_racing_ranks_trials_by_what_they_recorded_after_each_fold():
    from cellsearch.objective import peer_values
    from cellsearch.pruning import FOLD_ETA, promoted

    def trial(race, state=optuna.trial.TrialState.COMPLETE):
        return optuna.trial.create_trial(state=state, values=None if state != optuna.trial.TrialState.COMPLETE
                                         else [0.5, 1.0], user_attrs={"race": race})

    study = optuna.create_study(directions=["maximize", "minimize"])
    for race in ([0.2, 0.25, 0.22], [0.5], [0.4, 0.45, 0.42], [0.3, 0.3, 0.3], [0.9]):
        study.add_trial(trial(race, optuna.trial.TrialState.COMPLETE if len(race) == 3
                              else optuna.trial.TrialState.PRUNED))
    after_one = peer_values(study, 99, "race", 0)
    assert sorted(after_one) == [0.2, 0.3, 0.4, 0.5, 0.9]
    assert peer_values(study, 0, "race", 0) == [0.5, 0.4, 0.3, 0.9]  # a trial is not its own peer
    # Six at fold 1 with FOLD_ETA 2: the best three go on.
    assert promoted(0.35, after_one, FOLD_ETA) and not promoted(0.45, after_one, FOLD_ETA)
    assert promoted(5.0, peer_values(study, 99, "race", 1), FOLD_ETA)  # only three got to fold 2


def test_a_trial_trains_one_model_per_fold(cv_tuned):
    from mlflow import MlflowClient

    from cellsearch.tracking import default_tracking_uri

    complete = cv_tuned.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete and cv_tuned.cv == "3 folds, stratified"
    client = MlflowClient(default_tracking_uri(cv_tuned.run_dir))
    for t in complete:
        a = t.user_attrs
        assert len(a["fold_scores"]) == 3 and abs(a["val_score"] - np.mean(a["fold_scores"])) < 1e-12
        assert len(a["fold_losses"]) == 3 and all(v > 0 for v in a["fold_losses"])
        point = {"trial": t.number, "oof": str(cv_tuned.run_dir / a["oof"])}
        assert np.mean(loss_reader([point], "classification")(point)) == pytest.approx(a["oof_loss"], rel=1e-5)
        assert abs(a["val_spread"] - np.std(a["fold_scores"])) < 1e-12
        oof = np.load(cv_tuned.run_dir / a["oof"])
        n_pool = len(read_dataset(cv_tuned.study.user_attrs["data"], val_size=0.0).splits["train"])
        assert oof.shape == (n_pool, 3)  # every non-test sequence predicted once, 3 classes
        assert np.isfinite(a["oof_loss"]) and a["folds"] == 3
        # What the sampler sees: the score with the loss as its tie-break (cost unchanged).
        assert t.values[0] == pytest.approx(a["val_score"] - TIE_WEIGHT / n_pool * a["oof_loss"], abs=1e-12)
        assert t.values[0] < a["val_score"]
        run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                 f"tags.trial_number = '{t.number}'")[0]
        assert [run.data.metrics[f"fold{k}_score"] for k in (1, 2, 3)] == [round(v, 4) for v in a["fold_scores"]]
        assert run.data.metrics["score_spread"] == pytest.approx(a["val_spread"], abs=1e-4)  # shown rounded
        assert any(f.path == "oof" for f in client.list_artifacts(run.info.run_id))
        model, _ = cellsearch.model.load_checkpoint(cv_tuned.run_dir / a["checkpoint"])
        assert isinstance(model, EnsembleModel) and len(model.members) == 3


def test_single_objective_reports_after_each_fold(tiny_csv, cv_space, tmp_path):
    from cellsearch.search import tune

    r = tune(tiny_csv, space=str(cv_space), trials=2, run_dir=tmp_path, progress=False, track=False, cv=2,
             objective="score", ensemble=False)
    for t in r.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert sorted(t.intermediate_values) == [0, 1]
        # The pruner saw the mean score after each fold; the trial's value is that score with the
        # out-of-fold loss as its tie-break.
        assert t.intermediate_values[1] == pytest.approx(t.user_attrs["val_score"])
        a, n = t.user_attrs, len(np.load(tmp_path / t.user_attrs["oof"]))
        assert t.value == pytest.approx(a["val_score"] - TIE_WEIGHT / n * a["oof_loss"], abs=1e-12)
    assert not r.study.user_attrs["ensembles"]


def test_ensemble_bundle_round_trip(cv_tuned, tiny_csv, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from cellsearch.export import export

    st = cv_tuned.study
    found = st.user_attrs["ensembles"]
    if not found:  # greedy selection found no pair better than the best trial: export a pair anyway
        trials = sorted(trial_points(st, "macs", False, cv_tuned.run_dir), key=lambda p: -p["score"])[:2]
        found = [{"name": "E1", "members": {trials[0]["trial"]: 0.6, trials[1]["trial"]: 0.4}, "score": 0.0,
                  "arch": "pair", "macs": 1.0, "params": 1.0}]
        st.set_user_attr("ensembles", found)
    out = export(out=tmp_path / "model", run_dir=cv_tuned.run_dir, ensemble=found[0]["name"], formats=["onnx"])
    metrics = json.loads((out / "metrics.json").read_text())
    bundle = cellsearch.load(out)
    df = pd.read_csv(tiny_csv)
    pred = bundle.predict(df)
    assert len(pred) == df["id"].nunique() and set(pred["prediction"]) <= {"c0", "c1", "c2"}
    probs = pred[[f"prob_c{k}" for k in range(3)]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert metrics["ensemble"] == found[0]["name"]  # its card lists members and weights
    assert "## Members" in (out / "README.md").read_text()
    spec = json.loads((out / "spec.json").read_text())
    assert {m["trial"] for m in spec["members"]} == {int(k) for k in metrics["members"]} == set(
        int(k) for k in found[0]["members"])
    assert len(spec["members"]) == 3 * len(found[0]["members"])  # every member's 3 fold models
    from cellsearch.predict import transform

    inputs = transform(df.drop(columns=["label"]), bundle.prep)
    onnx_out = ort.InferenceSession(str(out / "model.onnx")).run(None, {"x": inputs.x, "lengths": inputs.lengths})
    assert np.abs(onnx_out[1] - probs).max() < 1e-4
    import mlflow.pyfunc

    served = mlflow.pyfunc.load_model(str(out)).predict(df.drop(columns=["label"]))
    assert (served["prediction"].to_numpy() == pred["prediction"].to_numpy()).all()


def test_refit_export_and_no_test_split(tiny_csv, cv_space, tmp_path):
    from cellsearch.export import export
    from cellsearch.search import tune

    r = tune(tiny_csv, space=str(cv_space), trials=2, run_dir=tmp_path / "runs", progress=False, track=False,
             cv=2, test_size=0.0)
    assert all(p["test_score"] is None for p in r.front)
    st = r.study
    assert read_dataset(tiny_csv, **st.user_attrs["preprocessing"]["options"]).splits["test"].x.shape[0] == 0
    out = export(out=tmp_path / "refit", run_dir=tmp_path / "runs", weights="refit")
    card = (out / "README.md").read_text()
    assert "retrained on all non-test data" in card
    pred = cellsearch.load(out).predict(pd.read_csv(tiny_csv))
    assert len(pred) == 90
    with pytest.raises(UserError, match="--weights"):
        export(out=tmp_path / "bad", run_dir=tmp_path / "runs", weights="bagged")


def test_a_search_validated_on_one_holdout_is_refit_by_default(tiny_csv, cv_space, tmp_path, capsys):
    """``--weights auto`` on a classification search validated on one split: its models trained on the
    training split alone, so the export retrains them on all non-test rows (a line per network on
    stderr, the card says why); a cross-validated search's default export keeps its fold models."""
    from cellsearch.export import export
    from cellsearch.search import tune

    tune(tiny_csv, space=str(cv_space), trials=2, run_dir=tmp_path / "one", progress=False, track=False, cv=1)
    capsys.readouterr()
    out = export(out=tmp_path / "d1", run_dir=tmp_path / "one")
    err = capsys.readouterr().err
    assert "--weights auto: the search validated on one holdout" in err and "retrained 1/" in err
    assert "validated on one holdout" in json.loads((out / "metrics.json").read_text())["weights"]
    folds = export(out=tmp_path / "f1", run_dir=tmp_path / "one", weights="folds")
    assert "retrained on all" not in json.loads((folds / "metrics.json").read_text())["weights"]
    frame = pd.read_csv(tiny_csv)
    assert not np.allclose(*(cellsearch.load(b).predict(frame).filter(like="prob_").to_numpy() for b in (out, folds)))
    tune(tiny_csv, space=str(cv_space), trials=2, run_dir=tmp_path / "two", progress=False, track=False, cv=2)
    kept = export(out=tmp_path / "d2", run_dir=tmp_path / "two")
    assert "retrained on all" not in json.loads((kept / "metrics.json").read_text())["weights"]


def test_cli_refuses_a_bad_cv(tiny_csv, tmp_path):
    res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "tune", str(tiny_csv), "--cv", "zero",
                          "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--cv" in res.stderr and "Traceback" not in res.stderr
    assert not Path(tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("pace", [100.0, 10.0])
def test_a_trial_that_cannot_finish_its_folds_before_the_timeout_stops_after_the_fold_it_is_on(
        tiny_csv, cv_space, tmp_path, monkeypatch, pace):
    """Each fold takes ``pace`` seconds on the objective's clock; the timeout leaves 225 s for trials.
    At 100 s a fold the two folds left (200 s) do not fit in what is left after the first: the trial
    stops there instead of training a second fold that the deadline would make worthless. At 10 s a
    fold it trains all three."""
    import time as real_time
    from types import SimpleNamespace

    import cellsearch.objective
    import cellsearch.train
    from cellsearch.search import tune

    offset = [0.0]
    monkeypatch.setattr(cellsearch.objective, "time", SimpleNamespace(time=lambda: real_time.time() + offset[0]))
    real_fit = cellsearch.train.fit

    def slow_fit(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        offset[0] += pace
        return result

    monkeypatch.setattr(cellsearch.train, "fit", slow_fit)
    r = tune(tiny_csv, space=str(cv_space), trials=1, timeout=250, run_dir=tmp_path, progress=False, track=False,
             cv=3, prune=False, fold_batching="off", workers=1, ensemble=False)
    (t,) = r.study.trials
    if pace == 100.0:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs["reason"].startswith("stopped after fold 1 of 3: at its pace (100 s a fold)")
        assert len(t.user_attrs["fold_scores"]) == 1  # no second fold trained
    else:
        assert t.state == optuna.trial.TrialState.COMPLETE and len(t.user_attrs["fold_scores"]) == 3
