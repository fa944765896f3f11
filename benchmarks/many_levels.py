"""Designs with thousands of levels: genes per second of the fit phase.

Usage::

    python benchmarks/many_levels.py [--genes 500] [--repeats 3] [--lme4 20]

Two simulated single-cell designs (seeded), each with log-normalised Poisson
counts whose log means carry an effect of every factor (some exactly 0) and of
``log_umi``:

- **atlas**: 200,000 cells; 1,000 donors, each multiplexed into 1-2 of 100
  pools; a pool's chemistry (3) is fixed; ``~ log_umi + (1|donor) + (1|pool) +
  (1|chemistry)``.
- **two-factor**: 100,000 cells; 2,000 donors x 800 plates, crossed within
  30 days (a plate belongs to a day, a donor's cells are spread over the plates of
  its day); ``~ (1|donor) + (1|plate) + (1|day)``.

The statistics are built once with ``svp.lmm.response_stats`` on the simulated
sparse matrix; the fit phase (``svp.lmm.fit_stats`` on them, ML, batches of 32
genes) is timed with ``n_jobs`` 1 and 2 over ``--repeats``, alternating. Per-gene
time is also printed against the number of levels (the same designs with fewer and
more donors, pools and plates) with the log-log slope, and, with ``--lme4 N`` and
lme4 installed, the ML deviance against lme4's on ``N`` genes of the two-factor
design (``benchmarks/lmer_genes.R``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

import scvarpart as svp

HERE = Path(__file__).parent
ATLAS = "~ log_umi + (1|donor) + (1|pool) + (1|chemistry)"
TWO_FACTOR = "~ (1|donor) + (1|plate) + (1|day)"


def _categorical(codes: np.ndarray, prefix: str, n: int) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, [f"{prefix}{j:05d}" for j in range(n)])


def atlas_obs(n_cells: int = 200_000, donors: int = 1_000, pools: int = 100, seed: int = 0):
    """Cells of an atlas: donors multiplexed into 1-2 pools each, a chemistry per pool."""
    rng = np.random.default_rng(seed)
    donor = rng.integers(0, donors, n_cells)
    first = rng.integers(0, pools, donors)
    second = np.where(rng.random(donors) < 0.5, rng.integers(0, pools, donors), first)
    pool = np.where(rng.random(n_cells) < 0.6, first[donor], second[donor])
    return pd.DataFrame(
        {
            "donor": _categorical(donor, "d", donors),
            "pool": _categorical(pool, "p", pools),
            "chemistry": _categorical(np.arange(pools)[pool] % 3, "c", 3),
            "log_umi": rng.normal(8.0, 0.5, n_cells),
        }
    )


def two_factor_obs(
    n_cells: int = 100_000, donors: int = 2_000, plates: int = 800, days: int = 30, seed: int = 0
):
    """Donors x plates crossed within days: a plate and a donor belong to one day each."""
    rng = np.random.default_rng(seed)
    donor = rng.integers(0, donors, n_cells)
    day_of_donor = rng.integers(0, days, donors)
    plate_day = np.arange(plates) % days  # plates of day t: t, t + days, ...
    per_day = np.bincount(plate_day, minlength=days)
    day = day_of_donor[donor]
    plate = day + days * (rng.random(n_cells) * per_day[day]).astype(int)
    return pd.DataFrame(
        {
            "donor": _categorical(donor, "d", donors),
            "plate": _categorical(plate, "p", plates),
            "day": _categorical(day, "t", days),
        }
    )


def simulate_expression(obs: pd.DataFrame, n_genes: int, seed: int = 0, chunk: int = 20_000):
    """Log-normalised Poisson counts, CSR float32, cells x genes.

    Log means: a gene mean, an effect per level of every factor (standard deviation
    0.05-0.5, or exactly 0 for a quarter of the genes and factors) and, where ``obs``
    has it, a ``log_umi`` slope.
    """
    rng = np.random.default_rng(seed)
    factors = [c for c in obs.columns if isinstance(obs[c].dtype, pd.CategoricalDtype)]
    mean = rng.normal(-2.0, 1.0, n_genes)
    effects = []
    for f in factors:
        sd = np.exp(rng.uniform(np.log(0.05), np.log(0.5), n_genes)) * (rng.random(n_genes) > 0.25)
        effects.append(rng.normal(size=(len(obs[f].cat.categories), n_genes)) * sd)
    codes = [obs[f].cat.codes.to_numpy() for f in factors]
    slope = rng.normal(0.0, 0.2, n_genes) if "log_umi" in obs else np.zeros(n_genes)
    umi = obs["log_umi"].to_numpy() - 8.0 if "log_umi" in obs else np.zeros(len(obs))
    blocks = []
    for a in range(0, len(obs), chunk):
        b = min(a + chunk, len(obs))
        eta = mean + umi[a:b, None] * slope
        for c, e in zip(codes, effects, strict=True):
            eta = eta + e[c[a:b]]
        counts = rng.poisson(np.exp(eta))
        blocks.append(sp.csr_matrix(np.log1p(counts).astype(np.float32)))
    return sp.vstack(blocks, format="csr")


def statistics(design: str, obs: pd.DataFrame, n_genes: int, seed: int = 0):
    """The sufficient statistics of simulated expression on ``design``."""
    Y = simulate_expression(obs, n_genes, seed)
    return svp.lmm.response_stats(Y, design, obs=obs, n_jobs=2), Y


def _spread(values: list[float], fmt: str = ",.0f") -> str:
    return f"{np.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


# Genes per batch: enough batches for both cores with a hundred genes of the
# two-factor design (the default, 256, makes one batch of them).
BATCH = 32


def _time_fits(stats, n_jobs: int, repeats: int) -> list[float]:
    """Genes/s of ``fit_stats`` over ``repeats`` runs."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        svp.lmm.fit_stats(stats, method="ML", n_jobs=n_jobs, batch_size=BATCH)
        rates.append(len(stats.genes) / (time.perf_counter() - start))
    return rates


def speed(name: str, formula: str, obs: pd.DataFrame, n_genes: int, repeats: int):
    """Genes/s on 1 and 2 cores, alternating; returns the statistics."""
    stats, Y = statistics(formula, obs, n_genes)
    svp.lmm.fit_lmm(stats.gram, stats.response.subset(np.arange(4)))  # compile
    sizes = dict(zip(stats.factors, stats.gram.factor_sizes, strict=True))
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for n_jobs in (1, 2):
            rates[n_jobs] += _time_fits(stats, n_jobs, 1)
    print(
        f"{name}: {len(obs):,} cells, {sizes}, {n_genes} genes, ML, {repeats} repeats: "
        f"1 core {_spread(rates[1])} genes/s, 2 cores {_spread(rates[2])} genes/s "
        f"({np.median(rates[2]) / np.median(rates[1]):.2f}x)",
        flush=True,
    )
    return stats, Y


def slope(name: str, make, formula: str, scales: list[float], n_genes: int, repeats: int):
    """Per-gene time against the number of levels (``make(scale)`` gives the cells)."""
    levels, times = [], []
    for scale in scales:
        obs = make(scale)
        stats, _ = statistics(formula, obs, n_genes)
        rates = _time_fits(stats, 1, repeats)
        levels.append(stats.gram.n_levels)
        times.append(1e3 / np.median(rates))
        print(f"  {name}: {levels[-1]:,} levels: {times[-1]:.2f} ms per gene (1 core)", flush=True)
    fit = np.polyfit(np.log(levels), np.log(times), 1)[0]
    print(f"  {name}: log-log slope of time per gene against levels {fit:.2f}", flush=True)


def against_lme4(stats, Y, obs: pd.DataFrame, n_genes: int) -> None:
    """ML deviance against lme4's on the first ``n_genes`` genes (``lmer_genes.R``)."""
    if shutil.which("Rscript") is None:
        print("lme4: Rscript not installed")
        return
    Y = Y[:, :n_genes].toarray()
    ours = svp.lmm.fit_lmm(stats.gram, stats.response.subset(np.arange(n_genes)))
    with tempfile.TemporaryDirectory() as tmp:
        expr, cov, out = (Path(tmp) / f for f in ("expr.csv", "obs.csv", "out.csv"))
        pd.DataFrame(Y, columns=[f"g{j}" for j in range(n_genes)]).to_csv(expr)
        obs.to_csv(cov)
        rhs = TWO_FACTOR.replace("~", "~ 1 +")
        subprocess.run(
            ["Rscript", str(HERE / "lmer_genes.R"), expr, cov, rhs, "FALSE", out], check=True
        )
        ref = pd.read_csv(out)
    diff = ours.deviance[:n_genes] - ref["objective"].to_numpy()
    print(
        f"two-factor against lme4 ({n_genes} genes, ML): our deviance minus lme4's from "
        f"{diff.min():+.2e} to {diff.max():+.2e}; lme4 {ref['seconds'].median():.1f} s per gene"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lme4", type=int, default=0, help="genes to compare with lme4")
    ap.add_argument("--lme4-only", action="store_true", help="only the comparison")
    args = ap.parse_args()
    if args.lme4_only:
        obs = two_factor_obs()
        stats, Y = statistics(TWO_FACTOR, obs, args.lme4)
        against_lme4(stats, Y, obs, args.lme4)
        return
    print(f"fit phase (svp.lmm.fit_stats), {os.cpu_count()} cores", flush=True)
    speed("atlas", ATLAS, atlas_obs(), args.genes, args.repeats)
    two_obs = two_factor_obs()
    two, Y = speed("two-factor", TWO_FACTOR, two_obs, args.genes // 5, args.repeats)
    n = max(50, args.genes // 10)
    slope(
        "atlas",
        lambda f: atlas_obs(int(200_000 * f), int(1_000 * f), max(4, int(100 * f))),
        ATLAS,
        [0.25, 0.5, 1.0, 2.0],
        n,
        args.repeats,
    )
    slope(
        "two-factor",
        lambda f: two_factor_obs(int(100_000 * f), int(2_000 * f), int(800 * f)),
        TWO_FACTOR,
        [0.25, 0.5, 1.0, 2.0],
        n // 2,
        args.repeats,
    )
    if args.lme4:
        against_lme4(two, Y, two_obs, args.lme4)


if __name__ == "__main__":
    main()
