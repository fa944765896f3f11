"""Speed of the fit phase (after the pass over the data), genes per second.

Usage::

    python benchmarks/fit_speed.py [--n-cells 20000] [--n-genes 5000] [--repeats 3]

The issue's single-cell design: patient (24 levels) x chemistry (3) x day (8) x
operator (6), plus two continuous covariates (log_umi, pct_mito), on simulated
negative binomial counts, log-normalised (svp.datasets.simulate_counts). The
sufficient statistics are computed once; the fits of every gene are timed, ML and
REML, on 1 and 2 cores, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.lmm import fit_lmm
from scvarpart.suffstats import design_gram, response_stats
from scvarpart.suffstats.gram import centred_fixed, indicator_matrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=20_000)
    ap.add_argument("--n-genes", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    adata = svp.datasets.simulate_counts(args.n_cells, args.n_genes, seed=0, n_jobs=2)
    design = build_design(svp.datasets.SIMULATION_FORMULA, adata.obs)
    gram = design_gram(design)
    stats = response_stats(adata.X, indicator_matrix(design), centred_fixed(design)[0])
    fit_lmm(gram, stats.subset(np.arange(4)))  # compile (cached after the first run)
    print(
        f"fit phase: {args.n_genes} genes, {args.n_cells} cells, design "
        f"{dict(zip([f.name for f in design.factors], gram.factor_sizes, strict=True))} + "
        f"{design.n_fixed - 1} covariates; {os.cpu_count()} cores"
    )
    for n_jobs in (1, 2):
        for reml in (False, True):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fit = fit_lmm(gram, stats, reml=reml, n_jobs=n_jobs)
                times.append(time.perf_counter() - start)
            ok = fit.error == ""
            label = "REML" if reml else "ML  "
            print(
                f"  {label} n_jobs={n_jobs}: {args.n_genes / min(times):8,.0f} "
                f"genes/s (best of {args.repeats}; median {args.n_genes / np.median(times):,.0f}); "
                f"converged {fit.converged[ok].mean():.2%}, mean iterations "
                f"{fit.n_iter[ok].mean():.1f}"
            )


if __name__ == "__main__":
    main()
