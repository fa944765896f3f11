"""One gene's fitted effects at its estimated variances, for the adjusted gene plot.

Given the variance components of a gene, the fixed effects ``beta`` (generalised least
squares) and the conditional modes ``b`` of the random effects (BLUPs) solve
Henderson's mixed-model equations::

    [ X'X   X'Z                ] [beta]   [X'y]
    [ Z'X   Z'Z + sigma^2 D^-1 ] [ b  ] = [Z'y]

with ``D`` the diagonal of the random effects' variances (``sigma_j^2`` for every level
of factor ``j``). A factor whose variance is 0 has every ``b`` exactly 0 and is left
out. The system is sparse, of the size of the fixed effects plus the levels, whatever
the number of cells.

The partial residual of a term is the gene's values minus the fitted effects of all
the *other* terms: what the model attributes to that term, plus the residual. Drawn by
the levels of the term, it shows the term's own effect with the others removed, where
the raw values (the marginal view) also show the effects of any factor confounded with
it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..design import Design
from ..suffstats.gram import centred_fixed, indicator_matrix

__all__ = ["conditional_effects", "count_partial_residuals", "log_rates", "partial_residuals"]


def conditional_effects(
    design: Design, y: np.ndarray, variances: Mapping[str, float]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fixed effects and conditional modes of one response at given variances.

    Parameters
    ----------
    design
        The model's design (``y`` holds one value per observation of it).
    y
        The response, ``(n_obs,)``.
    variances
        Variance of each grouping factor by name, and ``"Residual"`` (> 0).

    Returns
    -------
    ``beta`` for the columns of ``X`` with every column but the intercept centred
    (:func:`~scvarpart.suffstats.gram.centred_fixed`: the same slopes, an intercept at
    the mean of the covariates), and the conditional modes of each factor's levels.
    """
    sigma2 = float(variances["Residual"])
    if not sigma2 > 0:
        raise ValueError(
            f"The residual variance must be > 0 to solve for the effects, got {sigma2}."
        )
    Xc, _ = centred_fixed(design)
    Z = indicator_matrix(design)
    level_var = np.concatenate(
        [np.full(f.n_levels, float(variances[f.name])) for f in design.factors]
    )
    active = np.flatnonzero(level_var > 0)  # a zero variance pins its effects at 0
    Za = Z[:, active]
    lhs = sp.bmat(
        [
            [sp.csr_matrix(Xc.T @ Xc), sp.csr_matrix(Za.T @ Xc).T],
            [
                sp.csr_matrix(Za.T @ Xc),
                Za.T @ Za + sp.diags(sigma2 / level_var[active], shape=(len(active),) * 2),
            ],
        ],
        format="csc",
    )
    rhs = np.concatenate([Xc.T @ y, Za.T @ y])
    solution = np.atleast_1d(spla.spsolve(lhs, rhs))
    p = Xc.shape[1]
    b = np.zeros(len(level_var))
    b[active] = solution[p:]
    offsets = np.cumsum([0] + [f.n_levels for f in design.factors])
    modes = {f.name: b[offsets[i] : offsets[i + 1]] for i, f in enumerate(design.factors)}
    return solution[:p], modes


def partial_residuals(
    design: Design, y: np.ndarray, variances: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """For every term, ``y`` minus the fitted effects of all the other terms.

    The intercept is kept, and the fixed terms' columns are centred, so the partial
    residuals stay on the scale of ``y`` (around its mean).
    """
    beta, modes = conditional_effects(design, y, variances)
    return _less_other_terms(design, np.asarray(y, dtype=float), modes, beta)


def _less_other_terms(
    design: Design, values: np.ndarray, modes: Mapping[str, np.ndarray], beta: np.ndarray
) -> dict[str, np.ndarray]:
    """Per term, ``values`` minus the other terms' effects: modes by level, ``X beta``.

    The fixed terms' columns are centred (:func:`~scvarpart.suffstats.gram.centred_fixed`),
    so the result stays around the values' mean.
    """
    Xc, _ = centred_fixed(design)
    # in the order of the components: random terms, then fixed terms
    effects = {f.name: modes[f.name][f.codes] for f in design.factors}
    effects |= {t: Xc[:, cols] @ beta[cols] for t, cols in design.fixed_terms.items()}
    total = sum(effects.values(), np.zeros_like(values))
    return {term: values - (total - effect) for term, effect in effects.items()}


def log_rates(counts: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """A count model's working values: ``log((y + 1/2) / exp(offset))``, per observation.

    The log of each observation's rate on the scale of the model's linear predictor, with
    half a count added so that zeros are drawn.
    """
    return np.log(counts + 0.5) - offset


def count_partial_residuals(
    design: Design,
    counts: np.ndarray,
    offset: np.ndarray,
    family: str,
    approximation: str = "lognormal",
) -> dict[str, np.ndarray]:
    """For every term, a count gene's :func:`log_rates` minus the other terms' fitted effects.

    The effects are the count model's on the log scale: each random term's conditional
    modes and the fixed effects (columns centred, the intercept kept, as
    :func:`partial_residuals`), from the gene fitted again
    (:func:`scvarpart.glmm.fit_counts` with its BLUPs). ``counts`` and ``offset`` hold
    one value per observation the design keeps.
    """
    from ..glmm import fit_counts  # the count engine, only for count fits

    Y = np.zeros((len(design.keep), 1))
    Y[design.keep, 0] = counts
    full_offset = np.zeros(len(design.keep))
    full_offset[design.keep] = offset
    fit = fit_counts(
        design, Y, family=family, offset=full_offset, approximation=approximation,
        store_blups=True, ci=None, var_names=["gene"],
    )  # fmt: skip
    reason = fit.errors["reason"].get("gene") if len(fit.errors) else None
    if reason:
        raise ValueError(f"The gene's count model has no estimates ({reason}).")
    assert fit.blups is not None and fit.beta is not None
    modes = {term: table.iloc[0].to_numpy() for term, table in fit.blups.items()}
    return _less_other_terms(design, log_rates(counts, offset), modes, fit.beta.iloc[0].to_numpy())
