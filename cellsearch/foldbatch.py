"""The K fold models of a trial trained together, as one batched model.

A trial trains one architecture from the same initial weights on each of its K folds. On small data
an optimiser step of one fold model is a fraction of a millisecond of arithmetic inside a millisecond
or more of loop: the trainer's per-step machinery, the optimiser's per-tensor work, validation in
small batches — paid again for each fold, one after another. Here the K models train as one:

* their parameters are stacked along a leading dimension (``torch.func.stack_module_state``), and one
  forward runs all K (``torch.func.vmap`` over ``functional_call``: model k reads fold k's batch; the
  compiled cell loops run each model on its own weights, ``cellsearch.kernels``);
* the loss is the sum of the folds' own mean losses over their real rows, so each model's gradient is
  exactly what it would be alone, and one Adam step advances all K (Adam is elementwise: the same
  update as K optimisers);
* each fold draws its batches from its own training rows in the order its own loader would
  (``train.batch_sampler``, the same seed); a shorter batch is padded with rows that weigh nothing;
* each fold validates on its own rows (one batched forward per chunk of rows), keeps its best
  weights and stops early on its own patience, never before ``min_steps``, as ``train.fit`` does;
  the batch trains until every fold has stopped (or the step cap, or the time limit).

``fit_folds`` returns one ``FitResult`` per fold, as training them one by one gives (a parity test
checks the weights). Dropout and window cropping draw their randomness differently (one draw for
the batch of models), so with those a fold's result is equally likely, not identical.

Whether it pays is measured (``batching_pays``): a few training steps of the batched models against
one model, once per architecture, batch and length in a process; where the arithmetic dominates (wide
layers, long sequences) the folds train one by one, as before. GPUs train the folds one by one (the
cell kernels there are torch's own, which ``vmap`` cannot batch).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from cellsearch.data import Dataset
from cellsearch.evaluation import Batches
from cellsearch.folds import Fold
from cellsearch.metrics import metric_of
from cellsearch.progress import quiet_lightning
from cellsearch.tasks import get_task
from cellsearch.train import (
    Deadline,
    FitResult,
    NonFiniteLossError,
    Schedule,
    TrainOptions,
    adam,
    batch_sampler,
    crop_batch,
    run_trainer,
    score_outputs,
)

log = logging.getLogger(__name__)

#: Validation reads each fold's rows in chunks of at most this many sequences per model.
VAL_ROWS = 512
#: One model's forward and backward taking longer than this (seconds) is arithmetic that batching cannot
#: shorten (the loop's per-step overhead it saves is a millisecond or two): one by one, without measuring
#: the batch (whose measurement would cost K such steps more).
ARITHMETIC_S = 0.025
#: Batching pays when K batched steps cost at most this share of K single steps (``batching_pays``;
#: the trainer's per-step overhead, saved K-1 times, comes on top).
PAYS_BELOW = 1.0


class StackedModels(nn.Module):
    """K models of one architecture as one module: each parameter and buffer stacked along a leading
    dimension of size K; ``forward(x, lengths)`` takes (K, B, T, F) and (K, B) and returns (K, B, O),
    model k reading ``x[k]``. ``member_state(k)`` is model k's ``state_dict``."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        from torch.func import stack_module_state

        params, buffers = stack_module_state(models)
        self.k = len(models)
        self._names = {name: name.replace(".", "__") for name in [*params, *buffers]}
        for name, value in params.items():
            self.register_parameter(self._names[name], nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer(self._names[name], value.clone())
        self._keys = list(models[0].state_dict())
        self._params, self._buffers_of = list(params), list(buffers)
        # the architecture, without weights of its own (a list: not registered as a submodule)
        self._base = [copy.deepcopy(models[0]).to("meta")]

    def train(self, mode: bool = True) -> StackedModels:
        super().train(mode)
        self._base[0].train(mode)
        return self

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
             lengths: torch.Tensor, *base: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        return functional_call(self._base[0], (params, buffers), (x, lengths, *base))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs (M, B, O) of the models ``members`` (all K by default; M of them) on ``x`` (M, B, T,
        F): the models not asked for are not computed (nor, in training, their gradients)."""
        from torch.func import vmap

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if members is None else t.index_select(0, members)

        params = {n: pick(getattr(self, self._names[n])) for n in self._params}
        buffers = {n: pick(getattr(self, self._names[n])) for n in self._buffers_of}
        return vmap(self._one, randomness="different")(params, buffers, x, lengths, *self._bases(x, lengths))

    def _bases(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The forecast a forecasting model's outputs correct (``SequenceModel.forecast_base``), for
        every model's windows in one call outside ``vmap``: it reads only the windows, and batched
        by ``vmap`` each small step of theta's smoothing loop costs many times its arithmetic. Empty
        where the architecture has no base."""
        model = self._base[0]
        if getattr(model, "base_member", None) is None:
            return ()
        m, b = x.shape[:2]
        return (model.forecast_base(x.flatten(0, 1), lengths.flatten(0, 1)).unflatten(0, (m, b)),)

    @torch.no_grad()
    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Model ``k``'s weights as its own ``state_dict`` (copies)."""
        return {key: getattr(self, self._names[key])[k].detach().clone() for key in self._keys}


@dataclass
class Rows:
    """K folds' batches stacked: ``x`` (K, B, T, F), ``lengths`` (K, B), ``y`` (K, B, ...), ``weight``
    (K, B) and ``real`` (K, B): 1 for a fold's own rows, 0 for the padding of a shorter batch."""

    x: torch.Tensor
    lengths: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor
    real: torch.Tensor

    @classmethod
    def stack(cls, batches: list[tuple[torch.Tensor, ...]], rows: int | None = None) -> Rows:
        """Each fold's (x, lengths, y, weight), padded to ``rows`` rows (default: the largest) and to
        the longest sequence of any; padding rows repeat a fold's first row and weigh nothing (a fold
        with no rows at all borrows another's first row)."""
        rows = rows or max(len(b[1]) for b in batches)
        steps = max(int(b[0].shape[1]) for b in batches)
        donor = next(b for b in batches if len(b[1]))
        xs, ls, ys, ws, rs = [], [], [], [], []
        for x, lengths, y, w in batches:
            n = len(lengths)
            src = (x, lengths, y) if n else donor[:3]
            pad = rows - n
            take = torch.cat([torch.arange(n), torch.zeros(pad, dtype=torch.long)])
            xk = src[0][take]
            xs.append(nn.functional.pad(xk, (0, 0, 0, steps - xk.shape[1])))
            ls.append(src[1][take])
            ys.append(src[2][take])
            ws.append(torch.cat([w, w.new_zeros(pad)]))
            rs.append(torch.cat([torch.ones(n), torch.zeros(pad)]))
        return cls(torch.stack(xs), torch.stack(ls), torch.stack(ys), torch.stack(ws), torch.stack(rs))

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.lengths, self.y, self.weight, self.real


class FoldStream(torch.utils.data.IterableDataset):
    """The training batches of K folds, stacked (``Rows``), without end: fold k's batches come from
    its own ``batch_sampler`` (batch size ``batch_sizes[k]``, seed ``seeds[k]``), a new epoch of it
    whenever one ends."""

    def __init__(self, parts: list[Batches], batch_sizes: list[int], seeds: list[int]) -> None:
        self.parts, self.batch_sizes, self.seeds = parts, batch_sizes, seeds

    def __iter__(self) -> Any:
        samplers = [batch_sampler(p, b, s) for p, b, s in zip(self.parts, self.batch_sizes, self.seeds)]
        # An epoch is ``len(sampler)`` batches, never read to exhaustion: Lightning reads a sized loader
        # so, and a sampler read past its last batch draws from its generator again.
        epochs = [islice(iter(s), len(s)) for s in samplers]
        while True:
            batches = []
            for k, part in enumerate(self.parts):
                idx = next(epochs[k], None)
                if idx is None:
                    epochs[k] = islice(iter(samplers[k]), len(samplers[k]))
                    idx = next(epochs[k])
                batches.append(part[idx])
            yield Rows.stack(batches, max(self.batch_sizes)).as_tuple()


def validation_rows(parts: list[Batches], rows: int = VAL_ROWS) -> list[tuple[torch.Tensor, ...]]:
    """The K folds' validation rows as stacked chunks (``Rows``), each fold's rows in length order
    (little padding) and cut into chunks of at most ``rows``; a fold out of rows is padding."""
    orders = [torch.argsort(p.lengths if p.index is None else p.lengths[p.index], stable=True) for p in parts]
    chunks = max(-(-len(p) // rows) for p in parts)
    out = []
    for c in range(chunks):
        batches = [p[o[c * rows:(c + 1) * rows].tolist()] if len(o[c * rows:(c + 1) * rows]) else
                   _empty(p) for p, o in zip(parts, orders)]
        out.append(Rows.stack(batches).as_tuple())
    return out


def _empty(part: Batches) -> tuple[torch.Tensor, ...]:
    x, lengths, y, w = part[[0]]
    return x[:0], lengths[:0], y[:0], w[:0]


def mean_fold_losses(task: Any, out: torch.Tensor, y: torch.Tensor, real: torch.Tensor,
                     forecast_loss: str = "l1") -> torch.Tensor:
    """(K,) each fold's mean training loss (``Task.loss_rows``) over its real rows, from outputs (K, B,
    O) of stacked batches (``Rows``): their sum gives each model exactly its own gradient."""
    k, b = real.shape
    rows = task.loss_rows(out.flatten(0, 1), y.flatten(0, 1), forecast_loss).view(k, b)
    return (rows * real).sum(1) / real.sum(1).clamp(min=1)


@dataclass
class FoldBook:
    """One fold's validation history, best check and weights, and early stopping (``EarlyStopping``'s
    rule: ``patience`` checks without a strictly better score; stopping waits for ``min_steps``)."""

    direction: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float = math.nan
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    wait: int = 0
    patience_hit: bool = False
    stopped_at: int | None = None

    def better(self, value: float) -> bool:
        if self.best_epoch < 0:
            return not math.isnan(value)
        return value > self.best_score if self.direction == "maximize" else value < self.best_score


class FoldsTask(pl.LightningModule):
    """Trains ``StackedModels`` on K folds at once (module doc): the summed per-fold losses, Adam, and
    at each validation every fold's scores, best weights and early stopping (``FoldBook``)."""

    def __init__(self, models: StackedModels, task: str, options: TrainOptions, target_std: float,
                 plans: list[Schedule], on_epoch: list[Callable[[int, dict[str, float]], None] | None],
                 on_check: Callable[[int, list[float]], None] | None = None) -> None:
        super().__init__()
        self.model = models
        self.task = task
        self._task = get_task(task)
        self.options = options
        self.target_std = target_std
        self.plans = plans
        self.on_epoch = on_epoch
        self.on_check = on_check
        direction = metric_of(task)[1]
        self.books = [FoldBook(direction) for _ in range(models.k)]
        self._val: list[tuple[torch.Tensor, ...]] = []
        self._losses: list[torch.Tensor] = []

    def _fold_losses(self, out: torch.Tensor, y: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return mean_fold_losses(self._task, out, y, real, self.options.forecast_loss)

    @property
    def active(self) -> list[int]:
        """The folds still training: a fold that has stopped is neither computed nor validated again
        (the batch goes on for the others, at the cost of those left)."""
        return [k for k, b in enumerate(self.books) if b.stopped_at is None]

    def _members(self, batch: Any) -> tuple[Any, torch.Tensor | None]:
        """The batch's rows of the active folds, and their indices (``None``: all folds)."""
        active = self.active
        if len(active) == len(self.books):
            return batch, None
        idx = torch.tensor(active)
        return tuple(t.index_select(0, idx) for t in batch), idx

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x, lengths, y, _, real), members = self._members(batch)
        if self.options.crop > 0:
            cropped = [crop_batch(x[k], lengths[k], self.options.crop) for k in range(len(x))]
            steps = max(c[0].shape[1] for c in cropped)
            x = torch.stack([nn.functional.pad(c[0], (0, 0, 0, steps - c[0].shape[1])) for c in cropped])
            lengths = torch.stack([c[1] for c in cropped])
        losses = self._fold_losses(self.model(x, lengths, members), y, real)
        self._losses.append(losses.detach())  # read at the next check: no host sync per step
        return losses.sum()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        (x, lengths, y, w, real), members = self._members(batch)
        self._val.append((self.model(x, lengths, members).detach(), y, w, real))

    def on_validation_epoch_end(self) -> None:
        if not self._val or self.trainer.sanity_checking:
            self._val.clear()
            return
        active = self.active  # (the same since the last check: it changes only here)
        train = torch.stack(self._losses).mean(0).tolist() if self._losses else [math.nan] * len(active)
        self._losses.clear()
        bad = [v for v in train if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(f"training loss became {bad[0]} by step {self.global_step}")
        step = int(self.global_step)
        for j, k in enumerate(active):
            book = self.books[k]
            keep = [r[3][j] > 0 for r in self._val]
            out = torch.cat([r[0][j][m] for r, m in zip(self._val, keep)])
            y = torch.cat([r[1][j][m] for r, m in zip(self._val, keep)])
            w = torch.cat([r[2][j][m] for r, m in zip(self._val, keep)])
            m = {"val_loss": float(self._task.loss(out, y, self.options.forecast_loss)),
                 "val_score": score_outputs(out, y, self.task, self.target_std, w)}
            if not math.isnan(train[j]):
                m["train_loss"] = train[j]
            epoch = len(book.history)
            book.history.append({"epoch": epoch, **m})
            if book.better(m["val_score"]):
                book.best_score, book.best_epoch, book.wait = m["val_score"], epoch, 0
                book.best_state = self.model.member_state(k)
            else:
                book.wait += 1
            book.patience_hit = book.patience_hit or book.wait >= self.options.patience
            if book.patience_hit and step >= self.plans[k].min_steps or step >= self.plans[k].steps:
                book.stopped_at = step
            if self.on_epoch[k] is not None:
                self.on_epoch[k](epoch, {**m, "step": float(step)})
        self._val.clear()
        if self.on_check is not None:
            self.on_check(step, [b.history[-1]["val_loss"] for b in self.books])
        if all(b.stopped_at is not None for b in self.books):
            self.trainer.should_stop = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.parameters(), self.options.lr, self.options.weight_decay)


class _Data(pl.LightningDataModule):
    def __init__(self, train: FoldStream, val: list[tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.train, batch_size=None)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.val, batch_size=None)


def fold_parts(dataset: Dataset, folds: list[Fold]) -> tuple[list[Batches], list[Batches]]:
    """Each fold's training and validation rows as ``Batches``."""
    task = dataset.task
    return ([Batches(f.train.split, task, f.train.index) for f in folds],
            [Batches(f.val.split, task, f.val.index) for f in folds])


def schedules(options: TrainOptions, folds: list[Fold]) -> list[Schedule]:
    """Each fold's ``Schedule``: its batch size, step cap and floor, and validation interval."""
    return [Schedule.plan(len(f.train), options.batch_size, options.max_epochs, options.min_steps, options.max_steps)
            for f in folds]


def _one_interval(plans: list[Schedule]) -> bool:
    return len({p.val_every for p in plans}) == 1


def can_train_together(options: TrainOptions, folds: list[Fold]) -> bool:
    """Whether these folds can train as one batch: they validate at the same step interval (their
    batch sizes and step caps may differ; rolling-origin folds of different sizes often do)."""
    return len(folds) > 1 and _one_interval(schedules(options, folds))


def fit_folds(models: list[nn.Module], dataset: Dataset, options: TrainOptions, folds: list[Fold], *,
              seeds: list[int], max_seconds: float | None = None,
              on_epoch: list[Callable[[int, dict[str, float]], None] | None] | None = None,
              on_check: Callable[[int, list[float]], None] | None = None, verbose: bool = False) -> list[FitResult]:
    """Train ``models[k]`` on ``folds[k]``, all together (module doc); one ``FitResult`` per fold, as
    ``train.fit(models[k], dataset, options, fold=folds[k], seed=seeds[k])`` gives: each fold keeps its
    own ``Schedule`` (batch size, step floor and cap), but they must validate at the same step interval
    (``can_train_together``; else ``ValueError``). ``on_epoch[k](check, metrics)`` runs
    after each of fold k's validations, ``on_check(step, losses)`` after each validation with every
    fold's latest validation loss; either may raise (``optuna.TrialPruned``) to stop them all."""
    quiet_lightning()
    pl.seed_everything(seeds[0], workers=False, verbose=False)
    torch.set_flush_denormal(True)
    k = len(models)
    plans = schedules(options, folds)
    if not _one_interval(plans):
        raise ValueError("these folds validate at different step intervals: train them one by one")
    stacked = StackedModels(models)
    task = FoldsTask(stacked, dataset.task, options, dataset.preprocessing.target_scale, plans,
                     on_epoch or [None] * k, on_check)
    train_parts, val_parts = fold_parts(dataset, folds)
    data = _Data(FoldStream(train_parts, [p.batch_size for p in plans], seeds), validation_rows(val_parts))
    deadline = Deadline(None if not max_seconds else time.time() + max_seconds)
    trainer = pl.Trainer(
        max_steps=max(p.steps for p in plans), max_epochs=-1, val_check_interval=plans[0].val_every,
        check_val_every_n_epoch=None, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=verbose, enable_model_summary=verbose, num_sanity_val_steps=0,
        callbacks=[deadline], deterministic=False)
    seconds = run_trainer(trainer, task, data, deadline, verbose)
    steps = int(trainer.global_step)
    results = []
    for model, book, plan in zip(models, task.books, plans):
        if book.best_state is None:
            raise NonFiniteLossError("the time limit came before the first validation" if deadline.hit
                                     else "no finite validation score")
        model.load_state_dict(book.best_state)
        model.eval()
        done = book.stopped_at if book.stopped_at is not None else steps
        if book.stopped_at is not None:  # (as ``fit`` says it: the step cap before early stopping)
            stopped = "max_steps" if done >= plan.steps else "early_stopping"
        else:
            stopped = "time_limit"
        results.append(FitResult(model, book.best_score, book.best_epoch, len(book.history), book.history,
                                 seconds / k, stopped, done, plan.batch_size,
                                 best_step=min(done, (book.best_epoch + 1) * plan.val_every)))
    return results


# ---- whether it pays ----------------------------------------------------------------------------
_PAYS: dict[tuple[Any, ...], bool] = {}


def batching_pays(models: list[nn.Module], dataset: Dataset, options: TrainOptions, folds: list[Fold],
                  seeds: list[int], repeats: int = 3, measure: bool = True) -> bool:
    """Whether K models train faster batched than one by one: ``repeats`` forward-backward passes of
    the batched copies on each fold's first batch against as many of one copy on its fold's (after a
    pass each to warm up), batched at most ``PAYS_BELOW`` x K times the single; not measured where one
    model's pass alone takes over ``ARITHMETIC_S`` (one by one). Never for a model that
    cannot run batched (a user's cell built on a torch module without a ``vmap`` rule, such as
    ``nn.RNN``); with ``measure=False`` that is all it asks. Answered once per architecture, batch
    size, sequence length and thread count in a process (cached)."""
    spec = getattr(models[0], "spec", None)
    plans = schedules(options, folds)
    train_parts, _ = fold_parts(dataset, folds)
    first = [p[next(iter(batch_sampler(p, plan.batch_size, s)))] for p, plan, s in zip(train_parts, plans, seeds)]
    rows = Rows.stack(first)
    key = (None if spec is None else repr(spec), rows.x.shape, torch.get_num_threads(), measure)
    if key not in _PAYS:
        task = get_task(dataset.task)
        single = copy.deepcopy(models[0]).train()
        stacked = StackedModels([copy.deepcopy(m) for m in models]).train()

        def one() -> None:
            out = single(rows.x[0], rows.lengths[0])
            task.loss_rows(out, rows.y[0], options.forecast_loss).mean().backward()

        def batched() -> None:
            out = stacked(rows.x, rows.lengths)
            task.loss_rows(out.flatten(0, 1), rows.y.flatten(0, 1), options.forecast_loss).mean().backward()

        def seconds(fn: Callable[[], None]) -> float:
            fn()
            t0 = time.perf_counter()
            for _ in range(repeats if measure else 0):
                fn()
            return time.perf_counter() - t0

        alone = seconds(one) if measure else 0.0
        if alone > ARITHMETIC_S * max(1, repeats):  # the step is arithmetic: nothing to save, no need to ask
            _PAYS[key] = False
            return False
        try:
            together = seconds(batched)
        except Exception as exc:  # whatever vmap refuses: the folds train one by one
            log.info("cellsearch: folds train one by one: the model cannot run batched (%s: %s)",
                     type(exc).__name__, str(exc).splitlines()[0][:200])
            _PAYS[key] = False
        else:
            _PAYS[key] = not measure or together <= PAYS_BELOW * len(models) * alone
    return _PAYS[key]
