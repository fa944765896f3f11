"""Are the count model's fractions calibrated? Latent-scale truth against NB and Gaussian fits.

Usage::

    python benchmarks/count_calibration.py [--n-cells 20000] [--n-genes 2000] [--fit 300]
        [--seeds 0] [--n-jobs 2]

``svp.datasets.simulate_counts`` draws counts from a negative binomial mixed model with
known latent variances: per gene, patient, chemistry, day and operator effects
(``var["sd_<factor>"]``), a ``pct_mito`` slope and an NB dispersion. The truth of each
fraction is on the latent scale, as the count model defines it
(:mod:`scvarpart.glmm.latent`): the factors' ``sd^2``, the slope's ``s^2 Var(mito)``, and
the lognormal distribution-specific variance ``ln(1 + 1/lambda + dispersion)`` with
``lambda = exp(mean log size factor + mean_log + sum sd^2 / 2)``.

Fitted, on ``--fit`` genes drawn at random among those non-zero in at least 1% of cells:

- ``nb``: ``family="nb"`` on the counts, the offset the log library size (the default);
- ``gaussian``: the default linear mixed model on the log-normalised values (``X``), the
  same formula, ML.

Prints, per seed, the median absolute error over genes of each fraction for both, and the
time of each fit; then where the Gaussian fractions mislead, by expression level.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import scvarpart as svp

FORMULA = "~ pct_mito + (1|patient) + (1|chemistry) + (1|day) + (1|operator)"
FACTORS = ["patient", "chemistry", "day", "operator"]
COMPONENTS = [*FACTORS, "pct_mito", "Residual"]


def truth(adata) -> pd.DataFrame:
    """The latent-scale fractions the simulation implies, genes x components."""
    var = adata.var
    mito = adata.obs["pct_mito"].to_numpy() / 100
    V = pd.DataFrame({f: var[f"sd_{f}"] ** 2 for f in FACTORS}, index=var.index)
    V["pct_mito"] = var["slope_pct_mito"] ** 2 * mito.var()
    lam = np.exp(adata.obs["log_size_factor"].mean() + var["mean_log"] + V[FACTORS].sum(axis=1) / 2)
    V["Residual"] = np.log1p(1 / lam + var["dispersion"])
    return V.div(V.sum(axis=1), axis=0)


def run(seed: int, args) -> pd.DataFrame:
    adata = svp.datasets.simulate_counts(
        n_cells=args.n_cells, n_genes=args.n_genes, seed=seed, counts=True
    )
    counts = adata.layers["counts"]
    expressed = np.flatnonzero(np.asarray((counts > 0).mean(axis=0)).ravel() >= 0.01)
    rng = np.random.default_rng(seed)
    genes = np.sort(rng.choice(expressed, min(args.fit, len(expressed)), replace=False))
    library = np.asarray(counts.sum(axis=1)).ravel()
    cells = adata[library > 0]  # the library size is the offset: every cell needs counts
    sub = cells[:, genes].copy()
    sub.obs["log_library"] = np.log(library[library > 0])
    true = truth(sub)
    rows = []
    for name, options in (
        ("nb", dict(family="nb", layer="counts", offset="log_library")),
        ("gaussian", dict(method="ML")),
    ):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = svp.tl.variance_partition(
                sub, FORMULA, inplace=False, ci=None, n_jobs=args.n_jobs, progress=False,
                **options,
            )  # fmt: skip
        seconds = time.perf_counter() - start
        fitted = result.fractions[COMPONENTS].dropna()
        error = (fitted - true.loc[fitted.index]).abs()
        row = {"seed": seed, "fit": name, "genes": len(fitted), "seconds": round(seconds, 1)}
        row.update({c: round(float(error[c].median()), 4) for c in COMPONENTS})
        rows.append(row)
        if name == "gaussian":
            by_level = pd.qcut(sub.var["mean_log"], 3, labels=["low", "mid", "high"])
            bias = (fitted - true.loc[fitted.index]).groupby(by_level, observed=True).median()
            print(f"seed {seed}: Gaussian minus latent truth, median by expression tercile")
            print(bias.round(3).to_string())
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=20_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--fit", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    table = pd.concat([run(seed, args) for seed in args.seeds])
    print("\nmedian absolute error of each fraction (latent-scale truth)")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
