"""Do precision weights matter? Variance fractions of pseudobulk data, with and without.

Usage::

    python benchmarks/weights.py [--n-genes 1000] [--seeds 0 1 2]

Pseudobulk samples with very unequal numbers of cells (5 to 500, log-uniform): 30 donors,
each sampled in 3 of 6 batches (90 samples). Per gene, donor effects ``u ~ N(0, sd_d^2)``,
batch effects ``v ~ N(0, sd_b^2)`` (``sd_d ~ U(0, 1)``, ``sd_b ~ U(0, 0.7)``). Two kinds
of data:

- ``gaussian``: a sample's value is ``mu + u + v + e`` with ``e ~ N(0, sigma^2 / w)`` and
  ``w = n_cells / mean(n_cells)``: the noise of an average of cells. The truth of every
  fraction is exact (the residual's is ``sigma^2 mean(1/w)``, the component that the
  weighted and the unweighted model both estimate). Fitted without weights and with
  ``weights="n_cells"`` (an obs column: the shared, fast path).
- ``counts``: a sample's count is the sum of its cells' negative binomial counts (cell
  dispersion 2, 2,000 counts per cell, log means ``U(-9, -4)`` plus ``u + v`` plus sample
  noise ``N(0, 0.2^2)``); the values are voom's log CPM. The truth is on the log2 scale:
  ``sd_d^2 / ln(2)^2`` and ``sd_b^2 / ln(2)^2``. Fitted without weights, with
  ``weights="n_cells"``, and with voom's precision weights (``svp.pp.voom_weights``, each
  gene its own weights). The residual here mixes counting noise and biology, so the
  scores are the variances and the signal share ``sd_d^2 / (sd_d^2 + sd_b^2)``, whose
  truths are exact; and the variances against those of the effects drawn (the mean of
  their squares), which takes out the error every method shares (30 donors and 6
  batches are a small sample of their populations).

Every fit is REML. Prints, per data kind and fit, the median absolute error over genes
of each score, per seed, and the time of each fit.
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd

import scvarpart as svp
from scvarpart.counts import log_cpm

FORMULA = "~ (1|donor) + (1|batch)"
LN2 = np.log(2.0)


def _samples(rng: np.random.Generator) -> pd.DataFrame:
    rows = [(d, b) for d in range(30) for b in rng.choice(6, 3, replace=False)]
    obs = pd.DataFrame(rows, columns=["donor", "batch"]).astype(str)
    obs["donor"] = "d" + obs["donor"]
    obs["batch"] = "b" + obs["batch"]
    obs["n_cells"] = np.round(np.exp(rng.uniform(np.log(5), np.log(500), len(obs))))
    obs.index = [f"s{i:03d}" for i in range(len(obs))]
    return obs


def _effects(rng, obs: pd.DataFrame, n_genes: int):
    sd_d, sd_b = rng.uniform(0, 1, n_genes), rng.uniform(0, 0.7, n_genes)
    donor = pd.factorize(obs["donor"])[0]
    batch = pd.factorize(obs["batch"])[0]
    u = rng.normal(size=(donor.max() + 1, n_genes)) * sd_d
    v = rng.normal(size=(batch.max() + 1, n_genes)) * sd_b
    # the variances of the effects drawn (their mean is 0): what the data can show
    drawn = pd.DataFrame({"donor": (u**2).mean(axis=0), "batch": (v**2).mean(axis=0)})
    return u[donor] + v[batch], sd_d, sd_b, drawn


def gaussian(rng, n_genes: int) -> tuple[ad.AnnData, pd.DataFrame]:
    obs = _samples(rng)
    effects, sd_d, sd_b, _ = _effects(rng, obs, n_genes)
    w = (obs["n_cells"] / obs["n_cells"].mean()).to_numpy()
    sigma = rng.uniform(0.5, 1.5, n_genes)
    Y = 5 + effects + rng.normal(size=effects.shape) * sigma / np.sqrt(w)[:, None]
    residual = sigma**2 * np.mean(1 / w)
    total = sd_d**2 + sd_b**2 + residual
    truth = pd.DataFrame({"donor": sd_d**2 / total, "batch": sd_b**2 / total,
                          "Residual": residual / total})  # fmt: skip
    return ad.AnnData(Y, obs=obs), truth


def counts(rng, n_genes: int) -> tuple[ad.AnnData, pd.DataFrame]:
    obs = _samples(rng)
    effects, sd_d, sd_b, drawn = _effects(rng, obs, n_genes)
    n = obs["n_cells"].to_numpy()[:, None]
    eta = rng.uniform(-9, -4, n_genes) + effects + rng.normal(0, 0.2, effects.shape)
    # the sum of n cells' NB(mean m, size 0.5) counts is NB(mean n m, size 0.5 n)
    mean, size = n * 2000 * np.exp(eta), 0.5 * n
    C = rng.negative_binomial(size, size / (size + mean)).astype(float)
    keep = (C.sum(axis=0) > 0) & ((C >= 10).mean(axis=0) >= 0.5)
    C, sd_d, sd_b, drawn = C[:, keep], sd_d[keep], sd_b[keep], drawn[keep]
    lib = C.sum(axis=1)
    bulk = ad.AnnData(log_cpm(C, lib), obs=obs.assign(lib_size=lib))
    bulk.layers["counts"] = C
    truth = pd.DataFrame({"donor": sd_d**2 / LN2**2, "batch": sd_b**2 / LN2**2})
    truth["share"] = truth["donor"] / (truth["donor"] + truth["batch"])
    truth["donor drawn"] = drawn["donor"].to_numpy() / LN2**2
    truth["batch drawn"] = drawn["batch"].to_numpy() / LN2**2
    return bulk, truth


def _fit(bulk: ad.AnnData, weights: str | None) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svp.tl.variance_partition(
            bulk, FORMULA, method="REML", weights=weights, ci=None, progress=False
        )
    seconds = time.perf_counter() - start
    return bulk.varm["varpart"], bulk.varm["varpart_variance"], seconds


def run(kind: str, seed: int, n_genes: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    bulk, truth = (gaussian if kind == "gaussian" else counts)(rng, n_genes)
    fits = {"none": None, "n_cells (obs column)": "n_cells"}
    if kind == "counts":
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            svp.pp.voom_weights(bulk, FORMULA, lib_size="lib_size", weights="n_cells",
                                method="REML")  # fmt: skip
        voom_seconds = time.perf_counter() - start
        fits["voom x n_cells (per gene)"] = "voom"
    rows = []
    for name, weights in fits.items():
        fractions, variance, seconds = _fit(bulk, weights)
        if kind == "gaussian":
            est = fractions[["donor", "batch", "Residual"]].to_numpy()
            errors = np.abs(est - truth.to_numpy())
            scores = dict(zip(["donor fraction", "batch fraction", "residual fraction"],
                              np.nanmedian(errors, axis=0), strict=True))  # fmt: skip
        else:
            d, b = variance["donor"].to_numpy(), variance["batch"].to_numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                share = d / (d + b)
            scores = {
                "donor variance": np.nanmedian(np.abs(d - truth["donor"])),
                "batch variance": np.nanmedian(np.abs(b - truth["batch"])),
                "signal share": np.nanmedian(np.abs(share - truth["share"])),
                "donor variance (drawn)": np.nanmedian(np.abs(d - truth["donor drawn"])),
                "batch variance (drawn)": np.nanmedian(np.abs(b - truth["batch drawn"])),
            }
        if weights == "voom":
            seconds += voom_seconds
        rows.append({"data": kind, "seed": seed, "weights": name, "genes": len(truth),
                     **scores, "seconds": seconds})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-genes", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    rows = [r for kind in ("gaussian", "counts") for s in args.seeds
            for r in run(kind, s, args.n_genes)]  # fmt: skip
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        for kind, part in table.groupby("data", sort=False):
            print(f"\n{kind}: median absolute error over genes (per seed), seconds per fit")
            print(part.drop(columns="data").dropna(axis=1, how="all").round(4).to_string(
                index=False))  # fmt: skip


if __name__ == "__main__":
    main()
