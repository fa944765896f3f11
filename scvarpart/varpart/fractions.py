"""Variance components and fractions, as variancePartition's ``calcVarPart`` defines them.

For each gene the components are

- each random term's variance ``sigma_j^2``;
- each fixed term's variance of its prediction ``X_t beta_t`` over the
  observations (population variance, divisor ``n``). The terms' variances are
  then scaled by a common factor so that they sum to the variance of the whole
  fixed-effect prediction ``X beta``: correlated covariates share, rather than
  double count, what they explain together. Unlike variancePartition, which
  does this per column of ``X``, a categorical term is one component;
- the residual variance ``sigma^2``.

Fractions are the components divided by their sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "RESIDUAL",
    "check_roles",
    "component_variances",
    "fractions",
    "heritability",
    "logit_interval",
    "rho",
]

#: The name of the residual component, the last column of every table of components.
RESIDUAL = "Residual"


def component_variances(
    random_variances: np.ndarray,
    residual_variance: np.ndarray,
    beta: np.ndarray,
    x_cov: np.ndarray,
    fixed_terms: Mapping[str, np.ndarray],
) -> np.ndarray:
    """Variance of every component, ``(G, k + n_fixed_terms + 1)``.

    Parameters
    ----------
    random_variances
        ``(G, k)`` random-effect variances.
    residual_variance
        ``(G,)`` residual variances.
    beta
        ``(G, p)`` fixed effects.
    x_cov
        ``(p, p)`` population covariance of the fixed-effect columns (zero row
        and column for the intercept).
    fixed_terms
        Term name -> column indices; the order gives the output's column order.

    Returns
    -------
    numpy.ndarray
        The variances of the random terms, the fixed terms and the residual, in this
        column order.

    Examples
    --------
    >>> import numpy as np
    >>> import scvarpart as svp
    >>> svp.varpart.component_variances(
    ...     random_variances=np.array([[1.0], [2.0]]),  # one grouping factor, two genes
    ...     residual_variance=np.array([1.0, 1.0]),
    ...     beta=np.array([[0.0, 2.0], [0.0, 0.0]]),  # intercept and a covariate
    ...     x_cov=np.array([[0.0, 0.0], [0.0, 0.25]]),  # the covariate's variance: 0.25
    ...     fixed_terms={"log_umi": np.array([1])},
    ... )
    array([[1., 1., 1.],
           [2., 0., 1.]])
    """
    G = len(residual_variance)
    terms = list(fixed_terms.values())
    fixed = np.zeros((G, len(terms)))
    for t, cols in enumerate(terms):
        b = beta[:, cols]
        fixed[:, t] = np.einsum("gi,ij,gj->g", b, x_cov[np.ix_(cols, cols)], b)
    if terms:
        total = np.einsum("gi,ij,gj->g", beta, x_cov, beta)
        parts = fixed.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.where(parts > 0, total / parts, 0.0)
        fixed *= factor[:, None]
    return np.concatenate([random_variances, fixed, residual_variance[:, None]], axis=1)


def fractions(variances: np.ndarray) -> np.ndarray:
    """Components divided by their sum (rows of NaN stay NaN).

    Examples
    --------
    >>> import numpy as np
    >>> import scvarpart as svp
    >>> svp.varpart.fractions(np.array([[1.0, 0.5, 0.5], [np.nan, np.nan, np.nan]]))
    array([[0.5 , 0.25, 0.25],
           [ nan,  nan,  nan]])
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return variances / variances.sum(axis=1, keepdims=True)


def heritability(term: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """``V_term / (V_term + V_residual)``, per gene.

    For a term with a known covariance between its levels (a kinship matrix), ``V_term``
    the variance it contributes over the observations: the expression heritability of
    GCTA (Yang et al. 2011) and lme4qtl (Ziyatdinov et al. 2018), the other terms left
    out. For a count model, on the latent scale: ``V_residual`` is the
    distribution-specific variance (Nakagawa & Schielzeth 2010). ``NaN`` where both are 0.

    Examples
    --------
    >>> import numpy as np
    >>> from scvarpart.varpart.fractions import heritability
    >>> heritability(np.array([1.0, 0.0]), np.array([3.0, 2.0]))
    array([0.25, 0.  ])
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return term / (term + residual)


def rho(
    variances: np.ndarray,
    components: Sequence[str],
    batch: Sequence[str],
    signal: Sequence[str],
) -> np.ndarray:
    """Batch-to-signal ratio ``sum(batch variances) / sum(signal variances)``.

    ``inf`` where the signal variance is 0 and the batch variance is not, NaN
    where both are 0 (and for genes without estimates).

    Examples
    --------
    >>> import numpy as np
    >>> import scvarpart as svp
    >>> variances = np.array([[1.0, 0.5, 0.5], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]])
    >>> svp.varpart.rho(variances, ["patient", "chemistry", "Residual"], ["chemistry"], ["patient"])
    array([0.5, inf, nan])
    """
    pos = {c: i for i, c in enumerate(components)}
    num = variances[:, [pos[c] for c in batch]].sum(axis=1)
    den = variances[:, [pos[c] for c in signal]].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[(den == 0) & (num > 0)] = np.inf
    out[(den == 0) & (num == 0)] = np.nan
    return out


def check_roles(
    batch: Sequence[str] | None, signal: Sequence[str] | None, components: Sequence[str]
) -> None:
    """Refuse ``batch``/``signal`` lists that are empty, name no model term, or share a term.

    ``rho`` is computed from them.

    Examples
    --------
    >>> import scvarpart as svp
    >>> svp.varpart.check_roles(["chemistry"], ["patient"], ["patient", "chemistry", "Residual"])
    >>> svp.varpart.check_roles(  # doctest: +ELLIPSIS
    ...     ["day"], ["patient"], ["patient", "chemistry", "Residual"]
    ... )
    Traceback (most recent call last):
    ...
    ValueError: batch=['day']: ['day'] are not terms of the model. ...
    """
    terms = [c for c in components if c != RESIDUAL]
    for what, names in (("batch", batch), ("signal", signal)):
        if names is None:
            continue
        if not names:
            raise ValueError(f"{what}= is empty; give at least one model term or leave it out.")
        unknown = [n for n in names if n not in terms]
        if unknown:
            raise ValueError(
                f"{what}={list(names)!r}: {unknown} are not terms of the model. The model's "
                f"terms are {terms}."
            )
    if batch and signal and set(batch) & set(signal):
        raise ValueError(
            f"{sorted(set(batch) & set(signal))} are listed in both batch= and signal=."
        )


def logit_interval(f, se, z):
    """Wald interval of a fraction ``f`` with standard error ``se`` on the logit scale."""
    with np.errstate(all="ignore"):
        lf = np.log(f) - np.log1p(-f)
        half = z * se / (f * (1 - f))
        return 1 / (1 + np.exp(-(lf - half))), 1 / (1 + np.exp(-(lf + half)))
