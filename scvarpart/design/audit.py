"""The design audit: what a design lets a mixed model estimate, before any fit.

Per model term: its kind, levels, and observations per level. Per pair of terms: how
they relate and how strongly they are associated (:func:`.association`). Then the
problems: *errors*, components the design cannot separate (the reasons
:func:`~scvarpart.design.build_design` refuses a design, all of them), and
*warnings*, components it separates only weakly:

- a random factor with few levels (fewer than ``few_levels``): its variance is
  estimated from that many groups;
- a factor nested in another where most outer levels hold a single inner level:
  there the two variances cannot be told apart;
- a factor most of whose levels have a single observation: their effects cannot be
  told from the residual.

Pairs of grouping factors are *crossed* (every combination of levels observed),
*partially crossed*, *nested* (each level of the first within one level of the
second) or *confounded* (the same groups under two names). A fixed term is *within*
a grouping factor when it is constant within its levels (a donor's age beside
``(1|donor)``: estimated between donors, which is fine), and *confounded* with a
term it is associated with at 0.999 or more otherwise.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .association import association, within
from .matrices import Design, GroupingFactor, design_problems

__all__ = ["FEW_LEVELS", "DesignAudit", "audit_design"]

# A random factor with fewer levels than this is weakly identified.
FEW_LEVELS = 5
# A fixed term associated with another term at least this strongly is confounded with it.
CONFOUNDED = 0.999
# Nested factors: warn when more than this share of the outer levels hold one inner level.
SINGLE_INNER = 0.5
# A factor with more than this share of levels observed once is hardly told from the residual.
SINGLETONS = 0.5

_TERM_COLUMNS = [
    "kind",
    "levels",
    "min_per_level",
    "median_per_level",
    "max_per_level",
    "singletons",
]
_PAIR_COLUMNS = ["term", "other", "relation", "association", "combinations"]


@dataclass(frozen=True)
class DesignAudit:
    """What a design lets a mixed model estimate.

    Attributes
    ----------
    formula
        The model.
    n_obs
        Observations (cells) the model uses.
    terms
        One row per model term (grouping factors, then fixed terms): ``kind``
        (``"random"`` or ``"fixed"``), ``levels``, the observations per level
        (``min_per_level``, ``median_per_level``, ``max_per_level``) and the number
        of levels observed once (``singletons``); levels are NaN for a continuous term.
    pairs
        One row per pair of terms: ``term``, ``other``, their ``relation``
        (``"crossed"``, ``"partially crossed"``, ``"nested"`` with ``term`` inside
        ``other``, ``"within"`` for a fixed term constant within the grouping factor
        ``other``, ``"confounded"``, or ``""``), their ``association`` (canonical
        correlation; Cramér's V for two factors) and for two grouping factors the
        number of level ``combinations`` observed.
    errors
        Components the design cannot separate, each naming the terms and the fix. A
        design with errors cannot be fitted.
    warnings
        Components it separates only weakly, and what that means for the estimates.
    warning_kinds
        The kind of each warning: ``"few levels"``, ``"nested"`` or ``"singletons"``.
    """

    formula: str
    n_obs: int
    terms: pd.DataFrame
    pairs: pd.DataFrame
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    warning_kinds: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the design can be fitted (no errors)."""
        return not self.errors

    def to_text(self) -> str:
        """The audit as plain text: the terms, the pairs, the errors and warnings."""
        terms = self.terms.copy()
        for c in ("levels", "min_per_level", "max_per_level", "singletons"):
            terms[c] = terms[c].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
        terms["median_per_level"] = terms["median_per_level"].map(
            lambda v: "" if pd.isna(v) else f"{v:,.1f}"
        )
        pairs = self.pairs.copy()
        pairs["association"] = pairs["association"].map(lambda v: f"{v:.2f}")
        pairs["combinations"] = pairs["combinations"].map(
            lambda v: "" if pd.isna(v) else f"{int(v):,}"
        )
        lines = [f"design of {self.n_obs:,} observations: {self.formula}", "", "terms"]
        lines += ["  " + line for line in terms.to_string().splitlines()]
        if len(pairs):
            lines += ["", "pairs of terms"]
            lines += ["  " + line for line in pairs.to_string(index=False).splitlines()]
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            lines += ["", f"{title}: none" if not items else f"{title}:"]
            for item in items:
                lines += textwrap.wrap(item, 88, initial_indent="  - ", subsequent_indent="    ")
        return "\n".join(lines)

    def __str__(self) -> str:
        """The audit as plain text (:meth:`to_text`)."""
        return self.to_text()

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, for ``uns`` (h5ad, zarr) and JSON."""
        return {
            "formula": self.formula,
            "n_obs": self.n_obs,
            "terms": {"term": list(self.terms.index), **_columns(self.terms)},
            "pairs": _columns(self.pairs),
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "warning_kinds": list(self.warning_kinds),
        }

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> DesignAudit:
        """The audit from :meth:`to_dict`'s output (also as read back from a file)."""
        terms = pd.DataFrame({c: list(entry["terms"][c]) for c in _TERM_COLUMNS})
        terms.index = pd.Index([str(t) for t in entry["terms"]["term"]], name="term")
        pairs = pd.DataFrame({c: list(entry["pairs"][c]) for c in _PAIR_COLUMNS})
        return cls(
            formula=str(entry["formula"]),
            n_obs=int(entry["n_obs"]),
            terms=_typed_terms(terms),
            pairs=_typed_pairs(pairs),
            errors=tuple(str(e) for e in entry["errors"]),
            warnings=tuple(str(w) for w in entry["warnings"]),
            warning_kinds=tuple(str(k) for k in entry["warning_kinds"]),
        )


def _columns(frame: pd.DataFrame) -> dict[str, list]:
    return {c: frame[c].tolist() for c in frame.columns}


def _typed_terms(terms: pd.DataFrame) -> pd.DataFrame:
    terms["kind"] = terms["kind"].astype(str)
    for c in _TERM_COLUMNS[1:]:
        terms[c] = pd.to_numeric(terms[c]).astype(float)
    return terms


def _typed_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    for c in ("term", "other", "relation"):
        pairs[c] = pairs[c].astype(str)
    for c in ("association", "combinations"):
        pairs[c] = pd.to_numeric(pairs[c]).astype(float)
    return pairs


def _term_row(f: GroupingFactor | None, kind: str, values: np.ndarray | None) -> list:
    """Kind, levels, observations per level (min, median, max) and singleton levels."""
    if f is not None:
        counts = f.counts
    elif values is not None and values.shape[1] > 0 and _is_indicator(values):
        counts = values.sum(axis=0)  # a categorical fixed term's non-reference levels
        counts = np.append(counts, len(values) - counts.sum())
    else:
        return [kind, np.nan, np.nan, np.nan, np.nan, np.nan]
    counts = counts[counts > 0]
    return [
        kind,
        float(len(counts)),
        float(counts.min()),
        float(np.median(counts)),
        float(counts.max()),
        float((counts == 1).sum()),
    ]


def _is_indicator(values: np.ndarray) -> bool:
    """Treatment-coded indicators: 0/1 columns, at most one 1 per row."""
    return bool(np.isin(values, (0.0, 1.0)).all() and (values.sum(axis=1) <= 1).all())


def _factor_relation(a: GroupingFactor, b: GroupingFactor) -> tuple[str, bool, int]:
    """Relation of two grouping factors, whether to swap them (inner first), combinations."""
    combos = len(a.combinations(b))
    if combos == a.n_levels == b.n_levels:
        return "confounded", False, combos
    if combos == a.n_levels and a.n_levels > b.n_levels:
        return "nested", False, combos
    if combos == b.n_levels and b.n_levels > a.n_levels:
        return "nested", True, combos
    if combos == a.n_levels * b.n_levels:
        return "crossed", False, combos
    return "partially crossed", False, combos


def _pairs(design: Design) -> pd.DataFrame:
    table = association(design)
    inside = within(design)
    factors = {f.name: f for f in design.factors}
    names = list(table.index)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            value = float(table.loc[a, b])
            term, other, combos = a, b, np.nan  # term: the inner one of a nested pair
            if a in factors and b in factors:
                relation, swap, n = _factor_relation(factors[a], factors[b])
                combos = float(n)
                if swap:
                    term, other = b, a
            elif b in factors and inside.loc[a, b]:
                relation = "within"
            elif a in factors and inside.loc[b, a]:
                relation, term, other = "within", b, a
            else:
                relation = "confounded" if value >= CONFOUNDED else ""
            rows.append([term, other, relation, value, combos])
    return _typed_pairs(pd.DataFrame(rows, columns=_PAIR_COLUMNS))


def _nested_warnings(design: Design, pairs: pd.DataFrame) -> list[tuple[str, str]]:
    factors = {f.name: f for f in design.factors}
    out = []
    for row in pairs.itertuples():
        if row.relation != "nested":
            continue
        inner, outer = factors[row.term], factors[row.other]
        per_outer = np.bincount(inner.combinations(outer)[:, 1], minlength=outer.n_levels)
        single = int((per_outer == 1).sum())
        if single > SINGLE_INNER * outer.n_levels:
            message = (
                f"{inner.name!r} is nested in {outer.name!r}, but {single} of "
                f"{outer.n_levels} levels of {outer.name!r} hold a single level of "
                f"{inner.name!r}: there the two variances cannot be told apart, so they "
                f"are separated by the other {outer.n_levels - single} levels only, and "
                "may trade places from gene to gene. More levels of "
                f"{inner.name!r} per {outer.name!r} would separate them."
            )
            out.append(("nested", message))
    return out


def _level_warnings(
    design: Design, few_levels: int, residual: bool = True
) -> list[tuple[str, str]]:
    out = []
    for f in design.factors:
        k = f.n_levels
        if 2 <= k < few_levels:
            few = (
                f"{f.name!r} has {k} levels: its variance is estimated from {k} groups, so "
                "it is imprecise (expect a wide interval) and often 0; under ML it is "
                f"biased downwards, by about a factor {k - 1}/{k} for balanced levels, which "
                f"REML corrects. With so few levels, {f.name!r} may serve better as a fixed "
                "effect (its variance fraction is then that of a fixed term)."
            )
            out.append(("few levels", few))
        singles = int((f.counts == 1).sum())
        if residual and k >= few_levels and singles > SINGLETONS * k:
            once = (
                f"{singles} of {k} levels of {f.name!r} have a single observation: their "
                "effects cannot be told from the residual, so its variance rests on the "
                f"other {k - singles} levels."
            )
            out.append(("singletons", once))
    return out


def audit_design(
    design: Design, *, few_levels: int = FEW_LEVELS, residual: bool = True
) -> DesignAudit:
    """Audit a design: its terms, their pairs, and what it cannot or can hardly separate.

    Parameters
    ----------
    design
        The design, as built by :func:`~scvarpart.design.build_design` (with
        ``check=False`` to audit a design it would refuse).
    few_levels
        A random factor with fewer levels gets a warning.
    residual
        Whether the model has a residual variance (``False`` for a count model; see
        :func:`~scvarpart.design.build_design`).

    Returns
    -------
    A :class:`DesignAudit`.

    Examples
    --------
    >>> import pandas as pd
    >>> from scvarpart.design import build_design, audit_design
    >>> obs = pd.DataFrame({"donor": list("aabbccdd") * 3, "day": list("xy") * 12})
    >>> audit = audit_design(build_design("~ (1|donor) + (1|day)", obs))
    >>> audit.pairs[["term", "other", "relation"]].to_numpy().tolist()
    [['donor', 'day', 'crossed']]
    >>> len(audit.warnings)  # few levels: 'donor' has 4, 'day' 2
    2
    """
    rows = {f.name: _term_row(f, "random", None) for f in design.factors}
    for name, cols in design.fixed_terms.items():
        rows[name] = _term_row(None, "fixed", design.X[:, cols])
    terms = pd.DataFrame.from_dict(rows, orient="index", columns=_TERM_COLUMNS)
    terms.index.name = "term"
    pairs = _pairs(design)
    warnings = _level_warnings(design, few_levels, residual) + _nested_warnings(design, pairs)
    return DesignAudit(
        formula=design.formula.text,
        n_obs=design.n_obs,
        terms=_typed_terms(terms),
        pairs=pairs,
        errors=tuple(design_problems(design, residual)),
        warnings=tuple(message for _, message in warnings),
        warning_kinds=tuple(kind for kind, _ in warnings),
    )
