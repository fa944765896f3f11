"""Per-gene tables of a fit besides the variance fractions.

lme4's ``VarCorr`` (each term's coefficient covariance), ``theta`` with the
criterion's gradient and Hessian there, the conditional modes (BLUPs) and the tests of
the variances: the columns of :class:`~scvarpart.varpart.VarPartResult` that describe
the random terms themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..suffstats import DesignGram, ResponseStats
from ..varpart.fractions import RESIDUAL, heritability
from .fitting import LMMFit
from .lrt import variance_tests
from .modes import conditional_modes
from .random_terms import TermInfo
from .terms import ReTerm

__all__ = [
    "blup_tables",
    "derivative_tables",
    "heritability_table",
    "lrt_tables",
    "theta_names",
    "varcorr_table",
]


def theta_names(terms: Sequence[ReTerm]) -> list[str]:
    """Names of the covariance parameters, as lme4's ``getME(fit, "theta")``.

    ``"patient.(Intercept)"`` for a diagonal entry of ``T``, and
    ``"patient.time.(Intercept)"`` below it.
    """
    out = []
    for t in terms:
        group = t.name
        if "(Intercept)" not in t.coefficients:  # "g.x" of (0 + x|g): lme4 says "g.x"
            group = group.removesuffix("." + ".".join(t.coefficients))
        for a, b in t.positions:
            ca, cb = t.coefficients[a], t.coefficients[b]
            out.append(f"{group}.{ca}" if a == b else f"{group}.{ca}.{cb}")
    return out


def varcorr_table(fit: LMMFit, terms: Sequence[ReTerm], genes: pd.Index) -> pd.DataFrame:
    """Each term's variances (``"term|coef"``) and covariances (``"term|coef|coef"``).

    With the residual variance ``sigma^2`` last (``"Residual"``), as lme4's ``VarCorr``.
    """
    columns, values = [], []
    for t, cov in zip(terms, fit.covariances(), strict=True):
        coefs = t.coefficients
        for a in range(t.n_coef):
            columns.append(f"{t.name}|{coefs[a]}")
            values.append(cov[:, a, a])
        for a in range(t.n_coef):
            for b in range(a + 1, t.n_coef):
                columns.append(f"{t.name}|{coefs[a]}|{coefs[b]}")
                values.append(cov[:, a, b])
    columns.append("Residual")
    values.append(fit.sigma2)
    return pd.DataFrame(np.column_stack(values), index=genes, columns=columns)


def derivative_tables(
    fit: LMMFit, terms: Sequence[ReTerm], genes: pd.Index
) -> dict[str, pd.DataFrame]:
    """``theta`` at the optimum, and the criterion's gradient and Hessian there."""
    names = theta_names(terms)
    k = len(names)
    out = {"theta": pd.DataFrame(fit.theta, index=genes, columns=names)}
    if fit.gradient is not None and fit.hessian is not None:
        out["gradient"] = pd.DataFrame(fit.gradient, index=genes, columns=names)
        pairs = [f"{a}|{b}" for a in names for b in names]
        out["hessian"] = pd.DataFrame(fit.hessian.reshape(-1, k * k), index=genes, columns=pairs)
    return out


def _level_columns(info: TermInfo) -> list[str]:
    levels = [str(v) for v in info.levels]
    if info.term.n_coef == 1:
        return levels
    return [f"{lv}|{c}" for lv in levels for c in info.term.coefficients]


def blup_tables(
    gram: DesignGram,
    response: ResponseStats,
    infos: Sequence[TermInfo],
    fit: LMMFit,
    genes: pd.Index,
) -> dict[str, dict[str, pd.DataFrame]]:
    """The conditional modes of every term's effects and their conditional variances.

    Genes x levels per term (``"level|coef"`` for terms with slopes); in the genes'
    units, variances with ``sigma^2``.
    """
    terms = [i.term for i in infos]
    modes, variances = conditional_modes(
        gram, terms, np.asarray(fit.theta), response, [i.relfac for i in infos]
    )
    blups, blup_var = {}, {}
    for info, m, v in zip(infos, modes, variances, strict=True):
        cols = _level_columns(info)
        blups[info.term.name] = pd.DataFrame(m, index=genes, columns=cols)
        blup_var[info.term.name] = pd.DataFrame(v * fit.sigma2[:, None], index=genes, columns=cols)
    return {"blups": blups, "blup_var": blup_var}


def heritability_table(variance: pd.DataFrame, infos: Sequence[TermInfo]) -> pd.DataFrame | None:
    """Per term with a known covariance, its :func:`~scvarpart.varpart.fractions.heritability`.

    ``None`` without such terms.
    """
    names = [i.term.name for i in infos if i.relfac is not None]
    if not names:
        return None
    residual = variance[RESIDUAL].to_numpy()
    return pd.DataFrame(
        {n: heritability(variance[n].to_numpy(), residual) for n in names}, index=variance.index
    )


def lrt_tables(
    gram: DesignGram,
    response: ResponseStats,
    terms: list[ReTerm],
    fit: LMMFit,
    genes: pd.Index,
    **options,
) -> dict[str, pd.DataFrame]:
    """The likelihood-ratio tests of every term's variance: ``lrt``, ``pvalue``, ``qvalue``.

    Genes x terms; ``options`` (``reml``, ``n_jobs``, ``batch_size``) go to
    :func:`~scvarpart.lmm.lrt.variance_tests`.
    """
    tests = variance_tests(gram, response, terms, fit.deviance, fit.gamma, **options)
    names = [t.name for t in terms]
    fields = {"lrt": tests.statistic, "pvalue": tests.pvalue, "qvalue": tests.qvalue}
    return {k: pd.DataFrame(v, index=genes, columns=names) for k, v in fields.items()}
