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
from cellsearch.refmembers import NeighbourMember, RidgeMember, RocketMember, fit_ridge, resample_torch


def _split(n: int, classes: int | None, seed: int = 0) -> SplitTensors:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 15, size=n)
    x = rng.normal(size=(n, 14, 2)).astype(np.float32)
    x[np.arange(14)[None, :] >= lengths[:, None]] = 0.0
    signal = x[:, :5, 0].sum(axis=1)
    y = (np.digitize(signal, np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1])) if classes
         else signal.astype(np.float32))
    return SplitTensors(x, lengths.astype(np.int64), y, np.arange(n))


@pytest.mark.parametrize("cls", [RidgeMember, NeighbourMember])
def test_a_reference_member_in_onnx_is_the_member(cls):
    """Ridge: resampling by GatherElements, one Gemm, temperature and log-softmax. 1-NN: z-normalised,
    resampled, distances by one MatMul, softmax, the labels' average. The same outputs as the torch
    member, on sequences of varying lengths."""
    ort = pytest.importorskip("onnxruntime")
    from cellsearch.onnx_export import reference_onnx

    for classes, task in ((3, "classification"), (2, "classification"), (None, "regression")):
        train, test = _split(60, classes), _split(25, classes, seed=3)
        member = cls.fit(train, task, 9, classes or 1)
        member.temperature = 20.0
        sess = ort.InferenceSession(reference_onnx(member).SerializeToString())
        got = sess.run(["output"], {"x": test.x, "lengths": test.lengths})[0]
        with torch.no_grad():
            want = member(torch.from_numpy(test.x), torch.from_numpy(test.lengths)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert cls.from_description(member.describe()).describe() == member.describe()


def test_the_neighbour_member_at_a_high_temperature_is_one_nn():
    from sklearn.neighbors import KNeighborsClassifier

    from cellsearch.refmembers import znormalise

    train, test = _split(60, 3), _split(40, 3, seed=1)
    member = NeighbourMember.fit(train, "classification", 9, 3)
    member.temperature = 1e6
    with torch.no_grad():
        out = member(torch.from_numpy(test.x), torch.from_numpy(test.lengths)).numpy()

    def flat(s):
        return resample(znormalise(s.x, s.lengths), s.lengths, 9).reshape(len(s.x), -1)

    want = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(flat(train), train.y).predict(flat(test))
    assert (out.argmax(axis=1) == want).all()
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, atol=1e-4)
    member.temperature = 0.0  # no temperature: every stored sequence votes alike (the class shares)
    with torch.no_grad():
        flat_vote = np.exp(member(torch.from_numpy(test.x), torch.from_numpy(test.lengths)).numpy())
    np.testing.assert_allclose(flat_vote[0], np.bincount(train.y, minlength=3) / 60, atol=1e-3)


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


@pytest.mark.parametrize("present", [(0, 2), (0, 1, 3)])
def test_a_class_the_training_rows_lack_gets_no_probability(present):
    """A fold whose rows hold two of four classes (one decision value) or three: the classes it never
    saw get no share of the probability, whichever branch fitted it (the two-class branch left them at
    a decision value of 0, above the class it scored negative)."""
    train = _split(60, 2 if len(present) == 2 else 3)
    train.y = np.asarray(present)[np.asarray(train.y)]
    member = fit_ridge(train, "classification", 10, 4)
    member.temperature = 1.0
    with torch.no_grad():
        prob = member(torch.from_numpy(train.x), torch.from_numpy(train.lengths)).exp().numpy()
    missing = [c for c in range(4) if c not in present]
    assert prob[:, missing].max() < 1e-6
    assert set(prob.argmax(axis=1)) <= set(present)


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
    refs = {r["name"]: r for r in st.user_attrs["reference_members"]}
    assert set(refs) == {"ridge", "1nn", "rocket"}
    assert all(r["trial"] < 0 and r["kind"] == "reference" for r in refs.values())
    ref = refs["ridge"]
    assert all(p["kind"] != "reference" for p in searched.front)  # the front shows what the search found
    oof = np.load(searched.run_dir / ref["oof"])
    assert oof.shape[0] == len(np.load(searched.run_dir / ref["oof"].replace("ridge.npy", "truth.npy")))
    # an ensemble holding the reference (the selection's own, or one made here from it)
    trials = [t.number for t in st.get_trials() if t.user_attrs.get("val_score") is not None]
    members = {str(trials[0]): 0.4, str(ref["trial"]): 0.2, str(refs["1nn"]["trial"]): 0.2,
               str(refs["rocket"]["trial"]): 0.2}
    st.set_user_attr("ensembles", [{"name": "E9", "members": members,
                                    "score": 0.5, "arch": "pair", "macs": 1.0, "params": 1.0, "latency_ms": 1.0}])
    out = export(out=tmp_path / "m", run_dir=searched.run_dir, ensemble="E9", formats=["onnx"])
    card = (out / "README.md").read_text()
    assert "ridge (reference)" in card and "1nn (reference)" in card and "rocket (reference)" in card
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
    kinds = [getattr(m, "kind", "network") for m in model.model.members]
    assert kinds[0] == "network" and {"ridge", "1nn", "rocket"} <= set(kinds)  # networks first
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
    refit_kinds = {type(m) for m in cellsearch.load(refit).model.members}
    assert RidgeMember in refit_kinds and NeighbourMember in refit_kinds and RocketMember in refit_kinds


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


def test_the_rocket_member_in_onnx_is_the_member_and_its_features_are_rocket():
    """ROCKET's features by hand (numpy: each kernel's dilated, zero-padded convolution of the real
    steps plus its bias; the share of positive values and the maximum) equal the member's; ONNX equals
    the member (one Conv per dilation), on sequences of varying lengths, several channels, each task;
    the member rebuilds from its description and beats chance on data a kernel can read."""
    ort = pytest.importorskip("onnxruntime")
    from cellsearch.onnx_export import reference_onnx
    from cellsearch.refmembers import ROCKET_WIDTH

    for classes, task in ((3, "classification"), (None, "regression")):
        train, test = _split(60, classes), _split(25, classes, seed=3)
        member = RocketMember.fit(train, task, 12, classes or 1)
        member.temperature = 3.0
        with torch.no_grad():
            got = member.features(torch.from_numpy(test.x), torch.from_numpy(test.lengths)).numpy()
        order = torch.cat([idx for _, idx in member.groups()]).numpy()
        k = member.n_kernels
        for row in (0, 7):
            n = int(test.lengths[row])
            x = test.x[row, :n].astype(np.float64)  # (n, F)
            for pos in (0, 5, k - 1):
                j = order[pos]
                w, d = member.kernels[j].numpy().astype(np.float64), int(member.dilation[j])
                half = ROCKET_WIDTH // 2
                padded = np.zeros((n + 2 * half * d, x.shape[1]))
                padded[half * d:half * d + n] = x
                conv = np.array([sum(padded[t + i * d] @ w[:, i] for i in range(ROCKET_WIDTH)) for t in range(n)])
                conv += float(member.bias[j])
                np.testing.assert_allclose(got[row, pos], (conv > 0).mean(), atol=1e-6)
                np.testing.assert_allclose(got[row, k + pos], conv.max(), rtol=1e-4, atol=1e-4)
        sess = ort.InferenceSession(reference_onnx(member).SerializeToString())
        onnx_out = sess.run(["output"], {"x": test.x, "lengths": test.lengths})[0]
        with torch.no_grad():
            want = member(torch.from_numpy(test.x), torch.from_numpy(test.lengths)).numpy()
        np.testing.assert_allclose(onnx_out, want, atol=1e-3, rtol=1e-4)
        rebuilt = RocketMember.from_description(member.describe())
        rebuilt.load_state_dict(member.state_dict())
        with torch.no_grad():
            again = rebuilt(torch.from_numpy(test.x), torch.from_numpy(test.lengths)).numpy()
        np.testing.assert_allclose(again, want)
        if classes:  # shapes at any phase and length, which a position-bound linear map cannot read
            def waves(n: int, seed: int) -> SplitTensors:
                rng = np.random.default_rng(seed)
                y = rng.integers(0, 3, size=n)
                lengths = rng.integers(40, 61, size=n)
                t = np.arange(60)[None, :]
                x = np.sin(2 * np.pi * t / (4 + 4 * y[:, None]) + rng.uniform(0, 6.3, size=(n, 1)))
                x = (x + 0.5 * rng.normal(size=x.shape))[..., None].astype(np.float32)
                x[t[0][None, :] >= lengths[:, None]] = 0.0
                return SplitTensors(x, lengths.astype(np.int64), y, np.arange(n))

            fitted = RocketMember.fit(waves(150, 5), task, 50, classes)
            held = waves(200, 6)
            with torch.no_grad():
                out = fitted(torch.from_numpy(held.x), torch.from_numpy(held.lengths))
            acc = (out.argmax(1).numpy() == held.y).mean()
            assert acc > 0.9, acc  # chance is 1/3


def test_rocket_biases_are_numpys_quantiles_drawn_at_once():
    """``row_quantiles`` gives each row's own quantile exactly as ``np.quantile`` does (rows of one
    step to thousands, quantiles on and between the sorted values), and a fitted ROCKET's biases are
    minus a quantile (0.1-0.9) of its kernel's output on a training sequence, as the member's doc says."""
    from cellsearch.refmembers import row_quantiles

    rng = np.random.default_rng(4)
    for width in (1, 2, 9, 150, 2001):
        a = rng.normal(size=(64, width)).astype(np.float32)
        a[:4] = np.round(a[:4])  # ties
        q = np.concatenate([rng.uniform(0.1, 0.9, size=60), [0.0, 0.5, 1.0, 0.25]])
        want = np.array([np.quantile(a[i], q[i]) for i in range(len(a))])
        np.testing.assert_array_equal(row_quantiles(a, q), want)
    train = _split(30, 3)
    member = RocketMember.fit(train, "classification", 12, 3, seed=2)
    x, lengths = torch.from_numpy(train.x), torch.from_numpy(train.lengths)
    with torch.no_grad():
        outputs = [torch.cat(member.convolve(x[r:r + 1], lengths[r:r + 1], bias=False), dim=1)[0].numpy()
                   [:, :int(lengths[r])] for r in range(len(x))]
    order = torch.cat([idx for _, idx in member.groups()]).numpy()
    for pos in (0, 11, member.n_kernels - 1):
        b = -float(member.bias[order[pos]])
        # some training sequence's output of this kernel has b between its 10% and 90% quantiles
        assert any(np.quantile(o[pos], 0.1) - 1e-5 <= b <= np.quantile(o[pos], 0.9) + 1e-5 for o in outputs)


def test_with_one_validation_split_the_members_learn_from_its_rows_too(tiny_csv, tmp_path):
    """Holdout search: the saved reference member (what the test split, the ensembles and the export
    use) is the kind fitted on the training and validation rows, at the temperature chosen on
    validation; its out-of-fold file keeps the training-split fit's outputs."""
    from cellsearch.context import prepare
    from cellsearch.data.splits import concat_splits
    from cellsearch.model import load_checkpoint
    from cellsearch.search import TuneConfig, tune

    space = tmp_path / "s.yaml"
    space.write_text("layers:\n  depth: 1\n  cell: gru\n  hidden: 4\nlr: 0.01\nbatch_size: 16\nmax_epochs: 2\n"
                     "patience: 2\n")
    options = {"space": str(space), "run_dir": tmp_path / "runs", "cv": 1, "seed": 1, "test_size": 0.2}
    r = tune(tiny_csv, trials=2, progress=False, track=False, prune=False, **options)
    assert r.cv == "holdout (one validation split)"
    fold = prepare(TuneConfig.create(tiny_csv, **options), create=False).folds.folds[0]
    train, val = fold.train.tensors(), fold.val.tensors()
    ridge = {p["name"]: p for p in r.study.user_attrs["reference_members"]}["ridge"]
    assert ridge["fitted_on"] == "training and validation rows"
    model, _ = load_checkpoint(r.run_dir / ridge["checkpoint"])
    assert len(model.members) == 1 and model.sources == [{"trial": ridge["trial"], "refit": True}]
    member = model.members[0]
    both = RidgeMember.fit(concat_splits([train, val]), "classification", member.length, member.n_outputs)
    alone = RidgeMember.fit(train, "classification", member.length, member.n_outputs)
    np.testing.assert_allclose(member.linear.weight.detach().numpy(), both.linear.weight.detach().numpy(), atol=1e-5)
    assert not np.allclose(member.linear.weight.detach().numpy(), alone.linear.weight.detach().numpy(), atol=1e-3)
    alone.temperature = member.temperature
    with torch.no_grad():
        want = alone(torch.from_numpy(val.x), torch.from_numpy(val.lengths)).numpy()
    np.testing.assert_allclose(np.load(r.run_dir / ridge["oof"]), want, atol=1e-4)


def test_with_one_validation_split_a_reference_is_tested_after_learning_from_its_rows(tiny_csv):
    """The reference beside the networks is scored on validation from the training rows, and on the
    test split from the training and validation rows (as the ensembles' members are)."""
    from cellsearch.data import read_dataset
    from cellsearch.data.splits import concat_splits
    from cellsearch.metrics import score
    from cellsearch.references import REFERENCES, Context, fit_references

    ds = read_dataset(tiny_csv, val_size=0.25, test_size=0.25, seed=2)
    train, val, test = (ds.splits[k] for k in ("train", "val", "test"))
    shown = {r["name"]: r for r in fit_references(ds, "macs")}
    length = max(1, int(np.median(train.lengths)))
    ctx = Context("classification", length, length * train.x.shape[2], len(train), ds.n_outputs, 0, 1,
                  ds.preprocessing)
    differs = 0
    for name in ("ridge", "1nn"):
        ref = REFERENCES[name]
        assert shown[name]["score"] == pytest.approx(score("classification", ref.fit(train, ctx)(val), val.y))
        both = score("classification", ref.fit(concat_splits([train, val]), ctx)(test), test.y)
        alone = score("classification", ref.fit(train, ctx)(test), test.y)
        assert shown[name]["test_score"] == pytest.approx(both)
        differs += both != alone
    assert differs  # the fixture is one where the validation rows change a test prediction
