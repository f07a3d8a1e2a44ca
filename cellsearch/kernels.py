"""The compiled time loop for the custom LSTM-family cells, with a pure-PyTorch fallback.

The C++ source in ``csrc/lstm_family.cpp`` is built once per machine and CPU capability with
``torch.utils.cpp_extension`` (about 10 s, cached under torch's extension directory) the first time a
custom cell runs on the CPU. Where no compiler is available, or ``CELLSEARCH_NO_EXT=1`` is set, the
cells use a pure-PyTorch step loop with the same equations: slower, never different.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from cellsearch.files import atomic_path, write_text

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).parent / "csrc" / "lstm_family.cpp"
#: The extension's state in this process: whether it was tried and loaded, why not, its build folder and
#: the measured GEMM choices.
STATE: dict[str, Any] = {"tried": False, "ok": False, "error": None}

_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


#: A build lock older than this is left by a process killed mid-build (a build takes ~10-60 s).
STALE_LOCK_S = 300.0


def clear_stale_lock(lock: Path) -> None:
    """Remove torch's build lock when it is older than ``STALE_LOCK_S``: torch waits for a lock
    forever, so one left by a process killed during the build would hang every later process."""
    import time

    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        log.warning("cellsearch: removing a stale build lock (%.0f s old): %s", age, lock)
        lock.unlink(missing_ok=True)


def _build() -> None:
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-std=c++17"]
    if capability in _CAPABILITY_FLAGS:
        flags += [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
        flags += _CAPABILITY_FLAGS[capability]
    source = _SOURCE.read_bytes()
    import sys

    digest = hashlib.sha1(source + torch.__version__.encode() + sys.version.encode()).hexdigest()[:10]
    name = f"cellsearch_lstm_{capability.lower()}_{digest}"
    # One build folder per source digest, holding its own copy of the source: every checkout and
    # install of the same source builds the same file once (torch rebuilds when a source path
    # changes, and concurrent rebuilds from several checkouts contend for one lock).
    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / name
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / _SOURCE.name
    if not copy.exists() or copy.read_bytes() != source:
        with atomic_path(copy) as tmp:
            tmp.write_bytes(source)
    clear_stale_lock(folder / "lock")
    STATE["folder"] = folder
    cpp_extension.load(
        name=name,
        sources=[str(copy)],
        extra_cflags=flags,
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )


def available() -> bool:
    """Whether the compiled loop can be used, building it on first call (cached per machine)."""
    if not STATE["tried"]:
        STATE["tried"] = True
        if os.environ.get("CELLSEARCH_NO_EXT") == "1":
            STATE["error"] = "disabled by CELLSEARCH_NO_EXT=1"
        else:
            try:
                _build()
                STATE["ok"] = True
            except Exception as exc:  # no compiler, no ninja, odd platform: fall back, say why
                STATE["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}"
                log.warning("cellsearch: compiled cell loop unavailable (%s); using PyTorch fallback",
                            STATE["error"])
    return bool(STATE["ok"])


def status() -> str:
    """A one-line description of the kernel in use, for `cellsearch bench` and bug reports."""
    if available():
        forced = os.environ.get("CELLSEARCH_GEMM")
        how = f"forced by CELLSEARCH_GEMM={forced}" if forced else "chosen per shape by measurement"
        return (f"compiled ({torch.backends.cpu.get_cpu_capability()}); recurrent GEMM backends "
                f"{', '.join(gemm_backends())}, {how}")
    return f"pure PyTorch fallback ({STATE['error']})"


# ---- the recurrent product's backend ---------------------------------------------------------------
#: The backends of the per-step product h @ R^T, as the compiled loop numbers them: MKL's packed GEMM,
#: ATen's mm (torch's BLAS), and the loop's own register-blocked kernel.
GEMMS = {"mkl": 0, "aten": 1, "blocked": 2}
_CACHE_NAME = "gemm_choice.json"


def gemm_backends() -> list[str]:
    """The backends this machine's build can run (MKL only where torch links it)."""
    if not available():
        return []
    return torch.ops.cellsearch_kernels.info().split(";")[0].split(",")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s), part of the choice's cache key (read once per process)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _bucket(batch: int) -> int:
    return 1 << max(0, int(batch) - 1).bit_length()


def gemm_for(batch: int, hidden: int, blocks: int) -> int:
    """The backend for a recurrent product of ``batch`` rows, ``hidden`` units and ``blocks`` gate
    blocks: ``CELLSEARCH_GEMM`` when set, else the fastest measured on this machine for that shape
    (batch rounded up to a power of two; forward and backward timed together), measured once and
    cached beside the built extension, keyed by CPU model, capability and thread count."""
    forced = os.environ.get("CELLSEARCH_GEMM")
    if forced:
        if forced not in gemm_backends():
            raise ValueError(f"CELLSEARCH_GEMM={forced}: this machine has {', '.join(gemm_backends())}")
        return GEMMS[forced]
    key = f"{cpu_model()}|{torch.backends.cpu.get_cpu_capability()}|t{torch.get_num_threads()}|" \
          f"b{_bucket(batch)}|h{hidden}|g{blocks}"
    cache = _cache()
    if key not in cache:
        cache[key] = min(gemm_backends(), key=lambda b: measure_gemm(b, _bucket(batch), hidden, blocks))
        _save_cache(cache)
    return GEMMS[cache[key]]


def measure_gemm(backend: str, batch: int, hidden: int, blocks: int, steps: int = 16, repeats: int = 3) -> float:
    """Seconds for one forward and backward pass of the compiled loop over ``steps`` steps with
    ``backend`` (the best of ``repeats``); what ``gemm_for`` compares."""
    import time

    g = torch.Generator().manual_seed(0)
    xp = torch.randn(steps, batch, blocks * hidden, generator=g)
    R = torch.randn(blocks * hidden, hidden, generator=g) / hidden ** 0.5  # noqa: N806
    peep = torch.zeros(0)
    coupled = blocks == 3
    ops = torch.ops.cellsearch_kernels
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            y, c, tc, gates = ops.lstm_family_forward(xp, R, peep, False, coupled, GEMMS[backend])
            ops.lstm_family_backward(y, y, c, tc, gates, R, peep, False, coupled, GEMMS[backend])
            times.append(time.perf_counter() - t0)
    return min(times[1:])  # the first pass only warms caches and threads up


def _cache() -> dict[str, str]:
    if "gemm" not in STATE:
        import json

        path = STATE.get("folder")
        try:
            STATE["gemm"] = json.loads((path / _CACHE_NAME).read_text()) if path else {}
        except (OSError, ValueError):
            STATE["gemm"] = {}
    return STATE["gemm"]


def _save_cache(cache: dict[str, str]) -> None:
    import json

    path = STATE.get("folder")
    if path is None:
        return
    try:
        write_text(path / _CACHE_NAME, json.dumps(cache, indent=1, sort_keys=True))
    except OSError:  # a read-only extension folder: measure again next time
        pass


class LSTMFamilyFunction(torch.autograd.Function):
    """Recurrence of the LSTM family over precomputed input projections, with a hand-written backward.

    Inputs: ``xp`` (T, B, G*H) input projections plus biases, ``R`` (G*H, H) recurrent weights,
    ``peep`` (3, H) peephole weights (ignored unless ``use_peep``). Output: ``y`` (T, B, H). Under
    ``torch.func.vmap`` (the folds of a trial trained as one batched model, ``cellsearch.foldbatch``)
    each model of the batch runs the compiled loop on its own weights (``vmap`` below).
    """

    @staticmethod
    def forward(xp: torch.Tensor, R: torch.Tensor, peep: torch.Tensor,  # noqa: N803
                use_peep: bool, coupled: bool) -> tuple[torch.Tensor, ...]:
        gemm = gemm_for(xp.shape[1], R.shape[1], R.shape[0] // R.shape[1])
        y, c, tc, gates = torch.ops.cellsearch_kernels.lstm_family_forward(
            xp.contiguous(), R.contiguous(), peep.contiguous(), use_peep, coupled, gemm)
        return y, c, tc, gates, torch.tensor(gemm)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        _, R, peep, use_peep, coupled = inputs  # noqa: N806
        y, c, tc, gates, gemm = output
        ctx.save_for_backward(y, c, tc, gates, R, peep)
        ctx.flags = (use_peep, coupled, int(gemm))
        ctx.mark_non_differentiable(c, tc, gates, gemm)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        y, c, tc, gates, R, peep = ctx.saved_tensors  # noqa: N806
        dxp, dR, dpeep = torch.ops.cellsearch_kernels.lstm_family_backward(  # noqa: N806
            dy.contiguous(), y, c, tc, gates, R.contiguous(), peep.contiguous(), *ctx.flags)
        return dxp, dR, dpeep, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], xp: torch.Tensor, R: torch.Tensor,  # noqa: N803
             peep: torch.Tensor, use_peep: bool, coupled: bool) -> tuple[Any, Any]:
        parts = [LSTMFamilyFunction.apply(*args, use_peep, coupled)
                 for args in _members(info.batch_size, in_dims[:3], xp, R, peep)]
        return tuple(torch.stack(p) for p in zip(*parts)), (0,) * 5


def _members(n: int, in_dims: tuple[Any, ...], *args: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Each of the ``n`` models' arguments: the arguments batched along ``in_dims`` cut apart (one
    ``unbind`` each, so that their gradients are put together by one ``stack``), the unbatched ones
    shared."""
    cut = [[a] * n if d is None else a.unbind(d) for a, d in zip(args, in_dims)]
    return list(zip(*cut))


class GRUFunction(torch.autograd.Function):
    """torch's GRU recurrence over precomputed input projections, with a hand-written backward.

    Inputs: ``xp`` (T, B, 3H) = x W_ih^T + b_ih (blocks r, z, n), ``R`` = W_hh (3H, H), ``bh`` = b_hh.
    Under ``torch.func.vmap`` each model of the batch runs on its own weights, as
    ``LSTMFamilyFunction``.
    """

    @staticmethod
    def forward(xp: torch.Tensor, R: torch.Tensor, bh: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: N803
        gemm = gemm_for(xp.shape[1], R.shape[1], 3)
        y, gates, hn = torch.ops.cellsearch_kernels.gru_forward(xp.contiguous(), R.contiguous(), bh.contiguous(),
                                                                gemm)
        return y, gates, hn, torch.tensor(gemm)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        y, gates, hn, gemm = output
        ctx.save_for_backward(y, gates, hn, inputs[1])
        ctx.gemm = int(gemm)
        ctx.mark_non_differentiable(gates, hn, gemm)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *_: Any) -> tuple[torch.Tensor, ...]:
        y, gates, hn, R = ctx.saved_tensors  # noqa: N806
        return tuple(torch.ops.cellsearch_kernels.gru_backward(dy.contiguous(), y, gates, hn, R.contiguous(),
                                                               ctx.gemm))

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], xp: torch.Tensor, R: torch.Tensor,  # noqa: N803
             bh: torch.Tensor) -> tuple[Any, Any]:
        parts = [GRUFunction.apply(*args) for args in _members(info.batch_size, in_dims, xp, R, bh)]
        return tuple(torch.stack(p) for p in zip(*parts)), (0,) * 4


def under_vmap(x: torch.Tensor) -> bool:
    """Whether ``x`` is one model's view of a batch of models (inside ``torch.func.vmap``: the folds of
    a trial trained together, ``cellsearch.foldbatch``)."""
    return bool(torch._C._functorch.is_batchedtensor(x))


def fused_cpu_ok(x: torch.Tensor) -> bool:
    """Whether the compiled CPU loop applies to this tensor (else torch's own path is used)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.jit.is_scripting()
            and not torch.onnx.is_in_onnx_export() and available())


def lstm_family_steps(xp: torch.Tensor, R: torch.Tensor, peep: torch.Tensor,  # noqa: N803
                      use_peep: bool, coupled: bool, record: bool = False,
                      clamp: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same recurrence as ``LSTMFamilyFunction`` as a plain autograd step loop.

    It is the fallback (no compiler, GPUs, export) and, with ``record=True``, the gate tracer used
    for the gate-activation plots. Returns ``y`` (T, B, H) and, when recording, each gate's
    activations over time (``i``, ``f``, ``g``, ``o``, ``c``), each (T, B, H). ``clamp`` maps gate
    names (``i``, ``f``, ``o``) to values (scalars or (H,)) that replace those gates' activations at
    every step (``cellsearch.explain``); a coupled cell's input gate follows its clamped forget gate.
    """
    B, H = xp.shape[1], R.shape[1]  # noqa: N806
    h = xp.new_zeros(B, H)
    c = xp.new_zeros(B, H)
    p_i, p_f, p_o = peep.unbind(0) if use_peep else (None, None, None)
    fixed = {k: torch.as_tensor(v, dtype=xp.dtype, device=xp.device).expand(B, H) for k, v in (clamp or {}).items()}
    outs: list[torch.Tensor] = []
    trace: dict[str, list[torch.Tensor]] = {k: [] for k in "ifgoc"} if record else {}
    for x_t in xp.unbind(0):
        a = x_t + h @ R.t()
        if coupled:
            a_f, a_g, a_o = a.chunk(3, dim=1)
        else:
            a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
        f = fixed["f"] if "f" in fixed else torch.sigmoid(a_f + p_f * c if use_peep else a_f)
        if coupled:
            i = 1.0 - f
        else:
            i = fixed["i"] if "i" in fixed else torch.sigmoid(a_i + p_i * c if use_peep else a_i)
        g = torch.tanh(a_g)
        c = f * c + i * g
        o = fixed["o"] if "o" in fixed else torch.sigmoid(a_o + p_o * c if use_peep else a_o)
        h = o * torch.tanh(c)
        outs.append(h)
        for k, v in zip("ifgoc", (i, f, g, o, c)) if record else ():
            trace[k].append(v)
    return torch.stack(outs, 0), {k: torch.stack(v, 0) for k, v in trace.items()}


def gru_steps(xp: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, record: bool = False,
              clamp: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``nn.GRU``'s recurrence as a plain step loop over projected inputs ``xp`` (T, B, 3H): the gate
    tracer (``record``: ``r``, ``z``, ``n`` over time) and the clamped path (``clamp``: ``r``/``z`` →
    value), as ``lstm_family_steps`` is for the LSTM family."""
    B, H = xp.shape[1], w_hh.shape[1]  # noqa: N806
    h = xp.new_zeros(B, H)
    fixed = {k: torch.as_tensor(v, dtype=xp.dtype, device=xp.device).expand(B, H) for k, v in (clamp or {}).items()}
    outs: list[torch.Tensor] = []
    trace: dict[str, list[torch.Tensor]] = {k: [] for k in "rzn"} if record else {}
    for x_t in xp.unbind(0):
        hp = h @ w_hh.t() + b_hh
        xr, xz, xn = x_t.chunk(3, 1)
        hr, hz, hn = hp.chunk(3, 1)
        r = fixed["r"] if "r" in fixed else torch.sigmoid(xr + hr)
        z = fixed["z"] if "z" in fixed else torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        outs.append(h)
        for k, v in zip("rzn", (r, z, n)) if record else ():
            trace[k].append(v)
    return torch.stack(outs, 0), {k: torch.stack(v, 0) for k, v in trace.items()}


def lstm_family(xp: torch.Tensor, R: torch.Tensor, peep: torch.Tensor,  # noqa: N803
                use_peep: bool, coupled: bool) -> torch.Tensor:
    """Run the recurrence with the fastest path this tensor's device and dtype allow."""
    if fused_cpu_ok(xp):
        return LSTMFamilyFunction.apply(xp, R, peep, use_peep, coupled)[0]
    return lstm_family_steps(xp, R, peep, use_peep, coupled)[0]
