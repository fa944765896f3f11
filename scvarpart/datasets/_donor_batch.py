"""Donors crossed with a batch factor, each gene's variances drawn at random."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_dataset_size, doc_params

DONOR_BATCH_FORMULA = "~ (1|donor) + (1|batch)"


@doc_params(doc_dataset_size=doc_dataset_size)
def donor_batch(
    n_cells: int = 3000,
    n_genes: int = 300,
    *,
    n_donors: int = 20,
    n_batches: int = 3,
    seed: int = 0,
) -> AnnData:
    """Gaussian values of donors crossed with a batch, with known variances per gene.

    Each cell belongs to a donor and a batch drawn uniformly at random (crossed). Each
    gene's donor and batch variances are drawn uniformly on (0, 1), each 0 with
    probability 0.2; the residual variance is 1. A design to measure how often
    intervals cover the simulated fractions (``benchmarks/interval_coverage.py``): with
    ``n_batches=3`` the batch variance and every fraction whose denominator holds it are
    skewed, with many levels the asymptotics hold.

    Parameters
    ----------
    {doc_dataset_size}
    n_donors
        Levels of ``donor``.
    n_batches
        Levels of ``batch``.

    Returns
    -------
    AnnData
        With dense float64 ``X`` (cells x genes); ``obs`` columns ``donor`` and
        ``batch`` (categorical); ``varm["true_variance"]`` (columns ``donor``,
        ``batch`` and ``Residual``, as in the fitted results); ``uns["example"]`` with
        the formula and the batch / signal factors.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.donor_batch(n_cells=200, n_genes=5, seed=1)
    >>> adata.shape, adata.obs["batch"].nunique()
    ((200, 5), 3)
    """
    if n_cells < 1 or n_genes < 1 or n_donors < 2 or n_batches < 2:
        raise ValueError(
            "donor_batch needs n_cells >= 1, n_genes >= 1, n_donors >= 2 and n_batches >= 2."
        )
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical(rng.integers(n_donors, size=n_cells).astype(str)),
            "batch": pd.Categorical(rng.integers(n_batches, size=n_cells).astype(str)),
        }
    )
    var = rng.uniform(0, 1, size=(n_genes, 2)) * (rng.uniform(size=(n_genes, 2)) > 0.2)
    donor = rng.standard_normal((n_genes, n_donors)) * np.sqrt(var[:, :1])
    batch = rng.standard_normal((n_genes, n_batches)) * np.sqrt(var[:, 1:])
    d, b = obs["donor"].cat.codes.to_numpy(), obs["batch"].cat.codes.to_numpy()
    X = donor[:, d].T + batch[:, b].T + rng.standard_normal((n_cells, n_genes))
    genes = pd.Index([f"gene{g:04d}" for g in range(n_genes)])
    obs.index = obs.index.astype(str)
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
    adata.varm["true_variance"] = pd.DataFrame(
        {"donor": var[:, 0], "batch": var[:, 1], "Residual": np.ones(n_genes)}, index=genes
    )
    adata.uns["example"] = {
        "formula": DONOR_BATCH_FORMULA,
        "batch": ["batch"],
        "signal": ["donor"],
        "seed": seed,
    }
    return adata
