"""A simulated atlas per cell type: cell-level and pseudobulk fits, the time of each group.

Usage::

    python benchmarks/atlas.py [--n-cells 500000] [--n-genes 2000] [--n-jobs 2]

``svp.datasets.simulate_counts`` with 40 donors (the biological factor, two libraries each),
3 chemistries, 8 days and 6 operators; every cell gets one of 20 cell types (proportions
from a Dirichlet(1) draw, so types range from common to rare). The counts are kept.

- cell level: ``svp.tl.variance_partition(cells, "~ log_umi + (1|donor) + (1|chemistry) +
  (1|day)", groupby="cell_type")`` on the log-normalised values;
- pseudobulk: ``svp.pp.pseudobulk(cells, "library", groupby="cell_type")`` (one profile per
  library and cell type; edgeR's expression filter per type), then the same model without
  ``log_umi``, with ``weights="n_cells"``, per cell type.

Both REML, with intervals (``ci=0.95``). Prints the total time of each step and, per cell
type, its cells (or samples), genes and the seconds its fit took (the fit of a group: from
the log of ``svp.tl.variance_partition``, which times each group).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import scvarpart as svp
from scvarpart.tl import _grouped

CELL_MODEL = "~ log_umi + (1|donor) + (1|chemistry) + (1|day)"
BULK_MODEL = "~ (1|donor) + (1|chemistry) + (1|day)"


def _atlas(n_cells: int, n_genes: int, n_jobs: int):
    levels = {"donor": 40, "chemistry": 3, "day": 8, "operator": 6}
    cells = svp.datasets.simulate_counts(
        n_cells, n_genes, seed=0, levels=levels, counts=True, n_jobs=n_jobs
    )
    rng = np.random.default_rng(1)
    share = rng.dirichlet(np.ones(20))
    types = [f"type{i:02d}" for i in range(20)]
    cells.obs["cell_type"] = pd.Categorical(rng.choice(types, cells.n_obs, p=share), types)
    return cells


def _timed_groups(run) -> tuple[float, dict[str, float]]:
    """Run ``run()``; its total seconds and the seconds of each group's fit."""
    seconds: dict[str, float] = {}
    fit_group = _grouped.fit_group

    def timed(adata, table, group, mask, genes, fit):
        start = time.perf_counter()
        out = fit_group(adata, table, group, mask, genes, fit)
        seconds[group] = time.perf_counter() - start
        return out

    _grouped.fit_group = timed
    try:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run()
        return time.perf_counter() - start, seconds
    finally:
        _grouped.fit_group = fit_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=500_000)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    cells = _atlas(args.n_cells, args.n_genes, args.n_jobs)
    print(f"simulated {cells.n_obs:,} cells x {cells.n_vars:,} genes in "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip

    cell_total, cell_times = _timed_groups(
        lambda: svp.tl.variance_partition(
            cells,
            CELL_MODEL,
            groupby="cell_type",
            method="REML",
            n_jobs=args.n_jobs,
            progress=False,
        )
    )
    cell_table = svp.get.groups(cells).set_index("group")

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bulk = svp.pp.pseudobulk(cells, "library", groupby="cell_type", n_jobs=args.n_jobs)
    aggregate = time.perf_counter() - start
    bulk_total, bulk_times = _timed_groups(
        lambda: svp.tl.variance_partition(
            bulk,
            BULK_MODEL,
            groupby="cell_type",
            weights="n_cells",
            method="REML",
            n_jobs=args.n_jobs,
            progress=False,
        )
    )
    bulk_table = svp.get.groups(bulk).set_index("group")

    counts = ["cells", "cell-level genes", "samples", "pseudobulk genes"]
    rows = pd.DataFrame({
        "cells": cell_table["n_obs"], "cell-level genes": cell_table["n_genes"],
        "cell-level s": pd.Series(cell_times),
        "samples": bulk_table["n_obs"], "pseudobulk genes": bulk_table["n_genes"],
        "pseudobulk s": pd.Series(bulk_times), "pseudobulk status": bulk_table["status"],
    })  # fmt: skip
    rows[counts] = rows[counts].astype("Int64")
    print(f"\ncell level, 20 cell types: {cell_total:.1f} s in all")
    print(f"pseudobulk: aggregation {aggregate:.1f} s, fits {bulk_total:.1f} s in all")
    print(f"\nper cell type (n_jobs={args.n_jobs}):")
    print(rows.to_string(float_format=lambda v: f"{v:.2f}"))
    print(
        f"\nmedian per cell type: cell level {np.median(list(cell_times.values())):.2f} s, "
        f"pseudobulk {np.median(list(bulk_times.values())):.2f} s"
    )


if __name__ == "__main__":
    main()
