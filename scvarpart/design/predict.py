"""Chosen parts of a fitted linear predictor, evaluated at given observations.

The linear predictor of observation ``i`` and gene ``g`` is ``x_i' beta_g + sum_j z_ij'
b_jg``: fixed effects and, per random term, the coefficients of the observation's level
(its BLUPs) times the term's covariate values (1 for an intercept). :class:`Effects`
holds some of those parts for every gene (a batch correction removes the technical ones;
the residual checks use all of them) and evaluates them on a block of observations.

Fixed-effect columns may be centred: their part is then ``(x_i - mean(x))' beta``, which
is 0 on average over the observations, so removing it leaves every gene's mean as it
was (the cells are moved to the average library size, not to a library size of 0).
Random effects are never centred: a BLUP is already a deviation from the population
(its expectation is 0), and removing it moves a cell to the average level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .matrices import Design

__all__ = ["Effects"]


@dataclass(frozen=True)
class Effects:
    """Parts of the linear predictor of every gene, on the observations of a design.

    Attributes
    ----------
    design
        The model's design.
    columns
        The fixed-effect columns of ``X`` included.
    beta_t
        Their coefficients, ``len(columns) x G``.
    centre
        Subtracted from each included column first (zeros: not centred).
    factors
        Indices of the random terms included (into ``design.factors``).
    tables
        Per included term, per coefficient: the BLUPs, levels x genes (contiguous, so
        that a block's rows are gathered at once).
    """

    design: Design
    columns: np.ndarray
    beta_t: np.ndarray
    centre: np.ndarray
    factors: tuple[int, ...]
    tables: tuple[tuple[np.ndarray, ...], ...]

    @classmethod
    def of(
        cls,
        design: Design,
        beta: np.ndarray,
        blups: Mapping[str, np.ndarray],
        *,
        terms: Sequence[str] | None = None,
        centred: bool = False,
    ) -> Effects:
        """The parts of ``terms`` (components of ``design``; default: every part).

        Parameters
        ----------
        design
            The model's design.
        beta
            ``G x p`` fixed effects of the genes (the columns of ``design.X``).
        blups
            Per random term included, ``G x n_levels x n_coef`` BLUPs.
        terms
            Random and fixed terms to include; ``None`` for all, the intercept included.
        centred
            Centre the fixed-effect columns on their mean over the observations.
        """
        names = [f.name for f in design.factors]
        if terms is None:
            factors = tuple(range(len(names)))
            columns = np.arange(design.n_fixed)
        else:
            factors = tuple(names.index(t) for t in terms if t in names)
            fixed = [design.fixed_terms[t] for t in terms if t in design.fixed_terms]
            columns = np.concatenate([np.arange(0), *fixed]).astype(np.int64)
        X = design.X[:, columns]
        centre = X.mean(axis=0) if centred and len(X) else np.zeros(len(columns))
        tables = tuple(
            tuple(
                np.ascontiguousarray(blups[names[j]][:, :, c].T, dtype=float)
                for c in range(design.factors[j].n_coef)
            )
            for j in factors
        )
        beta_t = np.ascontiguousarray(np.asarray(beta, dtype=float)[:, columns].T)
        return cls(design, columns, beta_t, centre, factors, tables)

    def at(self, obs: np.ndarray) -> np.ndarray:
        """The parts' sum at the observations ``obs`` (rows of the design), ``n x G``."""
        X = self.design.X[np.ix_(obs, self.columns)] - self.centre
        out = X @ self.beta_t
        for j, coefs in zip(self.factors, self.tables, strict=True):
            f = self.design.factors[j]
            codes = f.codes[obs]
            for c, table in enumerate(coefs):
                if f.values is None:
                    out += table[codes]
                else:
                    out += f.values[obs, c : c + 1] * table[codes]
        return out
