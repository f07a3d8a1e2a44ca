"""References as ensemble members (``cellsearch.refmembers``): parity with the reference they are,
and the whole path: selected beside networks, exported, predicted, refit, kept out on request."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from cellsearch.data.splits import SplitTensors
from cellsearch.references import resample
from cellsearch.refmembers import RidgeMember, fit_ridge, resample_torch


def _split(n: int, classes: int | None, seed: int = 0) -> SplitTensors:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 15, size=n)
    x = rng.normal(size=(n, 14, 2)).astype(np.float32)
    x[np.arange(14)[None, :] >= lengths[:, None]] = 0.0
    signal = x[:, :5, 0].sum(axis=1)
    y = (np.digitize(signal, np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1])) if classes
         else signal.astype(np.float32))
    return SplitTensors(x, lengths.astype(np.int64), y, np.arange(n))


def test_the_ridge_member_in_onnx_is_the_ridge_member():
    """Resampling by GatherElements, one Gemm, temperature and log-softmax: the same outputs as the
    torch member, on sequences of varying lengths."""
    ort = pytest.importorskip("onnxruntime")
    from cellsearch.onnx_export import reference_onnx

    for classes, task in ((3, "classification"), (2, "classification"), (None, "regression")):
        train, test = _split(60, classes), _split(25, classes, seed=3)
        member = fit_ridge(train, task, 9, classes or 1)
        member.temperature = 2.5
        sess = ort.InferenceSession(reference_onnx(member).SerializeToString())
        got = sess.run(["output"], {"x": test.x, "lengths": test.lengths})[0]
        with torch.no_grad():
            want = member(torch.from_numpy(test.x), torch.from_numpy(test.lengths)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_resampling_in_torch_matches_the_reference():
    s = _split(30, 3)
    got = resample_torch(torch.from_numpy(s.x), torch.from_numpy(s.lengths), 9).numpy()
    np.testing.assert_allclose(got, resample(s.x, s.lengths, 9), atol=1e-5)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_ridge_member_predicts_what_the_ridge_reference_predicts(classes):
    from sklearn.linear_model import RidgeClassifierCV

    from cellsearch.references import ALPHAS

    train, test = _split(80, classes), _split(40, classes, seed=1)
    member = fit_ridge(train, "classification", 10, classes)
    member.temperature = 3.0
    with torch.no_grad():
        out = member(torch.from_numpy(test.x), torch.from_numpy(test.lengths)).numpy()
    est = RidgeClassifierCV(alphas=ALPHAS).fit(resample(train.x, train.lengths, 10).reshape(80, -1), train.y)
    want = est.predict(resample(test.x, test.lengths, 10).reshape(40, -1))
    assert (out.argmax(axis=1) == want).all()
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, atol=1e-5)  # log-probabilities


def test_the_regression_member_is_ridge_regression():
    from sklearn.linear_model import RidgeCV

    from cellsearch.references import ALPHAS

    train, test = _split(80, None), _split(30, None, seed=2)
    member = fit_ridge(train, "regression", 10, 1)
    with torch.no_grad():
        out = member(torch.from_numpy(test.x), torch.from_numpy(test.lengths)).numpy()
    est = RidgeCV(alphas=ALPHAS).fit(resample(train.x, train.lengths, 10).reshape(80, -1), train.y)
    np.testing.assert_allclose(out[:, 0], est.predict(resample(test.x, test.lengths, 10).reshape(30, -1)),
                               rtol=1e-4, atol=1e-4)
    assert RidgeMember.from_description(member.describe()).describe() == member.describe()


@pytest.fixture(scope="module")
def searched(tiny_csv, tmp_path_factory):
    from cellsearch.search import tune

    run_dir = tmp_path_factory.mktemp("refmembers")
    space = run_dir / "s.yaml"
    space.write_text("layers:\n  depth: 1\n  cell: gru\n  hidden: {type: int, low: 4, high: 8}\nlr: 0.01\n"
                     "batch_size: 16\nmax_epochs: 4\npatience: 2\n")
    return tune(tiny_csv, space=str(space), trials=3, run_dir=run_dir / "runs", progress=False, track=False, cv=3,
                seed=1, prune=False)


def test_the_ridge_reference_is_a_candidate_and_an_exported_member(searched, tiny_csv, tmp_path):
    import cellsearch
    from cellsearch.export import export

    st = searched.study
    (ref,) = st.user_attrs["reference_members"]
    assert ref["trial"] < 0 and ref["kind"] == "reference"
    assert all(p["kind"] != "reference" for p in searched.front)  # the front shows what the search found
    oof = np.load(searched.run_dir / ref["oof"])
    assert oof.shape[0] == len(np.load(searched.run_dir / ref["oof"].replace("ridge.npy", "truth.npy")))
    # an ensemble holding the reference (the selection's own, or one made here from it)
    trials = [t.number for t in st.get_trials() if t.user_attrs.get("val_score") is not None]
    st.set_user_attr("ensembles", [{"name": "E9", "members": {str(trials[0]): 0.5, str(ref["trial"]): 0.5},
                                    "score": 0.5, "arch": "pair", "macs": 1.0, "params": 1.0, "latency_ms": 1.0}])
    out = export(out=tmp_path / "m", run_dir=searched.run_dir, ensemble="E9", formats=["onnx"])
    assert "ridge (reference)" in (out / "README.md").read_text()
    model = cellsearch.load(out)
    df = pd.read_csv(tiny_csv)
    preds = model.predict(df.drop(columns=["label"]))
    res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "predict", str(out), str(tiny_csv), "--out",
                          str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    fresh = pd.read_csv(tmp_path / "p.csv")
    prob = [c for c in fresh.columns if c.startswith("prob_")]
    np.testing.assert_allclose(fresh[prob].to_numpy(), preds[prob].to_numpy(), atol=1e-5)
    # the exported ensemble's output is the weighted average of the network's and the ridge's probabilities
    net, ridge = model.model.members[0], model.model.members[-1]
    assert isinstance(ridge, RidgeMember) and not isinstance(net, RidgeMember)
    # the ONNX graph holds the ridge member too (resampling by GatherElements, one Gemm): parity
    ort = pytest.importorskip("onnxruntime")
    from cellsearch.data import read_dataset

    ds = read_dataset(tiny_csv, test_size=0.15)
    split = ds.splits["test"]
    with torch.no_grad():
        want = model.model(torch.from_numpy(split.x), torch.from_numpy(split.lengths)).numpy()
    got = ort.InferenceSession(str(out / "model.onnx")).run(["output"], {"x": split.x, "lengths": split.lengths})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    refit = export(out=tmp_path / "m3", run_dir=searched.run_dir, ensemble="E9", weights="refit")
    assert any(isinstance(m, RidgeMember) for m in cellsearch.load(refit).model.members)


def test_networks_only_keeps_the_references_out(tiny_csv, tmp_path):
    from cellsearch.search import tune

    space = tmp_path / "s.yaml"
    space.write_text("layers:\n  depth: 1\n  cell: gru\n  hidden: 4\nlr: 0.01\nbatch_size: 16\nmax_epochs: 2\n"
                     "patience: 2\n")
    r = tune(tiny_csv, space=str(space), trials=2, run_dir=tmp_path / "runs", progress=False, track=False, cv=2,
             seed=1, prune=False, networks_only=True)
    assert "reference_members" not in r.study.user_attrs
    for e in r.study.user_attrs["ensembles"]:
        assert all(int(m) >= 0 for m in e["members"])
