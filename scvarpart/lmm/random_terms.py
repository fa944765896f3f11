"""From a design's random terms to the likelihood's: kinship transforms and moments.

A term with a known covariance ``K = R R'`` between its levels is fitted on the columns
``Z R`` (:mod:`scvarpart.design.relmat`): the one pass computes ``Z'y`` with the plain
indicators, and :func:`apply_relfacs` maps the statistics, ``R'Z'y`` and
``R'Z'ZR``, before any fit. The moments of :class:`TermInfo` turn a term's covariance
into the variance it contributes over the observations (its variance fraction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..design import Design
from ..suffstats import DesignGram, ResponseStats
from .terms import ReTerm

__all__ = ["TermInfo", "apply_relfacs", "scalar_infos", "term_infos", "term_variances"]


@dataclass(frozen=True)
class TermInfo:
    """A random term with what its results need besides the fit.

    Attributes
    ----------
    term
        The term as the likelihood sees it.
    levels
        Its levels, in the order of its columns.
    relfac
        ``R`` with ``K = R R'`` for a known covariance between levels, else ``None``.
    moment
        ``mean_i z_i z_i'`` over the observations (``r x r``; ``z_i`` the observation's
        coefficient values: 1, the slope covariates), or ``mean_i K[l_i, l_i]`` for a known
        covariance: the variance the term contributes over the observations is
        ``sum(Sigma * moment)`` (the mean of ``z_i' Sigma z_i``; Johnson 2014).
    """

    term: ReTerm
    levels: pd.Index
    relfac: np.ndarray | None
    moment: np.ndarray


def term_infos(design: Design) -> tuple[TermInfo, ...]:
    """The :class:`TermInfo` of every random term of ``design``."""
    out = []
    for f in design.factors:
        if f.relfac is not None:
            moment = np.array([[f.mean_relatedness]])
        elif f.values is None:
            moment = np.ones((1, 1))
        else:
            moment = f.values.T @ f.values / len(f.codes)
        term = ReTerm(
            name=f.name,
            n_levels=f.n_levels,
            n_coef=f.n_coef,
            diagonal=f.relfac is None,
            coefficients=f.coefficients,
        )
        out.append(TermInfo(term, f.levels, f.relfac, moment))
    return tuple(out)


def scalar_infos(names: Sequence[str], sizes: Sequence[int]) -> tuple[TermInfo, ...]:
    """Random intercepts with independent levels, numbered ``"0"``, ``"1"``, ..."""
    return tuple(
        TermInfo(ReTerm(n, int(s)), pd.Index([str(i) for i in range(s)]), None, np.ones((1, 1)))
        for n, s in zip(names, sizes, strict=True)
    )


def _transform(infos: tuple[TermInfo, ...]) -> sp.csr_matrix:
    """Block-diagonal map of ``Z``'s columns: ``R`` for known covariances, else identity."""
    blocks = [
        sp.identity(t.term.n_columns, format="csr") if t.relfac is None else sp.csr_matrix(t.relfac)
        for t in infos
    ]
    return sp.block_diag(blocks, format="csr")


def apply_relfacs(
    gram: DesignGram, response: ResponseStats, infos: tuple[TermInfo, ...]
) -> tuple[DesignGram, ResponseStats]:
    """Statistics on the columns ``Z R`` of terms with a known covariance.

    Unchanged (the same objects) where no term has one.
    """
    if all(t.relfac is None for t in infos):
        return gram, response
    T = _transform(infos)
    ZtZ = sp.csr_matrix(T.T @ gram.ZtZ @ T)
    gram = replace(gram, ZtZ=ZtZ, ZtX=np.asarray(T.T @ gram.ZtX))
    response = replace(response, ZtY=np.ascontiguousarray(np.asarray((T.T @ response.ZtY.T).T)))
    return gram, response


def term_variances(covariances: list[np.ndarray], infos: tuple[TermInfo, ...]) -> np.ndarray:
    """The variance each term contributes over the observations, ``(G, k)``.

    ``covariances``: each term's coefficient covariance (``G x r x r``, with the residual
    variance), as :meth:`~scvarpart.lmm.LMMFit.covariances`.
    """
    return np.stack(
        [np.einsum("gab,ab->g", c, t.moment) for c, t in zip(covariances, infos, strict=True)],
        axis=1,
    )
