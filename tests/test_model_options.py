"""Model options beyond the cell (patches, pooling, per-sequence normalisation) and training counted
in optimiser steps: padding never counts, ONNX agrees, costs follow the shorter sequence, the step
floor holds, the space offers only what the data affords."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import cellsearch
from cellsearch.model import ModelSpec, build
from cellsearch.pooling import POOLINGS
from cellsearch.stack import LayerSpec
from tests.conftest import make_sales_csv

LAYERS = [[("gru", 4)], [("peephole", 5, True), ("cifg", 3, True)]]


@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("patch,normalize", [(1, True), (3, False), (4, True)])
def test_padding_never_counts(pooling, patch, normalize):
    """A padded batch gives each sequence exactly what it gives alone, whatever sits in the padding."""
    torch.manual_seed(0)
    for layers in LAYERS:
        model = build(ModelSpec(3, tuple(LayerSpec(*la) for la in layers), 2, "classification", 0.0, patch=patch,
                                pooling=pooling, normalize=normalize)).eval()
        lengths = torch.tensor([9, 3, 1, 7, 5])
        x = torch.randn(5, 9, 3) * 5  # garbage after each sequence's end
        batch = model(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(x[i:i + 1, :n], lengths[i:i + 1])
            assert torch.allclose(batch[i], alone[0], atol=1e-5), (pooling, patch, normalize, layers, i)


@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("patch,normalize", [(1, False), (3, True)])
@pytest.mark.parametrize("task,n_out", [("classification", 3), ("forecasting", 2)])
def test_onnx_matches_pytorch_with_model_options(pooling, patch, normalize, task, n_out):
    import onnxruntime as ort

    from cellsearch.onnx_export import build_onnx

    torch.manual_seed(1)
    for layers in LAYERS:
        model = build(ModelSpec(3, tuple(LayerSpec(*la) for la in layers), n_out, task, 0.2, patch=patch,
                                pooling=pooling, normalize=normalize)).eval()
        sess = ort.InferenceSession(build_onnx(model).SerializeToString())
        for batch, steps, lengths in [(5, 9, [9, 3, 1, 7, 5]), (2, 4, [4, 2]), (1, 13, [13])]:
            x = torch.randn(batch, steps, 3)
            lens = torch.tensor(lengths)
            ref = model(x, lens).detach().numpy()
            out = sess.run(None, {"x": x.numpy(), "lengths": lens.numpy()})
            assert np.abs(out[0] - ref).max() < 1e-4, (pooling, patch, normalize, layers)


def test_normalisation_makes_the_model_blind_to_each_sequence_s_scale_and_offset():
    torch.manual_seed(2)
    model = build(ModelSpec(2, (LayerSpec("gru", 6),), 2, "classification", normalize=True)).eval()
    x = torch.randn(3, 8, 2)
    lengths = torch.tensor([8, 6, 4])
    shifted = x * torch.tensor([3.0, 0.5]) + torch.tensor([10.0, -4.0])
    assert torch.allclose(model(x, lengths), model(shifted, lengths), atol=1e-4)


def test_costs_follow_the_patched_sequence():
    plain = build(ModelSpec(2, (LayerSpec("gru", 8),), 3, "classification"))
    patched = build(ModelSpec(2, (LayerSpec("gru", 8),), 3, "classification", patch=4))
    # gru: 3 blocks x H x (I + H) + 3H elementwise per step; the head once.
    per_step = 3 * 8 * (8 + 8) + 3 * 8
    assert patched.macs_per_sequence(100) == per_step * 25 + 8 * 3
    assert plain.macs_per_sequence(100) == (3 * 8 * (2 + 8) + 3 * 8) * 100 + 8 * 3
    assert patched.macs_per_sequence(101) == per_step * 26 + 8 * 3  # the last patch is completed with zeros
    att = build(ModelSpec(2, (LayerSpec("gru", 8),), 3, "classification", pooling="attention"))
    assert att.macs_per_sequence(10) == (3 * 8 * (2 + 8) + 3 * 8 + 2 * 8) * 10 + 8 * 3
    assert patched.spec.arch == "gru8/p4" and att.spec.arch == "gru8/attention"


def test_schedule_counts_steps_with_a_floor_and_a_bounded_batch():
    from cellsearch.train import Schedule

    tiny = Schedule.plan(n_train=36, batch_size=32, max_epochs=40, min_steps=400)
    assert tiny.batch_size == 9 and tiny.steps == 400 and tiny.val_every == 10 and tiny.min_steps == 400
    large = Schedule.plan(n_train=100_000, batch_size=64, max_epochs=40, min_steps=400)
    assert large.batch_size == 64 and large.steps == 40 * 1563 and large.val_every == 1563
    assert Schedule.plan(n_train=2, batch_size=32, max_epochs=5, min_steps=0).batch_size == 1
    longer = Schedule.plan(n_train=36, batch_size=32, max_epochs=40, min_steps=400, max_steps=2000)
    assert (longer.steps, longer.val_every, longer.min_steps) == (2000, 50, 400)  # may go on; stops after 400
    assert Schedule.plan(n_train=100_000, batch_size=64, max_epochs=40, min_steps=400, max_steps=2000) == large


def test_fit_trains_at_least_the_step_floor_despite_early_stopping(tiny_csv):
    from cellsearch.data import read_dataset
    from cellsearch.train import Schedule, TrainOptions, fit

    ds = read_dataset(tiny_csv, seed=0)
    torch.manual_seed(0)
    model = build(ModelSpec(ds.n_features, (LayerSpec("gru", 4),), ds.n_outputs, ds.task))
    # lr 0: the score never improves, so early stopping wants to stop after the first check.
    res = fit(model, ds, TrainOptions(lr=0.0, batch_size=64, max_epochs=20, patience=1, min_steps=60), seed=0)
    plan = Schedule.plan(len(ds.splits["train"]), 64, 20, 60)
    assert res.batch_size == plan.batch_size == len(ds.splits["train"]) // 4 and plan.steps > 60
    # Early stopping fired at the second check but the floor held: stopped exactly at 60 steps.
    assert res.steps == 60 and res.epochs == 60 // plan.val_every and res.stopped_by == "early_stopping"
    res = fit(model, ds, TrainOptions(lr=0.01, batch_size=64, max_epochs=4, patience=10, min_steps=40), seed=0)
    assert res.steps == 40 and res.epochs == 4 and res.stopped_by == "max_steps"


def test_space_offers_only_what_the_data_affords():
    import optuna

    from cellsearch.space import DataShape, load_space

    space = load_space("default")
    seen: dict[str, set] = {"patch": set(), "normalize": set()}

    def draw(shape: DataShape) -> dict:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        out = []
        for _ in range(30):
            trial = study.ask()
            out.append((space.suggest(trial, shape), trial.params))
        return out

    for cfg, params in draw(DataShape(length=6, task="classification")):
        assert cfg["patch"] == 1 and "patch" not in params  # one choice left: a constant, no parameter
        seen["normalize"].add(cfg["normalize"])
    assert seen["normalize"] == {True, False}
    for cfg, _ in draw(DataShape(length=150, task="forecasting")):
        seen["patch"].add(cfg["patch"])
        assert cfg["normalize"] is False
    assert seen["patch"] == {1, 2, 4, 8}  # 16 would leave fewer than 12 steps of 150


def test_bad_pooling_or_patch_is_refused(tmp_path):
    from cellsearch.errors import UserError
    from cellsearch.space import load_space

    p = tmp_path / "s.yaml"
    p.write_text("pooling: {type: categorical, choices: [last, median]}\n")
    with pytest.raises(UserError, match="unknown choice.*median"):
        load_space(p)
    p.write_text("patch: {type: categorical, choices: [1, 0]}\n")
    with pytest.raises(UserError, match="patch: sizes must be positive integers"):
        load_space(p)


def test_forecasting_with_patches_and_pooling_predicts_through_the_bundle(tmp_path):
    from cellsearch.export import export
    from cellsearch.predict import transform
    from cellsearch.search import tune

    csv = make_sales_csv(tmp_path / "sales.csv", [(10.0, 90), (1000.0, 80)])
    space = tmp_path / "s.yaml"
    space.write_text("layers: {depth: 1, cell: cifg, hidden: 8}\npatch: 2\npooling: mean\nlr: 0.01\n"
                     "max_epochs: 3\nmin_steps: 30\n")
    result = tune(csv, space=str(space), trials=1, window=16, horizon=3, run_dir=tmp_path / "runs", track=False,
                  progress=False)
    assert result.chosen["arch"] == "cifg8/p2/mean"
    model = cellsearch.load(export(out=tmp_path / "m", run_dir=tmp_path / "runs", formats=["onnx"]))
    frame = pd.read_csv(csv)
    preds = model.predict(frame)
    assert preds.shape[0] == 6 and preds[preds.shop == "s1"].prediction.mean() > 100
    # The bundle's ONNX graph gives the same outputs on the same inputs.
    import onnxruntime as ort

    inputs = transform(frame, model.prep)
    sess = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"))
    onnx_out = sess.run(None, {"x": inputs.x, "lengths": inputs.lengths})[0]
    assert np.abs(onnx_out - model.raw_outputs(inputs.x, inputs.lengths)).max() < 1e-4


def test_window_slicing_keeps_a_contiguous_part_of_each_sequence():
    from cellsearch.train import crop_batch

    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([40, 25, 1, 12])
    x = torch.zeros(4, 40, 2)
    for i, n in enumerate(lengths.tolist()):  # step t of sequence i holds (t + 1, i): where it came from
        x[i, :n, 0] = torch.arange(1, n + 1, dtype=torch.float32)
        x[i, :n, 1] = i
    starts, ends = set(), set()
    for _ in range(200):
        out, kept = crop_batch(x, lengths, 0.3, generator=gen)
        assert out.shape[1] == int(kept.max())
        for i, n in enumerate(lengths.tolist()):
            k = int(kept[i])
            assert max(1, n - int(0.3 * n)) <= k <= n
            first = int(out[i, 0, 0])
            assert torch.equal(out[i, :k, 0], torch.arange(first, first + k, dtype=torch.float32))  # contiguous
            assert bool((out[i, :k, 1] == i).all()) and bool((out[i, k:] == 0).all())  # padding stays zero
            assert first + k - 1 <= n  # never reads a padded step
            if n == 40:
                starts.add(first > 1)
                ends.add(first + k - 1 < n)
    assert starts == {True, False} and ends == {True, False}  # cut at the start, the end, or neither
    same, same_lengths = crop_batch(x, lengths, 0.0)
    assert torch.equal(same_lengths, lengths) and torch.equal(same, x)


def test_fit_slices_training_batches_only(tiny_csv, monkeypatch):
    from cellsearch import train
    from cellsearch.data import read_dataset

    seen: list[int] = []
    real = train.crop_batch

    def spy(x, lengths, fraction, generator=None):
        seen.append(x.shape[0])
        out, kept = real(x, lengths, fraction, generator)
        assert bool((kept <= lengths).all())
        return out, kept

    monkeypatch.setattr(train, "crop_batch", spy)
    ds = read_dataset(tiny_csv, seed=0)
    model = build(ModelSpec(ds.n_features, (LayerSpec("gru", 4),), ds.n_outputs, ds.task))
    res = train.fit(model, ds, train.TrainOptions(lr=0.01, batch_size=8, max_epochs=2, patience=5, min_steps=10,
                                                  crop=0.2), seed=0)
    assert len(seen) == res.steps > 0  # every optimiser step, and nothing else (validation reads whole sequences)
    seen.clear()
    train.fit(model, ds, train.TrainOptions(lr=0.01, batch_size=8, max_epochs=2, patience=5, min_steps=10), seed=0)
    assert seen == []


def test_space_offers_window_slicing_for_long_enough_classification_and_regression(tmp_path):
    import optuna

    from cellsearch.errors import UserError
    from cellsearch.space import DataShape, load_space

    space = load_space("default")

    def crops(shape: DataShape) -> tuple[set, set]:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        values, names = set(), set()
        for _ in range(20):
            trial = study.ask()
            values.add(space.suggest(trial, shape)["crop"])
            names |= set(trial.params)
        return values, names

    assert crops(DataShape(length=150, task="classification"))[0] == {0.0, 0.1}
    assert crops(DataShape(length=60, task="regression"))[0] == {0.0, 0.1}
    for shape in (DataShape(length=12, task="classification"), DataShape(length=150, task="forecasting", season=12)):
        values, names = crops(shape)  # 10% of 12 steps is under 2; a forecasting window is anchored at its end
        assert values == {0.0} and "crop" not in names
    p = tmp_path / "s.yaml"
    p.write_text("crop: 0.7\n")
    with pytest.raises(UserError, match=r"crop: values must lie in \[0, 0.5\]"):
        load_space(p)
