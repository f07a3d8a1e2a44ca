"""Speed of each cell variant against torch's own fused ``nn.LSTM`` (``cellsearch bench``).

The protocol matches ``shared/checks/cell_speed.py``: one layer, batch 64, 100 steps, 16 inputs,
forward + backward of ``out.sum()``, 3 warm-up calls and the median of 7, the reference ``nn.LSTM``
of the same hidden size timed in the same process. A last row times a stack of native layers
against torch's multi-layer module of the same shape.
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
              variants: tuple[str, ...] | None = None) -> list[BenchRow]:
    """Time forward + backward of each variant; returns one row per variant and width.

    Example:
        >>> rows = run_bench(hidden=(64,), repeats=3)
        >>> {r.variant for r in rows} >= {"lstm", "peephole", "cifg", "gru"}
        True
    """
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
        ref_mod = torch.nn.LSTM(inputs, h, batch_first=True).to(device)
        ref = _median_seconds(fwd_bwd(ref_mod, x), device, repeats=repeats)
        for name in names:
            mod = CellStack(input_size=inputs, layers=[(name, h)]).to(device)
            t = _median_seconds(fwd_bwd(mod, x), device, repeats=repeats)
            rows.append(BenchRow(name, h, t * 1e3, t / ref, ref * 1e3))
        # A stack of native layers against torch's own multi-layer module.
        ref2 = torch.nn.LSTM(inputs, h, num_layers=2, batch_first=True).to(device)
        t_ref2 = _median_seconds(fwd_bwd(ref2, x), device, repeats=repeats)
        stack = CellStack(input_size=inputs, layers=[("lstm", h), ("lstm", h)]).to(device)
        t_stack = _median_seconds(fwd_bwd(stack, x), device, repeats=repeats)
        rows.append(BenchRow("stack lstm x2", h, t_stack * 1e3, t_stack / t_ref2, t_ref2 * 1e3))
    return rows


def rows_to_json(rows: list[BenchRow]) -> list[dict[str, float | int | str]]:
    return [asdict(r) for r in rows]
