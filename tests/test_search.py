"""The search: spaces, objectives, the front and its knee, resume, crash recovery, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from cellsearch.errors import UserError
from cellsearch.pareto import pareto_front, pick_trial
from cellsearch.records import TrialRecord
from cellsearch.search import tune
from cellsearch.space import available_spaces, load_space

# ---- spaces --------------------------------------------------------------------------------------


def test_shipped_spaces_load_and_suggest_fixed_slots():
    assert {"default", "quick", "greff"} <= set(available_spaces())
    space = load_space("default")
    trial = optuna.trial.FixedTrial({"n_layers": 2, "l0_cell": "peephole", "l0_hidden": 64, "l1_cell": "gru",
                                     "l1_hidden": 32, "dropout": 0.1, "lr": 1e-3, "batch_size": 64, "patch": 4,
                                     "pooling": "mean", "normalize": True, "crop": 0.1, "base": "none"})
    cfg = space.suggest(trial)
    assert cfg["layers"] == [("peephole", 64, False), ("gru", 32, False)]
    assert (cfg["patch"], cfg["pooling"], cfg["normalize"], cfg["crop"]) == (4, "mean", True, 0.1)
    assert cfg["min_steps"] == 400
    greff = load_space("greff")
    cfg = greff.suggest(optuna.trial.FixedTrial({"cell": "cifg", "l0_hidden": 50, "lr": 1e-3}))
    assert cfg["layers"] == [("cifg", 50, False)] and greff.sampler == "random"


@pytest.mark.parametrize("text,message", [
    ("layers: {depth: 1}\nfoo: 1\n", "unknown key(s) foo"),
    ("layers: {cell: {type: categorical, choices: [lstm, transformer]}}\n", "unknown choice(s) transformer"),
    ("layers: {hidden: {type: int, low: 64, high: 16}}\n", "low (64) > high (16)"),
    ("layers: {cell: {type: categorical, choices: []}}\n", "non-empty list"),
    ("lr: {type: float, low: 0, high: 1, log: true}\n", "log scale needs low > 0"),
    ("layers: {cell: peephole, width: 3}\n", "layers: unknown key(s) width"),
])
def test_bad_space_gets_a_clear_error(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as err:
        load_space(p)
    assert message in str(err.value) and str(p) in str(err.value)


def test_starts_are_projected_onto_what_the_space_and_data_offer():
    from cellsearch.space import DataShape

    default = load_space("default")
    assert len(default.config["starts"]) >= 2
    short = default.starts(DataShape(length=29, task="classification"))
    # patches of 8 on 29 steps are not offered: the nearest offered size is taken
    assert [p.get("patch") for p in short] == [2, 2, 2]
    assert short[2]["l0_cell"] == "lstm" and short[2]["l1_cell"] == "gru" and short[2]["n_layers"] == 2
    forecast = default.starts(DataShape(length=40, task="forecasting", season=12))
    assert "normalize" not in forecast[0] and "crop" not in forecast[0]
    assert [p["base"] for p in forecast] == ["seasonal_naive", "none", "seasonal_naive"]
    assert all("base" not in p for p in short)  # whole sequences have nothing to correct
    assert [p["crop"] for p in short] == [0.1, 0.0, 0.1]  # 10% of 29 steps can cut 2
    for params in short + forecast:  # each start is a configuration the sampler could draw
        cfg = default.suggest(optuna.trial.FixedTrial(params),
                              DataShape(length=29, task="classification") if params in short
                              else DataShape(length=40, task="forecasting", season=12))
        assert cfg["layers"][0][0] == params["l0_cell"]


def test_the_older_seasonal_base_key_reads_as_base(tmp_path):
    """A space written before ``base`` (``seasonal_base: true/false``, a distribution of them, or in a
    start) means the same: the seasonal naive base or none; ``base`` given beside it wins; a base
    the tool does not know is refused in one line."""
    from cellsearch.space import DataShape

    def space(text: str):
        p = tmp_path / "s.yaml"
        p.write_text(text)
        return load_space(p)

    assert space("seasonal_base: true\n").config["base"] == "seasonal_naive"
    assert space("seasonal_base: false\n").config["base"] == "none"
    old = space("seasonal_base: {type: categorical, choices: [false, true]}\n"
                "starts: [{cell: gru, seasonal_base: true}]\n")
    assert old.config["base"]["choices"] == ["none", "seasonal_naive"]
    assert old.starts(DataShape(length=40, task="forecasting", season=4))[0]["base"] == "seasonal_naive"
    assert space("seasonal_base: true\nbase: theta\n").config["base"] == "theta"
    # what the data offers: no seasonal naive base without a season, no base for whole sequences
    three = space("base: {type: categorical, choices: [none, seasonal_naive, theta]}\n"
                  "starts: [{base: seasonal_naive}, {base: theta}]\n")
    assert [p["base"] for p in three.starts(DataShape(length=40, task="forecasting", season=12))] == [
        "seasonal_naive", "theta"]
    assert [p["base"] for p in three.starts(DataShape(length=40, task="forecasting"))] == ["none", "theta"]
    assert all("base" not in p for p in three.starts(DataShape(length=40, task="classification")))
    with pytest.raises(UserError, match="unknown choice"):
        space("base: {type: categorical, choices: [none, arima]}\n")


def test_starts_clamp_numbers_and_leave_the_rest_to_the_sampler(tmp_path):
    from cellsearch.space import DataShape

    p = tmp_path / "s.yaml"
    p.write_text("layers: {depth: {type: int, low: 1, high: 2}, hidden: {type: int, low: 8, high: 32}}\n"
                 "lr: {type: float, low: 0.001, high: 0.01, log: true}\n"
                 "batch_size: {type: categorical, choices: [16, 64]}\n"
                 "starts:\n  - {depth: 3, hidden: 500, lr: 0.5, batch_size: 40}\n  - {hidden: 1}\n")
    starts = load_space(p).starts(DataShape(length=10, task="regression"))
    assert starts[0] == {"n_layers": 2, "l0_hidden": 32, "l1_hidden": 32, "lr": 0.01, "batch_size": 64}
    assert starts[1] == {"l0_hidden": 8}
    p.write_text("starts:\n  - {cells: gru}\n")
    with pytest.raises(UserError, match=r"starts\[0\]: unknown key\(s\) cells"):
        load_space(p)


def test_a_fresh_study_begins_with_the_starts(tiny_csv, tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("layers: {depth: {type: int, low: 1, high: 2}, cell: {type: categorical, choices: [lstm, gru]},"
                 " hidden: {type: int, low: 4, high: 12}}\nmax_epochs: 2\nmin_steps: 4\n"
                 "starts:\n  - {depth: 2, cell: [gru, lstm], hidden: 5}\n  - {cell: gru, hidden: 11}\n")
    r = tune(tiny_csv, trials=3, space=str(p), run_dir=tmp_path, progress=False, track=False, references=False,
             ensemble=False, cv="1")
    first, second = r.study.trials[0], r.study.trials[1]
    assert first.params == {"n_layers": 2, "l0_cell": "gru", "l0_hidden": 5, "l1_cell": "lstm", "l1_hidden": 5}
    assert second.params["l0_cell"] == "gru" and second.params["l0_hidden"] == 11
    assert len(r.study.trials) == 3
    again = tune(tiny_csv, trials=4, space=str(p), run_dir=tmp_path, progress=False, track=False, references=False,
                 ensemble=False, cv="1")  # a resumed study is not restarted from its starts
    assert again.study.trials[3].params != first.params


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(UserError, match="quick"):
        load_space("nope")


# ---- front, knee, median stopping ----------------------------------------------------------------

def _pt(trial, score, cost):
    return {"trial": trial, "score": score, "cost": cost, "arch": f"a{trial}"}


def test_pareto_front_and_knee():
    pts = [_pt(0, 0.80, 1e3), _pt(1, 0.95, 1e4), _pt(2, 0.96, 1e6), _pt(3, 0.90, 1e5), _pt(4, 0.70, 2e3)]
    front = pareto_front(pts, "maximize")
    assert [p["trial"] for p in front] == [0, 1, 2]
    # Knee: 0.95 at 1e4 gives almost all the accuracy for a hundredth of the best one's cost.
    assert pick_trial(front, "maximize", "knee")["trial"] == 1
    assert pick_trial(front, "maximize", "best")["trial"] == 2
    assert pick_trial(front, "maximize", "smallest")["trial"] == 0
    # Minimised scores (RMSE) flip the sense.
    rm = [_pt(0, 1.0, 1e3), _pt(1, 0.5, 1e4), _pt(2, 0.45, 1e6)]
    assert pick_trial(pareto_front(rm, "minimize"), "minimize", "knee")["trial"] == 1
    # The best reference's validation score is a floor for the knee: the cheapest member at or above
    # it is taken; the best where none is; the other rules are left as asked.
    assert pick_trial(front, "maximize", "knee", floor=0.955)["trial"] == 2
    assert pick_trial(front, "maximize", "knee", floor=0.90)["trial"] == 1
    assert pick_trial(front, "maximize", "knee", floor=0.99)["trial"] == 2
    assert pick_trial(front, "maximize", "smallest", floor=0.99)["trial"] == 0
    assert pick_trial(pareto_front(rm, "minimize"), "minimize", "knee", floor=0.47)["trial"] == 2
    # Scores that differ in their last bits (one mean of five folds summed in another order) are equal:
    # the out-of-fold loss decides, as it does for the scores MLflow shows rounded.
    folds = [17 / 18, 17 / 18, 16 / 18, 17 / 18, 16 / 18]
    a, b = sum(folds) / 5, sum(folds[::-1]) / 5
    assert a != b and f"{a:.12g}" == f"{b:.12g}"
    tied = [{**_pt(0, max(a, b), 1e3), "oof_loss": 0.5}, {**_pt(1, min(a, b), 1e4), "oof_loss": 0.1}]
    assert [p["trial"] for p in pareto_front(tied, "maximize")] == [0, 1]


def test_pruning_waits_for_its_step_floor_and_promotes_by_rank():
    from cellsearch.pruning import StepRungs, promoted, smoothed_best

    # Smoothed: one lucky check does not make a trial; the best smoothed value is what a rung sees.
    assert smoothed_best([1.0, 0.2, 1.0]) == pytest.approx(0.6)
    assert smoothed_best([float("nan"), 0.5]) == 0.5 and smoothed_best([]) == float("inf")
    # ASHA: go on when in the best ceil(n/eta) of the n at the rung; no decision on too few.
    assert promoted(0.3, [0.1, 0.5, 0.6, 0.7], eta=3)  # 2nd of 5, best 2 go on
    assert not promoted(0.55, [0.1, 0.5, 0.6, 0.7], eta=3)  # 3rd of 5
    assert promoted(9.0, [0.1, 0.2, 0.3], eta=3)  # 3 peers < PEERS: no evidence yet
    recorded = []
    peers = {0: [0.1, 0.2, 0.3, 0.4, 0.5], 1: [0.1, 0.2, 0.3, 0.4, 0.5]}
    rungs = StepRungs(min_steps=400, peers=lambda k: peers.get(k, []), record=recorded.append)
    # Terrible checks before the floor (steps 100..300) decide nothing.
    assert not any(rungs.should_stop(step, 5.0) for step in (100, 200, 300))
    assert recorded == []
    # At the floor the smoothed best is far behind its peers: out.
    assert rungs.should_stop(400, 5.0) and recorded == [[5.0]]
    good = StepRungs(min_steps=400, peers=lambda k: peers.get(k, []), record=recorded.append)
    assert not any(good.should_stop(step, 0.05) for step in range(100, 1300, 100))
    assert good.reached == [0.05, 0.05]  # rungs at 400 and 1200 steps, both recorded


# ---- tune ----------------------------------------------------------------------------------------

def test_tune_result_front_and_checkpoints(tuned):
    r = tuned
    assert r.metric == "accuracy" and r.cost == "macs"
    assert r.counts.get("complete", 0) + r.counts.get("pruned", 0) == 4
    assert r.front and r.chosen in r.front
    complete = {t.number: t for t in r.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    for p in r.front:
        if p["kind"] == "trial":
            assert Path(p["checkpoint"]).exists()
        else:  # an ensemble of complete trials and reference members, costing all of its members
            refs = {m["trial"]: m for m in r.study.user_attrs.get("reference_members", [])}
            assert set(p["members"]) <= set(complete) | set(refs) and len(p["members"]) >= 2
            assert any(m >= 0 for m in p["members"])  # always a network
            macs = [complete[m].user_attrs["macs"] if m >= 0 else refs[m]["macs"] for m in p["members"]]
            assert p["macs"] == pytest.approx(sum(macs))
        assert 0.0 <= r.held_out_score(p) <= 1.0 and p["test_score"] is None  # tiny data: out-of-fold
    # The front is non-dominated among all completed trials.
    trials = r.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    for t in trials:
        s, c = t.values
        assert not any(p["score"] < s and p["cost"] > c for p in r.front)
    saved = json.loads((r.run_dir / "studies" / r.study.study_name / "result.json").read_text())
    assert saved["chosen"]["trial"] == r.chosen["trial"]


def test_macs_cost_is_the_analytic_count(tuned):
    from cellsearch.cells import CELLS
    from cellsearch.model import ModelSpec

    t = tuned.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    spec = ModelSpec.from_dict(t.user_attrs["spec"])
    sizes = [spec.input_size] + [layer.hidden for layer in spec.layers]
    per_step = sum(CELLS[layer.cell].macs(sizes[k], layer.hidden) for k, layer in enumerate(spec.layers))
    median_len = 6  # tiny.csv lengths 4..8
    folds = t.user_attrs["folds"]  # what is exported: every fold's model
    assert abs(t.values[1] - folds * (per_step * median_len + spec.layers[-1].hidden * 3)) <= folds * per_step


@pytest.mark.slow
def test_resume_continues_to_the_requested_count(tiny_csv, tiny_space, tmp_path):
    kw = dict(space=str(tiny_space), run_dir=tmp_path, progress=False, track=False, max_epochs=2)
    r1 = tune(tiny_csv, trials=2, **kw)
    assert len(r1.study.trials) == 2
    r2 = tune(tiny_csv, trials=3, **kw)
    numbers = [t.number for t in r2.study.trials]
    assert numbers == [0, 1, 2]
    r3 = tune(tiny_csv, trials=3, **kw)  # already there: nothing more to run
    assert len(r3.study.trials) == 3


@pytest.mark.slow
def test_single_objective_reports_epochs_for_pruning(tiny_csv, tiny_space, tmp_path):
    r = tune(tiny_csv, trials=3, space=str(tiny_space), run_dir=tmp_path, progress=False, track=False,
             objective="score", study="single")
    assert len(r.study.directions) == 1
    t = r.study.trials[0]
    assert t.intermediate_values, "per-epoch scores are reported to the pruner"


def _spawn_tune(csv: Path, space: Path, run_dir: Path, trials: int, extra: list[str] = ()) -> subprocess.Popen:
    """A search whose first trial runs for minutes (no early stopping, a step floor far beyond the tiny
    data) so it is surely still running when it is killed or interrupted: a trial that could end
    within the test's poll interval would leave the signal to land after the search."""
    slow = run_dir / "slow.yaml"
    slow.write_text(space.read_text().replace("patience: 2", "patience: 1000")
                    .replace("min_steps: 60", "min_steps: 1000000") + "max_steps: 1000000\n")
    return subprocess.Popen([sys.executable, "-m", "cellsearch.cli", "tune", str(csv), "--space", str(slow),
                             "--trials", str(trials), "--run-dir", str(run_dir), "--no-track", "--max-epochs",
                             "200", "--study", "crash", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """Ctrl-C as a terminal delivers it. A child inherits an ignored SIGINT (Python then leaves it
    ignored, as nohup expects): the suite run as a background job (``.ci/run &``) would otherwise
    spawn a search that Ctrl-C cannot stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_running(run_dir: Path, timeout: float = 120, count: int = 1) -> None:
    """Wait until ``count`` trials run, then a second more (each has beaten: one killed before its
    first heartbeat would hold its place in the study for ``NO_BEAT_S``)."""
    storage = f"sqlite:///{run_dir / 'optuna.db'}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            st = optuna.load_study(study_name="crash", storage=storage)
            if sum(t.state == optuna.trial.TrialState.RUNNING for t in st.trials) >= count:
                time.sleep(1.0)
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError("no trial started")


@pytest.mark.slow
def test_killed_process_trial_ends_failed_and_resume_reaches_count(tiny_csv, tiny_space, tmp_path):
    from cellsearch.study import GRACE_S
    from cellsearch.workers import cpu_cores
    from tests.test_scale import _wait, _worker_pids

    proc = _spawn_tune(tiny_csv, tiny_space, tmp_path, 2)  # the CLI's default: --workers auto
    try:
        _wait_running(tmp_path, count=min(2, cpu_cores()))  # a trial in each worker
        assert _worker_pids(tmp_path) or cpu_cores() == 1, "on 2 cores or more, auto runs worker processes"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # its workers end with it: none trains on for a search nobody waits for
    _wait(lambda: not _worker_pids(tmp_path), timeout=30, what="the workers to end with their tune process")
    time.sleep(GRACE_S + 1)
    r = tune(tiny_csv, trials=2, space=str(tiny_space), run_dir=tmp_path, progress=False, track=False,
             study="crash", max_epochs=2)
    states = [t.state for t in r.study.trials]
    assert states[0] == optuna.trial.TrialState.FAIL
    finished = [s for s in states if s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 2


@pytest.fixture
def python_sigint():
    """SIGINT as Python sets it in a foreground process (``default_int_handler``) for the test: a
    test run started as a background job of a non-interactive shell inherits an ignored SIGINT, and
    ``deferred_interrupts`` then leaves Ctrl-C alone by design."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_sigint")
def test_ctrl_c_in_the_trial_loop_waits_for_a_safe_point():
    from cellsearch.interrupts import check, deferred_interrupts, interruptible, protected

    def ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)

    with deferred_interrupts():
        ctrl_c()  # lands outside training: waits
        with pytest.raises(KeyboardInterrupt):
            check()
        check()  # raised once, then gone
        with pytest.raises(KeyboardInterrupt), interruptible():
            ctrl_c()  # lands in training: at once
            time.sleep(5)
        reached = []
        with pytest.raises(KeyboardInterrupt), interruptible():
            with protected():
                ctrl_c()  # lands in a validation check's writes: waits for them to end
                time.sleep(0.01)
                reached.append("the end of the writes")
            reached.append("past protected()")  # pragma: no cover (leaving it raised the pending Ctrl-C)
        assert reached == ["the end of the writes"]


@pytest.mark.usefixtures("python_sigint")
def test_a_third_ctrl_c_raises_wherever_it_lands_and_leaving_raises_a_pending_one():
    from cellsearch.interrupts import INSISTENT, deferred_interrupts

    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        for _ in range(INSISTENT):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        raise AssertionError("not reached")  # pragma: no cover
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # pending, and no safe point follows
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("python_sigint")
def test_ctrl_c_inside_the_write_that_ends_a_trial_leaves_no_trial_running(tiny_csv, tiny_space, tmp_path,
                                                                          monkeypatch):
    """The CI failure this guards against: a Ctrl-C that fell inside Optuna's bookkeeping left the
    trial ``RUNNING`` (Optuna marks a trial failed only for an interrupt inside the objective)."""
    from optuna.storages import RDBStorage

    original = RDBStorage.set_trial_state_values
    presses = []

    def write_hit_by_ctrl_c(self, trial_id, state, values=None):  # noqa: ANN001, ANN202
        if state.is_finished() and not presses:
            presses.append(trial_id)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, trial_id, state, values)

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", write_hit_by_ctrl_c)
    r = tune(tiny_csv, trials=3, space=str(tiny_space), run_dir=tmp_path, progress=False, track=False,
             study="bookkeeping", workers=1, max_epochs=2)
    assert presses and r.interrupted
    states = [t.state for t in r.study.trials]
    assert states and optuna.trial.TrialState.RUNNING not in states, states
    assert states[0].is_finished() and len(states) == 1  # the search stopped after the write


def test_ctrl_c_before_the_trials_exits_130_with_its_line(tiny_csv, tiny_space, tmp_path, monkeypatch, capsys):
    """Ctrl-C while ``tune`` fits its references: the command says it was interrupted and exits 130,
    no worker process started (Typer hands a Ctrl-C that leaves a command back as a return value,
    which once made this exit 0 without a word)."""
    from cellsearch.cli import main
    from tests.test_scale import _worker_pids

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("cellsearch.references.fit_references", ctrl_c)
    with pytest.raises(SystemExit) as stop:
        main(["tune", str(tiny_csv), "--space", str(tiny_space), "--trials", "4", "--workers", "2", "--run-dir",
              str(tmp_path), "--no-track"])
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "cellsearch: interrupted"
    assert _worker_pids(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_marks_the_trial(tiny_csv, tiny_space, tmp_path):
    proc = _spawn_tune(tiny_csv, tiny_space, tmp_path, 3)
    try:
        _wait_running(tmp_path)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # it did not stop: leave no search running (it would slow every later test)
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    st = optuna.load_study(study_name="crash", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in st.trials)
    assert any(t.state == optuna.trial.TrialState.FAIL for t in st.trials)


@pytest.mark.slow
def test_tune_cli_prints_front_and_next_steps(tiny_csv, tiny_space, tmp_path):
    res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "tune", str(tiny_csv), "--space", str(tiny_space),
                          "--trials", "2", "--run-dir", str(tmp_path), "--no-track", "--max-epochs", "2"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "Pareto front" in out and ("chosen: trial" in out or "chosen: ensemble" in out)
    assert "cellsearch export" in out
    bad = subprocess.run([sys.executable, "-m", "cellsearch.cli", "tune", str(tiny_csv), "--space", "nope",
                          "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_fit_returns_the_weights_of_the_best_recorded_score(tiny_csv):
    """The recorded per-epoch scores belong to the weights trained so far: the returned model scores
    exactly its recorded best on validation, and a single epoch is recorded (not lost)."""
    import torch

    from cellsearch.data import read_dataset
    from cellsearch.evaluation import evaluate
    from cellsearch.model import ModelSpec, build
    from cellsearch.stack import LayerSpec
    from cellsearch.train import TrainOptions, fit

    ds = read_dataset(tiny_csv, seed=2)
    for epochs in (1, 6):
        torch.manual_seed(0)
        model = build(ModelSpec(ds.n_features, (LayerSpec("gru", 8),), ds.n_outputs, ds.task))
        res = fit(model, ds, TrainOptions(lr=0.02, batch_size=16, max_epochs=epochs, patience=10), seed=0)
        assert res.epochs == epochs and len(res.history) == epochs
        assert evaluate(res.model, ds.splits["val"], ds.task) == pytest.approx(res.best_score, abs=1e-6)
        assert res.history[res.best_epoch]["val_score"] == res.best_score


@pytest.mark.slow
def test_no_trial_is_pruned_before_its_step_floor(tiny_csv, tmp_path):
    """A real search: every trial records its rungs as it reaches them, and a trial pruned within a
    fold was pruned at a rung (its step floor or later), never at an earlier check."""
    import re

    space = tmp_path / "s.yaml"
    space.write_text("layers:\n  depth: 1\n  cell: {type: categorical, choices: [gru, lstm]}\n"
                     "  hidden: {type: int, low: 2, high: 8}\n"
                     "lr: {type: float, low: 0.00001, high: 0.03, log: true}\n"
                     "batch_size: 8\nmax_epochs: 6\npatience: 100\nmin_steps: 20\nmax_steps: 60\n")
    r = tune(tiny_csv, space=str(space), trials=8, run_dir=tmp_path / "runs", progress=False, track=False,
             seed=4, cv=2, ensemble=False)
    for t in r.study.trials:
        rec = TrialRecord.of(t)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert len(rec.rungs) == 2 and len(rec.race) == 2  # rungs at 20 and 60 steps; two folds
        if t.state == optuna.trial.TrialState.PRUNED and (m := re.search(r"at step (\d+)", rec.reason or "")):
            assert int(m.group(1)) >= 20 and rec.rungs
