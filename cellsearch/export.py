"""Export a trial as a self-contained bundle, and load it back (``cellsearch.load``).

A bundle is an MLflow pyfunc model folder (``MLmodel``, signature, input example, requirements; the
model is defined by code, ``cellsearch_pyfunc.py``, so nothing is pickled) that also holds:

* ``weights.pt`` — the state dict only (loads with ``torch.load(weights_only=True)``);
* ``spec.json`` — the ``ModelSpec``, or for an ensemble (a cross-validated trial's fold models, or
  several trials) its members' specs and weights (``cellsearch.model.describe``);
* ``preprocessing.json`` — columns, scalers, classes, window...;
* ``README.md`` — the model card; ``metrics.json``; extra formats (``model.onnx`` with ``--format onnx``,
  see ``cellsearch.formats``).

It is written to a temporary folder beside the destination and renamed into place: never
half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

from cellsearch.config import PICKS, Pick
from cellsearch.data import Preprocessing, get_layout
from cellsearch.data.encoders import get_encoder
from cellsearch.errors import UnsupportedFormatError, UserError
from cellsearch.files import dumps
from cellsearch.formats import Format, check_formats
from cellsearch.study import default_storage
from cellsearch.tasks import get_task
from cellsearch.tracking import default_tracking_uri, fetch_artifact, register_bundle, repoint_artifacts

PYFUNC_CODE = '''"""MLflow pyfunc entry point of a cellsearch bundle (models-from-code: nothing pickled)."""
from pathlib import Path

import mlflow

from cellsearch.pyfunc import PyfuncModel

mlflow.models.set_model(PyfuncModel(Path(__file__).resolve().parent))
'''


def _open_study(run_dir: Path, storage: str, study: str | None) -> Any:
    """The study to export from (in ``storage``): named, or the run directory's only one."""
    import optuna

    from cellsearch.study import open_storage

    st_obj = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(st_obj, include_best_trial=False)]
    if study is None:
        if len(names) != 1:
            raise UserError(f"{run_dir}: {len(names)} studies ({', '.join(names) or 'none'}); choose one with --study")
        study = names[0]
    if study not in names:
        raise UserError(f"no study {study!r} in {run_dir}; studies: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study, storage=st_obj)


def _select_point(study: Any, trial: int | None, pick: str, root: Path, ensemble: str | None = None
                  ) -> dict[str, Any]:
    """Trial ``trial``'s point if it completed, ensemble ``ensemble`` (``E1``), else the front member
    (a trial or an ensemble) that ``pick`` chooses."""
    from cellsearch.pareto import member_points, pareto_front, pick_trial, trial_points

    attrs = study.user_attrs
    points = trial_points(study, attrs.get("cost", "macs"), root=root)
    complete = {p["trial"]: p for p in points if p["kind"] == "trial"}
    if not complete:
        raise UserError(f"study {study.study_name!r} has no finished trial to export")
    if trial is not None:
        if trial not in complete:
            raise UserError(f"trial {trial} of study {study.study_name!r} did not complete; finished trials: "
                            f"{', '.join(map(str, sorted(complete)))}")
        return complete[trial]
    if ensemble is not None:
        found = {p["name"]: p for p in points if p["kind"] == "ensemble"}
        if ensemble not in found:
            raise UserError(f"no ensemble {ensemble!r} in study {study.study_name!r}; ensembles: "
                            f"{', '.join(found) or 'none'}")
        return found[ensemble]
    from cellsearch.ensemble import loss_reader
    from cellsearch.references import best_reference

    direction = attrs.get("direction", "maximize")
    floor = best_reference(attrs.get("references") or [], direction)
    return pick_trial(pareto_front(points, direction), direction, pick,
                      losses=loss_reader(points + member_points(study, root), attrs["task"]),
                      floor=floor["score"] if floor else None)


def _study_preprocessing(sdir: Path, attrs: dict[str, Any]) -> tuple[Preprocessing, dict[str, Any]]:
    """The study's fitted preprocessing and data summary: from its folder, or (exported on another
    machine than the one that started the study) from the study itself."""
    if (sdir / "preprocessing.json").exists():
        prep = Preprocessing.load(sdir / "preprocessing.json")
        info = json.loads((sdir / "dataset.json").read_text()) if (sdir / "dataset.json").exists() else {}
        return prep, info
    if "preprocessing" in attrs:
        return Preprocessing.from_dict(attrs["preprocessing"]), attrs.get("dataset_info", {})
    raise UserError(f"{sdir}: the study's preprocessing is missing")


def _read_training(data: str, prep: Preprocessing) -> tuple[Any, Any]:
    """The training file, read once: (its raw rows, the dataset the search read from them), or
    (None, None) when the file is no longer here."""
    from cellsearch.data import DataOptions, read_dataset
    from cellsearch.predict import read_input

    if not data or not Path(data).exists():
        return None, None
    from cellsearch.data.encoders import reuse_fitted

    reuse_fitted(prep)  # the study's own tokenizer, not one trained again (its ids could differ)
    df = read_input(data, prep)
    return df, read_dataset(data, DataOptions(**prep.options), frame=df)


def _test_scores(model: Any, dataset: Any, prep: Preprocessing) -> dict[str, Any]:
    """The model's scores on the training file's test split (``test_score`` and the secondary ones,
    ``test_smape``, ...), when that file is still here."""
    from cellsearch.evaluation import evaluate_test

    if dataset is None or not len(dataset.splits["test"]):
        return {"test_score": None}
    return evaluate_test(model, dataset.splits["test"], dataset.task, prep.target_scale)


def _input_example(df: Any, prep: Preprocessing) -> Any:
    """A few raw rows of the training file in its own layout (one or two sequences or series), its
    numbers as float64 (what JSON requests carry)."""
    if df is None:
        return None
    layout = get_layout(prep.layout)
    needed = set(layout.input_columns(prep)) | {prep.id_col, prep.time_col}
    df = df[[c for c in df.columns if c in needed or c not in (prep.target, prep.split_col)]]
    example = layout.example(df, prep)
    return example.astype({c: "float64" for c in example.columns if example[c].dtype == "float32"})


def md_text(value: Any) -> str:
    """Text from the data (column names, labels, file names) made inert in Markdown: HTML escaped (a
    viewer that passes HTML through shows ``<script>`` as text), and the characters that would end
    a table cell or open code or emphasis escaped, on one line."""
    import html
    import re

    text = html.escape(" ".join(str(value).split()), quote=True)
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", text)


def _member_name(source: dict[str, Any]) -> str:
    """How the card names an ensemble member's origin: its trial, or the reference it is."""
    from cellsearch.refmembers import MEMBER_KEYS

    trial = source.get("trial")
    kinds = {v: k for k, v in MEMBER_KEYS.items()}
    return "-" if trial is None else str(trial) if int(trial) >= 0 else f"{kinds.get(int(trial), '?')} (reference)"


def _card(model: Any, prep: Preprocessing, info: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The bundle's README: data, architecture, scores, cost, how to use it."""
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    task = get_task(prep.task)
    note = task.metric_note
    def words(v: Any) -> str:  # a layout's summary entry: nested mappings as "key value" pairs
        return "; ".join(f"{k} {words(x)}" for k, x in v.items()) if isinstance(v, dict) else fmt(v)

    extra = ", ".join(f"{k}: {words(v)}" for k, v in get_layout(prep.layout).summary(prep).items())
    secondary = "".join(f"; test {k[5:]} {fmt(v)}" for k, v in metrics.items()
                        if k.startswith("test_") and k != "test_score")
    held_line = f"- test {metrics['metric']}: {fmt(metrics.get('test_score'))}{secondary}"
    if metrics.get("test_score") is None and metrics.get("oof_score") is not None:
        held_line = (f"- out-of-fold {metrics['metric']}: {fmt(metrics['oof_score'])} (no test split: the rows were "
                     "too few to spare one; each row scored by the fold model that did not train on it)")
    notes = "\n\n".join(n for n in (get_encoder(state["kind"]).card_note(column, state)
                                      for column, state in prep.encoders.items()) if n)
    inputs_section = f"\n## Inputs\n{notes}\n" if notes else ""
    refs = "".join(f"| {r['arch']} | {fmt(r.get('score'))} | {fmt(r.get('test_score'))} | {r['macs']:,} | "
                   f"{r['params']:,} |\n" for r in metrics.get("references", []))
    refs_section = (f"""
## References (simple models on the same splits; alone never exported)
| reference | validation {metrics['metric']} | test {metrics['metric']} | MACs per prediction | stored numbers |
| --- | --- | --- | --- | --- |
{refs}""" if refs else "")
    from cellsearch.model import EnsembleModel, member_arch, model_arch

    spec = model.spec
    layers = "\n".join(f"| {k} | {layer.cell} | {layer.hidden} | {'yes' if layer.bidirectional else 'no'} |"
                       for k, layer in enumerate(spec.layers))
    members = ""
    if isinstance(model, EnsembleModel):
        rows = "".join(f"| {_member_name(src)} | {src.get('fold', 'all (refit)' if src.get('refit') else '-')} | "
                       f"{member_arch(m)} | {w:.3f} |\n"
                       for m, w, src in zip(model.members, model.weights, model.sources))
        members = f"""
## Members ({len(model.members)} models; the output averages their {
            'probabilities' if task.labels else 'values'} with these weights)
| trial | fold | architecture | weight |
| --- | --- | --- | --- |
{rows}
The architecture below is the first member's."""
    return f"""# cellsearch model: {model_arch(model)}

Exported from study `{metrics['study']}`, {metrics['source']}.

**Weights:** {metrics['weights']}.
{members}
## Data
- file: {md_text(info.get('file', 'n/a'))} ({info.get('n_rows', 'n/a')} rows, layout `{prep.layout}`)
- task: {prep.task}; target {md_text(prep.target)}; inputs: {', '.join(md_text(c) for c in prep.inputs)}
- split: {json.dumps(info.get('splits', {}))} ({md_text(info.get('split_source', 'n/a'))})
{f"- {extra}" if extra else ''}
{inputs_section}
## Architecture
| layer | cell | width | bidirectional |
| --- | --- | --- | --- |
{layers}

Dropout {spec.dropout}; reads {spec.patch} step(s) per input; {spec.pooling} pooling of the last layer over the real
steps; per-sequence normalisation {'on' if spec.normalize else 'off'}; a linear head ({spec.n_outputs} outputs).

## Scores
- validation {metrics['metric']}: {fmt(metrics.get('val_score'))}
{held_line}
  {note}

## Cost
- multiply-accumulates per sequence (median length): {metrics['macs']:,}
- parameters: {metrics['params']:,}
{refs_section}
## Use
```python
import cellsearch, pandas as pd
model = cellsearch.load("THIS_FOLDER")
model.predict(pd.read_csv("new.csv"))      # same CSV layout as training
```
`cellsearch predict THIS_FOLDER new.csv`, or serve with
`mlflow models serve -m THIS_FOLDER --env-manager local`.
"""


def _write_bundle(out: Path, model: Any, prep: Preprocessing, info: dict[str, Any], metrics: dict[str, Any],
                  example: Any, formats: list[Format]) -> None:
    """Every file of the bundle, in a staging folder beside ``out``, then renamed into place."""
    import torch

    from cellsearch.model import describe

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        bundle = staging / "bundle"
        _write_mlflow_model(bundle, model, prep, example)
        torch.save(model.state_dict(), bundle / "weights.pt")
        (bundle / "spec.json").write_text(json.dumps(describe(model), indent=2))
        prep.save(bundle / "preprocessing.json")
        for column, state in prep.encoders.items():
            for name, text in get_encoder(state["kind"]).bundle_files(column, state).items():
                (bundle / name).write_text(text)
        (bundle / "metrics.json").write_text(dumps(metrics))
        (bundle / "README.md").write_text(_card(model, prep, info, metrics))
        for fmt in formats:
            try:
                fmt.write(model, bundle / fmt.filename)
            except UnsupportedFormatError as exc:  # the bundle goes on without that file; one line says why
                print(f"cellsearch: {fmt.filename} not written: {exc}", file=sys.stderr)
        if out.exists():
            os.replace(out, staging / "old")
        os.replace(bundle, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


Weights = Literal["auto", "folds", "refit"]
WEIGHTS: tuple[Weights, ...] = get_args(Weights)


def _check_out(out: Path, run_dir: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a file, a non-empty folder (unless ``force``), or — even with
    ``force`` — the working directory, one of its parents, or a folder holding the run directory."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out}: exists and is not empty (use --force to replace it)")
        target, here, runs = out.resolve(), Path.cwd().resolve(), run_dir.resolve()
        if target == here or target in here.parents or target == runs or target in runs.parents:
            raise UserError(f"--out {out}: refusing to replace a folder that holds the working directory or the "
                            "run directory; choose a new folder")


def refit_by_default(attrs: dict[str, Any]) -> bool:
    """Whether ``--weights auto`` refits the study's models: where the search validated on one
    holdout, its models trained on the training split alone and never on the validation rows; retrained
    on all non-test rows for their validated number of steps they learn from those too, as the
    reference members already do (``refmembers.final_member``). With folds, the fold models
    together saw every row, and they are kept. For a forecast the holdout is each series' final
    stretch, the latest data it forecasts from (a yearly panel whose holdout held a recession: test
    MASE 3.77 from the fold model, 2.96 refit); for 4,000 reviews validated on 486, refit against
    the fold models gained in nine of eleven 600-s searches (+0.5 points of accuracy on average)."""
    from cellsearch.folds import is_holdout

    return is_holdout(str(attrs.get("cv", "")))


def export(*, out: str | Path, run_dir: str | Path = "cellsearch-runs", study: str | None = None,
           trial: int | None = None, pick: Pick = "knee", storage: str | None = None,
           formats: list[str] | tuple[str, ...] = (), register: str | None = None,
           tracking_uri: str | None = None, force: bool = False, weights: Weights = "auto",
           ensemble: str | None = None) -> Path:
    """Write the bundle of one trial or ensemble (a trial by number, or picked from the Pareto front,
    whose members are trials and ensembles) to ``out``.

    Args:
        out: the bundle folder (refused if it exists and is not empty, unless ``force``).
        run_dir: the run directory the study is in.
        study: the study's name (needed when the run directory holds several).
        trial: export this trial.
        pick: otherwise, the front member this rule chooses (``knee``, ``best``, ``smallest``).
        storage: an Optuna storage URL that overrides the run directory's.
        ensemble: export this ensemble (``E1``, as the Pareto table names it).
        formats: extra formats from ``cellsearch.formats.FORMATS`` (e.g. ``["onnx"]``).
        register: also register the bundle under this name in the MLflow model registry.
        weights: ``folds``: each trial's fold models as trained and validated, averaged (bagging);
            ``refit``: each trial retrained once on all non-test data for its cross-validated
            number of steps (cheaper to run, not validated itself); ``auto`` (default): ``refit``
            where the search validated on one holdout (``refit_by_default``), ``folds`` otherwise.

    Example:
        >>> export(out="model/", run_dir="cellsearch-runs")        # doctest: +SKIP
    """

    from cellsearch.costs import measure_costs
    from cellsearch.ensemble import assemble
    from cellsearch.model import model_arch
    from cellsearch.progress import quiet_lightning
    from cellsearch.study import study_dir

    quiet_lightning()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars on stderr
    if pick not in PICKS:
        raise UserError(f"--pick must be one of {', '.join(PICKS)}, got {pick!r}")
    if trial is not None and ensemble is not None:
        raise UserError(f"--trial {trial} and --ensemble {ensemble} name two different models; give one of them")
    if weights not in WEIGHTS:
        raise UserError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    chosen_formats = check_formats(formats)
    from cellsearch.rundir import is_copy, stores_for_reading

    run_dir, out = Path(run_dir), Path(out)
    _check_out(out, run_dir, force)
    if storage is None and not (run_dir / "optuna.db").exists():
        raise UserError(f"{run_dir}: no studies here; run `cellsearch tune` first or pass --run-dir")
    store = stores_for_reading(run_dir) if storage is None or tracking_uri is None else run_dir
    if register and tracking_uri is None and is_copy(store, run_dir):
        raise UserError(f"--register {register}: the run directory {run_dir} is read-only and the model registry "
                        "lives in it; export without --register, or point --tracking-uri at a writable server")
    st = _open_study(run_dir, storage or default_storage(store), study)
    attrs = st.user_attrs
    point = _select_point(st, trial, pick, run_dir, ensemble)
    if tracking_uri is None:
        repoint_artifacts(store)  # the run directory may have been moved or copied here
    tracking = tracking_uri or default_tracking_uri(store)
    trials = {t.number: t for t in st.get_trials(deepcopy=False)}
    prep, info = _study_preprocessing(study_dir(run_dir, st.study_name), attrs)
    data = attrs.get("data", "")
    raw, dataset = _read_training(data, prep)
    auto = weights == "auto"
    if auto:
        weights = "refit" if dataset is not None and refit_by_default(attrs) else "folds"
    if weights == "refit":
        from cellsearch.refit import refit

        if dataset is None:
            raise UserError(f"--weights refit needs the training file, {data or 'unknown'}, which is not here")
        from cellsearch.pareto import member_points

        nets = sum(int(k) >= 0 for k in point.get("members") or {point["trial"]: 1.0})
        print(f"cellsearch: retraining {nets} network{'s' if nets != 1 else ''} on all non-test data"
              + (" (--weights auto: the search validated on one holdout, whose rows its models never trained on; "
                 "--weights folds keeps them)" if auto else ""), file=sys.stderr)
        model = refit(point, trials, dataset, member_points(st, run_dir),
                      report=lambda line: print(f"cellsearch: {line}", file=sys.stderr))
        how = "each trial retrained on all non-test data for its cross-validated number of steps" + (
            " (the default where the search validated on one holdout — for a forecast each series' final stretch —"
            " whose rows the validated models never trained on)" if auto else "")
    else:
        from cellsearch.pareto import member_points

        refs = {p["trial"]: p for p in member_points(st, run_dir)}
        model = assemble(point, lambda n: _reference_checkpoint(refs[n], tracking) if n in refs
                         else _local_checkpoint(trials[n], tracking, run_dir))
        how = ("the best validation check of each fold's model, averaged" if point.get("folds", 1) > 1
               or point["kind"] == "ensemble" else "the trial's best validation check (not retrained)")
    source = (f"ensemble {point['name']} of " + ", ".join(f"trial {m}" if int(m) >= 0 else
                                                          f"the {_member_name({'trial': m})}"
                                                          for m in point["members"])
              if point["kind"] == "ensemble" else f"trial {point['trial']}")
    length = int(info.get("length", {}).get("median", 1) or 1)
    metrics = {"study": st.study_name, "source": source, "trial": point["trial"], "ensemble": point.get("name")
               if point["kind"] == "ensemble" else None, "members": point.get("members"),
               "arch": model_arch(model), "metric": attrs.get("metric"), "val_score": point["score"],
               "val_spread": point.get("spread"), **_test_scores(model, dataset, prep),
               "oof_score": (attrs.get("held_out") or {}).get(point.get("name")) if weights == "folds" else None,
               **{k: int(v) if k != "latency_ms" else v for k, v in measure_costs(model, length).items()},
               "weights": how, "cv": attrs.get("cv"),
               "references": [{k: r.get(k) for k in ("name", "arch", "score", "test_score", "macs", "params")}
                              for r in attrs.get("references", [])]}
    _write_bundle(out, model, prep, info, metrics, _input_example(raw, prep), chosen_formats)
    if register:
        register_bundle(out, register, tracking, st.study_name)
    return out


def _reference_checkpoint(point: dict[str, Any], tracking_uri: str) -> str:
    """A reference member's fold models: in the run directory, else fetched from the search's run."""
    if point.get("checkpoint") and Path(point["checkpoint"]).exists():
        return point["checkpoint"]
    if not point.get("checkpoint_uri"):
        raise UserError(f"the {point['name']} member's models ({point.get('checkpoint')}) are not on this machine "
                        "and were not tracked; export on the machine that ran the search")
    return fetch_artifact(point["checkpoint_uri"], tracking_uri)


def _local_checkpoint(trial: Any, tracking_uri: str, run_dir: Path) -> str:
    """The trial's checkpoint file: in the run directory where it was trained (or moved, or copied),
    else fetched from its MLflow run."""
    from cellsearch.records import TrialRecord
    from cellsearch.rundir import in_run_dir

    rec = TrialRecord.of(trial)
    path = in_run_dir(run_dir, rec.checkpoint)
    if path and Path(path).exists():
        return path
    uri = rec.checkpoint_uri
    if not uri:
        raise UserError(f"trial {trial.number}: checkpoint {path} is not on this machine and was not tracked; "
                        "export on the machine that ran it")
    try:
        return fetch_artifact(uri, tracking_uri)
    except Exception as exc:
        raise UserError(f"trial {trial.number}: cannot fetch its checkpoint from MLflow ({uri}) at {tracking_uri}: "
                        f"{str(exc).strip().splitlines()[0][:200]}") from None


def _write_mlflow_model(path: Path, model: Any, prep: Preprocessing, example: Any) -> None:
    import logging

    import mlflow.pyfunc
    import torch
    from mlflow.models import infer_signature

    import cellsearch
    from cellsearch.predict import Predictor

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    signature = None
    if example is not None:
        try:
            signature = infer_signature(example, Predictor(model, prep).predict(example))
        except UserError:
            example = None
    code = Path(tempfile.mkdtemp()) / "cellsearch_pyfunc.py"
    code.write_text(PYFUNC_CODE)
    try:
        mlflow.pyfunc.save_model(
            path=str(path), python_model=str(code), signature=signature, input_example=example,
            pip_requirements=[f"cellsearch=={cellsearch.__version__}", f"torch>={torch.__version__.split('+')[0]}",
                              "pandas", "numpy", "pyarrow"])
    finally:
        shutil.rmtree(code.parent, ignore_errors=True)
