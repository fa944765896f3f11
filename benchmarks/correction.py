"""Batch correction: scvarpart's against scanpy's ComBat and regress_out, on known truth.

Usage::

    python benchmarks/correction.py [--design example|crossed] [--n-cells 20000]
                                    [--n-genes 500] [--seed 0]

Data, Gaussian values with known variances per gene (``varm["true_variance"]``):

- ``example``: ``svp.datasets.crossed_example``, 12 patients partly confounded with
  chemistry (3 levels), day (6) and operator (4), as libraries are in practice;
- ``crossed``: ``svp.datasets.donor_batch``, 20 donors crossed with 6 batches at random.

Each method corrects the same matrix:

- scvarpart: the REML fit of the model, then ``svp.tl.remove_batch_effects`` of the batch
  terms (the fit's time included);
- ComBat (``sc.pp.combat``) with the libraries (the batch factors' combinations) as its
  batch, since it takes one batch key;
- ``sc.pp.regress_out`` of the batch factors' indicators (treatment contrasts).

Every corrected matrix is scored by ``svp.tl.batch_metrics`` against the uncorrected one:
per gene, the refitted batch fraction and the signal variance over the truth's and over
the uncorrected fit's, and the genes flagged as having lost signal; on the embedding (30
principal components, 5,000 cells), for the first batch factor, PCR comparison, iLISI and
the classifier's balanced accuracy, and the signal's balanced accuracy. Prints one table.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import scanpy as sc

import scvarpart as svp

DESIGNS = {
    # data, formula, batch factors, signal factor
    "example": (
        lambda n, g, seed: svp.datasets.crossed_example(n_cells=n, n_genes=g, seed=seed),
        svp.datasets.EXAMPLE_FORMULA, ["chemistry", "day", "operator"], "patient",
    ),
    "crossed": (
        lambda n, g, seed: svp.datasets.donor_batch(n, g, n_donors=20, n_batches=6, seed=seed),
        "~ (1|donor) + (1|batch)", ["batch"], "donor",
    ),
}  # fmt: skip


def _scvarpart(adata, formula, batch, signal) -> None:
    svp.tl.remove_batch_effects(
        adata, formula, terms=batch, signal=signal, method="REML", progress=False,
        layer_added="scvarpart",
    )  # fmt: skip


def _combat(adata, formula, batch, signal) -> None:
    work = adata.copy()
    work.obs["library"] = work.obs[batch].astype(str).agg(":".join, axis=1).astype("category")
    sc.pp.combat(work, key="library")
    adata.layers["combat"] = np.asarray(work.X, dtype=np.float32)


def _regress_out(adata, formula, batch, signal) -> None:
    work = adata.copy()
    dummies = pd.get_dummies(work.obs[batch], drop_first=True, dtype=float)
    dummies.columns = [f"d_{i}" for i in range(dummies.shape[1])]
    work.obs = pd.concat([work.obs, dummies.set_index(work.obs.index)], axis=1)
    sc.pp.regress_out(work, keys=list(dummies.columns))
    adata.layers["regress_out"] = np.asarray(work.X, dtype=np.float32)


def _scores(adata, name: str, batch: str, signal: str, seed: int, seconds: float) -> dict:
    """One method's column of the table."""
    truth = adata.varm["true_variance"]
    key = f"m_{name}"
    svp.tl.batch_metrics(adata, after=name, key_added=key, n_sample=5000, seed=seed)
    emb = svp.get.batch_metrics_df(adata, key=key).set_index(["metric", "variable"])
    genes = svp.get.batch_metrics_df(adata, "genes", key=key).set_index("gene")
    kept = svp.get.result(adata, key=f"varpart_{name}").variance[signal]
    clear = truth[signal] > 0.01
    first = emb.xs(batch, level="variable")
    return {
        "time (s)": seconds,
        "batch fraction after, median": genes["batch_after"].median(),
        "batch fraction after, 90%": genes["batch_after"].quantile(0.9),
        f"{signal} variance / truth, median": (kept / truth[signal])[clear].median(),
        f"{signal} variance / uncorrected fit": genes["signal_ratio"][clear].median(),
        "genes flagged as losing signal": int(genes["signal_lost"].sum()),
        f"PCR comparison, {batch}": first.loc["pcr_comparison", "after"],
        f"iLISI, {batch} (before)": first.loc["ilisi", "before"],
        f"iLISI, {batch} (after)": first.loc["ilisi", "after"],
        f"{batch} balanced accuracy": first.loc["balanced_accuracy", "after"],
        "  its chance level": first.loc["balanced_accuracy", "chance"],
        f"{signal} balanced accuracy": emb.loc[("balanced_accuracy", signal), "after"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", choices=sorted(DESIGNS), default="example")
    ap.add_argument("--n-cells", type=int, default=20_000)
    ap.add_argument("--n-genes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    make, formula, batch, signal = DESIGNS[args.design]
    adata = make(args.n_cells, args.n_genes, args.seed)
    print(
        f"correction benchmark: design {args.design!r}, {args.n_cells} cells x {args.n_genes} "
        f"genes, seed {args.seed}; {formula}; batch {batch}, signal {signal}"
    )
    timing = {}
    for name, run in (
        ("scvarpart", _scvarpart),
        ("combat", _combat),
        ("regress_out", _regress_out),
    ):
        start = time.perf_counter()
        run(adata, formula, batch, signal)
        timing[name] = time.perf_counter() - start
    rows = {
        name: _scores(adata, name, batch[0], signal, args.seed, seconds)
        for name, seconds in timing.items()
    }
    uncorrected = svp.get.batch_metrics_df(adata, "genes", key="m_scvarpart")["batch_before"]
    print(f"uncorrected: median batch fraction {uncorrected.median():.3f}")
    with pd.option_context("display.width", 200, "display.max_colwidth", 40):
        print(pd.DataFrame(rows).to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
