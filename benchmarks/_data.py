"""Benchmark datasets: simulated once (svp.datasets.simulate_counts), cached on disk.

The cache lives in ``benchmarks/.cache/`` (or ``$SCVARPART_BENCH_CACHE``), keyed by
size and seed, so repeated benchmark runs time the analysis, not the simulation.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import anndata as ad

import scvarpart as svp

CACHE = Path(os.environ.get("SCVARPART_BENCH_CACHE", Path(__file__).parent / ".cache"))


def simulated_h5ad(n_cells: int, n_genes: int, seed: int = 0) -> Path:
    """Path of a cached simulated dataset, written block by block if missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"sim_{n_cells}x{n_genes}_seed{seed}.h5ad"
    if not path.exists():
        tmp = path.with_suffix(".tmp.h5ad")
        print(f"simulating {n_cells} cells x {n_genes} genes into {path} ...", flush=True)
        svp.datasets.simulate_counts(
            n_cells, n_genes, seed=seed, path=tmp, n_jobs=os.cpu_count() or 1
        ).file.close()
        tmp.rename(path)
    return path


def fit_phase_data(description: str) -> tuple[argparse.Namespace, ad.AnnData]:
    """The options of the fit-phase benchmarks and their simulated dataset.

    ``--n-cells``, ``--n-genes`` and ``--repeats``, and ``svp.datasets.simulate_counts``
    of that size (seed 0), in memory.
    """
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--n-cells", type=int, default=20_000)
    ap.add_argument("--n-genes", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    return args, svp.datasets.simulate_counts(args.n_cells, args.n_genes, seed=0, n_jobs=2)


def simulated(n_cells: int, n_genes: int, seed: int = 0) -> ad.AnnData:
    """The cached dataset, loaded into memory."""
    return ad.read_h5ad(simulated_h5ad(n_cells, n_genes, seed))


if __name__ == "__main__":
    import sys

    print(simulated_h5ad(int(sys.argv[1]), int(sys.argv[2])))
