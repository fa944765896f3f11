"""Command line interface: ``scvarpart <command>`` (also ``python -m scvarpart``)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["main"]


def _example(args: argparse.Namespace) -> int:
    from . import __version__, datasets, tl
    from ._io import write_h5ad_atomic

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
    summary = adata.uns["varpart"]["summary"]
    print(
        f"fitted in {seconds:.2f} s ({adata.n_vars / seconds:,.0f} genes/s); "
        f"{summary['n_singular']} singular fits, {summary['n_failed']} failed\n"
    )
    est = adata.varm["varpart_variance"]
    truth = adata.varm["true_variance"]
    print(f"{'component':<11}{'median fraction':>17}{'r(estimate, truth)':>20}")
    for comp in adata.uns["varpart"]["components"]:
        r = np.corrcoef(est[comp], truth[comp])[0, 1] if comp in truth else np.nan
        r_txt = f"{r:.3f}" if np.isfinite(r) else "-"
        print(f"{comp:<11}{summary['median_fraction'][comp]:>17.3f}{r_txt:>20}")
    rho = adata.var["varpart_rho"]
    top = rho[np.isfinite(rho)].sort_values(ascending=False).head(5)
    print(
        f"\nrho = batch variance / patient variance: {int(np.isinf(rho).sum())} genes have "
        "no patient variance (rho = inf); largest finite values:"
    )
    for gene, value in top.items():
        print(f"  {gene}  rho = {value:.3g}")
    if args.output:
        path = write_h5ad_atomic(adata, args.output, force=args.force)
        print(f"\nwrote {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="scvarpart",
        description="Exact per-gene variance partition of single-cell data.",
    )
    parser.add_argument("--version", action="version", version=f"scvarpart {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser(
        "example",
        help="fit the built-in simulated dataset and compare with the truth",
        description=(
            "Simulate the example dataset (svp.datasets.crossed_example), run "
            "svp.tl.variance_partition on it and print a summary. Example: "
            "scvarpart example --n-genes 2000 --output example.h5ad"
        ),
    )
    ex.add_argument("--n-cells", type=int, default=5000, help="cells to simulate (default 5000)")
    ex.add_argument("--n-genes", type=int, default=1000, help="genes to simulate (default 1000)")
    ex.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ex.add_argument("--method", choices=["ML", "REML"], default="ML", help="default ML")
    ex.add_argument("--n-jobs", type=int, default=1, help="parallel workers (default 1)")
    ex.add_argument("--output", "-o", help="write the fitted AnnData to this .h5ad file")
    ex.add_argument("--force", action="store_true", help="replace an existing --output file")
    ex.set_defaults(func=_example)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileExistsError) as err:
        print(f"scvarpart: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
