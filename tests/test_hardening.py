"""Bad input and faults, as a careless user or an attacker would bring them: one clear line and exit 2,
nothing written outside the run directory, nothing silently wrong."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from tests.conftest import make_classification_csv

CLI = [sys.executable, "-m", "cellsearch.cli"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cellsearch: error:"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    for n in needles:
        assert n in res.stderr, (n, res.stderr)


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("hspace") / "s.yaml"
    p.write_text("layers: {depth: 1, cell: gru, hidden: 4}\nlr: 0.02\nbatch_size: 16\nmax_epochs: 2\n"
                 "patience: 1\nmin_steps: 10\n")
    return p


# ---- 1, 6, 14: options refused up front, quickly ------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["--study", "/abs/path"], "--study"), (["--study", "../../etc"], "--study"), (["--study", ".hidden"], "--study"),
    (["--max-epochs", "0"], "--max-epochs"), (["--trial-timeout", "0"], "--trial-timeout"),
    (["--timeout", "0"], "--timeout"), (["--timeout", "-5"], "--timeout"), (["--trials", "0"], "--trials"),
    (["--cv", "0"], "--cv")])
def test_nonsense_options_are_refused_before_anything_is_written(tmp_path, tiny_csv, args, needle):
    t0 = time.time()
    res = run_cli("tune", str(tiny_csv), "--run-dir", str(tmp_path / "runs"), *args)
    one_line_error(res, needle)
    assert not (tmp_path / "runs").exists()
    assert time.time() - t0 < 5


def test_a_missing_file_is_reported_within_a_second(tmp_path):
    times = []
    for _ in range(3):
        t0 = time.time()
        res = run_cli("tune", str(tmp_path / "nope.csv"))
        times.append(time.time() - t0)
        one_line_error(res, "no such file")
    assert sorted(times)[1] <= 1.5  # the median; heavy imports come after the file checks
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    one_line_error(run_cli("tune", str(loop)), "symbolic link loop")


@pytest.mark.parametrize("yaml,needle", [
    ("layers: {hidden: 0}", "layers.hidden"), ("layers: {depth: 0}", "layers.depth"),
    ("batch_size: 0", "batch_size"), ("layers: {hidden: {type: int, low: -5, high: 4}}", "layers.hidden"),
    ("lr: 0", "lr"), ("dropout: 1.5", "dropout")])
def test_nonsense_spaces_are_refused(tmp_path, tiny_csv, yaml, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml + "\n")
    res = run_cli("tune", str(tiny_csv), "--space", str(bad), "--run-dir", str(tmp_path / "runs"))
    one_line_error(res, needle)


@pytest.mark.parametrize("epochs,min_steps", [(1, 400), (2, 401), (3, 100), (7, 100), (1, 0), (5, 13)])
def test_max_epochs_e_gives_e_validation_checks(epochs, min_steps):
    from cellsearch.train import Schedule

    plan = Schedule.plan(n_train=63, batch_size=32, max_epochs=epochs, min_steps=min_steps)
    assert plan.steps >= min_steps and plan.steps == plan.val_every * epochs


def test_max_epochs_one_trains_and_records_one_check(tiny_csv, space, tmp_path):
    from cellsearch.search import tune

    r = tune(tiny_csv, space=str(space), trials=1, run_dir=tmp_path, progress=False, track=False, max_epochs=1,
             cv=1, references=False)
    t = r.study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE and len(t.user_attrs["curve"]) == 1


# ---- 2: one study, one kind of data ---------------------------------------------------------------------


@pytest.mark.slow
def test_another_file_with_the_same_name_does_not_share_a_study(tmp_path, space):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    make_classification_csv(a / "data.csv", n_seq=30)
    df = pd.read_csv(make_classification_csv(b / "data.csv", n_seq=30)).rename(columns={"z": "pressure"})
    df.to_csv(b / "data.csv", index=False)
    runs = tmp_path / "runs"
    common = ["--space", str(space), "--trials", "1", "--run-dir", str(runs), "--no-track", "--cv", "1",
              "--no-references"]
    assert run_cli("tune", str(a / "data.csv"), *common).returncode == 0
    one_line_error(run_cli("tune", str(b / "data.csv"), *common), "--study", "features")
    assert run_cli("tune", str(b / "data.csv"), *common, "--study", "data_b").returncode == 0


# ---- 3: a run directory can be moved and copied -----------------------------------------------------------


@pytest.mark.slow
def test_a_moved_or_copied_run_directory_keeps_working(tmp_path, tiny_csv, space):
    from mlflow import MlflowClient

    import cellsearch
    from cellsearch.export import export
    from cellsearch.tracking import default_tracking_uri

    work = tmp_path / "work"
    work.mkdir()
    res = run_cli("tune", str(tiny_csv), "--space", str(space), "--trials", "2", "--run-dir", "runs", "--cv", "2",
                  "--workers", "1", cwd=work)
    assert res.returncode == 0, res.stderr
    moved = tmp_path / "elsewhere" / "runs"
    moved.parent.mkdir()
    shutil.move(str(work / "runs"), moved)
    copy = tmp_path / "copy" / "runs"
    shutil.copytree(moved, copy)
    # Alter the copy's checkpoints: its export must use them, never the original's.
    for ckpt in (copy / "studies" / "tiny" / "trials").glob("*.pt"):
        blob = __import__("torch").load(ckpt, weights_only=True)
        blob["state_dict"] = {k: v * 0 if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
        __import__("torch").save(blob, ckpt)
    os.chdir(tmp_path)
    try:
        good = export(out=tmp_path / "m1", run_dir=moved)
        zero = export(out=tmp_path / "m2", run_dir=copy)
    finally:
        os.chdir(Path(__file__).parent.parent)
    df = pd.read_csv(tiny_csv)
    p1 = cellsearch.load(good).predict(df)
    p2 = cellsearch.load(zero).predict(df)
    assert not np.allclose(p1["prob_c0"], p2["prob_c0"])  # the copy's own (zeroed) weights
    assert np.allclose(p2["prob_c0"], 1 / 3, atol=1e-5)
    for root in (moved, copy):  # the dashboard's artifacts follow the folder
        client = MlflowClient(default_tracking_uri(root))
        exp = client.get_experiment_by_name("tiny")
        parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "search"][0]
        assert str(root.resolve()) in parent.info.artifact_uri
        names = {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
        assert "plots/pareto_front.png" in names


# ---- 4: workers --------------------------------------------------------------------------------------------


def test_workers_are_clamped_to_cores_and_trials_left(capsys):
    from cellsearch.workers import worker_count

    assert worker_count(6, 2, 100) == 2 and "reduced to 2 (2 CPU cores)" in capsys.readouterr().err
    assert worker_count(4, 16, 3) == 3 and "3 trial(s) left" in capsys.readouterr().err
    assert worker_count(2, 16, 10) == 2 and capsys.readouterr().err == ""
    # auto (the CLI's default): one per core, at most AUTO_MAX, never more than the trials left,
    # one on a GPU; no warning, since nothing was asked for
    from cellsearch.workers import AUTO_MAX, cpu_cores

    assert worker_count("auto", 2, 100) == 2 and worker_count("auto", 64, 100) == AUTO_MAX
    assert worker_count("auto", 8, 3) == 3 and worker_count("auto", 1, 100) == 1
    assert worker_count("auto", 8, 100, "cuda") == 1 and worker_count("auto", 8, 0) == 1
    assert capsys.readouterr().err == ""
    assert 1 <= cpu_cores() <= (os.cpu_count() or 1)


def test_worker_notices_reach_the_terminal_and_the_rest_stays_in_the_log(tmp_path, capsys):
    from cellsearch.workers import NoticeForwarder

    log = tmp_path / "worker-0.log"
    log.write_text("Epoch 3: 100%|####| loss 0.41\ncellsearch: storage unavailable (OperationalError); "
                   "retrying in 0.5 s\ncellsearch: warning: half a li")
    fwd = NoticeForwarder(log, "worker 1")
    assert fwd.forward() == 1
    assert capsys.readouterr().err == ("cellsearch: worker 1: storage unavailable (OperationalError); "
                                       "retrying in 0.5 s\n")
    with log.open("a") as f:  # the line being written is printed once it is whole, and only once
        f.write("ne\nGPU available: False\n")
    assert fwd.forward() == 1 and fwd.forward() == 0
    assert capsys.readouterr().err == "cellsearch: worker 1: warning: half a line\n"
    assert NoticeForwarder(tmp_path / "missing.log", "worker 2").forward() == 0


def test_workers_option_is_a_number_or_auto(tmp_path):
    from cellsearch.config import TuneConfig
    from cellsearch.errors import UserError

    for bad in ("0", "two", -1, "1.5"):
        with pytest.raises(UserError, match="--workers must be a number of processes"):
            TuneConfig.create(tmp_path / "x.csv", workers=bad).validate()
    for good in ("auto", "3", 2):
        TuneConfig.create(tmp_path / "x.csv", workers=good).validate()


# ---- 5: --timeout holds whatever the data ----------------------------------------------------------------------


@pytest.mark.slow
def test_timeout_holds_on_one_long_series(tmp_path):
    t = np.arange(10_000)
    pd.DataFrame({"t": t, "value": np.sin(t / 50) + 0.01 * t}).to_csv(tmp_path / "long.csv", index=False)
    t0 = time.time()
    res = run_cli("tune", str(tmp_path / "long.csv"), "--timeout", "25", "--trials", "1000", "--run-dir",
                  str(tmp_path / "runs"), "--no-track", timeout=200)
    elapsed = time.time() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    assert elapsed <= 25 + 10, f"took {elapsed:.0f} s for --timeout 25"


# ---- 7, 8, 9: data that looks fine but is not -----------------------------------------------------------------


def test_a_stray_cell_or_decimal_commas_are_refused(tmp_path):
    df = pd.read_csv(make_classification_csv(tmp_path / "c.csv", n_seq=20))
    df["x"] = df["x"].astype(str)
    df.loc[37, "x"] = "0x1F"
    df.to_csv(tmp_path / "stray.csv", index=False)
    one_line_error(run_cli("inspect", str(tmp_path / "stray.csv")), "'x'", "0x1F", "line 39")
    df = pd.read_csv(tmp_path / "c.csv")
    df["x"] = df["x"].map(lambda v: f"{v:.3f}".replace(".", ","))
    df.to_csv(tmp_path / "comma.csv", index=False, sep=";")
    one_line_error(run_cli("inspect", str(tmp_path / "comma.csv")), "decimal commas")


@pytest.mark.slow
def test_too_few_sequences_to_validate_is_an_error_not_a_training_score(tmp_path, space):
    csv = make_classification_csv(tmp_path / "two.csv", n_seq=2)
    res = run_cli("tune", str(csv), "--space", str(space), "--run-dir", str(tmp_path / "runs"), "--no-track",
                  "--test-fraction", "0")
    one_line_error(res, "too few to validate")
    csv = make_classification_csv(tmp_path / "few.csv", n_seq=6)
    res = run_cli("tune", str(csv), "--space", str(space), "--run-dir", str(tmp_path / "runs2"), "--no-track",
                  "--test-fraction", "0.01")
    one_line_error(res, "--test-fraction 0")


def test_a_header_of_megabytes_is_read(tmp_path):
    n = 12_000  # names of 100 characters: a header line of 1.2 MB, beyond the reader's first block
    names = [f"{'x' * 90}{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    with open(tmp_path / "wide.csv", "w") as fh:
        fh.write(",".join(names) + ",label\n")
        for r in range(8):
            fh.write(",".join(f"{v:.2f}" for v in rng.normal(size=n)) + f",c{r % 2}\n")
    res = run_cli("inspect", str(tmp_path / "wide.csv"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["length"]["max"] == n


# ---- 10: one line, never an internal error ------------------------------------------------------------------------


@pytest.mark.slow
def test_export_refuses_bad_destinations(tuned, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(run_cli("export", "--run-dir", str(tuned.run_dir), "--out", str(f)), "not a folder")
    one_line_error(run_cli("export", "--run-dir", str(tuned.run_dir), "--out", ".", "--force", cwd=tmp_path),
                   "refusing to replace")
    assert f.exists()


def test_run_dir_that_cannot_be_written(tiny_csv, space):
    one_line_error(run_cli("tune", str(tiny_csv), "--space", str(space), "--run-dir", "/proc/x"), "--run-dir")


def test_hostile_bundles_are_refused_in_one_line(tuned, tiny_csv, tmp_path):
    from cellsearch.export import export

    good = export(out=tmp_path / "good", run_dir=tuned.run_dir)
    huge = tmp_path / "huge"
    shutil.copytree(good, huge)
    spec = json.loads((huge / "spec.json").read_text())
    specs = [m["spec"] for m in spec["members"] if "spec" in m] if "members" in spec else [spec]
    for s in specs:
        s["layers"][0]["hidden"] = 10**9
    (huge / "spec.json").write_text(json.dumps(spec))
    res = run_cli("predict", str(huge), str(tiny_csv))
    one_line_error(res, "hidden size")
    evil = tmp_path / "evil"
    shutil.copytree(good, evil)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    import pickle

    (evil / "weights.pt").write_bytes(pickle.dumps(Payload()))
    res = run_cli("predict", str(evil), str(tiny_csv))
    one_line_error(res, "refused")
    assert "weights_only=False" not in res.stderr and not (tmp_path / "pwned").exists()


# ---- 11, 12: killed and concurrent processes ---------------------------------------------------------------


@pytest.mark.slow
def test_runs_of_a_killed_search_end_failed_on_resume(tiny_csv, tmp_path):
    from mlflow import MlflowClient

    from cellsearch.tracking import default_tracking_uri

    slow = tmp_path / "slow.yaml"
    # min_steps keeps the first search training until it is killed; 5,000 checks put one every 20 steps
    # (with max_epochs 50: every 2,000, which a loaded machine did not reach within the resume's --timeout)
    slow.write_text("layers: {depth: 1, cell: gru, hidden: 64}\nlr: 0.001\nbatch_size: 4\nmax_epochs: 5000\n"
                    "patience: 50\nmin_steps: 100000\n")
    runs = tmp_path / "runs"
    args = [*CLI, "tune", str(tiny_csv), "--space", str(slow), "--trials", "1", "--run-dir", str(runs), "--cv", "1",
            "--no-references"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = MlflowClient(default_tracking_uri(runs))
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the trial's run exists, then kill -9 the whole process
        time.sleep(1)
        try:
            exp = client.get_experiment_by_name("tiny")
            if exp and client.search_runs([exp.experiment_id], "tags.trial_number = '0'"):
                break
        except Exception:
            continue
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(10)  # past the heartbeat's grace period
    res = run_cli("tune", str(tiny_csv), "--space", str(slow), "--trials", "1", "--run-dir", str(runs), "--cv", "1",
                  "--no-references", "--timeout", "20")
    assert res.returncode == 0, res.stderr[-2000:]
    exp = client.get_experiment_by_name("tiny")
    old = client.search_runs([exp.experiment_id])
    killed = [r for r in old if r.data.tags.get("reason", "").startswith("killed")]
    assert {r.data.tags.get("role", "trial") for r in killed} >= {"search", "trial"}, \
        [(r.info.run_name, r.info.status) for r in old]
    assert all(r.info.status == "FAILED" for r in killed)
    assert not [r for r in old if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_two_searches_start_together_on_a_fresh_run_directory(tmp_path, tiny_csv, space):
    runs = tmp_path / "runs"
    args = [*CLI, "tune", str(tiny_csv), "--space", str(space), "--trials", "2", "--run-dir", str(runs), "--cv", "1",
            "--no-references", "--workers", "1"]  # two processes racing, not their workers
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    st = optuna.load_study(study_name="tiny", storage=f"sqlite:///{runs / 'optuna.db'}")
    assert len([t for t in st.trials if t.state.is_finished()]) >= 2


# ---- 13: small things users see ---------------------------------------------------------------------------------


def test_suggested_commands_quote_paths_with_spaces(tmp_path, tiny_csv, space):
    runs = tmp_path / "my runs"
    res = subprocess.run([*CLI, "tune", str(tiny_csv), "--space", str(space), "--trials", "1", "--run-dir", str(runs),
                          "--cv", "1", "--no-track", "--no-references"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "400"})
    assert res.returncode == 0, res.stderr
    assert f"cellsearch export --run-dir '{runs}' --study tiny" in res.stdout


# ---- 15: random damage -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_damaged_csvs_never_crash(tmp_path_factory, space):
    hypothesis = pytest.importorskip("hypothesis")  # in the test extras: CI always runs it
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    base = make_classification_csv(tmp_path_factory.mktemp("dmg") / "base.csv", n_seq=12).read_text()
    lines = base.splitlines()

    damage = st.one_of(
        st.tuples(st.just("truncate"), st.integers(0, len(base))),
        st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=40)),
        st.tuples(st.just("quote"), st.integers(1, len(lines) - 1)),
        st.tuples(st.just("huge"), st.integers(1, len(lines) - 1)),
        st.tuples(st.just("empty"), st.integers(1, len(lines) - 1)))

    @settings(max_examples=8, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(damage)
    def check(d):
        kind, arg = d
        work = Path(tmp_path_factory.mktemp("case"))
        text = base
        if kind == "truncate":
            text = base[:arg]
        elif kind == "bytes":
            text = base[: len(base) // 2] + arg.decode("latin-1") + base[len(base) // 2:]
        else:
            rows = list(lines)
            cells = rows[arg].split(",")
            cells[2] = {"quote": '"' + cells[2], "huge": "1e308" * 3, "empty": ""}[kind]
            rows[arg] = ",".join(cells)
            text = "\n".join(rows) + "\n"
        csv = work / "d.csv"
        csv.write_text(text, encoding="latin-1")
        before = set(work.iterdir())
        for cmd in (["inspect", str(csv)],
                    ["tune", str(csv), "--space", str(space), "--trials", "1", "--max-epochs", "1", "--run-dir",
                     str(work / "runs"), "--no-track", "--cv", "1", "--no-references"]):
            res = run_cli(*cmd, cwd=work, timeout=120)
            assert res.returncode in (0, 2), (kind, res.stderr[-1500:])
            assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr[-1500:]
        assert set(work.iterdir()) - before <= {work / "runs"}  # nothing written outside the run directory

    assert hypothesis.__version__
    check()


def test_messages_show_plain_values(tmp_path):
    rows = [{"id": i, "t": t, "x": float(t), "label": 1} for i in range(6) for t in range(3)]
    pd.DataFrame(rows).to_csv(tmp_path / "one.csv", index=False)
    res = run_cli("inspect", str(tmp_path / "one.csv"), "--task", "classification")
    one_line_error(res, "only one class (1)")
    rows[4]["label"] = 2
    pd.DataFrame(rows).to_csv(tmp_path / "two.csv", index=False)
    res = run_cli("inspect", str(tmp_path / "two.csv"), "--task", "classification")
    one_line_error(res, "(1 and 2, line 6)")
    assert "np." not in res.stderr


def test_the_run_directory_probe_is_one_line_and_does_not_race(tmp_path):
    """Searches starting together on one run directory each prove it writable: a shared probe name
    made one of them fail ("cannot write there (No such file or directory)") when the other removed
    the probe first. A run directory that cannot be made is one clear line."""
    import threading

    from cellsearch.errors import UserError
    from cellsearch.rundir import check_writable

    runs, errors = tmp_path / "runs", []

    def probe() -> None:
        for _ in range(300):
            try:
                check_writable(runs)
            except UserError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(p.name for p in runs.iterdir()) == []
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match=r"^--run-dir .*a-file/runs: cannot write there \(Not a directory\)$"):
        check_writable(tmp_path / "a-file" / "runs")
