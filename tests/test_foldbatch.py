"""The folds of a trial trained together as one batched model (``cellsearch.foldbatch``)."""

from __future__ import annotations

import pytest
import torch

from cellsearch import foldbatch, kernels
from cellsearch.data import read_dataset
from cellsearch.foldbatch import Rows, StackedModels, fit_folds
from cellsearch.folds import make_folds
from cellsearch.model import ModelSpec, build
from cellsearch.stack import LayerSpec
from cellsearch.tasks import get_task
from cellsearch.train import TrainOptions, fit
from tests.conftest import make_classification_csv, make_sales_csv


def _models(spec: ModelSpec, k: int) -> list[torch.nn.Module]:
    out = []
    for _ in range(k):
        torch.manual_seed(0)  # every fold starts from the trial's one initialisation, as a search builds them
        out.append(build(spec))
    return out


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@pytest.mark.parametrize("layers,pooling", [
    ((("gru", 12, False), ("lstm", 6, True)), "mean"),
    ((("peephole", 8, False), ("cifg", 8, False)), "last"),
])
def test_a_fold_trained_inside_the_batch_gets_the_weights_it_gets_alone(tmp_path, layers, pooling):
    """Same seed, same batches, same steps: each fold's kept weights, best check and stop equal those of
    training it alone with ``train.fit`` (ragged lengths: batches padded in rows and steps; folds that
    stop early leave the batch)."""
    ds = read_dataset(make_classification_csv(tmp_path / "c.csv", n_seq=50), test_size=0.0, val_size=0.0)
    folds = make_folds(ds, 4, seed=1).folds
    assert len({len(f.train) for f in folds}) > 1  # folds of different sizes: shorter batches are padded
    spec = ModelSpec(input_size=ds.n_features, layers=tuple(LayerSpec(*x) for x in layers), n_outputs=ds.n_outputs,
                     task=ds.task, pooling=pooling)
    options = TrainOptions(lr=5e-3, batch_size=8, max_epochs=12, patience=1, min_steps=30, max_steps=120)
    seeds = [11 + 1009 * k for k in range(len(folds))]
    together = fit_folds(_models(spec, len(folds)), ds, options, folds, seeds=seeds)
    assert len({r.steps for r in together}) > 1  # folds stop apart: the batch goes on with those left
    for k, (fold, seed) in enumerate(zip(folds, seeds)):
        alone = fit(_models(spec, 1)[0], ds, options, fold=fold, seed=seed)
        got = together[k]
        assert _max_diff(alone.model, got.model) < 1e-4, k
        assert (got.best_epoch, got.steps, got.stopped_by) == (alone.best_epoch, alone.steps, alone.stopped_by)
        assert got.best_score == alone.best_score  # the same accuracy, a float64 on both paths (not float32)
        assert [h["val_loss"] for h in got.history] == pytest.approx([h["val_loss"] for h in alone.history],
                                                                     rel=1e-4)


@pytest.mark.parametrize("base,season", [("seasonal_naive", 7), ("theta", 4)])
def test_forecasting_folds_train_together_like_alone(tmp_path, base, season):
    """Rolling-origin folds of forecast windows (L1 loss on scaled windows), with a base forecast (theta:
    windows of three seasons and more, positive, so adjusted by ratio, which once branched on the data
    and stopped ``vmap``): folds of different sizes, so of different batch sizes (each its own, padded
    to the largest)."""
    csv = make_sales_csv(tmp_path / "s.csv", [(1.0, 60), (3.0, 60), (10.0, 55)])
    ds = read_dataset(csv, horizon=7, window=14, season=season, test_size=0.0, val_size=0.0)
    folds = make_folds(ds, 3).folds
    spec = ModelSpec(input_size=ds.n_features, layers=(LayerSpec("gru", 8, False),), n_outputs=ds.n_outputs,
                     task=ds.task, season=season, base=base,
                     level_index=int(ds.preprocessing.layout_data.get("level_index", -1)))
    options = TrainOptions(lr=5e-3, batch_size=32, max_epochs=2, patience=10, min_steps=30, max_steps=30)
    plans = foldbatch.schedules(options, folds)
    assert len({p.batch_size for p in plans}) > 1 and foldbatch.can_train_together(options, folds)
    seeds = [3, 4, 5]
    together = fit_folds(_models(spec, 3), ds, options, folds, seeds=seeds)
    for k in range(3):
        alone = fit(_models(spec, 1)[0], ds, options, fold=folds[k], seed=seeds[k])
        assert _max_diff(alone.model, together[k].model) < 1e-4
        assert together[k].batch_size == plans[k].batch_size == alone.batch_size


@pytest.mark.parametrize("task,out,y", [
    ("classification", torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])),
    ("regression", torch.randn(6, 1), torch.randn(6, 1)),
    ("forecasting", torch.randn(6, 4), torch.randn(6, 4)),
])
def test_row_losses_average_to_the_training_loss(task, out, y):
    t = get_task(task)
    for how in ("l1", "mse"):
        rows = t.loss_rows(out, y, how)
        assert rows.shape == (6,)
        assert float(rows.mean()) == pytest.approx(float(t.loss(out, y, how)), rel=1e-6)


def test_stacked_models_run_each_model_on_its_own_rows():
    """The batched forward of K different models equals each model's own forward (compiled loops
    under vmap, torch's LSTM routed to the same equations); padded rows and steps change nothing."""
    spec = ModelSpec(input_size=3, layers=(LayerSpec("lstm", 5, True), LayerSpec("gru", 4, False)), n_outputs=2,
                     task="classification", pooling="attention")
    torch.manual_seed(1)
    models = [build(spec).eval() for _ in range(3)]
    g = torch.Generator().manual_seed(0)
    batches = []
    for n, t in ((4, 6), (2, 9), (3, 5)):
        lengths = torch.randint(1, t + 1, (n,), generator=g)
        lengths[0] = t
        batches.append((torch.randn(n, t, 3, generator=g), lengths, torch.zeros(n, dtype=torch.long), torch.ones(n)))
    rows = Rows.stack(batches)
    assert rows.x.shape == (3, 4, 9, 3) and rows.real.sum(1).tolist() == [4, 2, 3]
    stacked = StackedModels(models).eval()
    with torch.no_grad():
        out = stacked(rows.x, rows.lengths)
        for k, (x, lengths, _, _) in enumerate(batches):
            assert torch.allclose(out[k, :len(lengths)], models[k](x, lengths), atol=1e-5)
    for k in range(3):
        assert all(torch.equal(v, models[k].state_dict()[key]) for key, v in stacked.member_state(k).items())


@pytest.mark.parametrize("kind", ["numbers", "text"])
def test_gradients_through_the_compiled_loops_under_vmap(kind):
    """Each model's gradient from the batched forward equals its own, through the compiled LSTM-family
    and GRU loops' vmap rules (and a text model's token embedding: ids past its vocabulary, padding)."""
    from cellsearch.model import InputSpec

    if not kernels.available():
        pytest.skip("no compiled loop on this machine")
    layers = (LayerSpec("peephole", 6, False), LayerSpec("gru", 5, False))
    torch.manual_seed(2)
    if kind == "text":
        spec = ModelSpec(input_size=1, inputs=(InputSpec("text", 1, {"embedding": 8, "vocab": 50, "unk": 1}),),
                         layers=layers, n_outputs=2, task="classification", pooling="mean")
        x = torch.randint(0, 80, (2, 3, 7, 1)).float()
    else:
        spec = ModelSpec(input_size=2, layers=layers, n_outputs=1, task="regression")
        x = torch.randn(2, 3, 7, 2)
    models = [build(spec) for _ in range(2)]
    lengths = torch.tensor([[7, 3, 5], [2, 7, 7]])
    stacked = StackedModels(models)
    stacked(x, lengths).pow(2).sum().backward()
    for k, m in enumerate(models):
        m(x[k], lengths[k]).pow(2).sum().backward()
        for name, p in m.named_parameters():
            assert torch.allclose(getattr(stacked, name.replace(".", "__")).grad[k], p.grad, atol=1e-5), name


def test_a_search_trains_folds_together_or_one_by_one(tiny_csv, tiny_space, tmp_path, monkeypatch):
    """``--fold-batching on`` trains every trial's folds together (recorded), ``off`` one by one;
    ``auto`` follows the measurement (``batching_pays``: never when it must be free)."""
    from cellsearch.records import TrialRecord
    from cellsearch.search import tune

    def together(mode: str) -> list[bool]:
        result = tune(tiny_csv, space=str(tiny_space), trials=2, run_dir=tmp_path / mode, progress=False, seed=1,
                      fold_batching=mode, references=False, track=False, ensemble=False)
        recs = [TrialRecord.of(t) for t in result.study.trials]
        assert all(r.complete and len(r.fold_scores) == 5 for r in recs)
        return [r.together for r in recs]

    assert together("on") == [True, True]
    assert together("off") == [False, False]
    monkeypatch.setattr(foldbatch, "PAYS_BELOW", 0.0)
    foldbatch._PAYS.clear()
    assert together("auto") == [False, False]
    foldbatch._PAYS.clear()


def test_no_validation_before_the_time_limit_is_no_result(tmp_path):
    from cellsearch.train import NonFiniteLossError

    ds = read_dataset(make_classification_csv(tmp_path / "c.csv", n_seq=30), test_size=0.0, val_size=0.0)
    folds = make_folds(ds, 3).folds
    spec = ModelSpec(input_size=ds.n_features, layers=(LayerSpec("gru", 4, False),), n_outputs=ds.n_outputs,
                     task=ds.task)
    options = TrainOptions(lr=1e-3, batch_size=4, max_epochs=2, min_steps=10 ** 6, max_steps=10 ** 6)
    with pytest.raises(NonFiniteLossError, match="time limit"):
        fit_folds(_models(spec, 3), ds, options, folds, seeds=[0, 1, 2], max_seconds=0.2)
    uneven = TrainOptions(lr=1e-3, batch_size=4, max_epochs=2, min_steps=1, max_steps=1)
    plans = foldbatch.schedules(uneven, folds)
    if len({p.val_every for p in plans}) > 1:  # validation at different intervals: refused, one by one
        assert not foldbatch.can_train_together(uneven, folds)
        with pytest.raises(ValueError, match="one by one"):
            fit_folds(_models(spec, 3), ds, uneven, folds, seeds=[0, 1, 2])


def test_a_cell_that_cannot_run_batched_trains_its_folds_one_by_one(tmp_path, monkeypatch):
    """A user's cell on a torch module without a vmap rule (``nn.RNN``): never batched, even with
    ``--fold-batching on``; a registered cell of ours always can be."""
    from cellsearch.cells import CELLS
    from tests.test_new_cell import ElmanCell

    monkeypatch.setitem(CELLS, "elman", ElmanCell)
    ds = read_dataset(make_classification_csv(tmp_path / "c.csv", n_seq=30), test_size=0.0, val_size=0.0)
    folds = make_folds(ds, 3).folds
    options = TrainOptions(lr=1e-3, batch_size=4, max_epochs=2, min_steps=4, max_steps=4)
    for cell, can in (("elman", False), ("cifg", True)):
        spec = ModelSpec(input_size=ds.n_features, layers=(LayerSpec(cell, 4, False),), n_outputs=ds.n_outputs,
                         task=ds.task)
        assert foldbatch.batching_pays(_models(spec, 3), ds, options, folds, [0, 1, 2], measure=False) is can


def test_the_steps_benchmark_counts_fold_steps_of_the_real_search():
    """``cellsearch bench --steps``'s accounting: the one-point search trains every trial's five folds
    for exactly the space's steps, together with ``on`` and one by one with ``off``."""
    from cellsearch.benchmarks.steps import run_steps

    r = run_steps(steps=20, hidden=8, val_every=10)
    for mode, together in (("off", 0), ("on", 3)):
        m = r["search"][mode]
        assert (m["trials"], m["fold_steps"], m["together"]) == (3, 3 * 5 * 20, together)
        assert m["fold_steps_per_s"] == pytest.approx(m["fold_steps"] / m["train_seconds"], rel=0.01)
    assert r["ratio"] > 0 and r["together_ms"] > 0
    parts = r["together_parts_ms"]
    assert parts["batched forward+backward (vmap), per fold-step"] > 0 and parts["fused Adam, per fold-step"] > 0


def test_each_check_reports_every_folds_loss_and_may_stop_them_all(tmp_path):
    """``on_check(step, losses)``: once per validation, every fold's latest validation loss (what the
    step rungs of folds trained together read); raising there stops the batch."""
    ds = read_dataset(make_classification_csv(tmp_path / "c.csv", n_seq=40), test_size=0.0, val_size=0.0)
    folds = make_folds(ds, 4).folds
    spec = ModelSpec(input_size=ds.n_features, layers=(LayerSpec("cifg", 6, False),), n_outputs=ds.n_outputs,
                     task=ds.task)
    options = TrainOptions(lr=5e-3, batch_size=8, max_epochs=4, patience=100, min_steps=40, max_steps=40)
    seen: list[tuple[int, list[float]]] = []
    results = fit_folds(_models(spec, 4), ds, options, folds, seeds=[0, 1, 2, 3],
                        on_check=lambda step, losses: seen.append((step, losses)))
    assert [s for s, _ in seen] == [10, 20, 30, 40]
    for c, (_, losses) in enumerate(seen):
        assert losses == [r.history[c]["val_loss"] for r in results]

    class StopError(Exception):
        pass

    def stop(step: int, losses: list[float]) -> None:
        if step >= 20:
            raise StopError

    with pytest.raises(StopError):
        fit_folds(_models(spec, 4), ds, options, folds, seeds=[0, 1, 2, 3], on_check=stop)
