"""A simulated single-cell experiment with crossed biological and technical factors."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_dataset_size, doc_params

__all__ = ["EXAMPLE_FORMULA", "crossed_example"]

#: The model the example is simulated from.
EXAMPLE_FORMULA = "~ log_umi + (1|patient) + (1|chemistry) + (1|day) + (1|operator)"

_FACTORS = {"patient": 12, "chemistry": 3, "day": 6, "operator": 4}
_LIBRARIES_PER_PATIENT = 2


def _design(n_cells: int, rng: np.random.Generator) -> pd.DataFrame:
    """Cells from 2 libraries per patient, each with its own chemistry, day and operator.

    The factors are therefore crossed but unbalanced, as in a real multi-batch study.
    """
    n_pat = _FACTORS["patient"]
    n_lib = n_pat * _LIBRARIES_PER_PATIENT
    lib_patient = np.repeat(np.arange(n_pat), _LIBRARIES_PER_PATIENT)
    # every technical level is used by several libraries
    lib = {
        f: rng.permutation(np.arange(n_lib) % _FACTORS[f]) for f in ("chemistry", "day", "operator")
    }
    weights = rng.dirichlet(np.full(n_lib, 4.0))
    cell_lib = rng.choice(n_lib, size=n_cells, p=weights)
    labels = {
        "patient": [f"P{i + 1:02d}" for i in range(n_pat)],
        "chemistry": ["3p_v2", "3p_v3", "5p_v2"],
        "day": [f"day{i + 1}" for i in range(_FACTORS["day"])],
        "operator": [f"op_{c}" for c in "ABCD"],
    }
    obs = pd.DataFrame(index=[f"cell{i:06d}" for i in range(n_cells)])
    codes = {"patient": lib_patient[cell_lib], **{f: lib[f][cell_lib] for f in lib}}
    for f, c in codes.items():
        obs[f] = pd.Categorical.from_codes(c, categories=labels[f])
    lib_depth = rng.normal(0, 0.3, n_lib)
    obs["log_umi"] = (8.0 + lib_depth[cell_lib] + rng.normal(0, 0.4, n_cells)).round(4)
    return obs


def _true_variances(n_genes: int, rng: np.random.Generator) -> pd.DataFrame:
    """Per-gene variances of each factor, with some components exactly zero.

    Genes are patient-driven, batch-driven or residual-dominated.
    """
    comps = ["patient", "chemistry", "day", "operator", "Residual"]
    kind = rng.choice(["signal", "batch", "noise"], size=n_genes, p=[0.4, 0.3, 0.3])
    alpha = {
        "signal": [3.0, 0.3, 0.3, 0.3, 2.0],
        "batch": [0.3, 2.0, 1.0, 0.6, 2.0],
        "noise": [0.3, 0.2, 0.2, 0.2, 4.0],
    }
    share = np.stack([rng.dirichlet(alpha[k]) for k in kind])
    share[:, :4] *= rng.random((n_genes, 4)) > 0.15  # some factors have no effect
    total = rng.uniform(0.4, 2.0, n_genes)
    share = share / share.sum(axis=1, keepdims=True)
    return pd.DataFrame(share * total[:, None], columns=comps)


@doc_params(doc_dataset_size=doc_dataset_size)
def crossed_example(n_cells: int = 2000, n_genes: int = 200, *, seed: int = 0) -> AnnData:
    """Simulate log-normalised expression with known variance components.

    Cells come from 12 patients, each sequenced in 2 libraries; every library
    has a chemistry (3 kits), a processing day (6) and an operator (4), so the
    technical factors are crossed with each other and with patient, and
    unbalanced. Each gene is drawn from the model :data:`EXAMPLE_FORMULA`::

        y = mu + beta * (log_umi - mean) + b_patient + b_chemistry + b_day + b_operator + e

    with Gaussian effects of known variance; about 30% of genes are
    batch-dominated, 40% patient-dominated, the rest mostly noise, and some
    genes have a ``log_umi`` slope.

    Parameters
    ----------
    {doc_dataset_size}

    Returns
    -------
    AnnData
        With dense float32 ``X`` (cells x genes); ``obs`` columns ``patient``,
        ``chemistry``, ``day``, ``operator`` (categorical) and ``log_umi``;
        ``varm["true_variance"]`` (the simulated variance of each component, named as in
        the fitted results); ``var["true_beta_log_umi"]``; ``uns["example"]`` with the
        formula and the batch / signal factors.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> adata.shape
    (500, 20)
    """
    if n_cells < 50 or n_genes < 1:
        raise ValueError("crossed_example needs n_cells >= 50 and n_genes >= 1.")
    rng = np.random.default_rng(seed)
    obs = _design(n_cells, rng)
    truth = _true_variances(n_genes, rng)
    beta = np.where(rng.random(n_genes) < 0.3, rng.normal(0, 0.3, n_genes), 0.0)
    mu = rng.uniform(0.2, 3.0, n_genes)

    y = mu[None, :] + np.outer(obs["log_umi"].to_numpy() - obs["log_umi"].mean(), beta)
    for f in _FACTORS:
        codes = obs[f].cat.codes.to_numpy()
        effects = rng.normal(size=(_FACTORS[f], n_genes)) * np.sqrt(truth[f].to_numpy())
        y += effects[codes]
    y += rng.normal(size=(n_cells, n_genes)) * np.sqrt(truth["Residual"].to_numpy())

    var_names = [f"gene{i + 1:04d}" for i in range(n_genes)]
    adata = AnnData(X=y.astype(np.float32), obs=obs, var=pd.DataFrame(index=var_names))
    # the fixed effect's component: variance of beta * log_umi over the cells
    truth.insert(4, "log_umi", beta**2 * obs["log_umi"].var(ddof=0))
    truth.index = adata.var_names
    adata.varm["true_variance"] = truth
    adata.var["true_beta_log_umi"] = beta
    adata.uns["example"] = {
        "formula": EXAMPLE_FORMULA,
        "batch": ["chemistry", "day", "operator"],
        "signal": ["patient"],
        "seed": seed,
    }
    return adata
