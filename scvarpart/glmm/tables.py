"""A count model's per-gene records, gathered into the tables of a result.

Each gene's fit (:mod:`.genes`) is a record: its estimates, or the reason it has none.
This module lays them out as the :class:`~scvarpart.varpart.VarPartResult` every fit
returns: components, fixed effects, lme4's ``VarCorr`` and ``theta`` with the criterion's
derivatives, intervals, conditional modes, and the distribution-specific variances.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..design import Design
from ..varpart.fractions import RESIDUAL, fractions, heritability
from ..varpart.result import VarPartResult, assemble
from .latent import APPROXIMATIONS

__all__ = ["Records", "collect"]


class Records:
    """The per-gene records of a fit, read as genes x something arrays."""

    def __init__(self, parts: list[dict]):
        self.parts = parts
        self.ok = np.array([r["error"] == "" for r in parts])

    def stack(self, name: str, width: int) -> np.ndarray:
        """Field ``name`` of the fitted genes, NaN for the others."""
        out = np.full((len(self.parts), width), np.nan)
        for g, r in enumerate(self.parts):
            if r["error"] == "":
                out[g] = r[name]
        return out

    def column(self, name: str) -> np.ndarray:
        """A scalar field of every gene (NaN where absent)."""
        return np.array([r.get(name, np.nan) for r in self.parts], dtype=float)


def interval_tables(records: Records, genes: pd.Index, comps: list[str]):
    """``variance_se``, ``ci_low``, ``ci_high``, and rho's bounds (per-gene fields)."""
    G, C = len(genes), len(comps)
    se, lo, hi = (np.full((G, C), np.nan) for _ in range(3))
    rho_lo, rho_hi = np.full(G, np.nan), np.full(G, np.nan)
    for g, r in enumerate(records.parts):
        if r["error"] == "":
            iv = r["intervals"]
            se[g], lo[g], hi[g] = iv["variance_se"], iv["ci_low"], iv["ci_high"]
            rho_lo[g], rho_hi[g] = iv["rho"]
    tables = {"variance_se": se, "ci_low": lo, "ci_high": hi}
    frames = {k: pd.DataFrame(v, index=genes, columns=comps) for k, v in tables.items()}
    return frames, {"rho_ci_low": rho_lo, "rho_ci_high": rho_hi}


def blup_tables(records: Records, design: Design, genes: pd.Index):
    """Per term, genes x levels of conditional modes and of their variances."""
    starts = np.cumsum([0, *(f.n_levels for f in design.factors)])
    blups, blup_var = {}, {}
    for t, f in enumerate(design.factors):
        cols = [str(v) for v in f.levels]
        m, v = (np.full((len(genes), f.n_levels), np.nan) for _ in range(2))
        for g, r in enumerate(records.parts):
            if r["error"] == "":
                m[g] = r["blups"][0][starts[t] : starts[t + 1]]
                v[g] = r["blups"][1][starts[t] : starts[t + 1]]
        blups[f.name] = pd.DataFrame(m, index=genes, columns=cols)
        blup_var[f.name] = pd.DataFrame(v, index=genes, columns=cols)
    return {"blups": blups, "blup_var": blup_var}


def random_tables(records: Records, design: Design, genes: pd.Index, V: np.ndarray):
    """lme4's ``VarCorr``, ``theta`` and the criterion's derivatives in ``theta``.

    ``VarCorr`` holds each term's ``theta^2`` (for a term with a known covariance ``K``,
    the variance that ``K`` multiplies, as lme4qtl's) and the residual component.
    """
    k = design.n_random
    names = [f.name for f in design.factors]
    theta_cols = [f"{n}.(Intercept)" for n in names]
    theta = records.stack("theta", k)
    return {
        "varcorr": pd.DataFrame(
            np.column_stack([theta**2, V[:, -1]]), index=genes,
            columns=[f"{n}|(Intercept)" for n in names] + [RESIDUAL],
        ),
        "theta": pd.DataFrame(theta, index=genes, columns=theta_cols),
        "gradient": pd.DataFrame(records.stack("gradient", k), index=genes, columns=theta_cols),
        "hessian": pd.DataFrame(
            records.stack("hessian", k * k), index=genes,
            columns=[f"{a}|{b}" for a in theta_cols for b in theta_cols],
        ),
    }  # fmt: skip


def collect(
    design: Design, genes: pd.Index, parts: list[dict], params: dict, *, level, store_blups
) -> VarPartResult:
    """The per-gene records as a :class:`VarPartResult`.

    ``level``: the intervals' (``None``: none were computed); ``store_blups``: whether the
    records hold conditional modes.
    """
    records = Records(parts)
    comps = design.components
    V = records.stack("variance", len(comps))
    fields = {
        "mean": records.column("mean"),
        "singular": (records.stack("theta", design.n_random) == 0).any(axis=1),
        "converged": np.array([bool(r.get("converged", False)) for r in parts]) & records.ok,
        "loglik": records.column("loglik"),
        "dispersion": records.column("dispersion"),
        "lambda": records.column("lambda"),
    }
    extra = random_tables(records, design, genes, V)
    extra["distribution"] = pd.DataFrame(
        {a: records.column(a) for a in APPROXIMATIONS}, index=genes
    )
    if level is not None:
        frames, rho_bounds = interval_tables(records, genes, comps)
        extra.update(frames)
        if params.get("batch") and params.get("signal"):
            fields.update(rho_bounds)
    if store_blups:
        extra.update(blup_tables(records, design, genes))
    kinship = {f.name: t for t, f in enumerate(design.factors) if f.relfac is not None}
    if kinship:  # the terms' variances are the first columns of V, in the factors' order
        extra["heritability"] = pd.DataFrame(
            {n: heritability(V[:, t], V[:, -1]) for n, t in kinship.items()}, index=genes
        )
    error = np.array([r["error"] for r in parts], dtype=object)
    return assemble(
        genes, comps, V, fractions(V), fields, error, beta=records.stack("beta", design.n_fixed),
        beta_se=records.stack("beta_se", design.n_fixed), columns=design.columns,
        params=params, extra=extra,
    )  # fmt: skip
