"""End to end in memory: 100,000 cells x 20,000 genes, sparse CSR float32.

Usage::

    python benchmarks/end_to_end.py [--n-cells 100000] [--n-genes 20000] [--n-jobs 2]
                                    [--repeats 3]

Simulated negative binomial counts, log-normalised (~7% non-zero), loaded into
memory; ``svp.tl.variance_partition`` is timed as a user calls it (design checks,
the pass over the data, the fits, the result tables), then its two phases alone;
each ``--repeats`` times, reporting the median and the range.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _data import simulated

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.lmm import fit_lmm
from scvarpart.suffstats import design_gram


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=100_000)
    ap.add_argument("--n-genes", type=int, default=20_000)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    adata = simulated(args.n_cells, args.n_genes)
    X = adata.X
    print(
        f"{adata.n_obs:,} cells x {adata.n_vars:,} genes, {X.format} {X.dtype}, "
        f"{X.nnz / np.prod(X.shape):.1%} non-zero, n_jobs={args.n_jobs}"
    )
    formula = svp.datasets.SIMULATION_FORMULA
    svp.tl.variance_partition(adata[:500, :20].copy(), formula, progress=False)  # compile
    totals = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        svp.tl.variance_partition(
            adata,
            formula,
            batch=["chemistry", "day", "operator"],
            signal="patient",
            n_jobs=args.n_jobs,
            progress=False,
        )
        totals.append(time.perf_counter() - start)
    summary = adata.uns["varpart"]["summary"]
    print(f"svp.tl.variance_partition end to end: {_spread(totals)}")
    print(
        f"  {summary['n_genes'] - summary['n_failed']:,} genes fitted, "
        f"{summary['n_singular']:,} singular, {summary['n_not_converged']} not converged, "
        f"{summary['n_failed']} without estimates"
    )

    design = build_design(formula, adata.obs)
    passes, fits = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        stats = svp.lmm.response_stats(X, design, n_jobs=args.n_jobs).response
        passes.append(time.perf_counter() - start)
        start = time.perf_counter()
        fit_lmm(design_gram(design), stats, n_jobs=args.n_jobs)
        fits.append(time.perf_counter() - start)
    t_pass, t_fit = np.median(passes), np.median(fits)
    print(
        f"  phases: pass over the data {_spread(passes)} ({X.nnz / t_pass / 1e6:.0f}M "
        f"non-zeros/s), fits {_spread(fits)} ({args.n_genes / t_fit:,.0f} genes/s)"
    )


def _spread(times: list[float]) -> str:
    return f"{np.median(times):.1f} s ({min(times):.1f}-{max(times):.1f})"


if __name__ == "__main__":
    main()
