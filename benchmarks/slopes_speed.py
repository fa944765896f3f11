"""Speed of the fit phase with random slopes: the general engine, in genes per second.

Usage::

    python benchmarks/slopes_speed.py [--n-cells 100000] [--n-genes 2000] [--repeats 3]

The issue's design: ``~ log_umi + pct_mito + time + (1 + time | patient) + (1 | batch) +
(1 | chem) + (1 | day)`` with 50 patients (a random intercept and a slope on time,
which varies within patient), 4 batches, 3 chemistries and 8 days, crossed. Genes are
simulated (seeded) with each variance component present or absent at random, so that
many optima lie on the boundary, as in real data; the statistics are computed with
``svp.lmm.response_stats`` block by block of genes. Then every gene is fitted from its
statistics (``fit_lmm``, the fit phase; its cost does not depend on the number of
cells), ML and REML, with ``n_jobs=1`` and 2. Prints the median and range of genes/s
over ``--repeats`` runs, and the NumPy reference engine
(``tests/reference_general.py``) on ``--reference-genes`` genes in the same
run, for the ratio (and whether the compiled search ended as low as it on them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.lmm import fit_lmm
from scvarpart.suffstats import ResponseStats

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from reference_general import ReferenceGeneralDeviance

FORMULA = (
    "~ log_umi + pct_mito + time + (1 + time | patient) + (1 | batch) + (1 | chem) + (1 | day)"
)
LEVELS = {"patient": 50, "batch": 4, "chem": 3, "day": 8}


def simulate_obs(n_cells: int, rng: np.random.Generator) -> pd.DataFrame:
    """Cells: crossed grouping factors, time within patient, two covariates."""
    obs = {
        name: pd.Categorical([f"{name}{i:02d}" for i in rng.integers(0, n, n_cells)])
        for name, n in LEVELS.items()
    }
    return pd.DataFrame(
        {
            **obs,
            "time": rng.integers(0, 6, n_cells).astype(float),
            "log_umi": rng.normal(8.0, 0.5, n_cells),
            "pct_mito": rng.uniform(0.0, 10.0, n_cells),
        }
    )


def simulate_genes(obs: pd.DataFrame, n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """Expression of ``n_genes`` genes (float32): each component present with prob. 0.8."""
    n = len(obs)
    codes = {name: obs[name].cat.codes.to_numpy() for name in LEVELS}
    sd = rng.gamma(1.0, 0.5, (5, n_genes)) * (rng.uniform(size=(5, n_genes)) < 0.8)
    sd[1] *= 0.3  # the slope's standard deviation, per unit of time
    rho = rng.uniform(-0.5, 0.5, n_genes)
    u = rng.normal(size=(2, LEVELS["patient"], n_genes))
    intercept = sd[0] * u[0]
    slope = sd[1] * (rho * u[0] + np.sqrt(1 - rho**2) * u[1])
    y = 0.5 * obs["log_umi"].to_numpy()[:, None] + rng.normal(size=(n, n_genes))
    y += intercept[codes["patient"]] + slope[codes["patient"]] * obs["time"].to_numpy()[:, None]
    for j, name in enumerate(["batch", "chem", "day"]):
        y += (sd[2 + j] * rng.normal(size=(LEVELS[name], n_genes)))[codes[name]]
    return y.astype(np.float32)


def statistics(n_cells: int, n_genes: int, seed: int, block: int = 250):
    """The genes' sufficient statistics, computed block by block of genes."""
    rng = np.random.default_rng(seed)
    obs = simulate_obs(n_cells, rng)
    design = build_design(FORMULA, obs)
    parts = []
    for start in range(0, n_genes, block):
        Y = simulate_genes(obs, min(block, n_genes - start), rng)
        parts.append(svp.lmm.response_stats(Y, design))
    stats = parts[0]
    fields = ["mean", "ss", "ZtY", "XtY", "n_nonzero"]
    joined = {f: np.concatenate([getattr(p.response, f) for p in parts]) for f in fields}
    response = ResponseStats(n_obs=stats.response.n_obs, **joined)
    return replace(stats, response=response, genes=pd.Index([str(g) for g in range(n_genes)]))


def reference_rate(stats, terms, reml: bool, n: int, fit) -> tuple[float, int]:
    """Genes/s of the NumPy reference on the first ``n`` genes.

    Also on how many of them the compiled search ended higher than it (by more than
    1e-9 relative).
    """
    ref = ReferenceGeneralDeviance(stats.gram, terms, reml)
    sd = np.sqrt(stats.response.ss / stats.response.n_obs)
    unit = np.ldexp(1.0, np.frexp(sd)[1])  # as fit_lmm scales each gene
    sub = stats.response.subset(np.arange(n)).scaled(1.0 / unit[:n])
    with threadpool_limits(limits=1, user_api="blas"):  # as fit_lmm runs its engines
        start = time.perf_counter()
        _, dev, *_ = ref.search(sub, np.full((n, ref.k), np.nan), None)
        rate = n / (time.perf_counter() - start)
    dev = dev + ref.nu * np.log(unit[:n] ** 2)
    worse = int(np.sum(fit.deviance[:n] > dev + 1e-9 * np.abs(dev)))
    return rate, worse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=100_000)
    ap.add_argument("--n-genes", type=int, default=2_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-genes", type=int, default=4)
    args = ap.parse_args()

    start = time.perf_counter()
    stats = statistics(args.n_cells, args.n_genes, args.seed)
    terms = [t.term for t in stats.terms]
    print(
        f"statistics of {args.n_genes} genes x {args.n_cells} cells in "
        f"{time.perf_counter() - start:.1f} s; {FORMULA}; levels {LEVELS}; "
        f"{os.cpu_count()} cores; {args.repeats} repeats"
    )
    fit_lmm(stats.gram, stats.response.subset(np.arange(8)), terms=terms)  # compile
    for reml in (False, True):
        label = "REML" if reml else "ML  "
        rates: dict[int, list[float]] = {1: [], 2: []}
        fit = None
        for _ in range(args.repeats):
            for n_jobs in (1, 2):  # alternating, so that both see the same load
                t0 = time.perf_counter()
                fit = fit_lmm(stats.gram, stats.response, reml=reml, terms=terms, n_jobs=n_jobs)
                rates[n_jobs].append(args.n_genes / (time.perf_counter() - t0))
        assert fit is not None
        ref_rate, worse = reference_rate(stats, terms, reml, args.reference_genes, fit)
        med = {j: float(np.median(r)) for j, r in rates.items()}
        ok = fit.error == ""
        print(
            f"  {label} n_jobs=1: {med[1]:6,.0f} genes/s ({min(rates[1]):,.0f}-"
            f"{max(rates[1]):,.0f}); n_jobs=2: {med[2]:6,.0f} ({min(rates[2]):,.0f}-"
            f"{max(rates[2]):,.0f}); NumPy reference {ref_rate:.2f} genes/s "
            f"(x{med[1] / ref_rate:,.0f} on one core, higher optimum on {worse} of "
            f"{args.reference_genes}); converged {fit.converged[ok].mean():.2%}, Newton "
            f"iterations per gene {fit.n_iter[ok].mean():.1f}, descents "
            f"{fit.descents[ok].mean():.2f}"
        )


if __name__ == "__main__":
    main()
