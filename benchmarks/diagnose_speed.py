"""Speed of ``svp.tl.diagnose``: every gene's model checks, in seconds.

Usage::

    python benchmarks/diagnose_speed.py [--n-cells 100000] [--n-genes 20000] [--n-jobs 2]
                                        [--repeats 1]

The data of ``benchmarks/end_to_end.py`` (simulated counts, log-normalised, sparse CSR
float32; patient x chemistry x day x operator, two covariates), fitted once with
``svp.tl.variance_partition``. Then ``svp.tl.diagnose`` of every gene is timed, and its
parts alone: the refit with BLUPs (standardised BLUPs), the pass over the cells for the
residual checks, and the leave-one-level-out refits of the batch factors (3 + 8 + 6
levels: 17 refits).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from _data import simulated

import scvarpart as svp

BATCH = ["chemistry", "day", "operator"]


def _spread(values: list[float]) -> str:
    return f"{np.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=100_000)
    ap.add_argument("--n-genes", type=int, default=20_000)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    adata = simulated(args.n_cells, args.n_genes)
    formula = svp.datasets.SIMULATION_FORMULA
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = adata[:2000, :20].copy()
        svp.tl.variance_partition(small, formula, batch=BATCH, signal="patient", progress=False)
        svp.tl.diagnose(small)  # compile
        svp.tl.variance_partition(
            adata, formula, batch=BATCH, signal="patient", n_jobs=args.n_jobs, progress=False
        )
    print(f"{adata.n_obs:,} cells x {adata.n_vars:,} genes, n_jobs={args.n_jobs}")
    parts = {
        "diagnose (all of it)": {},
        "  refit with BLUPs only": {"leave_out": [], "residuals": False},
        "  + residual pass": {"leave_out": [], "residuals": True},
        "  + leave-one-level-out of the batch factors": {"residuals": False},
    }
    for name, options in parts.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                svp.tl.diagnose(adata, n_jobs=args.n_jobs, inplace=False, **options)
            times.append(time.perf_counter() - start)
        print(f"{name}: {_spread(times)}")


if __name__ == "__main__":
    main()
