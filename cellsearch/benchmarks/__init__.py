"""Benchmarks: ``cells`` is ``cellsearch bench`` (the cells' speed against torch's kernels); the others
are developer measurements run as ``python -m cellsearch.benchmarks.NAME``: ``data`` (loader speed
and memory), ``search`` (what pruning saves), ``tracking`` (MLflow overhead), ``scale`` (workers and
storage overhead)."""
