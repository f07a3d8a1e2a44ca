"""The search: Optuna over per-layer cells, depth and width; every trial trained with Lightning.

``tune`` is the library entry point behind ``cellsearch tune``. Objectives: the validation score and
a compute cost (a Pareto front, the default), or the score alone (``objective="score"``, with an
Optuna pruner). In multi-objective studies, where Optuna's pruners do not apply, a median-stopping
rule of our own ends hopeless trials: after ``warmup`` epochs, a trial whose best score so far is worse
than the median of the finished trials' best-so-far at the same epoch is pruned.

The chosen model is the *knee* of the Pareto front: with score and log-cost each scaled to [0, 1]
over the front, the front point farthest from the straight line between the front's two ends
(the point where giving up compute starts to cost real accuracy). ``pick="best"`` takes the best
score and ``pick="smallest"`` the cheapest front member.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellsearch.errors import UserError

COSTS = ("macs", "params", "latency")
OBJECTIVES = ("pareto", "score")
PICKS = ("knee", "best", "smallest")
#: A running trial beats every HEARTBEAT_S seconds; one silent for GRACE_S is failed (its process died).
HEARTBEAT_S = 2
GRACE_S = 8


@dataclass
class TuneResult:
    """What ``tune`` returns: the Optuna study and a summary of the front and the chosen trial."""

    study: Any
    metric: str
    direction: str
    cost: str
    front: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    run_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study.study_name, "metric": self.metric, "direction": self.direction,
                "cost": self.cost, "front": self.front, "chosen": self.chosen, "counts": self.counts,
                "run_dir": str(self.run_dir), "interrupted": self.interrupted}


# --------------------------------------------------------------------------------------------------
# Storage, study, paths
# --------------------------------------------------------------------------------------------------

def study_dir(run_dir: Path, study_name: str) -> Path:
    return run_dir / "studies" / study_name


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"


def _pg_driver(url: str) -> str:
    """``postgresql://`` with whichever driver is installed (SQLAlchemy 2.1 defaults to psycopg 3)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def open_storage(url: str) -> Any:
    """Optuna's RDB storage with heartbeats, so a trial of a killed process ends failed."""
    import optuna

    url = _pg_driver(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                              failed_trial_callback=None, **kwargs)
        except Exception as exc:  # unreachable server, bad URL, missing driver
            text = str(exc)
            # Several processes creating the schema of a fresh database at once: the losers retry.
            if attempt < 5 and ("already exists" in text or "duplicate key" in text or "UniqueViolation" in text):
                time.sleep(0.5 + attempt)
                continue
            raise UserError(f"cannot open the study storage {url.split('@')[-1]}: "
                            f"{text.strip().splitlines()[0]}") from None
    raise AssertionError("unreachable")


def make_sampler(kind: str, seed: int) -> Any:
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True,
                                      group=True, constant_liar=True)


# --------------------------------------------------------------------------------------------------
# Pareto front and the knee
# --------------------------------------------------------------------------------------------------

def pareto_front(points: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    """Non-dominated points on (score, cost); ``cost`` is always minimised."""
    sign = 1.0 if direction == "maximize" else -1.0

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        sa, sb = sign * a["score"], sign * b["score"]
        return sa >= sb and a["cost"] <= b["cost"] and (sa > sb or a["cost"] < b["cost"])

    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return sorted(front, key=lambda p: p["cost"])


def pick_trial(front: list[dict[str, Any]], direction: str, rule: str = "knee") -> dict[str, Any] | None:
    """Choose from the front by ``rule``: knee (default), best or smallest. See the module doc."""
    if not front:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    best = max(front, key=lambda p: (sign * p["score"], -p["cost"]))
    if rule == "best" or len(front) <= 2 and rule == "knee":
        return best
    if rule == "smallest":
        return min(front, key=lambda p: (p["cost"], -sign * p["score"]))
    s = [sign * p["score"] for p in front]
    c = [math.log10(max(p["cost"], 1e-12)) for p in front]
    s_lo, s_hi, c_lo, c_hi = min(s), max(s), min(c), max(c)
    if s_hi - s_lo < 1e-12 or c_hi - c_lo < 1e-12:
        return best
    xs = [(ci - c_lo) / (c_hi - c_lo) for ci in c]  # 0 = cheapest
    ys = [(si - s_lo) / (s_hi - s_lo) for si in s]  # 1 = best score
    # Distance above the chord from the cheapest front point to the best-scoring one.
    x0, y0, x1, y1 = xs[0], ys[0], xs[-1], ys[-1]
    norm = math.hypot(x1 - x0, y1 - y0) or 1.0
    dist = [((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) / norm for x, y in zip(xs, ys)]
    k = max(range(len(front)), key=lambda i: dist[i])
    return front[k] if dist[k] > 1e-9 else best


# --------------------------------------------------------------------------------------------------
# Median stopping for multi-objective studies
# --------------------------------------------------------------------------------------------------

class MedianStopper:
    """Prune a trial whose best-so-far score at epoch k is worse than the median of the finished
    trials' best-so-far at k (after ``warmup`` epochs, once ``min_trials`` curves reach k)."""

    def __init__(self, curves: list[list[float]], direction: str, warmup: int = 2, min_trials: int = 4) -> None:
        self.direction = direction
        self.warmup = warmup
        self.min_trials = min_trials
        better = max if direction == "maximize" else min
        self.best_so_far = []
        for curve in curves:
            acc, run = [], None
            for v in curve:
                run = v if run is None else better(run, v)
                acc.append(run)
            self.best_so_far.append(acc)
        self.mine: float | None = None

    def should_stop(self, epoch: int, score: float) -> bool:
        better = max if self.direction == "maximize" else min
        self.mine = score if self.mine is None else better(self.mine, score)
        if epoch < self.warmup:
            return False
        at_k = [c[epoch] for c in self.best_so_far if len(c) > epoch]
        if len(at_k) < self.min_trials:
            return False
        at_k.sort()
        median = at_k[len(at_k) // 2] if len(at_k) % 2 else 0.5 * (at_k[len(at_k) // 2 - 1] + at_k[len(at_k) // 2])
        return self.mine < median if self.direction == "maximize" else self.mine > median


# --------------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------------

def _finished_curves(study: Any) -> list[list[float]]:
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        curve = t.user_attrs.get("curve")
        if curve:
            out.append(curve)
    return out


def _cost_of(kind: str, macs: int, params: int, latency: float) -> float:
    return float({"macs": macs, "params": params, "latency": latency}[kind])


class SurplusTrialError(RuntimeError):
    """Another process took the study's last slot at the same moment; this trial does not run."""


def _claims_slot(trial: Any, target_count: int) -> bool:
    """True when fewer than ``target_count`` earlier trials are finished or running: trial numbers
    are handed out atomically by the storage, so concurrent processes never overshoot the count."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    earlier = [t for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
    return len(earlier) < target_count


@dataclass(kw_only=True, eq=False)
class Objective:
    """Define-by-run objective: reads the space, builds a model, trains it, records everything."""

    dataset: Any
    space: Any
    objective: str
    cost: str
    seed: int
    sdir: Path
    max_epochs: int | None
    trial_timeout: float | None
    deadline: float | None
    tracker: Any
    verbose: bool
    accelerator: str
    prune_multi: bool = True
    target_count: int | None = field(default=None, init=False)  # set by run_trials: its slot claiming

    def __call__(self, trial: Any) -> Any:
        import optuna
        import torch

        from cellsearch.model import ModelSpec, build, measure_latency, save_checkpoint
        from cellsearch.stack import LayerSpec
        from cellsearch.train import NonFiniteLossError, fit, metric_of

        ds = self.dataset
        if self.target_count is not None and not _claims_slot(trial, self.target_count):
            trial.set_user_attr("reason", "surplus: the study was already full")
            raise SurplusTrialError("the study already holds the requested number of trials")
        metric, direction = metric_of(ds.task)
        cfg = self.space.suggest(trial)
        spec = ModelSpec(input_size=ds.n_features, layers=tuple(LayerSpec(*layer) for layer in cfg["layers"]),
                         n_outputs=ds.n_outputs, task=ds.task, dropout=float(cfg["dropout"]))
        seed = self.seed + trial.number
        torch.manual_seed(seed)
        model = build(spec)
        median_len = int(ds.info["length"]["median"])
        macs = model.macs_per_sequence(median_len)
        n_params = model.n_params()
        latency = measure_latency(model, spec.input_size, median_len) if self.cost == "latency" else float("nan")
        trial.set_user_attr("arch", spec.arch)
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("macs", macs)
        trial.set_user_attr("params", n_params)
        run = self.tracker.start_trial(trial.number, spec, cfg)
        stopper = MedianStopper(_finished_curves(trial.study), direction) if (
            self.objective == "pareto" and self.prune_multi) else None
        curve: list[float] = []

        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            curve.append(m["val_score"])
            run.log_epoch(epoch, m)
            if self.objective == "score":
                trial.report(m["val_score"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned by Optuna's pruner at epoch {epoch}")
            elif stopper is not None and stopper.should_stop(epoch, m["val_score"]):
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: best {metric} so far is worse than the "
                                         "median of finished trials at this epoch")

        budget = self.trial_timeout
        if self.deadline is not None:
            left = self.deadline - time.time()
            budget = left if budget is None else min(budget, left)
            if budget <= 1:
                raise optuna.TrialPruned("no time left in --timeout")
        try:
            res = fit(model, ds, lr=float(cfg["lr"]), batch_size=cfg["batch_size"],
                      max_epochs=self.max_epochs or cfg["max_epochs"], patience=cfg["patience"],
                      weight_decay=float(cfg["weight_decay"]), seed=seed, max_seconds=budget,
                      on_epoch=on_epoch, verbose=self.verbose, accelerator=self.accelerator)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("reason", str(exc))
            run.finish("PRUNED", reason=str(exc), curve=curve)
            raise
        except NonFiniteLossError as exc:
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("reason", str(exc))
            run.finish("PRUNED", reason=str(exc), curve=curve)
            raise optuna.TrialPruned(str(exc)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted (Ctrl-C)")
            run.finish("FAILED", reason="interrupted (Ctrl-C)", curve=curve)
            raise
        except Exception as exc:
            trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}")
            run.finish("FAILED", reason=f"{type(exc).__name__}: {exc}", curve=curve)
            raise
        if self.cost == "latency":
            latency = measure_latency(res.model, spec.input_size, median_len)
        ckpt = self.sdir / "trials" / f"{trial.number}.pt"
        save_checkpoint(ckpt, res.model, trial=trial.number, val_score=res.best_score, epoch=res.best_epoch)
        ckpt_uri = run.log_file(ckpt, "checkpoint")
        attrs = {"curve": curve, "val_score": res.best_score, "checkpoint_uri": ckpt_uri,
                 "best_epoch": res.best_epoch, "epochs": res.epochs,
                 "train_seconds": res.train_seconds, "stopped_by": res.stopped_by, "latency_ms": latency,
                 "checkpoint": str(ckpt)}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        run.finish("FINISHED", score=res.best_score, macs=macs, params=n_params, latency=latency,
                   train_seconds=res.train_seconds, epochs=res.epochs, curve=curve)
        if self.objective == "score":
            return res.best_score
        return res.best_score, _cost_of(self.cost, macs, n_params, latency)


# --------------------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------------------

def _points(study: Any, cost: str) -> list[dict[str, Any]]:
    import optuna

    pts = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if "val_score" not in a:
            continue
        pts.append({"trial": t.number, "arch": a.get("arch", ""), "score": float(a["val_score"]),
                    "cost": _cost_of(cost, a.get("macs", 0), a.get("params", 0), a.get("latency_ms", float("nan"))),
                    "macs": a.get("macs"), "params": a.get("params"), "latency_ms": a.get("latency_ms"),
                    "epochs": a.get("epochs"), "train_seconds": a.get("train_seconds"),
                    "checkpoint": a.get("checkpoint"), "params_": dict(t.params)})
    return pts


def _counts(study: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def _finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _score_test(dataset: Any, entries: list[dict[str, Any]]) -> None:
    """Test scores for the finalists only (selection never sees the test split)."""
    from cellsearch.model import load_checkpoint
    from cellsearch.train import evaluate

    test = dataset.splits["test"]
    std = float(dataset.preprocessing.get("target_std", 1.0))
    for e in entries:
        if len(test) and e.get("checkpoint") and Path(e["checkpoint"]).exists():
            model, _ = load_checkpoint(e["checkpoint"])
            e["test_score"] = evaluate(model, test, dataset.task, std)
        else:
            e["test_score"] = None


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


@dataclass
class _Context:
    """Everything a search process needs, built the same way by ``tune`` and by its workers."""

    dataset: Any
    space: Any
    study: Any
    storage_url: str
    sdir: Path
    meta: dict[str, Any]
    metric: str
    direction: str
    accelerator: str


def _prepare(data: str | Path, opts: dict[str, Any], *, create: bool) -> _Context:
    import optuna

    from cellsearch.data import read_dataset
    from cellsearch.space import load_space
    from cellsearch.train import metric_of, quiet_lightning

    objective, cost, pick, trials = opts["objective"], opts["cost"], opts["pick"], opts["trials"]
    if objective not in OBJECTIVES:
        raise UserError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if cost not in COSTS:
        raise UserError(f"--cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if pick not in PICKS:
        raise UserError(f"--pick must be one of {', '.join(PICKS)}, got {pick!r}")
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if opts["workers"] < 1:
        raise UserError(f"--workers must be at least 1, got {opts['workers']}")
    if opts["device"] not in ("cpu", "cuda", "auto"):
        raise UserError(f"--device must be cpu, cuda or auto, got {opts['device']!r}")
    spc = load_space(opts["space"])
    dataset = read_dataset(data, **{k: opts.get(k) for k in DATA_KEYS}, seed=opts["seed"])
    import torch

    device = opts["device"]
    accelerator = "gpu" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.ERROR if not opts["verbose"] else optuna.logging.INFO)
    metric, direction = metric_of(dataset.task)
    run_dir = Path(opts["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    study_name = opts["study"] or Path(data).stem
    url = opts["storage"] or default_storage(run_dir)
    storage_obj = open_storage(url)
    directions = [direction] if objective == "score" else [direction, "minimize"]
    n_before = 0
    try:
        existing = optuna.load_study(study_name=study_name, storage=storage_obj)
        n_before = len(existing.trials)
        if [d.name.lower() for d in existing.directions] != directions:
            raise UserError(f"study {study_name!r} exists with other objectives; use another --study name")
    except KeyError:
        pass
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
              if objective == "score" and opts["prune"] else optuna.pruners.NopPruner())
    # Seeded, and different for every process and resume, so workers never repeat each other.
    sampler = make_sampler(spc.sampler, opts["seed"] + n_before + 7919 * opts.get("worker_index", 0))
    st = optuna.create_study(study_name=study_name, storage=storage_obj, directions=directions, sampler=sampler,
                             pruner=pruner, load_if_exists=True)
    meta = {"data": str(Path(data).resolve()), "task": dataset.task, "metric": metric, "direction": direction,
            "objective": objective, "cost": cost, "space": spc.name}
    sdir = study_dir(run_dir, study_name)
    if create:
        # Trials left running by a killed process end failed now (their heartbeat stopped).
        optuna.storages.fail_stale_trials(st)
        for k, v in meta.items():
            st.set_user_attr(k, v)
        # The preprocessing travels with the study, so a machine other than this one can export.
        st.set_user_attr("preprocessing", dataset.preprocessing)
        st.set_user_attr("dataset_info", {k: v for k, v in dataset.info.items() if k != "warnings"})
        _write_json(sdir / "preprocessing.json", dataset.preprocessing)
        _write_json(sdir / "dataset.json", dataset.info)
    return _Context(dataset, spc, st, url, sdir, meta, metric, direction, accelerator)


DATA_KEYS = ("layout", "target", "id_col", "time_col", "task", "window", "horizon", "fill")
#: Storage errors a worker waits out (a database restarting, a dropped connection) before giving up.
RETRY_S = 60.0


def _storage_errors() -> tuple[type[BaseException], ...]:
    import optuna
    import sqlalchemy.exc

    return (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, optuna.exceptions.StorageInternalError)


def _storage_ok(st: Any) -> bool:
    try:
        _finished(st)
        return True
    except Exception:
        return False


def run_trials(ctx: _Context, obj: Objective, target_count: int, deadline: float | None,
               on_trial: Any = None) -> None:
    """Run trials until the study holds ``target_count`` finished ones (or the deadline passes).

    A lost database connection is retried with back-off for up to ``RETRY_S`` seconds rather than
    ending the process; a trial cut off by it is failed later through its stale heartbeat.
    """
    import optuna

    running_state = optuna.trial.TrialState.RUNNING
    obj.target_count = target_count
    st = ctx.study
    fails_at_start = _counts(st).get("fail", 0)
    outage_since: float | None = None
    pause = 0.5

    def after_trial(study_: Any, trial_: Any) -> None:
        if on_trial is not None:
            on_trial(study_)

    while True:
        try:
            if _finished(st) >= target_count or (deadline is not None and time.time() >= deadline):
                return
            if _counts(st).get("fail", 0) - fails_at_start >= max(3, target_count):
                return  # something is systematically wrong; do not loop forever
            running = len(st.get_trials(deepcopy=False, states=(running_state,)))
            if _finished(st) + running >= target_count:
                # Other processes hold the remaining slots: wait for them, taking over a slot whose
                # process died (its trial fails once its heartbeat is stale).
                time.sleep(1.0)
                optuna.storages.fail_stale_trials(st)
                continue
            outage_since, pause = None, 0.5
            st.optimize(obj, n_trials=1, timeout=None if deadline is None else max(1.0, deadline - time.time()),
                        callbacks=[after_trial], catch=(RuntimeError, ValueError, SurplusTrialError),
                        gc_after_trial=False, show_progress_bar=False)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            # Storage errors surface as themselves or, from inside Optuna's bookkeeping, as other
            # errors: whatever the type, an unreachable storage means an outage to wait out.
            if not isinstance(exc, _storage_errors()) and _storage_ok(st):
                raise
            outage_since = outage_since or time.time()
            if time.time() - outage_since > RETRY_S:
                raise UserError(f"lost the study storage for over {RETRY_S:.0f} s: "
                                f"{str(exc).strip().splitlines()[0][:200]}") from None
            print(f"cellsearch: storage unavailable ({type(exc).__name__}); retrying in {pause:.1f} s",
                  file=sys.stderr, flush=True)
            time.sleep(pause)
            pause = min(pause * 2, 8.0)
            try:
                st = optuna.load_study(study_name=st.study_name, storage=open_storage(ctx.storage_url),
                                       sampler=st.sampler, pruner=st.pruner)
                ctx.study = st
            except Exception:
                pass


def tune(data: str | Path, *, target: str | None = None, layout: str | None = None, id_col: str | None = None,
         time_col: str | None = None, task: str | None = None, window: int | None = None,
         horizon: int | None = None, fill: str | None = None, space: str | Path = "default", trials: int = 20,
         timeout: float | None = None, seed: int = 0, objective: str = "pareto", cost: str = "macs",
         pick: str = "knee", study: str | None = None, run_dir: str | Path = "cellsearch-runs",
         storage: str | None = None, tracking_uri: str | None = None, track: bool = True,
         max_epochs: int | None = None, trial_timeout: float | None = None, prune: bool = True,
         workers: int = 1, verbose: bool = False, progress: bool = True, device: str = "cpu") -> TuneResult:
    """Search architectures for a sequence CSV; returns the study with its Pareto front and choice.

    ``trials`` is the number of finished (complete or pruned) trials the study should hold: running
    ``tune`` again on the same study continues it up to that count. ``workers`` > 1 runs that many
    worker processes on this machine over the same study, each with its share of the CPU threads.

    Example:
        >>> result = tune("examples/digits.csv", space="quick", trials=6)   # doctest: +SKIP
        >>> result.chosen["arch"], result.chosen["test_score"]              # doctest: +SKIP
        ('peephole48', 0.96)
    """
    t_start = time.time()
    opts = {k: v for k, v in locals().items() if k not in ("data", "t_start")}
    ctx = _prepare(data, opts, create=True)
    st, dataset, direction = ctx.study, ctx.dataset, ctx.direction
    run_dir = Path(run_dir)

    from cellsearch.tracking import make_tracker

    tracker = make_tracker(track, tracking_uri=tracking_uri, run_dir=run_dir, study_name=st.study_name,
                           data=str(data), meta=ctx.meta, argv=sys.argv)
    # Honour --timeout including the final steps: keep a reserve for test scoring and reporting.
    deadline = None if timeout is None else t_start + timeout - min(15.0, 0.1 * timeout)
    from cellsearch.progress import SearchProgress

    interrupted = False
    with SearchProgress(total=trials, done=_finished(st), metric=ctx.metric, direction=direction,
                        enabled=progress and not verbose) as bar:

        def on_trial(study_: Any) -> None:
            pts = _points(study_, cost)
            front = pareto_front(pts, direction)
            best = pick_trial(front, direction, "best")
            bar.update(_finished(study_), best["score"] if best else None, len(front))
            tracker.update_study(study_, pts, front, dataset)

        try:
            if workers > 1:
                from cellsearch.workers import run_workers

                run_workers(data, opts, workers, deadline, getattr(tracker, "parent_id", None), on_trial, ctx)
            else:
                obj = Objective(dataset=dataset, space=ctx.space, objective=objective, cost=cost, seed=seed,
                                sdir=ctx.sdir, max_epochs=max_epochs, trial_timeout=trial_timeout, deadline=deadline,
                                tracker=tracker, verbose=verbose, accelerator=ctx.accelerator, prune_multi=prune)
                run_trials(ctx, obj, trials, deadline, on_trial)
        except KeyboardInterrupt:
            interrupted = True
    st = ctx.study
    pts = _points(st, cost)
    front = pareto_front(pts, direction)
    chosen = pick_trial(front, direction, pick)
    _score_test(dataset, front)
    result = TuneResult(study=st, metric=ctx.metric, direction=direction, cost=cost, front=front,
                        chosen=chosen, run_dir=run_dir, counts=_counts(st), interrupted=interrupted)
    _write_json(ctx.sdir / "result.json", result.to_dict())
    tracker.finish(st, result, dataset)
    return result
