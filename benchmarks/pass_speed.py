"""The pass over the data against the speed of memory: 200,000 cells x 5,000 genes, CSR float32.

Usage::

    python benchmarks/pass_speed.py [--n-cells 200000] [--n-genes 5000] [--repeats 3]

Times, in the same run and alternating (the machine is shared: every figure is a
median over ``--repeats`` with its range, and each ratio is taken within a repeat):

(a) the speed of memory: one plain fused loop over the non-zeros that accumulates
    per-gene sums, sums of squares, non-zero counts, ``Z'y`` (from each cell's
    level of each factor) and ``X'y``, and nothing else;
(b) ``scvarpart.suffstats.response_stats`` with ``n_jobs=1`` and ``2``;
(c) ``svp.tl.variance_partition`` end to end with ``n_jobs=1`` and ``2``;

then, in a fresh process per setting, the peak resident memory of (c) beyond the
loaded matrix, as a fraction of the matrix's size. Data: simulated negative
binomial counts, log-normalised (``benchmarks/_data.py``), design patient (24
levels) x chemistry (3) x day (8) x operator (6) plus ``log_umi``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numba as nb
import numpy as np
from _data import simulated

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.suffstats import response_stats
from scvarpart.suffstats.gram import centred_fixed, indicator_matrix

FORMULA = "~ log_umi + (1|patient) + (1|chemistry) + (1|day) + (1|operator)"


@nb.njit(cache=True, nogil=True)
def fused_loop(indptr, indices, data, levels, x, n_genes, n_levels):
    """The reference: one loop over the non-zeros, every accumulator updated in it.

    Written for this design (four factors, two fixed-effect columns), unrolled, with
    each row's levels and covariates in registers: the fastest plain loop, so the
    ratios against it are not flattered. No numerical care (``sum(y^2)`` uncentred).
    """
    total = np.zeros(n_genes)
    squares = np.zeros(n_genes)
    nonzero = np.zeros(n_genes, dtype=np.int64)
    zy = np.zeros((n_levels, n_genes))
    xy = np.zeros((2, n_genes))
    for i in range(len(indptr) - 1):
        l0, l1, l2, l3 = levels[i, 0], levels[i, 1], levels[i, 2], levels[i, 3]
        x0, x1 = x[i, 0], x[i, 1]
        for t in range(indptr[i], indptr[i + 1]):
            j = indices[t]
            y = np.float64(data[t])
            total[j] += y
            squares[j] += y * y
            nonzero[j] += 1
            zy[l0, j] += y
            zy[l1, j] += y
            zy[l2, j] += y
            zy[l3, j] += y
            xy[0, j] += x0 * y
            xy[1, j] += x1 * y
    return total, squares, nonzero, zy, xy


def _spread(times: list[float]) -> str:
    return f"{np.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"


def _ratios(values: list[float]) -> str:
    return f"{np.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _status(field: str) -> int:
    """A field of /proc/self/status, in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def memory_child(n_cells: int, n_genes: int, n_jobs: int) -> None:
    """In a fresh process: load, warm up, then the peak RSS of one fit beyond that."""
    warnings.simplefilter("ignore")
    adata = simulated(n_cells, n_genes)
    X = adata.X
    size = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    svp.tl.variance_partition(adata[:500, :20].copy(), FORMULA, progress=False)  # compile
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from here
    svp.tl.variance_partition(adata, FORMULA, progress=False, n_jobs=n_jobs)
    peak = _status("VmHWM")
    print(json.dumps({"size": size, "overhead": peak - before}))


def _memory(args, n_jobs: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n_jobs),
         "--n-cells", str(args.n_cells), "--n-genes", str(args.n_genes)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=200_000)
    ap.add_argument("--n-genes", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.n_cells, args.n_genes, args.memory_child)
        return

    warnings.simplefilter("ignore")  # ML with few levels: known, not what is timed
    adata = simulated(args.n_cells, args.n_genes)
    X = adata.X
    print(
        f"{adata.n_obs:,} cells x {adata.n_vars:,} genes, {X.format} {X.dtype}, "
        f"{X.nnz / np.prod(X.shape):.1%} non-zero ({X.nnz / 1e6:.0f}M), {FORMULA!r}"
    )
    design = build_design(FORMULA, adata.obs)
    Z, Xc = indicator_matrix(design), centred_fixed(design)[0]
    levels = Z.indices.reshape(Z.shape[0], -1).astype(np.int64)  # one level per factor
    x = np.ascontiguousarray(Xc)
    steps = {
        "fused loop": lambda: fused_loop(
            X.indptr, X.indices, X.data, levels, x, X.shape[1], Z.shape[1]
        ),
        "response_stats n_jobs=1": lambda: response_stats(X, Z, Xc, n_jobs=1),
        "response_stats n_jobs=2": lambda: response_stats(X, Z, Xc, n_jobs=2),
        "end to end n_jobs=1": lambda: svp.tl.variance_partition(
            adata, FORMULA, progress=False, n_jobs=1, inplace=False
        ),
        "end to end n_jobs=2": lambda: svp.tl.variance_partition(
            adata, FORMULA, progress=False, n_jobs=2, inplace=False
        ),
    }
    small = adata[:500, :20].copy()
    fused_loop(X.indptr[:11], X.indices, X.data, levels, x, X.shape[1], Z.shape[1])  # compile
    response_stats(small.X, *(m[:500] for m in (Z, Xc)))
    svp.tl.variance_partition(small, FORMULA, progress=False)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(_timed(step))
    loop = np.array(times["fused loop"])
    print(f"{'':26}{'time':>24}{'non-zeros/s':>14}{'/ fused loop':>24}")
    for name, values in times.items():
        rate = f"{X.nnz / np.median(values) / 1e6:.0f}M"
        ratio = "" if name == "fused loop" else _ratios(list(np.array(values) / loop))
        print(f"{name:26}{_spread(values):>24}{rate:>14}{ratio:>24}")
    for n_jobs in (1, 2):
        mem = _memory(args, n_jobs)
        print(
            f"peak memory of end to end n_jobs={n_jobs} beyond the loaded matrix: "
            f"{mem['overhead'] / 2**20:,.0f} MB = {mem['overhead'] / mem['size']:.0%} of X "
            f"({mem['size'] / 2**20:,.0f} MB)"
        )


if __name__ == "__main__":
    main()
