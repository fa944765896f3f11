"""How fast are the count models? Pseudobulk and cell-level NB fits, against glmmTMB.

Usage::

    python benchmarks/count_speed.py [--pseudobulk-genes 20000] [--samples 200]
        [--cells 100000] [--cell-genes 2000] [--peer-genes 20] [--n-jobs 2] [--repeats 1]

- **Pseudobulk**: ``--samples`` samples (40 donors, each in 5 of 10 batches), NB counts
  of ``--pseudobulk-genes`` genes (library sizes around 2e5, donor sd 0.5, batch sd
  0.3, NB size 20), ``"~ (1|donor) + (1|batch)"`` with the log library size as offset.
- **Cell level**: ``svp.datasets.simulate_counts`` with ``--cells`` cells (24 patients,
  3 chemistries, 8 days, 6 operators; 48 libraries), the ``--cell-genes`` most expressed
  of 5,000 genes, ``"~ (1|patient) + (1|chemistry) + (1|day) + (1|operator)"`` with
  ``offset="log_size_factor"``: random intercepts and an offset, so each gene's zero
  counts are summed per library (:mod:`scvarpart.glmm._zero_tables`).

Both are ``svp.tl.variance_partition(family="nb", ...)`` with its defaults (intervals
included) on ``--n-jobs`` processes, timed in a session that has imported ``svp.tl``
(and with it scanpy, once per session). Then glmmTMB (``benchmarks/glmmtmb_genes.R``, when
``Rscript`` and glmmTMB are installed) fits ``--peer-genes`` of the same genes, one
process, in the same run; its seconds per gene are compared with ours on one process for
the same genes, and the log-likelihoods of the two compared gene by gene. Each fit is
printed with the seconds of a fixed reference workload taken just before it: the shared
machine's speed drifts, and ``--repeats`` shows the spread.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import scvarpart as svp

HERE = Path(__file__).parent
PSEUDOBULK = "~ (1|donor) + (1|batch)"
CELLS = "~ (1|patient) + (1|chemistry) + (1|day) + (1|operator)"


def pseudobulk(n_genes: int, n_samples: int, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    per_donor = max(1, n_samples // 40)
    rows = [(d, b) for d in range(40) for b in rng.choice(10, min(per_donor, 10), replace=False)]
    obs = pd.DataFrame(rows, columns=["donor", "batch"]).astype(str)
    obs["log_library"] = rng.normal(np.log(2e5), 0.5, len(obs))
    obs.index = [f"s{i:03d}" for i in range(len(obs))]
    m = rng.normal(-9, 1.5, n_genes)
    u, v = rng.normal(0, 0.5, (40, n_genes)), rng.normal(0, 0.3, (10, n_genes))
    eta = obs["log_library"].to_numpy()[:, None] + m
    mu = np.exp(eta + u[obs["donor"].astype(int)] + v[obs["batch"].astype(int)])
    counts = rng.negative_binomial(20, 20 / (20 + mu)).astype(np.float32)
    adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"g{i:05d}" for i in range(n_genes)]))
    adata.layers["counts"] = counts
    return adata


def cells(n_cells: int, n_genes: int, seed: int = 0) -> ad.AnnData:
    adata = svp.datasets.simulate_counts(n_cells=n_cells, n_genes=5000, seed=seed, counts=True)
    nonzero = np.asarray((adata.layers["counts"] > 0).sum(axis=0)).ravel()
    top = np.sort(np.argsort(-nonzero)[:n_genes])
    return adata[:, top].copy()


def fit(adata, formula, offset, n_jobs, genes=None) -> tuple[float, pd.Series]:
    data = adata if genes is None else adata[:, genes].copy()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = svp.tl.variance_partition(
            data, formula, family="nb", layer="counts", offset=offset, n_jobs=n_jobs,
            inplace=False, progress=False,
        )  # fmt: skip
    return time.perf_counter() - start, result.per_gene["loglik"]


def glmmtmb(adata, formula, offset, genes) -> pd.DataFrame | None:
    if shutil.which("Rscript") is None:
        print("glmmTMB: Rscript not installed")
        return None
    folder = Path(tempfile.mkdtemp())
    try:
        X = adata[:, genes].layers["counts"]
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
        pd.DataFrame(X, columns=adata.var_names[genes]).to_csv(folder / "y.csv", index=False)
        terms = [t.strip("() ").split("|")[1] for t in formula.split("+")]
        obs = adata.obs[terms].astype(str)
        obs["offset"] = adata.obs[offset].to_numpy()
        obs.to_csv(folder / "obs.csv", index=False)
        rhs = formula.replace("~", "").strip()
        subprocess.run(
            ["Rscript", str(HERE / "glmmtmb_genes.R"), str(folder / "y.csv"),
             str(folder / "obs.csv"), rhs, "nbinom2", str(folder / "out.csv")],
            check=True,
        )  # fmt: skip
        return pd.read_csv(folder / "out.csv", index_col="gene")
    finally:
        shutil.rmtree(folder)


def reference_seconds() -> float:
    """A fixed single-threaded workload (sorting 4 million numbers, three times).

    The machine is shared and its speed drifts by half within minutes: printed next to
    every figure, it says how fast the machine was then.
    """
    x = np.random.default_rng(0).random(4_000_000)
    start = time.process_time()
    for _ in range(3):
        np.sort(x)
    return time.process_time() - start


def compare(name, adata, formula, offset, n_total, args) -> None:
    for _ in range(args.repeats):
        reference = reference_seconds()
        seconds, _ = fit(adata, formula, offset, args.n_jobs)
        line = (
            f"{name}: {adata.n_vars} genes x {adata.n_obs} observations, {seconds:.1f} s on "
            f"{args.n_jobs} processes ({1e3 * seconds / adata.n_vars:.1f} ms per gene)"
        )
        if n_total != adata.n_vars:
            line += f"; {n_total} genes at this rate: {seconds * n_total / adata.n_vars:.0f} s"
        print(f"{line}; reference workload {reference:.2f} s before", flush=True)
    # the whole run's process-seconds per gene: the calls' fixed cost spread over the genes
    process_seconds = seconds * args.n_jobs / adata.n_vars
    if not args.peer_genes:
        return
    genes = np.linspace(0, adata.n_vars - 1, args.peer_genes).astype(int)
    ours_s, ours_ll = fit(adata, formula, offset, 1, genes)
    peer = glmmtmb(adata, formula, offset, genes)
    if peer is None:
        return
    diff = ours_ll.to_numpy() - peer["logLik"].to_numpy()
    ours, theirs = ours_s / len(genes), peer["seconds"].mean()
    print(
        f"  {len(genes)} genes, 1 process: scvarpart {ours:.3f} s per gene (in the whole "
        f"run: {process_seconds:.4f} process-seconds per gene), glmmTMB {theirs:.3f} s per "
        f"gene (x{theirs / ours:.0f}; x{theirs / process_seconds:.0f} against the whole "
        f"run's rate); logLik ours - glmmTMB: min "
        f"{np.nanmin(diff):.2e}, median {np.nanmedian(diff):.2e}; glmmTMB not converged "
        f"on {int((~peer['converged']).sum())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pseudobulk-genes", type=int, default=20_000)
    parser.add_argument("--fit-pseudobulk", type=int, help="fit only this many of them")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--cell-genes", type=int, default=2_000)
    parser.add_argument("--fit-cell-genes", type=int, help="fit only this many of them")
    parser.add_argument("--peer-genes", type=int, default=20)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="fit each dataset this often")
    parser.add_argument("--skip", choices=["pseudobulk", "cells"])
    args = parser.parse_args()
    # scanpy's import (svp.tl logs through it) is paid once per session, not per fit
    _ = svp.tl.variance_partition
    if args.skip != "pseudobulk":
        pb = pseudobulk(args.fit_pseudobulk or args.pseudobulk_genes, args.samples)
        compare("pseudobulk", pb, PSEUDOBULK, "log_library", args.pseudobulk_genes, args)
    if args.skip != "cells":
        start = time.perf_counter()
        data = cells(args.cells, args.fit_cell_genes or args.cell_genes)
        print(f"cell level: simulated in {time.perf_counter() - start:.0f} s")
        compare("cell level", data, CELLS, "log_size_factor", args.cell_genes, args)


if __name__ == "__main__":
    main()
