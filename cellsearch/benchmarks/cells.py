"""Speed of each cell variant against torch's own fused ``nn.LSTM`` (``cellsearch bench``).

The protocol follows ``shared/checks/cell_speed.py``: one layer, batch 64, 100 steps, 16 inputs,
forward + backward of ``out.sum()``, 3 warm-up calls, 7 timed repeats, against an ``nn.LSTM`` of the
same hidden size in the same process; the timings are interleaved (reference, then each variant, in
every repeat) and the ratio is the median of the per-repeat ratios, which keeps it steady on a busy
machine. A last row times a stack of native layers
against torch's multi-layer module of the same shape, and ``gru vs nn.GRU`` times the GRU cell against
torch's own ``nn.GRU``. ``backend`` forces the compiled loop's recurrent-GEMM backend
(``CELLSEARCH_GEMM``) for the run; by default each shape uses the one measured fastest here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BenchRow:
    """One measurement: a variant (or stack) at one width."""

    variant: str
    hidden: int
    ms: float
    ratio: float
    reference_ms: float


def _median_seconds(step: Callable[[], None], device: str, warmup: int = 3, repeats: int = 7) -> float:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_bench(*, hidden: tuple[int, ...] = (64, 256), device: str = "cpu", threads: int = 2,
              batch: int = 64, steps: int = 100, inputs: int = 16, repeats: int = 7,
              variants: tuple[str, ...] | None = None, backend: str | None = None) -> list[BenchRow]:
    """Time forward + backward of each variant; returns one row per variant and width.

    Example:
        >>> rows = run_bench(hidden=(64,), repeats=3)
        >>> {r.variant for r in rows} >= {"lstm", "peephole", "cifg", "gru"}
        True
    """
    import os

    if backend is None:
        return _run(hidden, device, threads, batch, steps, inputs, repeats, variants)
    before = os.environ.get("CELLSEARCH_GEMM")
    os.environ["CELLSEARCH_GEMM"] = backend
    try:
        return _run(hidden, device, threads, batch, steps, inputs, repeats, variants)
    finally:
        if before is None:
            os.environ.pop("CELLSEARCH_GEMM", None)
        else:
            os.environ["CELLSEARCH_GEMM"] = before


def _run(hidden: tuple[int, ...], device: str, threads: int, batch: int, steps: int, inputs: int, repeats: int,
         variants: tuple[str, ...] | None) -> list[BenchRow]:
    import torch

    from cellsearch.cells import CELLS
    from cellsearch.stack import CellStack

    if device == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    names = variants or tuple(CELLS)
    rows: list[BenchRow] = []

    def fwd_bwd(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
        def step() -> None:
            out = module(x)
            out = out[0] if isinstance(out, tuple) else out
            out.sum().backward()
        return step

    for h in hidden:
        x = torch.randn(batch, steps, inputs, device=device)
        ref = fwd_bwd(torch.nn.LSTM(inputs, h, batch_first=True).to(device), x)
        cands = {name: fwd_bwd(CellStack(input_size=inputs, layers=[(name, h)]).to(device), x) for name in names}
        cands["stack lstm x2"] = fwd_bwd(CellStack(input_size=inputs, layers=[("lstm", h), ("lstm", h)]).to(device), x)
        ref2 = fwd_bwd(torch.nn.LSTM(inputs, h, num_layers=2, batch_first=True).to(device), x)
        if "gru" in names:
            cands["gru vs nn.GRU"] = cands["gru"]
        ref3 = fwd_bwd(torch.nn.GRU(inputs, h, batch_first=True).to(device), x)
        # Interleaved: each repeat times the reference and then every candidate, so a noisy machine
        # disturbs both sides of a ratio alike; the ratio reported is the median of per-repeat ratios.
        refs = {"ref": ref, "ref2": ref2, "ref3": ref3}
        times: dict[str, list[float]] = {k: [] for k in [*cands, *refs]}
        for step in [*refs.values(), *cands.values()]:
            for _ in range(3):
                step()
        for _ in range(repeats):
            for k, step in refs.items():
                times[k].append(_median_seconds(step, device, warmup=0, repeats=1))
            for k, step in cands.items():
                if k != "gru vs nn.GRU":  # the same module as "gru": timed once, compared twice
                    times[k].append(_median_seconds(step, device, warmup=0, repeats=1))
        if "gru vs nn.GRU" in cands:
            times["gru vs nn.GRU"] = times["gru"]
        for k in cands:
            base = times["ref2" if k.startswith("stack") else "ref3" if k == "gru vs nn.GRU" else "ref"]
            ratio = statistics.median(a / b for a, b in zip(times[k], base))
            rows.append(BenchRow(k, h, statistics.median(times[k]) * 1e3, ratio, statistics.median(base) * 1e3))
    return rows


def rows_to_json(rows: list[BenchRow]) -> list[dict[str, float | int | str]]:
    return [asdict(r) for r in rows]
