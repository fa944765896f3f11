"""Scaling curves: time against cells (10k to 1M) and against genes; peak memory.

Usage::

    python benchmarks/scaling.py [--cells 10000,30000,100000,300000,1000000]
                                 [--genes 1000,2000,5000,10000,20000]

Cells: the first n cells of a simulated 1,000,000 x 2,000 file (cells are
simulated independently), each run from disk (``variance_partition_file``) in a
fresh process that reports the pass over the data, the fits and its peak
resident memory. Genes: the first G genes of a simulated 100,000-cell dataset in
memory. Writes ``benchmarks/results/scaling.csv`` and ``scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from _data import CACHE, simulated, simulated_h5ad
from matplotlib.ticker import FuncFormatter, NullFormatter

RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, resource, sys, time
import anndata as ad
import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.lmm import fit_lmm
from scvarpart.suffstats import design_gram, response_stats
from scvarpart.suffstats.gram import centred_fixed, indicator_matrix
svp.tl.variance_partition(svp.datasets.simulate_counts(300, 5), svp.datasets.SIMULATION_FORMULA,
                          progress=False)  # compile, outside the timings
path = sys.argv[1]
t0 = time.perf_counter()
svp.tl.variance_partition_file(path, svp.datasets.SIMULATION_FORMULA, n_jobs=2, progress=False)
total = time.perf_counter() - t0
backed = ad.read_h5ad(path, backed="r")
design = build_design(svp.datasets.SIMULATION_FORMULA, backed.obs)
t0 = time.perf_counter()
stats = svp.lmm.response_stats(backed.X, design, n_jobs=2).response
t_pass = time.perf_counter() - t0
t0 = time.perf_counter()
fit_lmm(design_gram(design), stats, n_jobs=2)
t_fit = time.perf_counter() - t0
print(json.dumps({"total": total, "pass": t_pass, "fit": t_fit,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _subset_file(n: int, n_genes: int) -> Path:
    full = simulated_h5ad(1_000_000, n_genes)
    if n >= 1_000_000:
        return full
    path = CACHE / f"sim_first{n}x{n_genes}.h5ad"
    if not path.exists():
        backed = ad.read_h5ad(full, backed="r")
        backed[:n].to_memory().write_h5ad(path)
    return path


def cells_curve(cells: list[int], n_genes: int = 2_000) -> pd.DataFrame:
    rows = []
    for n in cells:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(_subset_file(n, n_genes))],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"cells": n, "genes": n_genes, **res})
        print(
            f"  {n:>9,} cells x {n_genes:,} genes: {res['total']:6.1f} s "
            f"(pass {res['pass']:.1f} s, fits {res['fit']:.1f} s), peak {res['peak_mb']:,.0f} MB",
            flush=True,
        )
    return pd.DataFrame(rows)


def genes_curve(genes: list[int], n_cells: int = 100_000) -> pd.DataFrame:
    import time

    import scvarpart as svp
    from scvarpart.design import build_design
    from scvarpart.lmm import fit_lmm
    from scvarpart.suffstats import design_gram, response_stats
    from scvarpart.suffstats.gram import centred_fixed, indicator_matrix

    full = simulated(n_cells, max(genes))
    design = build_design(svp.datasets.SIMULATION_FORMULA, full.obs)
    Z, Xc, gram = indicator_matrix(design), centred_fixed(design)[0], design_gram(design)
    fit_lmm(gram, response_stats(full.X[:, :5], Z, Xc))  # compile
    rows = []
    for G in genes:
        X = full.X[:, :G].tocsr()
        t0 = time.perf_counter()
        stats = response_stats(X, Z, Xc, n_jobs=2)
        t_pass = time.perf_counter() - t0
        t0 = time.perf_counter()
        fit_lmm(gram, stats, n_jobs=2)
        t_fit = time.perf_counter() - t0
        rows.append({"cells": n_cells, "genes": G, "pass": t_pass, "fit": t_fit})
        print(
            f"  {n_cells:,} cells x {G:>6,} genes: pass {t_pass:.1f} s, fits {t_fit:.1f} s "
            f"({G / t_fit:,.0f} genes/s)",
            flush=True,
        )
    return pd.DataFrame(rows)


def plot(by_cells: pd.DataFrame, by_genes: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    ax = axes[0]
    for col, style in (("total", "o-"), ("pass", "s--"), ("fit", "^:")):
        ax.plot(by_cells["cells"], by_cells[col], style, label=col)
    ax.set(xscale="log", yscale="log", xlabel="cells (2,000 genes, from disk)", ylabel="seconds")
    ax.set_title("time vs cells")
    ax.legend()
    ax = axes[1]
    for col, style in (("pass", "s--"), ("fit", "^:")):
        ax.plot(by_genes["genes"], by_genes[col], style, label=col)
    n = by_genes["cells"].iloc[0]
    ax.set(xscale="log", yscale="log", xlabel=f"genes ({n:,} cells, in memory)", ylabel="seconds")
    ax.set_title("time vs genes")
    ax.legend()
    ax = axes[2]
    ax.plot(by_cells["cells"], by_cells["peak_mb"], "o-")
    ax.set(xscale="log", xlabel="cells (2,000 genes, from disk)", ylabel="peak resident MB")
    ax.set_ylim(0, max(2048, by_cells["peak_mb"].max() * 1.1))
    ax.axhline(2048, color="grey", lw=0.8, ls="--")
    ax.set_title("peak memory vs cells")
    count = FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k")
    for ax in axes:
        ax.xaxis.set_major_formatter(count)
        ax.xaxis.set_minor_formatter(NullFormatter())
    for ax in axes[:2]:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    fig.suptitle("scvarpart on 2 cores (simulated counts; 24 x 3 x 8 x 6 design + 2 covariates)")
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="10000,30000,100000,300000,1000000")
    ap.add_argument("--genes", default="1000,2000,5000,10000,20000")
    ap.add_argument("--plot-only", action="store_true", help="redraw from scaling.csv")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.plot_only:
        table = pd.read_csv(RESULTS / "scaling.csv")
        by_cells = table[table["peak_mb"].notna()]
        plot(by_cells, table[table["peak_mb"].isna()], RESULTS / "scaling.png")
        return
    print("time and memory against cells:")
    by_cells = cells_curve([int(c) for c in args.cells.split(",")])
    print("time against genes:")
    by_genes = genes_curve([int(g) for g in args.genes.split(",")])
    pd.concat([by_cells, by_genes]).to_csv(RESULTS / "scaling.csv", index=False)
    plot(by_cells, by_genes, RESULTS / "scaling.png")
    print(f"wrote {RESULTS / 'scaling.csv'} and {RESULTS / 'scaling.png'}")


if __name__ == "__main__":
    main()
