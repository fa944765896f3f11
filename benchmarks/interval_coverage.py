"""Coverage of the intervals of the variance fractions, by simulation.

Usage::

    python benchmarks/interval_coverage.py [--design example|three-batch|many-levels]
        [--n-genes 300] [--n-cells 3000] [--n-boot 200] [--seeds 5 6 7]

Designs whose simulated variances are known:

- ``example``: ``svp.datasets.crossed_example`` (12 patients, 3 chemistries, 6 days,
  4 operators, ``log_umi``);
- ``three-batch``: ``svp.datasets.donor_batch``, 20 donors crossed with a 3-level batch,
  Gaussian values, each gene's variances drawn at random (a fifth of them 0);
- ``many-levels``: the same with 60 donors and a 40-level batch, where the percentile
  bootstrap applies.

Every gene is fitted by REML with ``n_boot`` parametric bootstrap replicates; the script
prints, per component, how often the nominal ``--ci`` intervals cover the simulated
fraction (the intervals of ``ci_low``/``ci_high`` and the bootstrap's percentile
intervals), and their median widths, over all seeds; then the same for rho (batch:
chemistry, day and operator against patient; batch against donor), over the genes whose
signal variance is not 0. Last, how far the bootstrap's bounds lie from ``ci_low`` and
``ci_high`` (the median over genes, in units of the width of the latter): the two agree
where the percentile bootstrap applies, terms of many levels. ``log_umi``'s true
fraction is 0 for the genes simulated without a ``log_umi`` effect; a further row gives
its coverage among the genes with one.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import scvarpart as svp


def _example(n_cells: int, n_genes: int, seed: int):
    """The example dataset: values, covariates, formula and the true fractions."""
    adata = svp.datasets.crossed_example(n_cells=n_cells, n_genes=n_genes, seed=seed)
    true = pd.DataFrame(adata.varm["true_variance"], index=adata.var_names)
    truth = true.div(true.sum(axis=1), axis=0)
    # log_umi's coverage among the genes with an effect, too
    truth["log_umi (effect)"] = truth["log_umi"].where(adata.var["true_beta_log_umi"] != 0)
    roles = (["chemistry", "day", "operator"], ["patient"])
    return adata.X, adata.obs, adata.var_names, svp.datasets.EXAMPLE_FORMULA, truth, roles


def _donor_batch(n_donors: int, n_batches: int):
    """``svp.datasets.donor_batch`` with that many levels, as a design of this script."""

    def design(n_cells: int, n_genes: int, seed: int):
        adata = svp.datasets.donor_batch(
            n_cells, n_genes, n_donors=n_donors, n_batches=n_batches, seed=seed
        )
        true = adata.varm["true_variance"]
        truth = true.div(true.sum(axis=1), axis=0)
        roles = (adata.uns["example"]["batch"], adata.uns["example"]["signal"])
        return adata.X, adata.obs, adata.var_names, adata.uns["example"]["formula"], truth, roles

    return design


def _with_effect_column(bounds: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """``bounds`` with the truth's extra columns (a component among some genes)."""
    extra = {c: bounds[c.split(" (")[0]] for c in truth.columns if c not in bounds}
    return bounds.assign(**extra)[list(truth.columns)]


def _with_rho(truth: pd.DataFrame, roles) -> pd.DataFrame:
    """The true fractions and rho (NaN where the signal's variance is 0)."""
    batch, signal = roles
    s = truth[signal].sum(axis=1)
    return truth.assign(rho=truth[batch].sum(axis=1) / s.where(s > 0))


_DESIGNS = {
    "example": _example,
    "three-batch": _donor_batch(20, 3),
    "many-levels": _donor_batch(60, 40),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", choices=sorted(_DESIGNS), default="example")
    ap.add_argument("--n-genes", type=int, default=300)
    ap.add_argument("--n-cells", type=int, default=3000)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--ci", type=float, default=0.95)
    ap.add_argument("--seeds", type=int, nargs="+", default=[5])
    args = ap.parse_args()
    hits: dict[str, list[pd.DataFrame]] = {"delta": [], "bootstrap": []}
    widths: dict[str, list[pd.DataFrame]] = {"delta": [], "bootstrap": []}
    ends: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]] = {"delta": [], "bootstrap": []}
    seconds = 0.0
    for seed in args.seeds:
        Y, obs, genes, formula, truth, roles = _DESIGNS[args.design](
            args.n_cells, args.n_genes, seed
        )
        truth = _with_rho(truth, roles)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = svp.lmm.fit(
                formula,
                Y,
                obs=obs,
                var_names=genes,
                method="REML",
                batch=roles[0],
                signal=roles[1],
                n_boot=args.n_boot,
                seed=seed,
                ci=args.ci,
                n_jobs=2,
            )
        seconds += time.perf_counter() - start
        per_gene = fit.per_gene
        for name, low, high, suffix in (
            ("delta", fit.ci_low, fit.ci_high, "ci"),
            ("bootstrap", fit.boot_low, fit.boot_high, "boot"),
        ):
            low = low.assign(rho=per_gene[f"rho_{suffix}_low"])
            high = high.assign(rho=per_gene[f"rho_{suffix}_high"])
            low, high = _with_effect_column(low, truth), _with_effect_column(high, truth)
            covered = (low <= truth) & (truth <= high)
            hits[name].append(covered.where(truth.notna()))
            widths[name].append((high - low).where(truth.notna()))
            ends[name].append((low.where(truth.notna()), high.where(truth.notna())))
    print(
        f"{args.design}: {args.n_genes} genes x {args.n_cells} cells x {len(args.seeds)} "
        f"seed(s), REML, {args.n_boot} replicates, {args.ci:.0%} intervals; "
        f"{seconds:.1f} s on 2 cores"
    )
    agree = _agreement(ends)
    print(f"{'':<23}{'ci_low/ci_high':>18}{'bootstrap':>18}{'|difference| / width':>22}")
    print(
        f"{'component':<16}{'genes':>7}"
        + f"{'coverage':>10}{'width':>8}" * 2
        + f"{'low':>11}{'high':>11}"
    )
    for c in hits["delta"][0].columns:
        row = ""
        for name in ("delta", "bootstrap"):
            h = pd.concat([t[c] for t in hits[name]]).dropna()
            w = pd.concat([t[c] for t in widths[name]]).dropna()
            row += f"{h.mean():>10.3f}{float(np.median(w)):>8.3f}"
        print(f"{c:<16}{len(h):>7}" + row + f"{agree[c][0]:>11.3f}{agree[c][1]:>11.3f}")


def _agreement(ends) -> dict[str, tuple[float, float]]:
    """How far the bootstrap's bounds lie from ``ci_low`` and ``ci_high``.

    Per component, the medians over genes of the lower and the upper bounds' distance,
    in units of the width of ``ci_low``/``ci_high``.
    """
    out = {}
    (low, high), (b_low, b_high) = (
        tuple(pd.concat(parts) for parts in zip(*ends[name], strict=True))
        for name in ("delta", "bootstrap")
    )
    width = (high - low).where(lambda w: np.isfinite(w) & (w > 0))
    for c in low.columns:
        d_low = ((b_low[c] - low[c]).abs() / width[c]).dropna()
        d_high = ((b_high[c] - high[c]).abs() / width[c]).dropna()
        out[c] = (float(np.median(d_low)), float(np.median(d_high)))
    return out


if __name__ == "__main__":
    main()
