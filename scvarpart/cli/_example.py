"""``scvarpart example`` (the main job on built-in data) and ``scvarpart simulate``."""

from __future__ import annotations

import argparse
import time

from .. import __version__
from .._io import check_output, write_h5ad_atomic
from ._common import EXIT_CODES, add_output, quiet_logging

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    ex = sub.add_parser(
        "example",
        help="fit the built-in simulated dataset and compare with the truth",
        description=(
            "Simulate the example dataset (svp.datasets.crossed_example), run "
            "svp.tl.variance_partition on it and print a summary with the agreement of the "
            "estimates with the simulated variances. The fitted AnnData is saved only with "
            "--output."
        ),
        epilog="example:\n  scvarpart example --n-genes 2000 --output example.h5ad\n\n"
        + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("--n-cells", type=int, default=5000, help="cells to simulate (default 5000)")
    ex.add_argument("--n-genes", type=int, default=1000, help="genes to simulate (default 1000)")
    ex.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ex.add_argument("--method", type=str.upper, choices=["ML", "REML"], default="ML")
    ex.add_argument("--n-jobs", type=int, default=1, help="threads (default 1)")
    ex.add_argument("--output", "-o", help="write the fitted AnnData to this .h5ad file")
    ex.add_argument("--force", action="store_true", help="replace an existing --output file")
    ex.add_argument("--quiet", action="store_true", help="no progress bars or log messages")
    ex.set_defaults(func=_example)

    sim = sub.add_parser(
        "simulate",
        help="write a simulated dataset (.h5ad) to try the other commands on",
        description=(
            "Write the example dataset (svp.datasets.crossed_example: Gaussian, known "
            "variances) or, with --counts, log-normalised negative binomial counts on the "
            "24 x 3 x 8 x 6 single-cell design (svp.datasets.simulate_counts), block by block."
        ),
        epilog="examples:\n  scvarpart simulate -o example.h5ad\n"
        "  scvarpart simulate --counts --n-cells 1000000 --n-genes 2000 -o big.h5ad\n\n"
        + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("--counts", action="store_true", help="simulated counts, log-normalised")
    sim.add_argument("--n-cells", type=int, default=2000, help="cells (default 2000)")
    sim.add_argument("--n-genes", type=int, default=200, help="genes (default 200)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--n-jobs", type=int, default=1, help="threads (default 1)")
    add_output(sim, "the .h5ad file to write")
    sim.set_defaults(func=_simulate)


def _example(args: argparse.Namespace) -> int:
    if args.output:  # before the work, not after it
        check_output(args.output, force=args.force)
    quiet_logging(args)
    import numpy as np

    from .. import datasets, tl

    adata = datasets.crossed_example(n_cells=args.n_cells, n_genes=args.n_genes, seed=args.seed)
    info = adata.uns["example"]
    print(f"scvarpart {__version__}: simulated example, {adata.n_obs} cells x {adata.n_vars} genes")
    print(f"model {info['formula']}  ({args.method})")
    start = time.perf_counter()
    tl.variance_partition(
        adata,
        info["formula"],
        batch=info["batch"],
        signal=info["signal"],
        method=args.method,
        n_jobs=args.n_jobs,
    )
    seconds = time.perf_counter() - start
    from ..get import result

    res = result(adata)
    summary = res.summary
    print(
        f"fitted in {seconds:.2f} s ({adata.n_vars / seconds:,.0f} genes/s); "
        f"{summary['n_singular']} singular fits, {summary['n_failed']} failed\n"
    )
    est, truth = res.variance, adata.varm["true_variance"]
    print(f"{'component':<11}{'median fraction':>17}{'r(estimate, truth)':>20}")
    for comp in res.components:
        r = np.corrcoef(est[comp], truth[comp])[0, 1] if comp in truth else np.nan
        r_txt = f"{r:.3f}" if np.isfinite(r) else "-"
        print(f"{comp:<11}{summary['median_fraction'][comp]:>17.3f}{r_txt:>20}")
    top = res.batch_dominated(n_top=5)
    print(
        f"\nbatch-dominated genes (rho = batch variance / patient variance >= 1: "
        f"{len(res.batch_dominated())}), by batch fraction:"
    )
    for gene, row in top.iterrows():
        print(f"  {gene}  batch fraction {row['batch_fraction']:.3f}, rho = {row['rho']:.3g}")
    if args.output:
        path = write_h5ad_atomic(adata, args.output, force=args.force)
        print(
            f"\nresults saved in {path} (the fitted AnnData: varm['varpart'], "
            "var['varpart_rho'], uns['varpart']; open it with anndata.read_h5ad)"
        )
    else:
        print("\nresults not saved: pass --output example.h5ad to save the fitted AnnData")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    check_output(args.output, force=args.force)
    from .. import datasets

    if args.counts:
        adata = datasets.simulate_counts(
            args.n_cells, args.n_genes, seed=args.seed, n_jobs=args.n_jobs
        )
    else:
        adata = datasets.crossed_example(args.n_cells, args.n_genes, seed=args.seed)
    write_h5ad_atomic(adata, args.output, force=args.force)
    print(f"scvarpart simulate: wrote {args.output} ({adata.n_obs} cells x {adata.n_vars} genes)")
    return 0
