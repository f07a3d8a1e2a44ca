"""Reference models: fitted on the training split only, correct against a hand computation,
reproducible with the seed, shown beside the networks and never exported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellsearch.data import read_dataset
from cellsearch.references import fit_references, resample, verdict, znormalise


def _random_csv(path: Path, n_seq: int = 300, steps: int = 12, seed: int = 0) -> Path:
    """Labels unrelated to the values: no model can beat chance on unseen sequences."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"id": np.repeat(np.arange(n_seq), steps), "t": np.tile(np.arange(steps), n_seq),
                       "x": rng.normal(size=n_seq * steps).round(4),
                       "label": np.repeat(rng.integers(0, 3, n_seq), steps)})
    df.to_csv(path, index=False)
    return path


def test_references_see_only_the_training_split(tmp_path):
    """A planted leak fails this: fitted on train + validation, 1-NN would find every validation
    sequence itself (accuracy 1.0); fitted on train alone it is at chance on random labels."""
    ds = read_dataset(_random_csv(tmp_path / "r.csv"), seed=0, test_size=0.15)
    refs = {r["name"]: r for r in fit_references(ds, "macs")}
    n_train, dim = len(ds.splits["train"]), 12 * ds.n_features
    assert refs["1nn"]["params"] == n_train * dim  # it stores the training sequences and nothing else
    assert refs["1nn"]["score"] < 0.6 and refs["ridge"]["score"] < 0.6
    assert refs["1nn"]["test_score"] < 0.6


def test_one_nn_matches_a_hand_computation(tmp_path):
    rng = np.random.default_rng(3)
    n, steps = 120, 10
    labels = rng.integers(0, 2, n)
    base = np.where(labels[:, None] == 1, np.sin(np.arange(steps) / 2), np.cos(np.arange(steps) / 2))
    x = base + rng.normal(0, 0.8, size=(n, steps))
    df = pd.DataFrame({"id": np.repeat(np.arange(n), steps), "t": np.tile(np.arange(steps), n),
                       "x": x.ravel().round(4), "label": np.repeat(labels, steps)})
    df.to_csv(tmp_path / "d.csv", index=False)
    ds = read_dataset(tmp_path / "d.csv")
    got = {r["name"]: r for r in fit_references(ds, "params")}["1nn"]
    tr, va = ds.splits["train"], ds.splits["val"]

    def z(a: np.ndarray) -> np.ndarray:
        a = a[:, :, 0]
        return (a - a.mean(axis=1, keepdims=True)) / a.std(axis=1, keepdims=True)

    d = ((z(va.x)[:, None, :] - z(tr.x)[None, :, :]) ** 2).sum(axis=2)
    want = float(np.mean(tr.y[d.argmin(axis=1)] == va.y))
    assert got["score"] == pytest.approx(want) and got["cost"] == got["params"]
    assert want > 0.7  # the shapes are learnable: the reference is a real answer, not chance


def test_resample_and_znormalise_keep_real_steps_only():
    x = np.zeros((2, 5, 1), dtype=np.float32)
    x[0, :3, 0] = [1, 2, 3]
    x[1, :5, 0] = [0, 10, 20, 30, 40]
    lengths = np.array([3, 5])
    r = resample(x, lengths, 5)
    assert np.allclose(r[0, :, 0], [1, 1.5, 2, 2.5, 3]) and np.allclose(r[1, :, 0], [0, 10, 20, 30, 40])
    z = znormalise(x, lengths)
    assert np.allclose(z[0, :3, 0], np.array([-1, 0, 1]) / np.sqrt(2 / 3)) and np.all(z[0, 3:] == 0)


def test_reference_scores_are_reproducible_with_the_seed(tmp_path):
    csv = _random_csv(tmp_path / "r.csv", seed=1)
    a = fit_references(read_dataset(csv, seed=5), "macs")
    b = fit_references(read_dataset(csv, seed=5), "macs")
    c = fit_references(read_dataset(csv, seed=6), "macs")
    assert [(r["score"], r["test_score"]) for r in a] == [(r["score"], r["test_score"]) for r in b]
    assert [(r["score"], r["test_score"]) for r in a] != [(r["score"], r["test_score"]) for r in c]


def test_verdict_only_when_the_network_is_worse():
    refs = [{"arch": "1-NN", "score": 0.8}, {"arch": "ridge", "score": 0.7}]
    line = verdict({"score": 0.6, "arch": "gru8"}, refs, "accuracy", "maximize")
    assert "0.6" in line and "0.8 (1-NN)" in line
    assert verdict({"score": 0.85, "arch": "gru8"}, refs, "accuracy", "maximize") is None
    rmse_refs = [{"arch": "ridge", "score": 2.0}]
    assert verdict({"score": 2.5, "arch": "gru8"}, rmse_refs, "rmse", "minimize") is not None
    assert verdict({"score": 1.5, "arch": "gru8"}, rmse_refs, "rmse", "minimize") is None


def _linear_csv(path: Path, n_seq: int = 120, steps: int = 6) -> Path:
    """The class is the sign of the sequence's sum: ridge on the flat sequence gets it right."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_seq, steps))
    labels = np.where(x.sum(axis=1) > 0, "pos", "neg")
    pd.DataFrame({"id": np.repeat(np.arange(n_seq), steps), "t": np.tile(np.arange(steps), n_seq),
                  "x": x.ravel().round(4), "label": np.repeat(labels, steps)}).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_cli_says_when_a_reference_beats_the_network_and_never_exports_it_alone(tmp_path):
    """A network that cannot learn: with --networks-only the end of the run says a reference beats
    it, and the bundle is that network. By default the references join the ensembles, so the chosen
    model is no longer worse than they are (no such line), and the bundle still holds the network."""
    from cellsearch.export import export

    csv = _linear_csv(tmp_path / "lin.csv")
    space = tmp_path / "s.yaml"  # a network that cannot learn in one epoch at this learning rate
    space.write_text("layers: {depth: 1, cell: gru, hidden: 2}\nlr: 1.0e-6\nmax_epochs: 1\npatience: 1\n")

    def tune(run, *extra):
        res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "tune", str(csv), "--space", str(space),
                              "--trials", "1", "--run-dir", str(run), "--no-track", *extra],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return " ".join(res.stdout.split())  # rich wraps long lines

    out = tune(tmp_path / "alone", "--networks-only")
    assert "reference" in out and "1-NN" in out and "ridge" in out
    assert "worse than a simple reference on validation" in out
    assert out.index("worse than a simple reference") < out.index("next:")
    bundle = export(out=tmp_path / "model", run_dir=tmp_path / "alone")
    spec = json.loads((bundle / "spec.json").read_text())
    assert all(m["spec"]["layers"][0]["cell"] == "gru" for m in spec.get("members", [{"spec": spec}]))
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["trial"] == 0 and [r["name"] for r in metrics["references"]] == ["1nn", "ridge", "rocket"]
    assert "## References" in (bundle / "README.md").read_text()

    mixed = tune(tmp_path / "runs")
    assert "worse than a simple reference on validation" not in mixed
    spec = json.loads((export(out=tmp_path / "mixed", run_dir=tmp_path / "runs") / "spec.json").read_text())
    members = spec.get("members", [{"spec": spec}])
    assert any("spec" in m for m in members)  # always a network; references only beside it
    assert all(m["reference"] in ("ridge", "1nn", "rocket") for m in members if "spec" not in m)

    quiet = subprocess.run([sys.executable, "-m", "cellsearch.cli", "tune", str(csv), "--space", str(space),
                            "--trials", "1", "--run-dir", str(tmp_path / "runs2"), "--no-track", "--no-references",
                            "--json"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["references"] == []
