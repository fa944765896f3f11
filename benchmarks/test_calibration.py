"""Calibration of the likelihood-ratio tests under the null: QQ plot and KS statistic.

Usage::

    python benchmarks/test_calibration.py [--n-genes 2000] [--n-cells 2000] [--plot qq.png]

Genes simulated from the example design (``svp.datasets.crossed_example``'s covariates:
12 patients, 3 chemistries, 6 days, 4 operators) with every variance but the tested
one's: the day variance is 0 (the null), the others drawn at random, Gaussian values.
Each gene is fitted by ML and by REML with ``test="lrt"``. Under the null the p-value is
uniform on ``(0, 1 - pi_0]`` (and 1 where the statistic is 0, with probability
``pi_0``, the gene's weight of the point mass at 0, above 1/2 for few levels): printed
are the share of p-values at most 0.01, 0.05, 0.1 and 0.2, the Kolmogorov-Smirnov
distance from the uniform on (0, 0.2] (``sup |F(p) - p|`` for ``p <= 0.2``), and the
same for chemistry (3 levels) and patient (12 levels), each 0 in another set of genes.
``--half`` gives the asymptotic 50:50 mixture's p-values of the same statistics instead
(as before the finite-sample weight). ``--plot`` writes the QQ plot of the p-values
against the uniform.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import scvarpart as svp


def _simulate(obs: pd.DataFrame, n_genes: int, null: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((len(obs), n_genes))
    for term in ("patient", "chemistry", "day", "operator"):
        if term == null:
            continue
        codes = obs[term].cat.codes.to_numpy()
        sd = np.sqrt(rng.uniform(0, 0.5, n_genes))
        effects = rng.standard_normal((obs[term].cat.categories.size, n_genes)) * sd
        Y += effects[codes]
    return Y + 0.3 * obs["log_umi"].to_numpy()[:, None]


_KS_UP_TO = 0.2


def _ks(p: np.ndarray) -> float:
    """``sup |F(t) - t|`` over ``t <= 0.2``: the empirical CDF of ``p`` against uniform."""
    p = np.sort(p[np.isfinite(p)])
    n = len(p)
    below = p[p <= _KS_UP_TO]
    upper = np.arange(1, len(below) + 1) / n - below
    lower = below - np.arange(len(below)) / n
    tail = abs(len(below) / n - _KS_UP_TO)  # at t = 0.2
    return float(max(upper.max(initial=0), lower.max(initial=0), tail))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-genes", type=int, default=2000)
    ap.add_argument("--n-cells", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--half", action="store_true", help="the 50:50 mixture's p-values")
    args = ap.parse_args()
    obs = svp.datasets.crossed_example(n_cells=args.n_cells, n_genes=1, seed=args.seed).obs
    print(
        f"{args.n_genes} null genes per case, {args.n_cells} cells, example design; "
        "share of p-values at most 0.01 / 0.05 / 0.1 / 0.2, KS distance on (0, 0.2]"
    )
    curves = {}
    for null in ("chemistry", "day", "patient"):
        Y = _simulate(obs, args.n_genes, null, args.seed)
        for method in ("ML", "REML"):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = svp.lmm.fit(
                    svp.datasets.EXAMPLE_FORMULA, Y, obs=obs, method=method, test="lrt",
                    ci=None, n_jobs=2,
                )  # fmt: skip
            p = fit.pvalue[null].to_numpy()
            if args.half:
                p = svp.lmm.lrt.mixture_pvalue(fit.lrt[null].to_numpy())
            shares = " / ".join(f"{np.mean(p <= a):.3f}" for a in (0.01, 0.05, 0.1, 0.2))
            print(
                f"  {null} variance 0, {method}: {shares}; KS {_ks(p):.3f} "
                f"({time.perf_counter() - start:.1f} s)"
            )
            curves[f"{null}, {method}"] = np.sort(p)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4), layout="constrained")
        for name, p in curves.items():
            ax.plot((np.arange(1, len(p) + 1) - 0.5) / len(p), p, label=name, lw=1)
        ax.plot([0, 1], [0, 1], color="#888888", lw=0.8)
        ax.set(xlabel="uniform quantile", ylabel="p-value", title="LRT p-values under the null")
        ax.legend(fontsize=7)
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
