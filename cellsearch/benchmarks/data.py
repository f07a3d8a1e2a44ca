"""Loader speed and memory on a large long-layout CSV (``python -m cellsearch.benchmarks.data``).

Makes a file of ``sequences x steps`` rows (default 10,000 x 100 = 1,000,000 rows, 8 features and a
label), then times ``read_dataset`` (read, validate, split, scale, pad) in a fresh process and reads
that process's peak resident memory. Goal: at most 10 s and at most 4x the file's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def make_file(path: Path, sequences: int = 10_000, steps: int = 100, features: int = 8, seed: int = 0) -> None:
    """Write the benchmark's long CSV: ids, steps, ``features`` normal values (4 decimals), a label."""
    import numpy as np
    import pyarrow as pa
    from pyarrow import csv as pacsv

    rng = np.random.default_rng(seed)
    n = sequences * steps
    columns = {"id": np.repeat(np.arange(sequences), steps), "t": np.tile(np.arange(steps), sequences)}
    for j in range(features):
        columns[f"f{j}"] = rng.normal(size=n).round(4).astype(np.float32)
    columns["label"] = np.repeat(rng.integers(0, 5, size=sequences), steps)
    with open(path, "wb") as fh:
        fh.write((",".join(columns) + "\n").encode())
        pacsv.write_csv(pa.table(columns), fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))


_PEAK = """
def peak_bytes():
    # VmHWM is this process's own high-water mark; ru_maxrss would also count the parent's memory
    # before exec (a child of a large process reports at least that).
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""

_MEASURE = _PEAK + """
import json, sys, time
t0 = time.perf_counter()
import numpy, pandas, pyarrow.csv
t1 = time.perf_counter()
from cellsearch.data import read_dataset
ds = read_dataset(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "peak_bytes": peak_bytes(),
                  "n_sequences": ds.info["n_sequences"], "shape": list(ds.splits["train"].x.shape)}))
"""


def measure(path: Path) -> dict:
    """Time ``read_dataset`` in a fresh interpreter; peak RSS includes the interpreter itself."""
    base = subprocess.run([sys.executable, "-c", _PEAK + "import numpy, pandas, pyarrow.csv\nprint(peak_bytes())"],
                          capture_output=True, text=True, check=True)
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    size = path.stat().st_size
    res.update(file_bytes=size, baseline_bytes=int(base.stdout), ratio=res["peak_bytes"] / size,
               ratio_above_baseline=(res["peak_bytes"] - int(base.stdout)) / size)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--file", type=Path, help="use (or create) this CSV instead of a temporary one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or Path(tmp) / "long.csv"
        if not path.exists():
            make_file(path, args.sequences, args.steps)
        res = measure(path)
    print(json.dumps(res, indent=2))
    print(f"{res['n_sequences']} sequences, {res['file_bytes'] / 1e6:.0f} MB: load {res['load_s']:.2f} s, "
          f"peak memory {res['peak_bytes'] / 1e6:.0f} MB = {res['ratio']:.2f}x the file "
          f"({res['ratio_above_baseline']:.2f}x above the interpreter's own {res['baseline_bytes'] / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
