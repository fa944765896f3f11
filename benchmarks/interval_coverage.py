"""Coverage of the bootstrap intervals of the variance fractions, by simulation.

Usage::

    python benchmarks/interval_coverage.py [--n-genes 300] [--n-cells 3000] [--n-boot 200]

The example design (``svp.datasets.crossed_example``: 12 patients, 3 chemistries, 6 days,
4 operators, ``log_umi``), whose simulated variances are known. Every gene is fitted by
REML with ``n_boot`` parametric bootstrap replicates; the script prints, per component,
how often the nominal ``--ci`` percentile interval covers the simulated fraction, and the
median width of the intervals. ``log_umi``'s fraction is left out for the genes simulated
without a ``log_umi`` effect (its estimate, ``beta^2`` times the covariate's variance, is
positive and its interval never holds 0).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import scvarpart as svp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-genes", type=int, default=300)
    ap.add_argument("--n-cells", type=int, default=3000)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--ci", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    adata = svp.datasets.crossed_example(n_cells=args.n_cells, n_genes=args.n_genes, seed=args.seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = svp.lmm.fit(
            svp.datasets.EXAMPLE_FORMULA,
            adata.X,
            obs=adata.obs,
            var_names=adata.var_names,
            method="REML",
            n_boot=args.n_boot,
            seed=args.seed,
            ci=args.ci,
            n_jobs=2,
        )
    seconds = time.perf_counter() - start
    true = pd.DataFrame(adata.varm["true_variance"], index=adata.var_names)
    truth = true.div(true.sum(axis=1), axis=0)
    print(
        f"{args.n_genes} genes x {args.n_cells} cells, REML, {args.n_boot} replicates, "
        f"{args.ci:.0%} percentile intervals; {seconds:.1f} s on 2 cores"
    )
    print(f"{'component':<12}{'genes':>7}{'coverage':>10}{'median width':>14}")
    for c in truth.columns:
        genes = truth.index
        if c == "log_umi":
            genes = genes[adata.var.loc[genes, "true_beta_log_umi"] != 0]
        low, high, t = fit.boot_low.loc[genes, c], fit.boot_high.loc[genes, c], truth.loc[genes, c]
        covered = ((low <= t) & (t <= high)).mean()
        width = float(np.median(high - low))
        print(f"{c:<12}{len(genes):>7}{covered:>10.3f}{width:>14.3f}")


if __name__ == "__main__":
    main()
