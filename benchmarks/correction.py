"""Batch correction: scvarpart's against scanpy's ComBat and regress_out, on known truth.

Usage::

    python benchmarks/correction.py [--n-cells 20000] [--n-genes 500] [--seed 0]

Data: ``svp.datasets.crossed_example`` (patients crossed with chemistry, day and operator,
Gaussian values with known variances per gene, ``varm["true_variance"]``). Each method
corrects the same matrix:

- scvarpart: the REML fit of the example's model, then ``svp.tl.remove_batch_effects``
  of chemistry, day and operator (the fit's time included);
- ComBat (``sc.pp.combat``) with the libraries (chemistry x day x operator) as its batch,
  since it takes one batch key;
- ``sc.pp.regress_out`` of the three factors' indicators (treatment contrasts).

Every corrected matrix is scored by ``svp.tl.batch_metrics`` against the uncorrected one:
per gene, the refitted batch fraction and the patient (signal) variance over the truth's
and over the uncorrected fit's, and the genes flagged as having lost signal; on the
embedding (30 principal components, 5,000 cells), PCR comparison, iLISI, the batches'
and the patients' balanced accuracy. Prints one table.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import scanpy as sc

import scvarpart as svp

BATCH = ["chemistry", "day", "operator"]


def _scvarpart(adata) -> None:
    svp.tl.remove_batch_effects(
        adata, svp.datasets.EXAMPLE_FORMULA, terms=BATCH, signal="patient", method="REML",
        progress=False, layer_added="scvarpart",
    )  # fmt: skip


def _combat(adata) -> None:
    work = adata.copy()
    work.obs["library"] = work.obs[BATCH].astype(str).agg(":".join, axis=1).astype("category")
    sc.pp.combat(work, key="library")
    adata.layers["combat"] = np.asarray(work.X, dtype=np.float32)


def _regress_out(adata) -> None:
    work = adata.copy()
    dummies = pd.get_dummies(work.obs[BATCH], drop_first=True, dtype=float)
    dummies.columns = [f"d_{i}" for i in range(dummies.shape[1])]
    work.obs = pd.concat([work.obs, dummies.set_index(work.obs.index)], axis=1)
    sc.pp.regress_out(work, keys=list(dummies.columns))
    adata.layers["regress_out"] = np.asarray(work.X, dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=20_000)
    ap.add_argument("--n-genes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    adata = svp.datasets.crossed_example(n_cells=args.n_cells, n_genes=args.n_genes, seed=args.seed)
    truth = adata.varm["true_variance"]
    print(
        f"correction benchmark: {args.n_cells} cells x {args.n_genes} genes, "
        f"crossed_example seed {args.seed}; batch {BATCH}, signal patient"
    )
    timing = {}
    for name, run in (
        ("scvarpart", _scvarpart),
        ("combat", _combat),
        ("regress_out", _regress_out),
    ):
        start = time.perf_counter()
        run(adata)
        timing[name] = time.perf_counter() - start
    rows = {}
    for name in timing:
        key = f"m_{name}"
        svp.tl.batch_metrics(adata, after=name, key_added=key, n_sample=5000, seed=args.seed)
        emb = svp.get.batch_metrics_df(adata, key=key).set_index(["metric", "variable"])
        genes = svp.get.batch_metrics_df(adata, "genes", key=key).set_index("gene")
        after = svp.get.result(adata, key=f"varpart_{name}").variance
        clear = truth["patient"] > 0.01
        rows[name] = {
            "time (s)": timing[name],
            "batch fraction after, median": genes["batch_after"].median(),
            "batch fraction after, 90%": genes["batch_after"].quantile(0.9),
            "patient variance / truth, median": (after["patient"] / truth["patient"])[
                clear
            ].median(),
            "patient variance / uncorrected fit, median": genes["signal_ratio"][clear].median(),
            "genes flagged as losing signal": int(genes["signal_lost"].sum()),
            "PCR comparison, day": emb.loc[("pcr_comparison", "day"), "after"],
            "iLISI, day (before -> after)": f"{emb.loc[('ilisi', 'day'), 'before']:.3f} -> "
            f"{emb.loc[('ilisi', 'day'), 'after']:.3f}",
            "day balanced accuracy (chance)": f"{emb.loc[('balanced_accuracy', 'day'), 'after']:.3f} "
            f"({emb.loc[('balanced_accuracy', 'day'), 'chance']:.3f})",
            "patient balanced accuracy": emb.loc[("balanced_accuracy", "patient"), "after"],
        }
    uncorrected = svp.get.batch_metrics_df(adata, "genes", key="m_scvarpart")["batch_before"]
    print(f"uncorrected: median batch fraction {uncorrected.median():.3f}")
    with pd.option_context("display.width", 200, "display.max_colwidth", 40):
        print(pd.DataFrame(rows).to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
