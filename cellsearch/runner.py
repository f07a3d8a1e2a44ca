"""The trial loop one process runs over a shared study (``run_trials``): ``tune`` runs it in-process,
each worker process runs it too.

It runs trials until the study holds the requested number of finished ones, waits while other
processes hold the remaining slots (taking over a slot whose process died), and rides out a lost
database connection for up to ``RETRY_S`` seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from cellsearch.context import SearchContext
from cellsearch.errors import UserError
from cellsearch.interrupts import check, deferred_interrupts
from cellsearch.objective import Objective, SurplusTrialError
from cellsearch.study import counts, finished, open_storage

#: Storage errors a process waits out (a database restarting, a dropped connection) before giving up.
RETRY_S = 60.0


def _storage_errors() -> tuple[type[BaseException], ...]:
    import optuna
    import sqlalchemy.exc

    return (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, optuna.exceptions.StorageInternalError)


def _storage_ok(st: Any) -> bool:
    try:
        finished(st)
        return True
    except Exception:
        return False


def run_trials(ctx: SearchContext, obj: Objective, target_count: int,
               on_trial: Callable[[Any], None] | None = None) -> None:
    """Run trials until the study holds ``target_count`` finished ones (or the config's deadline).

    A lost database connection is retried with back-off for up to ``RETRY_S`` seconds rather than
    ending the process; a trial cut off by it is failed later through its stale heartbeat.
    """
    import optuna

    running_state = optuna.trial.TrialState.RUNNING
    deadline = ctx.config.deadline
    obj.target_count = target_count
    st = ctx.study
    fails_at_start = counts(st).get("fail", 0)
    outage_since: float | None = None
    pause = 0.5

    def after_trial(study_: Any, trial_: Any) -> None:
        if on_trial is not None:
            on_trial(study_)

    with deferred_interrupts():  # Ctrl-C ends the loop at a safe point, never inside a storage write
        while True:
            try:
                check()
                if finished(st) >= target_count or (deadline is not None and time.time() >= deadline):
                    return
                if counts(st).get("fail", 0) - fails_at_start >= max(3, target_count):
                    return  # something is systematically wrong; do not loop forever
                running = len(st.get_trials(deepcopy=False, states=(running_state,)))
                if finished(st) + running >= target_count:
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
