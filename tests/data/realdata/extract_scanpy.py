"""Extract scanpy's bundled pbmc68k_reduced into tests/data/realdata/pbmc68k_reduced/.

Source: the file ``scanpy/datasets/10x_pbmc68k_reduced.h5ad`` inside the scanpy
wheel (PyPI scanpy 1.11.5), read with ``scanpy.datasets.pbmc68k_reduced()`` (no
download). 700 PBMCs (10x, Zheng et al. 2017), 765 genes. ``.raw.X`` holds
log1p of library-size-normalised counts (scanpy's preprocessing of the file);
its values are float32 with 3 decimals. We write them rounded to 4 decimals
(which leaves them as the decimals they were), so the text file is exactly what
both lme4 and the test fit. All 765 genes are kept.

    python tests/data/realdata/extract_scanpy.py
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc

OUT = Path(__file__).parent / "pbmc68k_reduced"


def main() -> None:
    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.to_adata()
    X = raw.X.toarray() if hasattr(raw.X, "toarray") else np.asarray(raw.X)
    X = np.round(X.astype(np.float64), 4)
    OUT.mkdir(parents=True, exist_ok=True)
    expr = pd.DataFrame(X, index=adata.obs_names, columns=raw.var_names)
    expr.index.name = "sample"
    with gzip.open(OUT / "expr.csv.gz", "wt", compresslevel=9) as fh:
        expr.to_csv(fh, float_format="%.15g")
    obs = pd.DataFrame(index=adata.obs_names)
    obs.index.name = "sample"
    obs["bulk_labels"] = adata.obs["bulk_labels"].astype(str)
    obs["louvain"] = "c" + adata.obs["louvain"].astype(str)
    obs["phase"] = adata.obs["phase"].astype(str)
    obs["percent_mito"] = np.round(adata.obs["percent_mito"].astype(np.float64), 6)
    obs["log_n_counts"] = np.round(np.log(adata.obs["n_counts"].astype(np.float64)), 6)
    obs["S_score"] = np.round(adata.obs["S_score"].astype(np.float64), 6)
    obs["G2M_score"] = np.round(adata.obs["G2M_score"].astype(np.float64), 6)
    obs.to_csv(OUT / "obs.csv")
    print(f"pbmc68k_reduced: {X.shape[0]} cells, {X.shape[1]} genes")


if __name__ == "__main__":
    main()
