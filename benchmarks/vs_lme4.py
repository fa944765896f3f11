"""Time scvarpart against lme4 (one lmer() per gene, as variancePartition does).

Usage::

    python benchmarks/vs_lme4.py [--n-cells 20000] [--n-genes 2000] [--lme4-genes 5]

Simulates the example design (svp.datasets.crossed_example) at the given size, fits
every gene with scvarpart (ML, as variancePartition's default) and, when ``Rscript``
with lme4 is installed, fits the first ``--lme4-genes`` genes with lme4 in the same
run. Prints seconds per gene for both, their ratio, and the agreement of the fits.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import scvarpart as svp

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=20_000)
    ap.add_argument("--n-genes", type=int, default=2_000)
    ap.add_argument("--lme4-genes", type=int, default=5)
    ap.add_argument("--method", choices=["ML", "REML"], default="ML")
    ap.add_argument("--n-jobs", type=int, default=1)
    args = ap.parse_args()

    adata = svp.datasets.crossed_example(n_cells=args.n_cells, n_genes=args.n_genes, seed=0)
    formula = svp.datasets.EXAMPLE_FORMULA
    print(
        f"scvarpart {svp.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; {args.n_cells} cells x {args.n_genes} genes, {args.method}"
    )
    print(f"model {formula}")

    start = time.perf_counter()
    res = svp.tl.variance_partition(
        adata, formula, method=args.method, n_jobs=args.n_jobs, inplace=False
    )
    ours = time.perf_counter() - start
    per_gene = ours / args.n_genes
    print(
        f"scvarpart: {ours:.2f} s for {args.n_genes} genes = {per_gene * 1e3:.3f} ms/gene "
        f"({args.n_genes / ours:,.0f} genes/s), n_jobs={args.n_jobs}"
    )

    if shutil.which("Rscript") is None or args.lme4_genes <= 0:
        print("lme4: Rscript not found, skipped")
        return
    genes = adata.var_names[: args.lme4_genes]
    with tempfile.TemporaryDirectory() as tmp:
        # full precision, so that lme4 sees exactly the values scvarpart fitted
        values = np.asarray(adata[:, genes].X, dtype=np.float64)
        pd.DataFrame(values, index=adata.obs_names, columns=genes).to_csv(
            f"{tmp}/expr.csv", float_format="%.17g"
        )
        adata.obs.to_csv(f"{tmp}/obs.csv", float_format="%.17g")
        rhs = formula.strip()
        cmd = [
            "Rscript",
            str(HERE / "lmer_genes.R"),
            f"{tmp}/expr.csv",
            f"{tmp}/obs.csv",
            rhs,
            str(args.method == "REML").upper(),
            f"{tmp}/out.csv",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"lme4: failed ({proc.stderr.strip().splitlines()[-1:]})")
            return
        ref = pd.read_csv(f"{tmp}/out.csv").set_index("gene")
    lme4_per_gene = ref["seconds"].median()
    print(f"lme4:      {lme4_per_gene:.3f} s/gene (median of {len(ref)} genes)")
    print(f"speed-up:  {lme4_per_gene / per_gene:,.0f}x per gene")

    objective = -2 * res["var"].loc[genes, "varpart_loglik"]
    diff = objective - ref["objective"]
    print(
        f"objective (ours - lme4): max {diff.max():+.2e}, min {diff.min():+.2e} "
        "(negative: scvarpart found a better optimum)"
    )
    comps = [c for c in res["variance"].columns if f"var_{c}" in ref.columns]
    comps.append("Residual")
    rel = []
    for c in comps:
        theirs = ref[f"var_{c}"]
        big = theirs > 1e-4 * ref.filter(like="var_").sum(axis=1)
        ours_c = res["variance"].loc[genes, c]
        rel.append((np.abs(ours_c - theirs) / theirs)[big].max())
    print(
        f"variance components: max relative difference {np.nanmax(rel):.1e} "
        "(components above 1e-4 of the total)"
    )


if __name__ == "__main__":
    main()
