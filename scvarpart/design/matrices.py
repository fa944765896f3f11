"""Build the fixed-effect model matrix and the grouping factors of a formula.

Everything here is about the experimental design (the obs table), not about
expression values: it runs once per analysis, checks the design for problems
that would make the fit meaningless, and reports them naming the column, term
or level at fault.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from .._warn import warn
from .formula import Formula, RandomTerm, parse_formula
from .relmat import relationship_factor

__all__ = ["Design", "DesignError", "GroupingFactor", "build_design"]

# A whole-number grouping column with more distinct values than this, other than the
# codes 0..k-1 or 1..k, is probably a count (n_genes, total_counts) used by mistake.
_MANY_LEVELS = 50


class DesignError(ValueError):
    """The experimental design cannot be fitted as specified."""


@dataclass(frozen=True)
class GroupingFactor:
    """One random term: its groups, its coefficients, and their known covariance.

    Attributes
    ----------
    name
        The term's name (see :attr:`~scvarpart.design.RandomTerm.name`), e.g.
        ``"patient"``, ``"batch:cask"`` or ``"patient.time"`` for ``(0 + time|patient)``.
    codes
        Level index of every observation, ``0 .. n_levels - 1``.
    levels
        Level labels (combinations are joined with ``":"``).
    coefficients
        Names of the coefficients that vary by level: ``"(Intercept)"`` and covariates.
    values
        The coefficients' values of every observation (``n_obs x n_coef``): 1 for the
        intercept, the covariate for a slope. ``None`` for a random intercept (all 1).
    relfac
        For a random effect with a known covariance ``K`` between levels (a kinship
        matrix): a factor ``R`` with ``K = R R'`` (``n_levels x n_levels``, rows in the
        order of ``levels``). ``None`` for independent levels.
    """

    name: str
    codes: np.ndarray
    levels: pd.Index
    coefficients: tuple[str, ...] = ("(Intercept)",)
    values: np.ndarray | None = None
    relfac: np.ndarray | None = None

    @property
    def n_levels(self) -> int:
        """Number of levels."""
        return len(self.levels)

    @property
    def n_coef(self) -> int:
        """Coefficients per level (1 for a random intercept)."""
        return len(self.coefficients)

    @property
    def n_columns(self) -> int:
        """Columns of the term in ``Z``: levels times coefficients."""
        return self.n_levels * self.n_coef

    @property
    def scalar(self) -> bool:
        """A random intercept with independent levels, as ``(1|g)``."""
        return self.values is None and self.relfac is None

    @property
    def mean_relatedness(self) -> float:
        """``mean_i K[l_i, l_i]`` over the observations (1 without a known covariance).

        A term's variance over the observations is its variance parameter times this.
        """
        if self.relfac is None:
            return 1.0
        diagonal = np.einsum("ij,ij->i", self.relfac, self.relfac)
        return float(diagonal[self.codes].mean())

    @property
    def counts(self) -> np.ndarray:
        """Observations per level."""
        return np.bincount(self.codes, minlength=self.n_levels)

    def combinations(self, other: GroupingFactor) -> np.ndarray:
        """The pairs of levels (this factor's, ``other``'s) that observations share.

        ``m x 2`` level codes, each pair once, in order.
        """
        pairs = np.unique(self.codes.astype(np.int64) * other.n_levels + other.codes)
        return np.stack(np.divmod(pairs, other.n_levels), axis=1)

    @property
    def z(self) -> np.ndarray:
        """The coefficients' values of every observation (``n_obs x n_coef``)."""
        return np.ones((len(self.codes), 1)) if self.values is None else self.values

    def matrix(self) -> sp.csr_matrix:
        """The term's columns of ``Z`` (``n_obs x n_columns``), level by level.

        Column ``level * n_coef + a`` holds coefficient ``a`` of that level, as lme4
        orders them. A known covariance is not applied here (see ``relfac``).
        """
        n, r = len(self.codes), self.n_coef
        cols = self.codes[:, None] * r + np.arange(r)[None, :]
        rows = np.repeat(np.arange(n), r)
        return sp.csr_matrix((self.z.ravel(), (rows, cols.ravel())), shape=(n, self.n_columns))


@dataclass(frozen=True)
class Design:
    """Model matrices of a mixed model, shared by every response (gene).

    Attributes
    ----------
    formula
        The parsed formula.
    X
        Fixed-effect model matrix, ``n_obs x p``, intercept first. Categorical
        variables use treatment contrasts (first level is the reference) where
        R would, full indicators otherwise (R's ``model.matrix`` rules).
    columns
        Names of the columns of ``X``, as R names them (``"recipeB"``, ``"temp"``).
    fixed_terms
        Fixed term name -> indices of its columns in ``X``.
    factors
        One grouping factor per random term, in formula order.
    keep
        Mask over the input rows: the observations used (rows with a missing
        value in a model column are dropped).
    weights
        Observation weights (residual variance ``sigma^2 / w``, as lme4's
        ``weights=``) of the observations used, or ``None`` for none.
    """

    formula: Formula
    X: np.ndarray
    columns: list[str]
    fixed_terms: dict[str, np.ndarray]
    factors: list[GroupingFactor]
    keep: np.ndarray
    weights: np.ndarray | None = None

    @property
    def n_obs(self) -> int:
        """Number of observations used."""
        return self.X.shape[0]

    @property
    def n_fixed(self) -> int:
        """Number of fixed-effect columns, the intercept included."""
        return self.X.shape[1]

    @property
    def n_random(self) -> int:
        """Number of grouping factors."""
        return len(self.factors)

    @property
    def n_levels(self) -> int:
        """Total number of random effects (columns of ``Z``, summed over the terms)."""
        return sum(f.n_columns for f in self.factors)

    @property
    def scalar(self) -> bool:
        """Every term a random intercept with independent levels, and no weights."""
        return self.weights is None and all(f.scalar for f in self.factors)

    def random_matrix(self) -> sp.csr_matrix:
        """The random-effect design ``Z`` (``n_obs x n_levels``), term by term.

        Known covariances between levels (``relfac``) are not applied.
        """
        return sp.hstack([f.matrix() for f in self.factors], format="csr")

    @property
    def components(self) -> list[str]:
        """Variance components: random terms, fixed terms, then ``"Residual"``."""
        return [f.name for f in self.factors] + list(self.fixed_terms) + ["Residual"]


def _is_categorical(s: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s))


def _levels_of(s: pd.Series) -> pd.Index:
    """Levels in R's order: the categories' order if categorical, else sorted."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        used = np.bincount(codes[codes >= 0], minlength=len(s.cat.categories)) > 0
        return pd.Index(list(s.cat.categories[used]))
    values = s.dropna().unique()
    try:
        return pd.Index(np.sort(values))
    except TypeError:  # mixed types (e.g. numbers and strings): order as text, as R would
        return pd.Index(sorted(values, key=str))


def _drop_missing(data: pd.DataFrame, variables: list[str]) -> np.ndarray:
    """Mask of complete rows; warns with counts per column when rows are dropped."""
    keep = np.ones(len(data), dtype=bool)
    counts = {}
    for v in variables:
        miss = data[v].isna().to_numpy()
        if miss.any():
            counts[v] = int(miss.sum())
            keep &= ~miss
    if counts:
        n_drop = int((~keep).sum())
        if n_drop == len(data):
            raise DesignError(
                "Every observation has a missing value in a model column ("
                + ", ".join(f"{k!r}: {c}" for k, c in counts.items())
                + "). Fill them in or remove these terms from the formula."
            )
        warn(
            f"Dropping {n_drop} of {len(data)} observations with missing values in "
            + ", ".join(f"{k!r} ({c})" for k, c in counts.items())
            + ", as variancePartition does. Fill them in to use every observation."
        )
    return keep


def _warn_numeric_grouping(column: str, term: str, s: pd.Series) -> None:
    """Warn where a numeric grouping column looks like a measurement, not a label.

    Each distinct value becomes a level: a count such as ``n_genes`` gives hundreds of
    levels (slow fits, many failed genes), and a float such as a dose or a fraction is
    usually meant as a covariate. Integer codes 0..k-1 or 1..k (plates, lanes numbered in
    order), and few whole numbers, are taken for labels.
    """
    if _is_categorical(s):
        return
    values = np.unique(s.dropna().to_numpy(dtype=float))
    k = len(values)
    if k == 0:
        return
    span = f"from {values[0]:g} to {values[-1]:g}"
    if np.all(values % 1 == 0):
        codes = values[0] in (0, 1) and values[-1] - values[0] + 1 == k
        if k <= _MANY_LEVELS or codes:
            return
        what = f"a whole-number column with {k} distinct values ({span})"
    else:
        what = f"a float column with {k} distinct values ({span}), not all whole numbers"
    warn(
        f"Grouping column {column!r} is {what}; (1|{term}) makes each value a level of a "
        f"categorical factor ({k} levels). If it is a measurement (a count, a fraction, a "
        f"dose), it is a continuous covariate: write it as a fixed effect ('+ {column}') "
        f"instead. If it is a label, make it categorical (adata.obs[{column!r}] = "
        f"adata.obs[{column!r}].astype('category')) to silence this warning."
    )


def _level_codes(s: pd.Series, levels: pd.Index) -> np.ndarray:
    """Position of each value of ``s`` among ``levels`` (-1 for missing values)."""
    if isinstance(s.dtype, pd.CategoricalDtype):  # through the codes: no hashing of values
        pos = levels.get_indexer(s.cat.categories)
        codes = s.cat.codes.to_numpy()
        return np.where(codes >= 0, pos[codes], -1)
    return levels.get_indexer(s.to_numpy())


def _slope_values(term: RandomTerm, data: pd.DataFrame) -> np.ndarray | None:
    """The values of a term's coefficients (``n x r``); ``None`` for an intercept."""
    if not term.covariates:
        return None
    cols = []
    for x in term.covariates:
        s = data[x]
        if _is_categorical(s):
            raise DesignError(
                f"The random slope {term.text} needs a numeric covariate, but {x!r} is "
                f"categorical. For a variance per combination of levels write "
                f"(1|{term.group}:{x}); to use it as numbers, convert the column."
            )
        v = s.to_numpy(dtype=float)
        if not np.isfinite(v).all():
            raise DesignError(f"Column {x!r} of {term.text} has infinite values.")
        cols.append(v)
    if term.intercept:
        cols.insert(0, np.ones(len(data)))
    return np.column_stack(cols)


def _check_slopes(term: RandomTerm, f: GroupingFactor) -> None:
    """Refuse a slope covariate that is constant within every level.

    Its column of ``Z`` is then the intercept's times a number per level: the slope's
    variance is that of a scaled random intercept, confounded with it.
    """
    for a, x in enumerate(f.coefficients):
        if x == "(Intercept)":
            continue
        v = f.z[:, a]
        lo = np.full(f.n_levels, np.inf)
        hi = np.full(f.n_levels, -np.inf)
        np.minimum.at(lo, f.codes, v)
        np.maximum.at(hi, f.codes, v)
        if np.all(hi - lo <= 1e-12 * max(np.abs(v).max(), 1e-300)):
            raise DesignError(
                f"The slope covariate {x!r} of {term.text} is constant within every level of "
                f"{term.group!r}, so a slope per level cannot be told from an intercept per "
                f"level. Use (1|{term.group}) and {x!r} as a fixed effect, or a covariate "
                "that varies within the levels (e.g. time within patient)."
            )


def _grouping_factor(
    term: RandomTerm, data: pd.DataFrame, covariance: Mapping | None = None
) -> GroupingFactor:
    """A random term's groups, each observation's level, its values and covariance."""
    name, cols = term.name, term.factors
    parts = []
    for c in cols:
        s = data[c]
        _warn_numeric_grouping(c, name, s)
        levels = _levels_of(s)
        parts.append((_level_codes(s, levels), levels))
    if len(parts) == 1:
        codes, levels = parts[0]
        # np.unique keeps level order and drops unused levels
        used, codes = np.unique(codes, return_inverse=True)
        labels = pd.Index([str(x) for x in levels[used]])
    else:
        combo = np.stack([p[0] for p in parts], axis=1)
        used, codes = np.unique(combo, axis=0, return_inverse=True)
        labels = pd.Index(
            [":".join(str(p[1][i]) for p, i in zip(parts, row, strict=True)) for row in used]
        )
    relfac = None
    if covariance is not None and name in covariance:
        if term.covariates:
            raise DesignError(
                f"covariance={{{name!r}: K}} needs a random intercept (1|{term.group}), but "
                f"the term is {term.text}: a known covariance between levels applies to one "
                "coefficient per level."
            )
        relfac = relationship_factor(name, covariance[name], labels)
    factor = GroupingFactor(
        name=name,
        codes=codes.astype(np.intp).ravel(),
        levels=labels,
        coefficients=term.coefficients,
        values=_slope_values(term, data),
        relfac=relfac,
    )
    _check_slopes(term, factor)
    return factor


def _term_columns(
    term: tuple[str, ...], present: set[frozenset], data: pd.DataFrame
) -> tuple[np.ndarray, list[str]]:
    """Columns of one fixed term, following R's model.matrix coding rules."""
    block = np.ones((len(data), 1))
    names = [""]
    for var in term:
        s = data[var]
        if _is_categorical(s):
            levels = _levels_of(s)
            # contrasts if the term without this variable is in the model
            # (the empty term is the intercept), full indicators otherwise
            if frozenset(term) - {var} in present:
                levels = levels[1:]
            values = s.to_numpy()
            cols = np.stack([(values == lev) for lev in levels], axis=1).astype(float)
            col_names = [f"{var}{lev}" for lev in levels]
        else:
            cols = s.to_numpy(dtype=float)[:, None]
            col_names = [var]
        # R's order: the first variable varies fastest
        block = (cols[:, :, None] * block[:, None, :]).reshape(len(data), -1)
        names = [f"{b}:{c}" if b else c for c in col_names for b in names]
    return block, names


def _check_fixed_variables(f: Formula, data: pd.DataFrame, selected: bool) -> None:
    """Covariates that cannot be coded: infinite values, a category with one level."""
    for v in dict.fromkeys(v for t in f.fixed for v in t):
        s = data[v]
        if not _is_categorical(s):
            if not np.all(np.isfinite(s.to_numpy(dtype=float))):
                raise DesignError(
                    f"Column {v!r} has infinite values. Fix or drop those observations."
                )
            continue
        levels = _levels_of(s)
        if len(levels) < 2:
            where = " (after the cell selection)" if selected else ""
            raise DesignError(
                f"Fixed effect {v!r} has a single level ({levels[0]!r}) in the {len(data)} "
                f"modelled observations{where}, so it explains nothing and cannot be coded. "
                f"Remove {v!r} from the formula"
                + (", or select cells from more than one level." if selected else ".")
            )


def _rank_problems(X: np.ndarray, columns: list[str]) -> Iterator[str]:
    norms = np.linalg.norm(X, axis=0)
    zero = [columns[j] for j in np.flatnonzero(norms == 0)]
    if zero:
        yield (
            f"The fixed-effect design is rank deficient: column(s) {zero} are all zero. "
            "Remove these terms or the levels they code."
        )
        return
    # Unpivoted QR in model order: a tiny |R_jj| means column j is a combination of
    # the columns before it, so the later (usually the offending) column is named.
    R = scipy.linalg.qr(X / norms, mode="r")[0]
    diag = np.abs(np.diag(R))
    tol = max(X.shape) * np.finfo(float).eps * 1e3
    bad = [columns[j] for j in np.flatnonzero(diag <= tol)]
    if bad:
        rank = X.shape[1] - len(bad)
        yield (
            f"The fixed-effect design is rank deficient (rank {rank} < {X.shape[1]} "
            f"columns): {bad} can be written as combinations of the columns before them, "
            "e.g. a covariate that is constant, two covariates that are proportional, or a "
            "level that always coincides with another term. Remove or merge these terms."
        )


def _random_not_fixed_problems(X: np.ndarray, factors: list[GroupingFactor]) -> Iterator[str]:
    """Grouping factors whose levels the fixed effects already separate.

    Every level's indicator is then a combination of fixed-effect columns, and the
    factor's variance cannot be told from them (under REML the criterion keeps falling
    as it grows, under ML it is 0).
    """
    XtX_inv = np.linalg.pinv(X.T @ X)
    for f in factors:
        if f.n_levels < 2:  # the intercept: named by _factor_problems already
            continue
        if f.values is None:
            # per-level column sums Z'X (bincount: np.add.at is ~10x slower on many cells)
            sums = np.column_stack(
                [
                    np.bincount(f.codes, weights=X[:, j], minlength=f.n_levels)
                    for j in range(X.shape[1])
                ]
            )
            total = float(f.counts.sum())
        else:
            Z = f.matrix()
            sums = np.asarray(Z.T @ X)
            total = float(Z.multiply(Z).sum())
        # trace of the columns' residual Gram matrix after projecting out X
        # (positive semi-definite: 0 exactly when every column is in X's span)
        residual = total - np.einsum("lp,pq,lq->", sums, XtX_inv, sums)
        if residual <= 1e-9 * total:
            term = f"(1|{f.name})" if f.values is None else f"the random term {f.name!r}"
            yield (
                f"The levels of {f.name!r} are determined by the fixed effects (each is a "
                "combination of fixed-effect columns), so its variance cannot be told apart "
                f"from them. Remove {term} or the fixed effect that codes its levels."
            )


def _residual_problems(X: np.ndarray, factors: list[GroupingFactor]) -> Iterator[str]:
    """Fixed effects and levels that together fit every observation.

    The residual variance cannot be estimated then (under ML the likelihood of every
    gene is unbounded).
    """
    n = X.shape[0]
    q = sum(f.n_columns for f in factors)
    if n > X.shape[1] + q:  # fewer columns than observations: rank < n
        return
    Z = np.concatenate([f.matrix().toarray() for f in factors], axis=1)
    rank = np.linalg.matrix_rank(np.concatenate([X, Z], axis=1))
    if rank >= n:
        names = ", ".join(repr(f.name) for f in factors)
        yield (
            f"The fixed effects and the levels of {names} together fit all {n} observations "
            f"exactly ({rank} independent columns), so no residual variance is left to "
            "estimate. Remove a fixed effect or a grouping factor, or add observations."
        )


def _factor_problems(
    factors: list[GroupingFactor], n: int, fixed_names: list[str], residual: bool = True
) -> Iterator[str]:
    for f in factors:
        if f.n_levels < 2:
            only = f.levels[0] if f.n_levels else "none"
            yield (
                f"Grouping factor {f.name!r} has a single level ({only!r}); a variance "
                f"cannot be estimated from one group. Remove (1|{f.name}) from the formula."
            )
        if not residual:  # a level per observation is a count model's overdispersion
            pass
        elif f.n_levels >= n:
            yield (
                f"Grouping factor {f.name!r} has a different level for every observation "
                f"({f.n_levels} levels for {n} observations), so its variance cannot be "
                f"separated from the residual. Remove (1|{f.name}) from the formula."
            )
        elif f.n_columns >= n:
            yield (
                f"The random term {f.name!r} has {f.n_columns} coefficients ({f.n_levels} "
                f"levels x {f.n_coef}) for {n} observations, so its variances cannot be "
                "separated from the residual. Remove a slope, or add observations."
            )
        if f.name in fixed_names:
            yield (
                f"{f.name!r} is both a fixed effect and the grouping factor of "
                f"(1|{f.name}). Use it as one or the other."
            )
    plain = [f for f in factors if f.values is None]
    for i, a in enumerate(plain):
        for b in plain[i + 1 :]:
            if a.n_levels == b.n_levels:
                if len(a.combinations(b)) == a.n_levels:
                    yield (
                        f"Grouping factors {a.name!r} and {b.name!r} define the same groups "
                        "(every level of one matches one level of the other), so their "
                        "variances cannot be told apart. Keep only one of them."
                    )


def _size_problems(design: Design, residual: bool = True) -> Iterator[str]:
    n, X, factors = design.n_obs, design.X, design.factors
    n_params = X.shape[1] + sum(f.n_coef * (f.n_coef + 1) // 2 for f in factors) + residual
    if n <= n_params:
        what = " and the residual variance" if residual else ""
        yield (
            f"{n} observations are too few for {n_params} parameters ({X.shape[1]} fixed "
            f"effects, {len(factors)} random variances{what})."
        )


def design_problems(design: Design, residual: bool = True) -> Iterator[str]:
    """Every reason why ``design`` cannot be fitted, as a message naming the fix.

    Lazily, cheapest first: :func:`build_design` raises the first; the design audit
    (:func:`~scvarpart.design.audit.audit_design`) lists them all. ``residual=False``
    for a count model, which has no residual variance for a factor to duplicate: a
    level per observation is then an observation-level random effect (overdispersion).
    """
    fixed = list(design.fixed_terms)
    yield from _factor_problems(design.factors, design.n_obs, fixed, residual)
    yield from _size_problems(design, residual)
    yield from _rank_problems(design.X, design.columns)
    yield from _random_not_fixed_problems(design.X, design.factors)
    if residual:
        yield from _residual_problems(design.X, design.factors)


def _check_covariance_terms(f: Formula, covariance: Mapping | None) -> None:
    if covariance is None:
        return
    if not isinstance(covariance, Mapping):
        raise TypeError(
            "covariance= must map random terms to matrices, e.g. {'donor': K}, got "
            f"{type(covariance).__name__}."
        )
    unknown = [t for t in covariance if t not in f.random_names]
    if unknown:
        raise DesignError(
            f"covariance= names {unknown}, which are not random terms of {f.text!r} "
            f"(random terms: {f.random_names}). Add (1|{unknown[0]}) to the formula."
        )


def _observation_weights(data: pd.DataFrame, column: str) -> np.ndarray:
    """Check and return a column of positive, finite observation weights."""
    if not isinstance(column, str):
        raise TypeError(f"weights= must be the name of an obs column, got {column!r}.")
    if column not in data.columns:
        avail = ", ".join(map(repr, list(data.columns)[:30]))
        raise DesignError(
            f"weights={column!r} is not a column of the table of observations. Available "
            f"columns: {avail}."
        )
    s = data[column]
    if _is_categorical(s):
        raise DesignError(f"weights={column!r} must be numeric, but the column is {s.dtype}.")
    w = s.to_numpy(dtype=float)
    bad = ~np.isfinite(w) | ~(w > 0)
    if bad.any():
        first = data.index[np.flatnonzero(bad)[0]]
        raise DesignError(
            f"weights={column!r} must be positive and finite, but {int(bad.sum())} "
            f"observation(s) have {w[bad][0]!r} (the first: {first!r}). Remove those "
            "observations (cells=) or fix their weights."
        )
    return w


def build_design(
    formula: str | Formula,
    data: pd.DataFrame,
    *,
    rows: np.ndarray | None = None,
    check: bool = True,
    weights: str | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    residual: bool = True,
) -> Design:
    """Build the model matrices of ``formula`` from a table of covariates.

    Parameters
    ----------
    formula
        A formula in lme4 syntax (see :func:`~scvarpart.design.parse_formula`),
        with an intercept and at least one random term. A left-hand side is
        ignored here: the responses are supplied separately.
    data
        One row per observation (cell); must contain every variable of the formula.
    rows
        Boolean mask of the observations to model; the others are left out (as
        are observations with missing values).
    check
        Refuse designs that cannot be fitted (confounded grouping factors,
        rank-deficient fixed effects, too few observations). ``False`` builds them
        anyway, to inspect them (see :func:`association`).
    weights
        A column of ``data`` with positive observation weights: the residual variance
        of observation ``i`` is ``sigma^2 / w_i``, as lme4's ``weights=``.
    covariance
        Random-intercept term -> the known covariance ``K`` between its levels (a
        levels x levels positive semi-definite DataFrame indexed by level, e.g. a
        kinship matrix over donors): the term's effects are ``b ~ N(0, sigma^2 K)``,
        lme4qtl's ``relmatLmer`` model (:mod:`scvarpart.design.relmat`).
    residual
        Whether the model has a residual variance (the linear mixed model). ``False``
        for a count model (:mod:`scvarpart.glmm`): a grouping factor with a level per
        observation is then allowed (an observation-level random effect).

    Returns
    -------
    The :class:`Design`.

    Raises
    ------
    DesignError
        For no observations, a missing column, a model without intercept or random
        term, a grouping factor with one level or one level per observation, two
        grouping factors that define the same groups, a variable used as both fixed
        and random, a categorical fixed effect with one level, a rank-deficient fixed
        design, infinite covariates, or fewer observations than parameters; a slope
        covariate that is categorical or constant within every level; weights that are
        missing, not positive or not finite.

    Warns
    -----
    UserWarning
        When observations with missing covariates are dropped, or a numeric column
        that looks like a measurement (non-integer values, or a count with many
        values) is used as a grouping factor.
    """
    f = formula if isinstance(formula, Formula) else parse_formula(formula)
    if not f.intercept:
        raise DesignError(
            f"The formula {f.text!r} has no intercept ('0 +' or '- 1'). Variance "
            "fractions are variances around the mean, so the model needs an intercept: "
            "remove '0 +' / '- 1'."
        )
    if not f.random:
        raise DesignError(
            f"The formula {f.text!r} has no random term. Add at least one random "
            "intercept such as (1|batch)."
        )
    missing = [v for v in f.variables if v not in data.columns]
    if missing:
        avail = ", ".join(map(repr, list(data.columns)[:30]))
        raise DesignError(
            f"Column(s) {missing} used in the formula are not in the table of "
            f"observations. Available columns: {avail}."
        )
    if len(data) == 0:
        raise DesignError(
            "There are no observations (0 cells) to model: nothing to fit. Check the "
            "subsetting or filtering that produced the data."
        )
    if rows is None:
        keep = _drop_missing(data, f.variables)
    else:
        rows = np.asarray(rows, dtype=bool)
        if rows.shape != (len(data),):
            raise DesignError(f"rows= has {rows.shape[0]} entries for {len(data)} observations.")
        if not rows.any():
            raise DesignError("rows= selects no observation.")
        keep = np.zeros(len(data), dtype=bool)
        keep[rows] = _drop_missing(data.loc[rows], f.variables)
    data = data.loc[keep] if not keep.all() else data
    n = len(data)

    _check_fixed_variables(f, data, selected=rows is not None)

    present: set[frozenset[str]] = {frozenset(t) for t in f.fixed} | {frozenset()}
    blocks = [np.ones((n, 1))]
    columns = ["(Intercept)"]
    fixed_terms: dict[str, np.ndarray] = {}
    for term in f.fixed:
        block, names = _term_columns(term, present, data)
        start = len(columns)
        blocks.append(block)
        columns.extend(names)
        fixed_terms[":".join(term)] = np.arange(start, start + len(names))
    X = np.concatenate(blocks, axis=1)

    _check_covariance_terms(f, covariance)
    factors = [_grouping_factor(r, data, covariance) for r in f.random]
    design = Design(
        formula=f,
        X=X,
        columns=columns,
        fixed_terms=fixed_terms,
        factors=factors,
        keep=keep,
        weights=None if weights is None else _observation_weights(data, weights),
    )
    if check:
        for problem in design_problems(design, residual):
            raise DesignError(problem)
    return design
