"""scvarpart against statsmodels MixedLM and lme4, on the same genes in the same run.

Usage::

    python benchmarks/vs_peers.py [--n-cells 20000] [--n-genes 2000]
                                  [--statsmodels-genes 3] [--lme4-genes 5]

Simulated counts on the single-cell design (svp.datasets.simulate_counts),
log-normalised. scvarpart fits every gene (ML, variancePartition's default), end
to end on one core; statsmodels' MixedLM (crossed effects as variance components
of a single group, the only way it fits them) and lme4 (one ``lmer`` per gene, as
variancePartition does, via ``benchmarks/lmer_genes.R`` when ``Rscript`` with lme4
is installed) fit the first genes with at least 20% non-zero cells. Prints seconds
per gene, the ratios, and how the estimates agree (the ML deviance, lower is a
better optimum, and the variance components).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import scvarpart as svp

HERE = Path(__file__).parent
FACTORS = ["patient", "chemistry", "day", "operator"]
FIXED = "log_umi + pct_mito"


def _agreement(ours: pd.DataFrame, theirs: pd.DataFrame) -> str:
    diff = ours["deviance"] - theirs["deviance"]
    total = theirs[[*FACTORS, "Residual"]].sum(axis=1)
    rel = []
    for c in [*FACTORS, "Residual"]:
        big = theirs[c] > 1e-3 * total
        rel.append((np.abs(ours[c] - theirs[c]) / theirs[c])[big].max())
    return (
        f"deviance ours - theirs: min {diff.min():+.2e}, max {diff.max():+.2e}; variance "
        f"components (above 1e-3 of the total) differ by up to {np.nanmax(rel):.1e} relative"
    )


def _statsmodels(adata, genes) -> tuple[pd.DataFrame, list[float]]:
    import statsmodels.formula.api as smf

    frame = adata.obs[[*FACTORS, "log_umi", "pct_mito"]].copy()
    frame["one"] = 1
    vc = {f: f"0 + C({f})" for f in FACTORS}
    rows, seconds, converged = [], [], 0
    for g in genes:
        frame["y"] = np.asarray(adata[:, g].X.todense()).ravel().astype(np.float64)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # its default optimisers, as a user would call it
            res = smf.mixedlm(f"y ~ {FIXED}", frame, groups="one", vc_formula=vc).fit(reml=False)
        seconds.append(time.perf_counter() - start)
        converged += bool(res.converged)
        names = res.model.exog_vc.names
        row = {f: res.vcomp[names.index(f)] for f in FACTORS}
        rows.append({**row, "Residual": res.scale, "deviance": -2 * res.llf})
    print(f"  statsmodels reports convergence on {converged} of {len(genes)} genes")
    return pd.DataFrame(rows, index=genes), seconds


def _lme4(adata, genes) -> tuple[pd.DataFrame, list[float]] | None:
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        values = np.asarray(adata[:, genes].X.todense(), dtype=np.float64)
        pd.DataFrame(values, index=adata.obs_names, columns=genes).to_csv(
            f"{tmp}/expr.csv", float_format="%.17g"
        )
        adata.obs.to_csv(f"{tmp}/obs.csv", float_format="%.17g")
        rhs = f"~ {FIXED} + " + " + ".join(f"(1|{f})" for f in FACTORS)
        cmd = ["Rscript", str(HERE / "lmer_genes.R"), f"{tmp}/expr.csv", f"{tmp}/obs.csv"]
        proc = subprocess.run([*cmd, rhs, "FALSE", f"{tmp}/out.csv"], capture_output=True)
        if proc.returncode != 0:
            print("lme4: failed:", proc.stderr.decode().strip().splitlines()[-1:])
            return None
        ref = pd.read_csv(f"{tmp}/out.csv").set_index("gene")
    out = ref.rename(columns={f"var_{c}": c for c in [*FACTORS, "Residual"]})
    out = out.rename(columns={"objective": "deviance"})
    return out, list(ref["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=20_000)
    ap.add_argument("--n-genes", type=int, default=2_000)
    ap.add_argument("--statsmodels-genes", type=int, default=3)
    ap.add_argument("--lme4-genes", type=int, default=5)
    args = ap.parse_args()

    adata = svp.datasets.simulate_counts(args.n_cells, args.n_genes, seed=0, n_jobs=2)
    formula = svp.datasets.SIMULATION_FORMULA
    print(f"{args.n_cells:,} cells x {args.n_genes:,} genes; model {formula} (ML)")
    svp.tl.variance_partition(adata[:500, :10].copy(), formula, progress=False)  # compile
    ours_times = []
    for _ in range(3):
        start = time.perf_counter()
        svp.tl.variance_partition(adata, formula, n_jobs=1, progress=False)
        ours_times.append((time.perf_counter() - start) / args.n_genes)
    per_gene = float(np.median(ours_times))
    ours = adata.varm["varpart_variance"].copy()
    ours["deviance"] = -2 * adata.var["varpart_loglik"]
    print(
        f"scvarpart (1 core, end to end): {per_gene * 1e3:.2f} ms per gene (median of 3 runs; "
        f"{min(ours_times) * 1e3:.2f}-{max(ours_times) * 1e3:.2f})"
    )

    detected = np.asarray((adata.X > 0).mean(axis=0)).ravel()
    candidates = adata.var_names[detected >= 0.2]
    peers = [
        ("statsmodels MixedLM", _statsmodels, args.statsmodels_genes),
        ("lme4 (lmer)", _lme4, args.lme4_genes),
    ]
    for name, run, n in peers:
        if n <= 0:
            continue
        got = run(adata, list(candidates[:n]))
        if got is None:
            print(f"{name}: skipped (Rscript with lme4 not found)")
            continue
        theirs, seconds = got
        print(
            f"{name}: {np.median(seconds):.2f} s per gene (median of {len(seconds)} genes; "
            f"{min(seconds):.2f}-{max(seconds):.2f}), scvarpart "
            f"{np.median(seconds) / per_gene:,.0f}x faster"
        )
        print(f"  agreement on those genes: {_agreement(ours.loc[theirs.index], theirs)}")
    print(f"({os.cpu_count()} cores; statsmodels and lme4 single-threaded)")


if __name__ == "__main__":
    main()
