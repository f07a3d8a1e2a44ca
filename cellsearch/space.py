"""Search spaces: YAML files whose keys map one to one onto Optuna's ``suggest_*`` calls.

A value is either a constant or a distribution (Ludwig-style dicts)::

    {type: int, low: 16, high: 256, log: true}       # trial.suggest_int
    {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    {type: categorical, choices: [lstm, gru]}
    {type: categorical, choices: all}                # layers.cell only: every cell in cellsearch.CELLS

Top-level keys: ``description``, ``sampler`` (tpe, random or nsga2), ``same_cell`` (one cell type for
the whole stack, as in Greff et al.), ``layers`` (``depth``, ``cell``, ``hidden``, ``bidirectional``),
``dropout``, ``lr``, ``batch_size``, ``weight_decay``, ``max_epochs``, ``patience``, ``min_steps``,
``max_steps`` (on small data, training may go on to this many steps while it improves; 0: to
``min_steps``), and the model options ``patch`` (steps read as one input), ``pooling`` (a key of
``POOLINGS``) and ``normalize`` (per-sequence z-normalisation), ``crop`` (window slicing: each training
sequence loses a random part of up to this fraction of its steps, split between its start and its end,
so the model learns not to depend on where in the window a pattern falls), and ``forecast_loss``
(``l1``, the default, or ``mse``: what forecasting trains on), ``base`` (forecasting only: the
statistical forecast the network corrects, ``none``, ``seasonal_naive`` (offered where the data has a
season) or ``theta``; the older ``seasonal_base: true/false`` still reads as ``base:
seasonal_naive/none``), and ``starts``: the first trials of a fresh study, a short portfolio of settings
known to do well across data sets (as AutoGluon's and auto-sklearn's portfolios do), so that a search
cut short by ``--timeout`` has tried robust architectures before the sampler's random start-up. Each
start names values by the same keys (``cell`` and ``hidden`` may list one value per layer); a value the
space or the data does not offer is moved to the nearest one offered, and what a start leaves out the
sampler draws. Layers are fixed slots: parameters ``n_layers``, ``l0_cell``, ``l0_hidden``, ``l1_cell``,
... so that importance analysis sees each slot.

Options the data decides are bounded by it (``DataShape``): patch sizes that would leave fewer than
``MIN_PATCH_STEPS`` steps are dropped from the choices, a crop fraction that cannot remove
``MIN_CROP_STEPS`` steps of the median sequence is dropped, and ``normalize`` and ``crop`` are only
drawn for classification and regression (a forecasting window is anchored at its end). A
distribution left with one value is a constant (no parameter).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsearch.errors import UserError

TOP_KEYS = {"description", "sampler", "same_cell", "layers", "dropout", "lr", "batch_size", "weight_decay",
            "max_epochs", "patience", "min_steps", "max_steps", "patch", "pooling", "normalize", "crop",
            "forecast_loss", "base", "seasonal_base", "starts", "embedding", "vocab", "tokens"}
TRAINING_KEYS = ("dropout", "lr", "batch_size", "weight_decay", "max_epochs", "patience", "min_steps", "max_steps")
INT_KEYS = ("batch_size", "max_epochs", "patience", "min_steps", "max_steps")
#: A patch size is offered only if the median sequence still has this many steps after patching.
#: Coarser patches left the recurrent stack 8.5-9.4 steps and, cheaper and as good on the folds,
#: took the searches over, but did worse on the test rows: patches of 16 on GunPoint's 150 steps and
#: PickupGesture's median 136 lost to patches of 8 in all 8 kept studies holding both, patches of 4
#: on 36-step monthly windows to patches of 1 in all 3 (README, "Results on real data"). Patches
#: leaving 12.5 steps (8 on Tecator's 100) were that set's best, on the folds and the test rows.
MIN_PATCH_STEPS = 12
#: Text read as characters (``tokens: chars``) is offered only where a document's character budget
#: (the training documents' 95th percentile) is at most this many steps: on 4,000 food reviews (budget
#: 864) character-level trials cost 4.3 times a word-piece trial and took a third of a 600-s search
#: without one completing.
MAX_CHAR_STEPS = 512
#: A crop fraction is offered only if it can remove this many steps of the median sequence.
MIN_CROP_STEPS = 2
#: What ``base`` may name: no base, or a key of ``cellsearch.model.BASES``.
BASE_CHOICES = ("none", "seasonal_naive", "theta")
LAYER_KEYS = {"depth", "cell", "hidden", "bidirectional"}
SAMPLERS = ("tpe", "random", "nsga2")
DEFAULTS: dict[str, Any] = {"sampler": "tpe", "same_cell": False, "dropout": 0.0, "lr": 3e-3, "batch_size": 64,
                            "weight_decay": 0.0, "max_epochs": 20, "patience": 4, "min_steps": 300, "max_steps": 0,
                            "patch": 1, "pooling": "last", "normalize": False, "crop": 0.0, "forecast_loss": "l1",
                            "base": "none", "starts": [], "embedding": None, "vocab": None,
                            "tokens": None}
#: Keys drawn only for data whose input encoders take them (``Encoder.searched``; ``None``: the
#: encoder's own default).
ENCODER_KEYS = ("embedding", "vocab", "tokens")
#: The values of the encoder keys that are not numbers (text's ``tokens``: word pieces or characters).
ENCODER_CHOICES: dict[str, tuple[str, ...]] = {"tokens": ("pieces", "chars")}
LAYER_DEFAULTS: dict[str, Any] = {"depth": 1, "cell": "lstm", "hidden": 32, "bidirectional": False}


def space_dir() -> Path:
    """Where the shipped spaces live: inside the installed package, or at the top of a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "search_spaces", here.parent / "search_spaces"):
        if cand.is_dir():
            return cand
    return here / "search_spaces"


def available_spaces() -> list[str]:
    return sorted(p.stem for p in space_dir().glob("*.yaml"))


@dataclass(frozen=True)
class DataShape:
    """What the space needs to know of the data: the median sequence length, the task, the season."""

    length: int
    task: str
    season: int = 1
    #: The space keys the data's input encoders take (``ENCODER_KEYS``: text's ``embedding``, ``vocab``,
    #: ``tokens``).
    searched: frozenset[str] = frozenset()
    #: The steps of a text input read as characters (its budget; 0: no text).
    chars: int = 0


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; ``suggest`` draws one configuration from an Optuna trial."""

    name: str
    config: dict[str, Any]

    @property
    def sampler(self) -> str:
        return self.config["sampler"]

    def suggest(self, trial: Any, shape: DataShape | None = None) -> dict[str, Any]:
        """Draw ``{"layers": [(cell, hidden, bidirectional), ...], "dropout", "lr", ..., "patch",
        "pooling", "normalize", "crop"}``; ``shape`` bounds the data-dependent options (see the module doc)."""
        cfg = self.config
        lay = cfg["layers"]
        depth = int(_draw(trial, "n_layers", lay["depth"]))
        layers = []
        shared_cell = _draw(trial, "cell", lay["cell"]) if cfg["same_cell"] else None
        for k in range(depth):
            cell = shared_cell if shared_cell is not None else _draw(trial, f"l{k}_cell", lay["cell"])
            hidden = int(_draw(trial, f"l{k}_hidden", lay["hidden"]))
            bidir = bool(_draw(trial, f"l{k}_bidirectional", lay["bidirectional"]))
            layers.append((str(cell), hidden, bidir))
        out: dict[str, Any] = {"layers": layers}
        for key in TRAINING_KEYS:
            out[key] = _draw(trial, key, cfg[key])
        for key in INT_KEYS:
            out[key] = int(out[key])
        patch = cfg["patch"]
        if shape is not None:
            patch = _only(patch, lambda p: p == 1 or shape.length / p >= MIN_PATCH_STEPS)
        out["patch"] = int(_draw(trial, "patch", patch))
        out["pooling"] = str(_draw(trial, "pooling", cfg["pooling"]))
        # per-sequence options: whole sequences, not forecasting windows (anchored at their end)
        from cellsearch.tasks import get_task

        whole = shape is None or get_task(shape.task).whole_sequences
        out["normalize"] = bool(_draw(trial, "normalize", cfg["normalize"] if whole else False))
        crop = cfg["crop"] if whole else 0.0
        if shape is not None:
            crop = _only(crop, lambda f: f == 0 or shape.length * f >= MIN_CROP_STEPS)
        out["crop"] = float(_draw(trial, "crop", crop))
        loss = cfg["forecast_loss"] if shape is None or not whole else "l1"
        out["forecast_loss"] = str(_draw(trial, "forecast_loss", loss))
        base = cfg["base"]
        if shape is not None:
            base = _only(base, lambda b: b == "none" or (not whole and (b != "seasonal_naive" or shape.season > 1)))
        out["base"] = str(_draw(trial, "base", base))
        for key in ENCODER_KEYS:
            wanted = shape is not None and key in shape.searched and cfg[key] is not None
            spec = cfg[key]
            if key == "tokens" and shape is not None:
                spec = _only(spec, lambda t: t != "chars" or shape.chars <= MAX_CHAR_STEPS)
            kind = str if key in ENCODER_CHOICES else int
            out[key] = kind(_draw(trial, key, spec)) if wanted else None
        return out

    def starts(self, shape: DataShape) -> list[dict[str, Any]]:
        """The space's ``starts`` as Optuna parameters for ``study.enqueue_trial``: each start is drawn
        through ``suggest`` itself, by a stand-in trial that answers every ``suggest_*`` with the
        start's value moved into what the space and ``shape`` offer, so an enqueued value is always one
        the sampler could have drawn."""
        out = []
        for start in self.config["starts"]:
            trial = _Preferring(start)
            self.suggest(trial, shape)
            if trial.params not in out:
                out.append(trial.params)
        return out


class _Preferring:
    """A stand-in for an Optuna trial answering ``suggest_*`` with a start's values (see ``starts``).
    Parameters the start leaves out are answered with the distribution's first value and not kept."""

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.params: dict[str, Any] = {}

    def _wanted(self, name: str) -> Any:
        slot = re.fullmatch(r"l(\d+)_(cell|hidden|bidirectional)", name)
        key, layer = (slot[2], int(slot[1])) if slot else ({"n_layers": "depth"}.get(name, name), 0)
        value = self.start.get(key)
        if isinstance(value, list):
            value = value[min(layer, len(value) - 1)] if value else None
        return value

    def _keep(self, name: str, value: Any) -> Any:
        if self._wanted(name) is not None:
            self.params[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int, log: bool = False, step: int = 1) -> int:
        want = self._wanted(name)
        value = low if want is None else min(high, max(low, low + round((float(want) - low) / step) * step))
        return self._keep(name, int(value))

    def suggest_float(self, name: str, low: float, high: float, log: bool = False, step: float | None = None) -> float:
        want = self._wanted(name)
        value = low if want is None else min(high, max(low, float(want)))
        if step:
            value = min(high, low + round((value - low) / step) * step)
        return self._keep(name, value)

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        want = self._wanted(name)
        same = [c for c in choices if c == want and isinstance(c, bool) == isinstance(want, bool)]
        if same:
            value = same[0]
        elif _number(want) and choices and all(_number(c) for c in choices):
            logs = want > 0 and all(c > 0 for c in choices)
            value = min(choices, key=lambda c: abs(math.log(c / want)) if logs else abs(c - want))
        else:
            value = choices[0]
        return self._keep(name, value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _only(spec: Any, keep: Any) -> Any:
    """A categorical distribution restricted to the choices ``keep`` accepts (a constant when one is
    left, the smallest choice when none is); constants pass unchanged."""
    if not isinstance(spec, dict) or spec.get("type") != "categorical":
        return spec
    kept = [c for c in spec["choices"] if keep(c)] or [min(spec["choices"])]
    return kept[0] if len(kept) == 1 else {**spec, "choices": kept}


def _draw(trial: Any, name: str, spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    kind = spec["type"]
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False),
                                 step=spec.get("step", 1))
    if kind == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False),
                                   step=spec.get("step"))
    return trial.suggest_categorical(name, spec["choices"])


def _check_dist(where: str, name: str, spec: Any, allowed: tuple[Any, ...] | None = None) -> None:
    from cellsearch.cells import CELLS

    if not isinstance(spec, dict):
        if allowed is not None and spec not in allowed:
            raise UserError(f"{where}: {name}: unknown value {spec!r}; choose from {', '.join(map(str, allowed))}")
        return
    kind = spec.get("type")
    if kind not in ("int", "float", "categorical"):
        raise UserError(f"{where}: {name}: 'type' must be int, float or categorical, got {kind!r}")
    keys = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    unknown = set(spec) - keys
    if unknown:
        raise UserError(f"{where}: {name}: unknown key(s) {', '.join(sorted(unknown))} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: {name}: 'choices' must be a non-empty list")
        bad = [c for c in choices if allowed is not None and c not in allowed]
        if bad:
            raise UserError(f"{where}: {name}: unknown choice(s) {', '.join(map(str, bad))}; "
                            f"known: {', '.join(map(str, allowed or CELLS))}")
        return
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: {name}: {kind} needs 'low' and 'high'")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise UserError(f"{where}: {name}: 'low' and 'high' must be numbers")
    if not all(math.isfinite(v) for v in (low, high)):
        raise UserError(f"{where}: {name}: 'low' and 'high' must be finite numbers")
    if low > high:
        raise UserError(f"{where}: {name}: low ({low}) > high ({high})")
    step = spec.get("step")
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool)
                             or not math.isfinite(step) or step <= 0):
        raise UserError(f"{where}: {name}: 'step' must be a positive number, got {step!r}")
    if spec.get("log") and low <= 0:
        raise UserError(f"{where}: {name}: a log scale needs low > 0, got {low}")


#: Allowed ranges [low, high] of the numeric keys (a constant, or every value a distribution can draw).
RANGES: dict[str, tuple[float, float]] = {
    "layers.depth": (1, 16), "layers.hidden": (1, 65_536), "batch_size": (1, 1_000_000), "max_epochs": (1, 100_000),
    "patience": (0, 100_000), "min_steps": (0, 10_000_000), "max_steps": (0, 10_000_000), "lr": (1e-12, 10.0),
    "dropout": (0.0, 0.99), "crop": (0.0, 0.5), "embedding": (1, 65_536), "vocab": (2, 10_000_000),
    "weight_decay": (0.0, 10.0)}


def _check_range(where: str, name: str, spec: Any, bounds: tuple[float, float] | None = None) -> None:
    """Refuse a numeric key whose values fall outside ``RANGES`` (e.g. ``hidden: 0``), or ``bounds``;
    ``spec`` is a constant, a distribution or a list of values."""
    lo_ok, hi_ok = bounds or RANGES[name]
    if isinstance(spec, list):
        values = spec
    elif isinstance(spec, dict):
        values = spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]
    else:
        values = [spec]
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) for v in values):
        raise UserError(f"{where}: {name}: must be a finite number, got {values}")
    if min(values) < lo_ok or max(values) > hi_ok:
        raise UserError(f"{where}: {name}: values must lie in [{lo_ok:g}, {hi_ok:g}], got {min(values):g} to "
                        f"{max(values):g}")


def validate(config: Any, where: str) -> dict[str, Any]:
    """Check a loaded YAML document and fill in defaults; raises ``UserError`` naming the problem."""
    from cellsearch.cells import CELLS

    if not isinstance(config, dict):
        raise UserError(f"{where}: a search space is a mapping of keys to values")
    unknown = set(config) - TOP_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TOP_KEYS))}")
    cfg = {**DEFAULTS, **_renamed(config)}
    cfg["starts"] = [_renamed(s) if isinstance(s, dict) else s for s in cfg["starts"]] if isinstance(
        cfg["starts"], list) else cfg["starts"]
    layers = cfg.get("layers") or {}
    if not isinstance(layers, dict):
        raise UserError(f"{where}: 'layers' must be a mapping with depth, cell, hidden")
    unknown = set(layers) - LAYER_KEYS
    if unknown:
        raise UserError(f"{where}: layers: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(LAYER_KEYS))}")
    cfg["layers"] = {**LAYER_DEFAULTS, **layers}
    cell = cfg["layers"]["cell"]
    if cell == "all" or (isinstance(cell, dict) and cell.get("choices") == "all"):
        cfg["layers"]["cell"] = {"type": "categorical", "choices": list(CELLS)}
    if cfg["sampler"] not in SAMPLERS:
        raise UserError(f"{where}: sampler must be one of {', '.join(SAMPLERS)}, got {cfg['sampler']!r}")
    _check_dist(where, "layers.cell", cfg["layers"]["cell"], tuple(CELLS))
    for key in ("depth", "hidden"):
        _check_dist(where, f"layers.{key}", cfg["layers"][key])
    _check_dist(where, "layers.bidirectional", cfg["layers"]["bidirectional"], (True, False))
    for key in (*TRAINING_KEYS, "crop"):
        _check_dist(where, key, cfg[key])
    for key in ENCODER_KEYS:
        if cfg[key] is not None:
            _check_dist(where, key, cfg[key], ENCODER_CHOICES.get(key))
    for name in RANGES:
        value = cfg["layers"][name[7:]] if name.startswith("layers.") else cfg[name]
        if value is not None:
            _check_range(where, name, value)
    from cellsearch.pooling import POOLINGS

    _check_dist(where, "pooling", cfg["pooling"], tuple(POOLINGS))
    _check_dist(where, "normalize", cfg["normalize"], (True, False))
    _check_dist(where, "forecast_loss", cfg["forecast_loss"], ("l1", "mse"))
    _check_dist(where, "base", cfg["base"], BASE_CHOICES)
    _check_dist(where, "patch", cfg["patch"])
    patches = cfg["patch"]["choices"] if isinstance(cfg["patch"], dict) and "choices" in cfg["patch"] else [
        cfg["patch"]] if not isinstance(cfg["patch"], dict) else []
    if any(not isinstance(p, int) or isinstance(p, bool) or p < 1 for p in patches):
        raise UserError(f"{where}: patch: sizes must be positive integers, got {patches}")
    _check_starts(where, cfg["starts"])
    return cfg


#: What a start may name: the layer keys and every drawn top-level key.
START_KEYS = LAYER_KEYS | (TOP_KEYS - {"description", "sampler", "same_cell", "layers", "starts", "seasonal_base"})


def _renamed(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the older ``seasonal_base`` (true/false, or a distribution of them) read as
    ``base`` (``seasonal_naive``/``none``) where ``base`` is not given; other values pass to the check."""
    if not isinstance(config, dict) or "seasonal_base" not in config:
        return config
    config = dict(config)
    old = config.pop("seasonal_base")

    def name(v: Any) -> Any:
        return {True: "seasonal_naive", False: "none"}.get(v, v) if isinstance(v, bool) else v

    if isinstance(old, dict) and isinstance(old.get("choices"), list):
        old = {**old, "choices": [name(v) for v in old["choices"]]}
    config.setdefault("base", name(old))
    return config


def _check_starts(where: str, starts: Any) -> None:
    if not isinstance(starts, list) or not all(isinstance(s, dict) for s in starts):
        raise UserError(f"{where}: starts must be a list of mappings such as {{cell: gru, hidden: 64}}")
    from cellsearch.cells import CELLS

    for k, start in enumerate(starts):
        unknown = set(start) - START_KEYS
        if unknown:
            raise UserError(f"{where}: starts[{k}]: unknown key(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(START_KEYS))}")
        for key, value in start.items():
            values = value if isinstance(value, list) else [value]
            if key == "cell" and any(v not in CELLS for v in values):
                raise UserError(f"{where}: starts[{k}].cell: unknown cell in {value!r}; known: {', '.join(CELLS)}")
            name = f"layers.{key}" if f"layers.{key}" in RANGES else key
            if name in RANGES:
                _check_range(where, f"starts[{k}].{key}", values, RANGES[name])


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A shipped space by name (``quick``) or any YAML file by path."""
    import yaml

    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and not path.exists():
        path = space_dir() / f"{text}.yaml"
        if not path.exists():
            raise UserError(f"unknown search space {text!r}; shipped spaces: {', '.join(available_spaces())} "
                            "(or give a path to a YAML file)")
    if not path.exists():
        raise UserError(f"{path}: search space file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a search space file")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (a search space is YAML)") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return SearchSpace(name=path.stem, config=validate(config, str(path)))
