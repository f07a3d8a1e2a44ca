"""Ctrl-C during a search lands where nothing is half-written.

A ``KeyboardInterrupt`` raised at an arbitrary bytecode can fall inside a storage call: between
Optuna creating a trial and calling the objective, inside the write that ends a trial, inside a
database session or a connection pool's lock. The trial then stays ``RUNNING`` for good (until its
heartbeat goes stale), or a later write of the same process waits on what the interrupted one held
(a worker that never ends, killed after a minute, its trial still running).

So within ``deferred_interrupts()`` (the trial loop of ``tune`` and of each worker process, and the
loop that waits for the workers) Ctrl-C only marks itself pending, and the loop raises it at its next
safe point (``check``). Where stopping at once is safe and matters, the training steps
(``interruptible()``, around ``trainer.fit``), it raises at once, except within ``protected()`` (a
validation check's records and pruning report, written from inside training). A third Ctrl-C while
one is pending raises at once wherever it lands, for a process stuck in a call that does not return
(not the second: a terminal's Ctrl-C reaches a worker process directly and again forwarded by the
``tune`` process that started it).

Outside ``deferred_interrupts()`` (or off the main thread, where Python takes no signal handler)
these contexts change nothing and Ctrl-C is Python's own.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _State:
    deferring = False  # our handler is installed
    pending = 0  # Ctrl-Cs that came and wait for a safe point
    open = 0  # > 0: inside interruptible() and not protected(): Ctrl-C raises at once


_S = _State()


#: The number of Ctrl-Cs, pending together, at which the last raises wherever it lands.
INSISTENT = 3


def _handler(signum: int, frame: object) -> None:
    _S.pending += 1
    if _S.pending >= INSISTENT or _S.open > 0:
        _S.pending = 0
        raise KeyboardInterrupt


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within, Ctrl-C waits for ``check`` (or raises inside ``interruptible``). Nests; a no-op off
    the main thread or where SIGINT is not Python's default handler (ignored, or the caller's own)."""
    if (_S.deferring or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    _S.deferring, _S.pending, _S.open = True, 0, 0
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        pending = _S.pending
        _S.deferring, _S.pending, _S.open = False, 0, 0
        if pending:  # it came after the last safe point: it still ends what follows
            raise KeyboardInterrupt


def check() -> None:
    """A safe point: raise the Ctrl-C that came while deferred, if one did."""
    if _S.pending:
        _S.pending = 0
        raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """Within, Ctrl-C raises at once (a pending one raises on entry)."""
    if not _S.deferring:
        yield
        return
    check()
    _S.open += 1
    try:
        yield
    finally:
        _S.open -= 1


@contextmanager
def protected() -> Iterator[None]:
    """Within, Ctrl-C waits even inside ``interruptible``; a pending one raises on leaving it there."""
    if not _S.deferring:
        yield
        return
    saved, _S.open = _S.open, 0
    try:
        yield
    finally:
        _S.open = saved
    if saved > 0:
        check()
