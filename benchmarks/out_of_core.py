"""Out of core: 1,000,000 cells x 2,000 genes streamed from an .h5ad file.

Usage::

    python benchmarks/out_of_core.py [--n-cells 1000000] [--n-genes 2000] [--chunk-size N]
                                     [--repeats 3]

Runs ``svp.tl.variance_partition_file`` in a fresh process ``--repeats`` times and
reports its wall time (median and range) and peak resident memory
(``ru_maxrss``, the largest), with the size of the file and of its expression
matrix for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import h5py
from _data import simulated_h5ad

CHILD = """
import json, resource, sys, time
import scvarpart as svp
path, chunk = sys.argv[1], (int(sys.argv[2]) or None)
start = time.perf_counter()
result = svp.tl.variance_partition_file(
    path, svp.datasets.SIMULATION_FORMULA, batch=["chemistry", "day", "operator"],
    signal="patient", n_jobs=2, chunk_size=chunk, progress=False,
)
seconds = time.perf_counter() - start
summary = result.uns["varpart"]["summary"]
print(json.dumps({"seconds": seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "n_failed": summary["n_failed"], "n_not_converged": summary["n_not_converged"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=1_000_000)
    ap.add_argument("--n-genes", type=int, default=2_000)
    ap.add_argument("--chunk-size", type=int, default=0, help="cells per block (0: automatic)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = simulated_h5ad(args.n_cells, args.n_genes)
    with h5py.File(path) as f:
        nnz = f["X"]["data"].shape[0]
        x_mb = (f["X"]["data"].nbytes + f["X"]["indices"].nbytes + f["X"]["indptr"].nbytes) / 2**20
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(args.chunk_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    seconds = [r["seconds"] for r in runs]
    res = runs[-1]
    print(
        f"{args.n_cells:,} cells x {args.n_genes:,} genes from {path.name} "
        f"({path.stat().st_size / 2**20:,.0f} MB on disk; X: {nnz:,} non-zeros, "
        f"{x_mb:,.0f} MB in memory as CSR float32)"
    )
    print(
        f"variance_partition_file: {statistics.median(seconds):.1f} s "
        f"({min(seconds):.1f}-{max(seconds):.1f}, {args.repeats} runs), peak resident memory "
        f"{max(r['peak_mb'] for r in runs):,.0f} MB; {res['n_not_converged']} not converged, "
        f"{res['n_failed']} without estimates"
    )


if __name__ == "__main__":
    main()
