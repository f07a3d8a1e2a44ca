"""Training one candidate with PyTorch Lightning: the DataModule, the LightningModule, the callbacks.

The plain ``SequenceModel`` (``cellsearch.model``) stays separate from the ``SequenceTask``
LightningModule that trains it. Scores (``cellsearch.metrics``): accuracy for classification, RMSE
for regression (in the target's units), MASE for forecasting.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import pytorch_lightning as pl
import torch

from cellsearch.data import Dataset
from cellsearch.evaluation import Batches
from cellsearch.folds import Fold, holdout_fold
from cellsearch.metrics import metric_of, score
from cellsearch.model import SequenceModel
from cellsearch.pooling import real_steps
from cellsearch.progress import quiet_lightning
from cellsearch.tasks import get_task

ForecastLoss = Literal["l1", "mse"]


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """How one model trains: what a trial drew from the search space (the search and ``--weights
    refit`` read the same record, stored with each trial).

    Args:
        lr: Adam's learning rate; weight_decay: its decoupled weight decay (AdamW when above 0).
        batch_size: sequences per optimiser step (at most a quarter of the training sequences).
        max_epochs: validation checks at most (once per epoch on large data).
        patience: validation checks without improvement before early stopping.
        min_steps: optimiser steps at least, however few sequences there are.
        max_steps: on small data, training may go on to this many steps while it improves.
        forecast_loss: forecasting's training loss (``l1``: what MASE scores; ``mse``).
        crop: window slicing: each training sequence loses up to this fraction of its steps.
    """

    lr: float
    batch_size: int
    max_epochs: int = 40
    patience: int = 6
    min_steps: int = 0
    max_steps: int = 0
    weight_decay: float = 0.0
    forecast_loss: ForecastLoss = "l1"
    crop: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainOptions:
        """From a drawn configuration or a stored record: the known keys, with their types."""
        known = {f.name for f in fields(cls)}
        kinds = {"lr": float, "weight_decay": float, "crop": float, "forecast_loss": str}
        return cls(**{k: kinds.get(k, int)(v) for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Batches are made of sequences of similar length where the mean length is below this share of the
#: longest (padding would be most of a batch's steps otherwise: text, ragged recordings).
BUCKET_BELOW = 0.8
#: A bucket pool: this many batches' worth of shuffled sequences, sorted by length, then cut.
BUCKET_POOL = 50
#: ... and only where there are at least this many batches: on a few dozen sequences the padding
#: costs little, and batches cut from one sorted pool would be the same few every epoch (and, where
#: length goes with the class, of one class).
BUCKET_MIN_BATCHES = 8


class LengthBuckets(torch.utils.data.Sampler):
    """Batches of positions whose sequences have similar lengths, so that a batch trimmed to its
    longest sequence (``Batches``) is mostly real steps. Training (``generator`` given): each epoch
    a random order is cut into pools of ``BUCKET_POOL`` batches, each pool sorted by length and cut
    into batches, and the batches are shuffled — every batch still draws from the whole data.
    Validation (no generator): the positions sorted by length, cut into batches."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, generator: torch.Generator | None = None) -> None:
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator

    def __len__(self) -> int:
        n, pool = len(self.lengths), self.batch_size * BUCKET_POOL
        if self.generator is None:
            return -(-n // self.batch_size)
        return sum(-(-min(pool, n - s) // self.batch_size) for s in range(0, n, pool))

    def __iter__(self) -> Any:
        n, bs = len(self.lengths), self.batch_size
        if self.generator is None:
            order = torch.argsort(self.lengths, stable=True)
            yield from (order[k:k + bs].tolist() for k in range(0, n, bs))
            return
        perm = torch.randperm(n, generator=self.generator)
        batches = []
        for s in range(0, n, bs * BUCKET_POOL):
            chunk = perm[s:s + bs * BUCKET_POOL]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += [chunk[k:k + bs].tolist() for k in range(0, len(chunk), bs)]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]


def batch_sampler(part: Batches, batch_size: int, seed: int | None, buckets: bool = True) -> Any:
    """The batches (lists of positions) a part is read in: shuffled each epoch from ``seed``'s
    generator (``None``: in order, for validation), in length buckets (``LengthBuckets``) where
    ``buckets`` and the lengths are ragged enough. One fold's batches are the same whether it trains
    alone or with the others (``cellsearch.foldbatch``)."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    gen = None if seed is None else torch.Generator().manual_seed(seed)
    lengths = part.lengths if part.index is None else part.lengths[part.index]
    if buckets and len(lengths) >= BUCKET_MIN_BATCHES * batch_size and \
            lengths.float().mean() < BUCKET_BELOW * lengths.max():
        return LengthBuckets(lengths, batch_size, gen)
    base = SequentialSampler(part) if gen is None else RandomSampler(part, generator=gen)
    return BatchSampler(base, batch_size, drop_last=False)


class SequenceDataModule(pl.LightningDataModule):
    """Batches of one fold (``cellsearch.folds``): its training part and the validation part it is
    scored on; the dataset's own train/validation split when no fold is given."""

    def __init__(self, dataset: Dataset, batch_size: int = 64, seed: int = 0, fold: Fold | None = None) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.fold = fold
        self.parts: dict[str, Batches] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.parts:
            task = self.dataset.task
            fold = self.fold or holdout_fold(self.dataset)
            self.parts = {"train": Batches(fold.train.split, task, fold.train.index),
                          "val": Batches(fold.val.split, task, fold.val.index)}
            test = self.dataset.splits["test"]
            if len(test):
                self.parts["test"] = Batches(test, task)

    def _loader(self, split: str, shuffle: bool) -> torch.utils.data.DataLoader:
        part = self.parts[split]
        sampler = batch_sampler(part, self.batch_size, self.seed if shuffle else None, buckets=split != "test")
        return torch.utils.data.DataLoader(part, batch_size=None, sampler=sampler)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("test", False)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class SequenceTask(pl.LightningModule):
    """Trains a ``SequenceModel``: cross-entropy or mean squared error, Adam, per-epoch metrics."""

    def __init__(self, model: SequenceModel, task: str, lr: float = 3e-3, weight_decay: float = 0.0,
                 target_std: float = 1.0, forecast_loss: str = "l1", crop: float = 0.0) -> None:
        super().__init__()
        self.crop = crop
        self.model = model
        self.task = task
        self._task = get_task(task)
        self.lr = lr
        self.weight_decay = weight_decay
        self.target_std = target_std
        self.forecast_loss = forecast_loss
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.last_val: dict[str, float] = {}  # the last validation's loss and score (on_validation_epoch_end)
        self._train_loss: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(x, lengths)

    def training_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's training loss (``Task.loss``): cross-entropy; mean squared error; forecasting:
        L1 on each window's scaled values (what MASE scores), or squared error with
        ``forecast_loss="mse"``."""
        return self._task.loss(out, y, self.forecast_loss)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, lengths, y, _ = batch
        if self.crop > 0:
            x, lengths = crop_batch(x, lengths, self.crop)
        loss = self.training_loss(self(x, lengths), y)
        self._train_loss.append(loss.detach())  # read at the next check: no host sync per step
        return loss

    def _mean_train_loss(self) -> float | None:
        """The mean training loss since the last check (``None``: no step since), which must be
        finite (``NonFiniteLossError``)."""
        if not self._train_loss:
            return None
        value = float(torch.stack(self._train_loss).mean())
        self._train_loss.clear()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"training loss became {value} by step {self.global_step}")
        return value

    def on_train_end(self) -> None:
        self._mean_train_loss()  # (a refit validates nothing: its last steps are checked here)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, lengths, y, w = batch
        self._val.append((self(x, lengths).detach(), y, w))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        out = torch.cat([o for o, _, _ in self._val])
        y = torch.cat([t for _, t, _ in self._val])
        w = torch.cat([w for _, _, w in self._val])
        self._val.clear()
        train_loss = self._mean_train_loss()  # since the previous validation, beside its scores
        if train_loss is not None:
            self.log("train_loss", train_loss, prog_bar=False)
        # kept as numbers beside the logged ones, which Lightning holds as float32 tensors: a score
        # read back from those differs in its 8th digit from the same score of folds trained together
        self.last_val = {"val_loss": float(self.training_loss(out, y)),
                         "val_score": score_outputs(out, y, self.task, self.target_std, w)}
        self.log("val_loss", self.last_val["val_loss"])
        self.log("val_score", self.last_val["val_score"], prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.parameters(), self.lr, self.weight_decay)


def adam(params: Any, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam as every model here trains with it: torch's fused kernel (one call for all parameters,
    about half the time of the per-tensor loop on a small model's step), where this torch and device
    have it; the plain loop otherwise (the same update)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def crop_batch(x: torch.Tensor, lengths: torch.Tensor, fraction: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Window slicing (Le Guennec et al., 2016), a training-time augmentation: each sequence loses a
    random number of its real steps, up to ``fraction`` of them (at least one step is kept), a random
    part of them at its start and the rest at its end. The kept steps move to the front of the padded
    batch (trimmed to the longest one left), so the model learns patterns wherever in the window they
    fall; predictions always read whole sequences."""
    def uniform() -> torch.Tensor:
        return torch.rand(len(lengths), generator=generator, dtype=torch.float64, device=lengths.device)

    cut = torch.floor(uniform() * fraction * lengths.to(torch.float64)).long()
    cut = torch.minimum(cut, (lengths - 1).clamp(min=0))
    start = torch.floor(uniform() * (cut + 1)).long()
    kept = lengths - cut
    steps = int(kept.max()) if len(kept) else 0
    index = (torch.arange(steps, device=x.device)[None, :] + start.to(x.device)[:, None]).clamp(max=x.shape[1] - 1)
    x = torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))
    return x * real_steps(kept, steps, x.device).unsqueeze(-1).to(x.dtype), kept


def score_outputs(out: torch.Tensor, y: torch.Tensor, task: str, target_std: float = 1.0,
                  weight: torch.Tensor | None = None) -> float:
    """The task's score (``cellsearch.metrics.score``) of model outputs."""
    return score(task, out.detach().cpu().numpy(), y.detach().cpu().numpy(), target_std,
                 None if weight is None else weight.detach().cpu().numpy())


class EpochHistory(pl.Callback):
    """Per-epoch metrics, the best validation score and a copy of the best weights."""

    def __init__(self, direction: str, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.direction = direction
        self.on_epoch = on_epoch
        self.history: list[dict[str, float]] = []
        self.best_score = -math.inf if direction == "maximize" else math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Not ``on_validation_epoch_end``: Lightning calls callbacks' epoch-end hooks before the
        # module's, so there ``callback_metrics`` still hold the previous validation's values.
        if trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val_score", "val_loss", "train_loss")}
        if "val_score" not in m:
            return
        m.update(getattr(module, "last_val", {}))  # the validation's own float64 numbers
        epoch = len(self.history)  # validation epochs counted here, independent of Lightning's counter
        self.history.append({"epoch": epoch, **m})
        if self.better(m["val_score"], self.best_score):
            self.best_score, self.best_epoch = m["val_score"], epoch
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in module.model.state_dict().items()})
        if self.on_epoch is not None:
            self.on_epoch(epoch, {**m, "step": float(trainer.global_step)})


class TimeUpError(Exception):
    """Raised inside Lightning's loop when a trial's time is up (``Deadline``)."""


class Deadline(pl.Callback):
    """Stop training at a wall-clock time, checked after every training and validation batch: a trial
    ends within one batch of its budget, however long its epochs are (Lightning's own ``max_time``
    waits for ``min_steps`` and is not checked during validation)."""

    def __init__(self, at: float | None) -> None:
        self.at = at
        self.hit = False

    def _check(self) -> None:
        if self.at is not None and time.time() >= self.at:
            self.hit = True
            raise TimeUpError

    def on_train_batch_end(self, *args: Any) -> None:
        self._check()

    def on_validation_batch_end(self, *args: Any) -> None:
        self._check()


@dataclass
class FitResult:
    """What training one candidate produced (``epochs``: validation checks, ``steps``: optimiser steps)."""

    model: SequenceModel
    best_score: float
    best_epoch: int
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    stopped_by: str = "max_steps"
    steps: int = 0
    batch_size: int = 0
    best_step: int = 0


@dataclass(frozen=True)
class Schedule:
    """How long one candidate trains, in optimiser steps.

    ``steps = max(min_steps, max_steps, max_epochs x steps per epoch)``: large data trains up to
    ``max_epochs`` epochs as before, small data up to ``max_steps`` steps however few sequences it has,
    and early stopping ends either sooner, never before ``min_steps``. Validation runs every
    ``steps / max_epochs`` steps (once per epoch on large data); early stopping's patience counts
    those checks. On small data the cap and the floor differ on purpose: a model that still improves
    keeps training (small regressions go on improving well past the floor) while one that has
    stopped improving ends after ``patience`` checks. The batch is at
    most a quarter of the training sequences (at least 1).
    """

    batch_size: int
    steps: int
    val_every: int
    min_steps: int

    @classmethod
    def plan(cls, n_train: int, batch_size: int, max_epochs: int, min_steps: int, max_steps: int = 0) -> Schedule:
        batch = max(1, min(batch_size, n_train // 4))
        per_epoch = -(-n_train // batch)
        checks = max(1, max_epochs)
        val_every = max(1, -(-max(min_steps, max_steps, checks * per_epoch) // checks))
        steps = val_every * checks  # a whole number of intervals: the last check falls on the last step
        return cls(batch, steps, val_every, min(min_steps, steps))


def run_trainer(trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule, deadline: Deadline,
                verbose: bool = False) -> float:
    """``trainer.fit(module, data)``; returns its seconds. The deadline's ``TimeUpError`` ends it quietly
    (the best check so far stands); Ctrl-C stays a ``KeyboardInterrupt`` (Lightning would turn it into
    an exit and ignore further Ctrl-C)."""
    import signal

    from cellsearch.interrupts import interruptible

    sigint = signal.getsignal(signal.SIGINT)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), interruptible():
            if not verbose:
                warnings.simplefilter("ignore")
            trainer.fit(module, datamodule=data)
    except TimeUpError:
        pass  # the time limit fell inside an epoch: keep the best check so far
    except SystemExit:
        # Lightning answers Ctrl-C with exit(1) after ignoring SIGINT: restore and re-raise as such.
        signal.signal(signal.SIGINT, sigint)
        raise KeyboardInterrupt from None
    finally:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, sigint)
    if trainer.interrupted and not deadline.hit:  # (Lightning marks any exception, ours too, interrupted)
        raise KeyboardInterrupt
    return time.perf_counter() - t0


def fit(model: SequenceModel, dataset: Dataset, options: TrainOptions, *, seed: int = 0,
        max_seconds: float | None = None, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        verbose: bool = False, accelerator: str = "cpu", fold: Fold | None = None,
        fixed_steps: int | None = None) -> FitResult:
    """Train with early stopping on the validation score; returns the best check's weights.

    ``options`` (``TrainOptions``) say how: learning rate, batch, length, patience, loss.

    ``fold`` (``cellsearch.folds``) says which rows train and which validate; the dataset's own
    train/validation split by default. Training length is counted in optimiser steps
    (``Schedule``): at least ``min_steps``, at most ``max_steps`` or ``max_epochs`` epochs, validation
    at fixed step intervals, ``patience`` in
    validation checks. ``fixed_steps`` instead trains exactly that many steps without validation and
    keeps the last weights (a refit on all data for a cross-validated length). ``on_epoch(check,
    metrics)`` runs after each validation and may raise (e.g. ``optuna.TrialPruned``) to stop the
    trial. A KeyboardInterrupt stays a KeyboardInterrupt (Lightning would turn it into an exit and
    ignore further Ctrl-C).
    """

    from pytorch_lightning.callbacks import EarlyStopping

    quiet_lightning()
    pl.seed_everything(seed, workers=False, verbose=False)
    if accelerator == "cpu":
        torch.set_flush_denormal(True)  # denormal floats can slow a CPU trial tenfold
    metric, direction = metric_of(dataset.task)
    target_std = dataset.preprocessing.target_scale
    o = options
    task = SequenceTask(model, dataset.task, lr=o.lr, weight_decay=o.weight_decay, target_std=target_std,
                        forecast_loss=o.forecast_loss, crop=o.crop)
    history = EpochHistory(direction, on_epoch)
    mode = "max" if direction == "maximize" else "min"
    early = EarlyStopping(monitor="val_score", mode=mode, patience=o.patience, check_finite=False)
    fold = fold or holdout_fold(dataset)
    deadline = Deadline(None if not max_seconds else time.time() + max_seconds)
    plan = Schedule.plan(len(fold.train), o.batch_size, o.max_epochs, o.min_steps, o.max_steps)
    if fixed_steps is not None:
        plan = Schedule(plan.batch_size, max(1, fixed_steps), max(1, fixed_steps), max(1, fixed_steps))
    trainer = pl.Trainer(
        max_steps=plan.steps, max_epochs=-1, min_steps=plan.min_steps, val_check_interval=plan.val_every,
        check_val_every_n_epoch=None, limit_val_batches=0 if fixed_steps is not None else None,
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=verbose, enable_model_summary=verbose, num_sanity_val_steps=0,
        callbacks=[deadline] + ([] if fixed_steps is not None else [history, early]), deterministic=False,
    )
    dm = SequenceDataModule(dataset, batch_size=plan.batch_size, seed=seed, fold=fold)
    seconds = run_trainer(trainer, task, dm, deadline, verbose)
    steps = int(trainer.global_step)
    if fixed_steps is not None:
        model.eval()
        return FitResult(model, math.nan, -1, 0, [], seconds, "max_steps", steps, plan.batch_size, steps)
    if history.best_state is None:
        raise NonFiniteLossError("the time limit came before the first validation" if deadline.hit
                                 else "no finite validation score")
    model.load_state_dict(history.best_state)
    model.eval()
    # Short of the step cap and the deadline, only early stopping ends training (its patience may have
    # run out before the step floor and the check at the floor improved: it still stops there).
    stopped = "time_limit" if deadline.hit else "max_steps" if steps >= plan.steps else "early_stopping"
    return FitResult(model, history.best_score, history.best_epoch, len(history.history),
                     history.history, seconds, stopped, steps, plan.batch_size,
                     best_step=min(steps, (history.best_epoch + 1) * plan.val_every))
