"""Scale out: workers sharing a study, a real PostgreSQL server, and surviving faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from cellsearch.search import tune

PG = os.environ.get("CELLSEARCH_TEST_PG")
PG_CTL = os.environ.get("CELLSEARCH_TEST_PG_CTL")
needs_pg = pytest.mark.skipif(not PG and not os.environ.get("CI"), reason="no PostgreSQL (CI starts one)")

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cellsearch.cli", "tune", *args]


def _slow_space(tmp: Path, tiny_space: Path, patience: int = 1000) -> Path:
    p = tmp / "slow.yaml"
    p.write_text(tiny_space.read_text().replace("patience: 2", f"patience: {patience}")
                 .replace("max_epochs: 4", "max_epochs: 60").replace("min_steps: 60", "min_steps: 300"))
    return p


@needs_pg
def test_three_workers_on_postgres_give_exactly_9_trials(tiny_csv, tiny_space, tmp_path):
    """Three `tune` processes (as on three machines) join one PostgreSQL study: 9 trials exactly (one
    validation split, no references and the trials in each process: the trials' count and records are
    the point, not their folds or worker processes, which the tests below cover)."""
    assert PG, "CI must provide CELLSEARCH_TEST_PG"
    study = f"pg-{uuid.uuid4().hex[:8]}"
    procs = [subprocess.Popen(_cli(str(tiny_csv), "--space", str(tiny_space), "--trials", "9", "--storage", PG,
                                   "--study", study, "--run-dir", str(tmp_path / f"m{k}"), "--seed", str(k),
                                   "--max-epochs", "2", "--cv", "1", "--no-references", "--workers", "1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    st = optuna.load_study(study_name=study, storage=PG)
    finished = [t for t in st.trials if t.state in FINISHED]
    assert len(finished) == 9
    assert len({t.number for t in st.trials}) == len(st.trials)
    # Each finished trial has its MLflow child run, in the store of the process that ran it.
    from mlflow import MlflowClient

    from cellsearch.tracking import default_tracking_uri

    seen = set()
    for k in range(3):
        client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path / f"m{k}"))
        exp = client.get_experiment_by_name(study)
        for r in client.search_runs([exp.experiment_id], "tags.state != 'RUNNING'", max_results=200):
            if "trial_number" in r.data.tags:
                seen.add(int(r.data.tags["trial_number"]))
    assert {t.number for t in finished} <= seen


@pytest.mark.slow
def test_workers_share_one_study_with_one_parent_run(tiny_csv, tiny_space, tmp_path):
    r = tune(tiny_csv, space=str(tiny_space), trials=5, workers=2, run_dir=tmp_path, progress=False, max_epochs=2)
    finished = [t for t in r.study.trials if t.state in FINISHED]
    assert len(finished) == 5
    from mlflow import MlflowClient

    from cellsearch.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name(r.study.study_name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    children = [x for x in runs if "mlflow.parentRunId" in x.data.tags and "trial_number" in x.data.tags]
    assert len(parents) == 1
    assert {x.data.tags["mlflow.parentRunId"] for x in children} == {parents[0].info.run_id}
    assert {int(x.data.tags["trial_number"]) for x in children if x.data.tags["state"] != "FAILED"} >= \
        {t.number for t in finished}


def _worker_pids(run_dir: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "cellsearch.workers" in cmd and str(run_dir) in cmd:
                pids.append(int(d.name))
    return pids


def _wait(cond, timeout: float = 120, what: str = "condition") -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _running(storage: str, study: str) -> list[int]:
    try:
        st = optuna.load_study(study_name=study, storage=storage)
    except Exception:
        return []
    return [t.number for t in st.trials if t.state == optuna.trial.TrialState.RUNNING]


@pytest.mark.slow
def test_kill_9_one_worker_and_the_others_finish(tiny_csv, tiny_space, tmp_path):
    space = _slow_space(tmp_path, tiny_space)
    proc = subprocess.Popen(_cli(str(tiny_csv), "--space", str(space), "--trials", "4", "--workers", "2",
                                 "--run-dir", str(tmp_path), "--no-track", "--study", "kill"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _wait(lambda: len(_running(storage, "kill")) == 2 and len(_worker_pids(tmp_path)) == 2, what="two trials")
    os.kill(_worker_pids(tmp_path)[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    st = optuna.load_study(study_name="kill", storage=storage)
    states = [t.state for t in st.trials]
    assert states.count(optuna.trial.TrialState.FAIL) >= 1  # the killed trial, via its heartbeat
    assert sum(s in FINISHED for s in states) == 4


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["off", "on"])
def test_nan_loss_ends_the_trial_with_a_reason_and_the_search_goes_on(tiny_csv, tiny_space, tmp_path, monkeypatch,
                                                                     batching):
    """A loss that turns NaN (injected in the first trial, some steps in) prunes that trial with the
    reason recorded; the next trial runs normally — with the folds trained one by one and together."""
    import torch

    from cellsearch import foldbatch, train

    def poison(cls: type, name: str) -> None:
        original = getattr(cls, name)

        def poisoned(self, *args):
            loss = original(self, *args)
            if not getattr(poisoned, "done", False) and self.global_step >= 10:
                poisoned.done = True
                return loss * torch.tensor(float("nan"))
            return loss

        monkeypatch.setattr(cls, name, poisoned)

    if batching == "off":
        poison(train.SequenceTask, "training_loss")
    else:
        poison(foldbatch.FoldsTask, "_fold_losses")
    r = tune(tiny_csv, space=str(tiny_space), trials=2, run_dir=tmp_path, progress=False, track=False,
             fold_batching=batching)
    first, second = r.study.trials[:2]
    assert first.state == optuna.trial.TrialState.PRUNED
    assert "loss became nan" in first.user_attrs["reason"]
    assert second.state == optuna.trial.TrialState.COMPLETE
    assert bool(second.user_attrs.get("together")) == (batching == "on")


@needs_pg
@pytest.mark.skipif(not PG_CTL, reason="needs CELLSEARCH_TEST_PG_CTL to restart the server")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_worker_survives_a_database_outage(tiny_csv, tiny_space, tmp_path, workers):
    study = f"outage-{uuid.uuid4().hex[:8]}"
    space = _slow_space(tmp_path, tiny_space, patience=3)
    # in-process (--workers 1) the retry notices are this process's own; worker processes' are forwarded
    proc = subprocess.Popen(_cli(str(tiny_csv), "--space", str(space), "--trials", "3", "--storage", PG,
                                 "--study", study, "--run-dir", str(tmp_path), "--no-track", "--workers", workers),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(lambda: bool(_running(PG, study)), what="a running trial")
    subprocess.run(f"{PG_CTL} stop -m fast", shell=True, check=True)
    time.sleep(4)
    subprocess.run(f"{PG_CTL} start", shell=True, check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "retrying" in err and ("cellsearch: worker " in err) == (workers == "2"), err
    st = optuna.load_study(study_name=study, storage=PG)
    assert sum(t.state in FINISHED for t in st.trials) == 3


def test_a_failed_heartbeat_is_one_line_and_the_next_beat_goes_on(tmp_path, monkeypatch, capsys):
    """Optuna beats from a thread of its own: a beat that meets a database outage must not end that
    thread (a traceback, then no more beats, then the live trial failed as stale)."""
    import sqlalchemy

    from cellsearch.study import open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/beats.db")
    trial = optuna.create_study(storage=storage, study_name="beats").ask()
    beats = []
    real_beat = optuna.storages.RDBStorage.record_heartbeat

    def flaky(self, trial_id):
        beats.append(trial_id)
        if len(beats) == 1:
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return real_beat(self, trial_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", flaky)
    storage.record_heartbeat(trial._trial_id)  # the outage: no exception out of the beat
    err = capsys.readouterr().err
    assert "storage unavailable (OperationalError)" in err and "retrying" in err and "Traceback" not in err
    storage.record_heartbeat(trial._trial_id)
    assert beats == [trial._trial_id] * 2
    assert storage._get_stale_trial_ids(trial.study._study_id) == []  # it did beat: the trial is alive


def test_a_running_trial_that_never_beat_is_failed_in_the_end(tmp_path):
    """A trial created just as the database went away has no heartbeat row; Optuna would count it
    running forever and the study's last slot would never free. Past NO_BEAT_S it is stale."""
    import datetime

    from cellsearch.study import NO_BEAT_S, open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/nobeat.db")
    study = optuna.create_study(storage=storage, study_name="nobeat")

    def running(age_s: float) -> int:
        start = datetime.datetime.now() - datetime.timedelta(seconds=age_s)
        template = optuna.trial.FrozenTrial(
            number=0, state=optuna.trial.TrialState.RUNNING, value=None, datetime_start=start,
            datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
            intermediate_values={}, trial_id=0)
        return storage.create_new_trial(study._study_id, template_trial=template)

    old, young = running(NO_BEAT_S + 5), running(1)
    beating = running(NO_BEAT_S + 5)
    storage.record_heartbeat(beating)  # a live trial from before the outage: beats, not stale
    assert storage._get_stale_trial_ids(study._study_id) == [old]
    optuna.storages.fail_stale_trials(study)
    states = {t._trial_id: t.state for t in study.get_trials(deepcopy=False)}
    assert states[old] == optuna.trial.TrialState.FAIL
    assert states[young] == states[beating] == optuna.trial.TrialState.RUNNING
