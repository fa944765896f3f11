"""Speed of the fit phase, in genes per second, and what the global search costs.

The fit phase is what follows the pass over the data.

Usage::

    python benchmarks/fit_speed.py [--n-cells 20000] [--n-genes 5000] [--repeats 5]

The issue's single-cell design: patient (24 levels) x chemistry (3) x day (8) x
operator (6), plus two continuous covariates (log_umi, pct_mito), on simulated
negative binomial counts, log-normalised (svp.datasets.simulate_counts). The
sufficient statistics are computed once; every gene is then fitted with the
global search (the default) and with Newton's method from the moment estimates
only (``strategy="local"``, which may stop at a local optimum), ML and REML, on
1 and 2 cores, the two strategies alternating so that both see the same load.
Prints the median and range of genes/s over ``--repeats`` runs, the ratio of
the medians, and how many genes the global search improved on.
"""

from __future__ import annotations

import os
import time

import numpy as np
from _data import fit_phase_data

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.lmm import fit_lmm
from scvarpart.suffstats import design_gram


def main() -> None:
    args, adata = fit_phase_data(__doc__.splitlines()[0])
    design = build_design(svp.datasets.SIMULATION_FORMULA, adata.obs)
    gram = design_gram(design)
    stats = svp.lmm.response_stats(adata.X, design).response
    for strategy in ("global", "local"):  # compile (cached after the first run)
        fit_lmm(gram, stats.subset(np.arange(16)), strategy=strategy)
    levels = dict(zip([f.name for f in design.factors], gram.factor_sizes, strict=True))
    print(
        f"fit phase: {args.n_genes} genes, {args.n_cells} cells, design {levels} + "
        f"{design.n_fixed - 1} covariates; {os.cpu_count()} cores; {args.repeats} repeats"
    )
    for n_jobs in (1, 2):
        for reml in (False, True):
            rates = {"global": [], "local": []}
            fits = {}
            for _ in range(args.repeats):
                for strategy in ("global", "local"):
                    start = time.perf_counter()
                    fits[strategy] = fit_lmm(
                        gram, stats, reml=reml, n_jobs=n_jobs, strategy=strategy
                    )
                    rates[strategy].append(args.n_genes / (time.perf_counter() - start))
            g, loc = fits["global"], fits["local"]
            ok = g.error == ""
            better = np.sum(g.deviance[ok] < loc.deviance[ok] - 1e-8 * np.abs(loc.deviance[ok]))
            label = "REML" if reml else "ML  "
            med = {s: np.median(r) for s, r in rates.items()}
            print(
                f"  {label} n_jobs={n_jobs}: global {med['global']:7,.0f} genes/s "
                f"({min(rates['global']):,.0f}-{max(rates['global']):,.0f}), local "
                f"{med['local']:7,.0f} ({min(rates['local']):,.0f}-{max(rates['local']):,.0f}); "
                f"global/local {med['global'] / med['local']:.2f}; "
                f"converged {g.converged[ok].mean():.2%}; descents per gene "
                f"{g.descents[ok].mean():.3f}; better optimum than local on {better} genes"
            )


if __name__ == "__main__":
    main()
