"""MLflow tracking: one experiment per study, one parent run per ``tune`` process, one nested run per trial.

The store lives under the run directory by default (``mlflow.db``, a SQLite backend, and
``mlartifacts/``); ``--tracking-uri`` points at a server instead. Runs are written with
``MlflowClient`` directly (no global active-run state), one batched call per epoch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cellsearch
from cellsearch.costs import COSTS
from cellsearch.files import dumps

if TYPE_CHECKING:
    from cellsearch.config import TuneConfig

PLOT_EVERY_S = 30.0
#: The runs-table view ``cellsearch ui`` links to (an MLflow shared view state on the experiment).
VIEW_KEY = "cellsearch"
#: The runs-table columns that view shows, in order (MLflow's column keys).
VIEW_COLUMNS = ("tags.`arch`", "metrics.`score`", "metrics.`score_spread`", "metrics.`test_score`",
                "metrics.`macs`", "metrics.`params`", "metrics.`latency_ms`", "tags.`state`", "tags.`pareto`",
                "tags.`chosen`")


def view_url(base: str, experiment_id: str) -> str:
    """The link to a study's runs table in ``cellsearch ui``'s view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


class TrialRun(Protocol):
    """Where one trial is recorded as it trains."""

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Metrics after one validation (``val_score``, ``val_loss``, ``train_loss``)."""

    def log_file(self, path: Path, artifact_path: str) -> str | None:
        """Store a file with the run; returns a URI it can be fetched from (or ``None``)."""

    def finish(self, state: str, *, reason: str | None = None, metrics: dict[str, float] | None = None) -> None:
        """End the run: ``FINISHED``, ``PRUNED`` or ``FAILED``, why, and the final metrics."""


class Tracker(Protocol):
    """Where a search is recorded: one run per trial, the study's plots and result."""

    #: The search's parent run, which worker processes attach their trials to (``None``: none).
    parent_id: str | None

    def start_trial(self, number: int, spec: Any, cfg: dict[str, Any]) -> TrialRun:
        """A run for trial ``number`` with its model spec and drawn configuration."""

    def record_references(self, references: list[dict[str, Any]]) -> None:
        """The reference models' scores and costs (``cellsearch.references``), once per search."""

    def log_search_file(self, path: Path, artifact_path: str) -> str | None:
        """Store a file of the whole search (a reference member's fold models) with its parent run;
        returns a URI it can be fetched from (or ``None``)."""

    def update_study(self, study: Any, points: list[dict[str, Any]], front: list[dict[str, Any]],
                     dataset: Any) -> None:
        """After each trial: refresh what shows the study's progress (throttled)."""

    def finish(self, study: Any, result: Any, dataset: Any) -> None:
        """The search ended: the chosen model, counts, final plots."""

    def close_stale(self, study: Any) -> None:
        """End the records a killed process left running (the study already failed its trials)."""


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def repoint_artifacts(run_dir: Path) -> int:
    """Point the run directory's MLflow store at this directory's ``mlartifacts/``.

    MLflow records artifact locations as absolute URIs; after the run directory was moved, copied or
    unpacked elsewhere they would point at the old place (or, for a copy, at the original's files).
    Every location under some ``.../mlartifacts`` is rewritten to this directory's before MLflow
    opens the store (SQLite, directly). Returns the rows changed."""
    import sqlite3

    db = run_dir / "mlflow.db"
    if not db.exists():
        return 0
    here = (run_dir / "mlartifacts").resolve().as_uri()
    marker = "/mlartifacts"
    changed = 0
    with sqlite3.connect(db, timeout=60) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location")):
            if table not in tables:
                continue
            cur = con.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, instr({column}, ?) + ?) "
                f"WHERE instr({column}, ?) > 0 AND substr({column}, 1, instr({column}, ?) + ? - 1) != ?",
                (here, marker, len(marker), marker, marker, len(marker), here))
            changed += cur.rowcount
    return changed


def dashboard_hosts(host: str, port: int, allowed: str | None = None) -> list[str]:
    """The Host headers a shared dashboard answers (MLflow's ``--allowed-hosts``): ``allowed``
    (comma-separated) when given, else this machine's names and addresses and ``host`` itself; each
    with and without ``:port``, and always the loopback names."""
    import socket

    if allowed:
        names = [h.strip() for h in allowed.split(",") if h.strip()]
    else:
        names = [socket.gethostname(), socket.getfqdn()]
        try:
            names += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
        except OSError:
            pass
        if host not in ("0.0.0.0", "::"):
            names.append(host)
    names += ["localhost", "127.0.0.1"]
    out: list[str] = []
    for name in names:
        for variant in (name, f"{name}:{port}"):
            if variant not in out:
                out.append(variant)
    return out


def fetch_artifact(uri: str, tracking_uri: str) -> str:
    """A tracked file (``runs:/...`` or an artifact URI) downloaded here; returns its local path."""
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)


def register_bundle(folder: Path, name: str, tracking_uri: str, study: str) -> None:
    """Log an exported bundle to a run of the study's experiment and register it as model ``name``."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(study)
    exp_id = exp.experiment_id if exp else client.create_experiment(study)
    run = client.create_run(exp_id, tags={"role": "export"}, run_name=f"export-{folder.name}")
    client.log_artifacts(run.info.run_id, str(folder), artifact_path="model")
    client.set_terminated(run.info.run_id)
    mlflow.register_model(f"runs:/{run.info.run_id}/model", name)


#: Scores are recorded to this many decimals: what the runs table shows (0.9333, not 0.93333333),
#: and finer than any difference between models on the data sizes cellsearch searches.
SCORE_DECIMALS = 4


def _metric(name: str, value: Any, ts: int, step: int) -> Any:
    """An MLflow metric; scores (every name with ``score`` in it) rounded to ``SCORE_DECIMALS``."""
    from mlflow.entities import Metric

    v = float(value)
    return Metric(name, round(v, SCORE_DECIMALS) if "score" in name and math.isfinite(v) else v, ts, step)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _NullRun:
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def log_file(self, path: Path, artifact_path: str) -> str | None:
        return None

    def finish(self, state: str, *, reason: str | None = None, metrics: dict[str, float] | None = None) -> None:
        pass


class NullTracker:
    """``--no-track``: records nothing."""

    parent_id: str | None = None

    def start_trial(self, number: int, spec: Any, cfg: dict[str, Any]) -> TrialRun:
        return _NullRun()

    def record_references(self, references: list[dict[str, Any]]) -> None:
        pass

    def log_search_file(self, path: Path, artifact_path: str) -> str | None:
        return None

    def update_study(self, study: Any, points: list[dict[str, Any]], front: list[dict[str, Any]],
                     dataset: Any) -> None:
        pass

    def finish(self, study: Any, result: Any, dataset: Any) -> None:
        pass

    def close_stale(self, study: Any) -> None:
        pass


class MLflowTrialRun:
    """One trial's nested run. Epoch metrics are buffered and written in one batch at most every
    ``FLUSH_S`` seconds (and at the end), so tracking costs a handful of store calls per trial."""

    FLUSH_S = 5.0

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._pending: list[Any] = []
        self._last_flush = time.time()

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:

        ts = int(time.time() * 1000)
        self._pending += [_metric(k, v, ts, epoch) for k, v in metrics.items() if _finite(v)]
        if time.time() - self._last_flush >= self.FLUSH_S:
            self._flush()

    def log_file(self, path: Path, artifact_path: str) -> str | None:
        """Store a file with the run (e.g. the checkpoint, so any machine can export the trial)."""
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)
        return f"runs:/{self.run_id}/{artifact_path}/{Path(path).name}"

    def _flush(self, extra: list[Any] = (), tags: list[Any] = ()) -> None:
        metrics, self._pending = [*self._pending, *extra], []
        for k in range(0, max(len(metrics), 1), 900):  # MLflow accepts up to 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[k:k + 900], tags=list(tags) if k == 0 else [])
        self._last_flush = time.time()

    def finish(self, state: str, *, reason: str | None = None, metrics: dict[str, float] | None = None) -> None:
        from mlflow.entities import RunTag

        ts = int(time.time() * 1000)
        final = [_metric(k, v, ts, 0) for k, v in (metrics or {}).items() if _finite(v)]
        tags = [RunTag("state", {"FINISHED": "COMPLETE"}.get(state, state))]
        if reason:
            tags.append(RunTag("reason", reason[:4000]))
        self._flush(final, tags)
        # A pruned trial is no failure: it ends FINISHED, and its ``state`` tag (a column of the runs
        # table) says PRUNED. Only a trial that broke is a red FAILED run.
        status = {"FINISHED": "FINISHED", "PRUNED": "FINISHED"}.get(state, "FAILED")
        self.client.set_terminated(self.run_id, status=status)


class MLflowTracker:
    """Writes the search into MLflow as it goes (see the module doc)."""

    def __init__(self, *, tracking_uri: str, run_dir: Path, study_name: str, data: str, meta: dict[str, Any],
                 argv: list[str], parent_id: str | None = None) -> None:
        import logging

        import mlflow
        from mlflow import MlflowClient

        from cellsearch.errors import UserError

        for name in ("mlflow", "alembic"):  # mlflow resets its logger level when imported
            logging.getLogger(name).setLevel(logging.WARNING)

        self.study_name = study_name
        self.meta = meta
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(study_name)
            if exp is None:
                local = tracking_uri.startswith("sqlite")
                artifacts = (run_dir / "mlartifacts").resolve().as_uri() if local else None
                exp_id = self.client.create_experiment(study_name, artifact_location=artifacts)
            else:
                exp_id = exp.experiment_id
        except Exception as exc:
            raise UserError(f"cannot reach the MLflow tracking store {tracking_uri}: "
                            f"{str(exc).strip().splitlines()[0][:200]}") from None
        self.experiment_id = exp_id
        # The study opens on its runs table (not MLflow's GenAI traces page).
        self.client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        import os
        import socket

        tags = {"data": data, "study": study_name, "command": " ".join(argv)[:4000], "host": socket.gethostname(),
                "pid": str(os.getpid()),
                "cellsearch_version": cellsearch.__version__, "role": "search",
                **{f"search.{k}": str(v) for k, v in meta.items()}}
        if parent_id is None:  # a worker attaches its trials to its tune process's parent run
            name = f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
            parent = self.client.create_run(exp_id, tags={**tags, "search": name}, run_name=name)
            parent_id = parent.info.run_id
        self.parent_id = parent_id
        #: Every run of this search carries ``search`` = the parent run's name: the view groups by it.
        self.search = self.client.get_run(parent_id).info.run_name
        self._publish_view(meta.get("direction", "maximize"), meta.get("cost", "macs"))
        self._last_plot = 0.0
        self.references: list[dict[str, Any]] = []

    def close_stale(self, study: Any) -> None:
        """Runs left RUNNING by a killed process end FAILED ("killed"): trial runs whose trial the study
        no longer counts as running, and search runs of this machine whose process is gone."""
        import os
        import socket

        import optuna
        from mlflow.entities import RunTag

        running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        host = socket.gethostname()
        for r in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=50000):
            tags = r.data.tags
            if r.info.run_id == self.parent_id:
                continue
            if "trial_number" in tags:
                stale = int(tags["trial_number"]) not in running
            elif tags.get("role") == "search" and tags.get("host") == host and tags.get("pid", "").isdigit():
                try:
                    os.kill(int(tags["pid"]), 0)
                    stale = False
                except ProcessLookupError:
                    stale = True
                except PermissionError:
                    stale = False
            else:
                continue
            if stale:
                self.client.log_batch(r.info.run_id, tags=[RunTag("state", "FAILED"), RunTag(
                    "reason", "killed: its process ended without finishing the run")])
                self.client.set_terminated(r.info.run_id, status="FAILED")

    def _publish_view(self, direction: str, cost: str) -> None:
        """The runs table ``cellsearch ui`` links to: each search's runs grouped under it (by the
        ``search`` tag; MLflow's shared views cannot expand nested runs), sorted by score, with
        architecture, score, spread, test score, costs and state as columns; its chart tab opens on
        score against the search's cost, one point per run."""
        import json

        cost_key = COSTS[cost].attr if cost in COSTS else "macs"
        chart = {"uuid": "cellsearch-pareto", "type": "SCATTER", "deleted": False, "isGenerated": False,
                 "metricSectionId": "cellsearch", "displayName": f"score against {cost_key}",
                 "xaxis": {"key": cost_key, "type": "METRIC"}, "yaxis": {"key": "score", "type": "METRIC"},
                 "runsCountToCompare": 500}
        state = {"searchFilter": "", "orderByKey": "metrics.`score`", "orderByAsc": direction == "minimize",
                 "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
                 "startTime": "ALL", "selectedColumns": list(VIEW_COLUMNS), "runListHidden": False,
                 "groupBy": {"aggregateFunction": "max" if direction == "maximize" else "min",
                             "groupByKeys": [{"mode": "tag", "groupByData": "search"}]},
                 "compareRunCharts": [chart], "isAccordionReordered": True, "useGroupedValuesInCharts": False,
                 "compareRunSections": [{"uuid": "cellsearch", "name": "Accuracy against compute", "display": True,
                                         "isReordered": False}],
                 "viewMaximized": False, "hideEmptyCharts": True}
        self.client.set_experiment_tag(self.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))

    def start_trial(self, number: int, spec: Any, cfg: dict[str, Any]) -> MLflowTrialRun:
        from mlflow.entities import Param

        tags = {"mlflow.parentRunId": self.parent_id, "search": self.search, "trial_number": str(number),
                "arch": spec.arch,
                "study": self.study_name, "state": "RUNNING"}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"trial-{number}-{spec.arch}")
        params = {"n_layers": len(spec.layers), "dropout": cfg["dropout"], "lr": cfg["lr"],
                  "batch_size": cfg["batch_size"], "weight_decay": cfg["weight_decay"],
                  "max_epochs": cfg["max_epochs"], "min_steps": cfg.get("min_steps"), "max_steps": cfg.get("max_steps"),
                  "patch": spec.patch, "pooling": spec.pooling, "normalize": spec.normalize,
                  "crop": cfg.get("crop", 0.0), "base": spec.base_forecast or "none", "arch": spec.arch}
        for k, layer in enumerate(spec.layers):
            params[f"l{k}_cell"] = layer.cell
            params[f"l{k}_hidden"] = layer.hidden
            if layer.bidirectional:
                params[f"l{k}_bidirectional"] = True
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return MLflowTrialRun(self.client, run.info.run_id)

    def log_search_file(self, path: Path, artifact_path: str) -> str | None:
        """Store a file with the search's parent run (another machine exports from it)."""
        self.client.log_artifact(self.parent_id, str(path), artifact_path=artifact_path)
        return f"runs:/{self.parent_id}/{artifact_path}/{Path(path).name}"

    def record_references(self, references: list[dict[str, Any]]) -> None:
        """One finished nested run per reference, tagged ``reference``, with its scores and costs."""

        self.references = list(references)
        ts = int(time.time() * 1000)
        for ref in references:
            tags = {"mlflow.parentRunId": self.parent_id, "search": self.search, "study": self.study_name,
                    "role": "reference",
                    "reference": ref["name"], "arch": ref["arch"], "state": "REFERENCE"}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"reference-{ref['name']}")
            values = {"score": ref["score"], **{k: v for k, v in ref.items() if k.startswith("test_")},
                      "macs": ref["macs"],
                      "params": ref["params"], "fit_seconds": ref["fit_seconds"]}
            self.client.log_batch(run.info.run_id, metrics=[_metric(k, v, ts, 0) for k, v in values.items()
                                                            if _finite(v)])
            self.client.set_terminated(run.info.run_id, status="FINISHED")

    def _mark_trials(self, result: Any) -> None:
        """Tag each trial run ``pareto`` (on the front or not) and ``chosen``; front members get their
        test scores."""
        from mlflow.entities import RunTag

        front = {str(p["trial"]): p for p in result.front if p.get("kind", "trial") == "trial"}
        chosen = str(result.chosen["trial"]) if result.chosen and result.chosen.get("kind") == "trial" else None
        members = {str(m) for m in (result.chosen or {}).get("members") or {}}
        ts = int(time.time() * 1000)
        runs = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
                                       max_results=50000)
        for r in runs:
            n = r.data.tags.get("trial_number")
            if n is None:
                continue
            tags = [RunTag("pareto", str(n in front).lower()),
                    RunTag("chosen", "true" if n == chosen else "member" if n in members else "false")]
            values = held_out_metrics(front.get(n, {}))
            self.client.log_batch(r.info.run_id, tags=tags,
                                  metrics=[_metric(k, v, ts, 0) for k, v in values.items() if _finite(v)])

    def _record_ensembles(self, study: Any, result: Any) -> None:
        """One finished nested run per selected ensemble, tagged ``ensemble`` (state ``ENSEMBLE``),
        with its members and weights, its score ± spread over folds, costs and (on the front) test scores."""

        ts = int(time.time() * 1000)
        tested = {p["name"]: p for p in result.front if p.get("kind") == "ensemble"}
        for e in study.user_attrs.get("ensembles", []):
            members = ", ".join(f"{k}: {w:.2f}" for k, w in e["members"].items())
            tags = {"mlflow.parentRunId": self.parent_id, "search": self.search, "study": self.study_name,
                    "role": "ensemble",
                    "ensemble": e["name"], "arch": e["arch"], "members": members, "state": "ENSEMBLE",
                    "pareto": str(e["name"] in tested).lower()}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"ensemble-{e['name']}")
            values = {"score": e["score"], "score_spread": e.get("spread"), "oof_loss": e.get("oof_loss"),
                      **{c.attr: e.get(c.attr) for c in COSTS.values()},
                      **held_out_metrics(tested.get(e["name"], {}))}
            self.client.log_batch(run.info.run_id, metrics=[_metric(k, v, ts, 0) for k, v in values.items()
                                                            if _finite(v)])
            self.client.set_terminated(run.info.run_id, status="FINISHED")

    def update_study(self, study: Any, points: list[dict[str, Any]], front: list[dict[str, Any]],
                     dataset: Any) -> None:
        now = time.time()
        if now - self._last_plot < PLOT_EVERY_S:
            return
        self._last_plot = now
        self._log_plots(study, points, front, dataset, chosen=None)

    def _log_plots(self, study: Any, points: list[dict[str, Any]], front: list[dict[str, Any]], dataset: Any,
                   chosen: dict[str, Any] | None) -> None:
        import tempfile

        from cellsearch import plots

        with tempfile.TemporaryDirectory() as tmp:
            files = plots.study_plots(Path(tmp), study, points, front, dataset, chosen, self.meta, self.references)
            for f in files:
                self.client.log_artifact(self.parent_id, str(f), artifact_path="plots")

    def finish(self, study: Any, result: Any, dataset: Any) -> None:
        import tempfile

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(f"trials_{k}", float(v), ts, 0) for k, v in result.counts.items()]
        metrics.append(Metric("pareto_front_size", float(len(result.front)), ts, 0))
        if result.chosen:
            keys = ("score", "macs", "params", *held_out_metrics(result.chosen))
            for k in keys:
                if _finite(result.chosen.get(k)):
                    metrics.append(_metric(f"chosen_{k}", result.chosen[k], ts, 0))
            self.client.set_tag(self.parent_id, "chosen_trial", str(result.chosen["name"]))
            self.client.set_tag(self.parent_id, "chosen_arch", result.chosen["arch"])
        self.client.log_batch(self.parent_id, metrics=metrics)
        self._record_ensembles(study, result)
        self._mark_trials(result)
        link = f"#/experiments/{self.experiment_id}/runs/{self.parent_id}/artifacts/plots/pareto_front.html"
        self.client.set_tag(self.parent_id, "mlflow.note.content", describe_result(result, link))
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "result.json"
            p.write_text(dumps(result.to_dict()))
            self.client.log_artifact(self.parent_id, str(p))
        from cellsearch.pareto import trial_points

        self._log_plots(study, trial_points(study, result.cost, root=result.run_dir), result.front, dataset,
                        result.chosen)
        self.client.set_terminated(self.parent_id, status="KILLED" if result.interrupted else "FINISHED")


def held_out_metrics(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry's scores on rows it did not train on: the test split's (``test_score``,
    ``test_smape``...) or, without one, its out-of-fold score (``oof_score``)."""
    return {k: v for k, v in entry.items() if k.startswith("test_") or k == "oof_score"}


def describe_result(result: Any, plot_link: str | None = None) -> str:
    """The search's parent-run description (markdown): the chosen model, the Pareto table, the plots
    (``plot_link``: where the dashboard shows the interactive Pareto plot)."""
    def f(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (
            f"{v:.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))

    lines = [f"## cellsearch search: {result.study.study_name}", ""]
    c = result.chosen
    if c:
        what = f"ensemble {c['name']}" if c.get("kind") == "ensemble" else f"trial {c['trial']}"
        spread = f" ± {f(c['spread'])}" if c.get("spread") else ""
        lines += [f"**Chosen ({result.pick}):** {what} `{c['arch']}` — validation {result.metric} "
                  f"{f(c['score'])}{spread}, {result.held_out} {result.metric} {f(result.held_out_score(c))}, "
                  f"{f(c.get('macs'))} MACs per sequence, {f(c.get('params'))} parameters, "
                  f"{f(c.get('latency_ms'))} ms at batch 1.", ""]
    lines += [f"Validation: {result.cv}. Trials: " + ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())),
              "", f"| trial | architecture | validation {result.metric} | {result.held_out} {result.metric} | MACs | "
              "params |",
              "| --- | --- | --- | --- | --- | --- |"]
    for p in result.front:
        spread = f" ± {f(p['spread'])}" if p.get("spread") else ""
        mark = " **(chosen)**" if c and p.get("name") == c.get("name") else ""
        lines.append(f"| {p.get('name', p.get('trial'))}{mark} | `{p['arch']}` | {f(p['score'])}{spread} | "
                     f"{f(result.held_out_score(p))} | {f(p.get('macs'))} | {f(p.get('params'))} |")
    for r in result.references:
        ref_held = r.get("test_score") if result.held_out == "test" else r.get("score")
        lines.append(f"| reference | {r['arch']} | {f(r['score'])} | {f(ref_held)} | {f(r.get('macs'))} | "
                     f"{f(r.get('params'))} |")
    if plot_link:
        lines += ["", f"**[Score against cost, every trial (hover a point)]({plot_link})** · "
                      f"**[The chosen model, explained: its gates step by step]"
                      f"({plot_link.replace('pareto_front.html', 'explain_chosen.html')})**"]
    lines += ["", "Plots (Artifacts → `plots/`): `pareto_front.html` (score against cost, hover a point), "
              "`pareto_front.png`, `cell_by_slot.png` (which cell where), `param_importance.png`, "
              "`explain_chosen.html` (the chosen model's gates over time, its prediction step by step and "
              "the effect of clamping each gate; `cellsearch explain` makes the same page for any bundle)."]
    return "\n".join(lines)


def make_tracker(config: TuneConfig, *, meta: dict[str, Any], argv: list[str],
                 parent_id: str | None = None) -> Tracker:
    """The tracker of a search: MLflow (by default the store under the run directory) or, with
    ``track=False``, nothing. Worker processes pass their ``tune`` process's ``parent_id``."""
    if not config.track:
        return NullTracker()
    from cellsearch.rundir import locked

    with locked(config.run_dir):  # a fresh store's schema is created once, not by two processes at once
        if config.tracking_uri is None:
            repoint_artifacts(config.run_dir)
        return MLflowTracker(tracking_uri=config.tracking_uri or default_tracking_uri(config.run_dir),
                             run_dir=config.run_dir, study_name=config.study_name, data=str(config.data),
                             meta=meta, argv=argv, parent_id=parent_id)
