"""The result of a variance partition: its tables, and where they are stored.

:class:`VarPartResult` is the one home of everything a fit reports per gene. It
owns the layout of the results in an AnnData object (which ``var`` columns,
``varm`` tables and ``uns`` entries exist under a key, with which dtypes), how they
are written, read back and combined, and the tables derived from them
(:meth:`VarPartResult.long`, :meth:`VarPartResult.rho_table`). ``svp.tl`` writes
through it, ``svp.pl``, ``svp.get`` and the command line read through it: adding
an output is a change in this module only.

Layout under ``key`` (e.g. ``"varpart"``)::

    varm[key]                  fractions, genes x components (rows sum to 1)
    varm[f"{key}_variance"]    variances, genes x components
    varm[f"{key}_beta"]        fixed effects, genes x columns of X
    varm[f"{key}_beta_se"]     their standard errors
    varm[f"{key}_varcorr"]     every term's coefficient variances and covariances
                               (columns "term|coef" and "term|coef|coef"), as lme4's VarCorr
    varm[f"{key}_theta"]       lme4's covariance parameters theta at the optimum, and
    varm[f"{key}_gradient"]    the criterion's gradient and
    varm[f"{key}_hessian"]     Hessian in theta there (columns "theta_i|theta_j")
    varm[f"{key}_h2"]          per term with a known covariance (kinship), the
                               heritability-style ratio V_term / (V_term + V_residual)
    varm[f"{key}_lrt"]         with test="lrt": per random term, the likelihood-ratio
    varm[f"{key}_pvalue"]      statistic of its variance = 0, its p-value (mixture of
    varm[f"{key}_qvalue"]      0 and chi-squared(1)) and Benjamini-Hochberg q-value
    varm[f"{key}_blup_{term}"] conditional modes of a term's effects, genes x levels
    varm[f"{key}_blupvar_{term}"]  their conditional variances (with store_blups)
    varm[f"{key}_distribution"]  count models: the distribution-specific variances
                               (lognormal, trigamma) of each gene
    var[f"{key}_{field}"]      per-gene fields: rho (with batch and signal), mean,
                               singular, converged, loglik; dispersion and lambda (count
                               models)
    uns[key]                   params, components, summary, errors, result_keys, and
                               design (the design audit, :class:`~scvarpart.design.DesignAudit`)

``uns[key]["result_keys"]`` records exactly the ``var`` columns and ``varm`` keys
written, so a user's column that merely starts with the key is never taken for a
result, and a refit removes exactly what the earlier fit wrote. Only the duck-typed
``var``/``varm``/``uns`` of an AnnData are used: this module does not import anndata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from .._names import as_names
from ..design import DesignAudit
from .fractions import RESIDUAL, rho
from .multiple import benjamini_hochberg
from .ranking import batch_dominated

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "PER_GENE_FIELDS",
    "VarPartResult",
    "component_order",
    "gene_names",
    "stored_keys",
]

# The per-gene fields in the order they are stored (rho only with batch and signal),
# with their dtypes: a result read back from a file has exactly these.
PER_GENE_FIELDS: dict[str, type] = {
    "rho": np.float64,
    "rho_ci_low": np.float64,
    "rho_ci_high": np.float64,
    "rho_boot_low": np.float64,
    "rho_boot_high": np.float64,
    "mean": np.float64,
    "singular": np.bool_,
    "converged": np.bool_,
    "loglik": np.float64,
    "dispersion": np.float64,
    "lambda": np.float64,
}
# varm tables: attribute of the result -> suffix of the key ("" for the key itself)
_TABLES = {
    "fractions": "",
    "variance": "_variance",
    "beta": "_beta",
    "beta_se": "_beta_se",
    "varcorr": "_varcorr",
    "theta": "_theta",
    "gradient": "_gradient",
    "hessian": "_hessian",
    "heritability": "_h2",
    "lrt": "_lrt",
    "pvalue": "_pvalue",
    "qvalue": "_qvalue",
    "variance_se": "_variance_se",
    "ci_low": "_ci_low",
    "ci_high": "_ci_high",
    "boot_low": "_boot_low",
    "boot_high": "_boot_high",
    "distribution": "_distribution",
}
# per-term tables: attribute -> prefix of the key's suffix (the term's name follows)
_TERM_TABLES = {"blups": "_blup_", "blup_var": "_blupvar_"}
# What results stored before uns[key]["result_keys"] existed occupy.
_LEGACY_VAR = ("rho", "mean", "singular", "converged", "loglik")
_LEGACY_VARM = ("", "_variance")
# The params that define an analysis: results to combine must agree on them.
_ANALYSIS = (
    "formula", "method", "family", "offset", "approximation", "batch", "signal", "test",
    "n_boot", "seed", "ci",
)  # fmt: skip


def _names(value: Any) -> list[str]:
    """A list of names as stored in uns (None, a list, or an array after reading)."""
    return as_names(value, "a stored list of names") or []


def component_order(fractions: pd.DataFrame) -> list[str]:
    """Components by decreasing median fraction over the genes, the residual last.

    variancePartition's ``sortCols``: every plot shows the components in this order.
    Ties (and components without any estimate) keep the model's order.

    Examples
    --------
    >>> import pandas as pd
    >>> import scvarpart as svp
    >>> fractions = pd.DataFrame(
    ...     {"patient": [0.1, 0.2], "chemistry": [0.5, 0.3], "Residual": [0.4, 0.5]}
    ... )
    >>> svp.varpart.component_order(fractions)
    ['chemistry', 'patient', 'Residual']
    """
    terms = [c for c in fractions.columns if c != RESIDUAL]
    medians = fractions[terms].median(skipna=True).fillna(-np.inf)
    order = sorted(range(len(terms)), key=lambda i: (-medians.iloc[i], i))
    tail = [RESIDUAL] if RESIDUAL in fractions.columns else []
    return [terms[i] for i in order] + tail


def stored_keys(adata: AnnData, key: str) -> dict[str, list[str]]:
    """The ``var`` columns and ``varm`` keys the results under ``key`` occupy.

    From ``uns[key]["result_keys"]``; for results stored before that record
    existed, the fixed set of keys the fit wrote then. Nothing for a ``uns[key]``
    that is not a variance partition.
    """
    entry = adata.uns.get(key)
    # results per group keep everything in uns (scvarpart.varpart.grouped)
    if not isinstance(entry, Mapping) or "params" not in entry or "group_table" in entry:
        return {"var": [], "varm": []}
    recorded = entry.get("result_keys")
    if isinstance(recorded, Mapping):
        var, varm = _names(recorded.get("var")), _names(recorded.get("varm"))
    else:
        var = [f"{key}_{s}" for s in _LEGACY_VAR]
        varm = [f"{key}{s}" for s in _LEGACY_VARM]
    return {
        "var": [c for c in var if c in adata.var.columns],
        "varm": [k for k in varm if k in adata.varm],
    }


@dataclass(frozen=True)
class VarPartResult:
    """Per-gene variance partition: fractions, variances, fixed effects and flags.

    Returned by :func:`scvarpart.lmm.fit` and by :func:`scvarpart.tl.variance_partition`
    with ``inplace=False``; read from an AnnData with :meth:`read`.

    Attributes
    ----------
    fractions
        Genes x components: the share of each component in the gene's variance
        (random terms as written, fixed terms by name, ``"Residual"``); rows sum to 1.
    variance
        The same table with variances.
    per_gene
        Genes x fields of :data:`PER_GENE_FIELDS`: ``rho`` (batch-to-signal ratio,
        when ``batch`` and ``signal`` were given), ``mean``, ``singular`` (some
        variance exactly 0), ``converged`` (the global optimum was found and met the
        convergence criterion), ``loglik`` (maximised ML or REML log-likelihood).
    params
        The analysis: ``formula``, ``method``, ``batch``, ``signal``, and whatever the
        caller records (input, versions, engine).
    errors
        One row per gene without estimates (index ``gene``), column ``reason``.
    beta
        Genes x columns of the fixed-effect design (``"(Intercept)"``, ...): the
        estimates. ``None`` for results stored before they were kept.
    beta_se
        Their standard errors, ``sqrt(diag(vcov))`` as lme4 reports them.
    varcorr
        Genes x entries of every random term's covariance matrix, as lme4's
        ``VarCorr``: ``"term|coef"`` variances and ``"term|coef|coef"`` covariances
        (:meth:`varcorr_table` adds standard deviations and correlations).
    theta
        Genes x lme4's covariance parameters at the optimum (see
        :mod:`scvarpart.lmm.terms`).
    gradient, hessian
        The criterion's gradient (genes x theta) and Hessian (genes x
        ``"theta_i|theta_j"``) in ``theta`` at the optimum, for standard errors. The
        Hessian is exact, or the average information for the blocked engine.
    heritability
        For models with a known covariance between the levels of a term (a kinship
        matrix): genes x such terms, the term's variance over itself plus the residual
        variance (expression heritability, as GCTA and lme4qtl report it).
    blups, blup_var
        With ``store_blups``: per random term, the conditional modes (BLUPs) of its
        effects, genes x levels (``"level|coef"`` for terms with slopes), and their
        conditional variances (as lme4's ``condVar``, given the fixed effects).
    key
        The key it was read from (:meth:`read`), named in messages; ``None`` for a
        result not read from an AnnData.
    lrt, pvalue, qvalue
        With ``test="lrt"``: genes x random terms, the likelihood-ratio statistic of
        the term's variance = 0, its p-value (a mixture of 0 and chi-squared with 1
        degree of freedom, the weight of 0 the design's, :mod:`scvarpart.lmm.lrt`) and
        its Benjamini-Hochberg q-value over the genes.
    variance_se
        Unless fitted with ``ci=None``: genes x components, the standard error of each
        component's variance from the observed information at the optimum (the average
        information for the blocked engine), NaN for a variance at 0
        (:mod:`scvarpart.lmm.intervals`).
    ci_low, ci_high
        Unless fitted with ``ci=None``: genes x components, the delta-method interval of
        each fraction at level ``params["ci"]`` (Wald on the logit scale; ``[0, u]`` for a
        variance at 0); the per-gene fields ``rho_ci_low`` and ``rho_ci_high`` hold
        ``rho``'s (Wald on the log scale).
    boot_low, boot_high
        With ``n_boot``: genes x components, the parametric bootstrap's percentile
        interval of each fraction (:mod:`scvarpart.lmm.bootstrap`); the per-gene fields
        ``rho_boot_low`` and ``rho_boot_high`` hold ``rho``'s.
    distribution
        For a count model (:mod:`scvarpart.glmm`): genes x ``"lognormal"``,
        ``"trigamma"``, the two distribution-specific variances on the latent scale; the
        one of ``params["approximation"]`` is the ``"Residual"`` component. The per-gene
        fields ``dispersion`` (the NB size, ``inf`` for Poisson) and ``lambda`` (the mean
        count the variances are computed at) come with it.
    design
        The audit of the design the genes were fitted with
        (:func:`~scvarpart.design.audit_design`): terms, pairs of terms, warnings.
        ``None`` for results fitted without one (the array-level :mod:`scvarpart.lmm`).
    """

    fractions: pd.DataFrame
    variance: pd.DataFrame
    per_gene: pd.DataFrame
    params: dict = field(default_factory=dict)
    errors: pd.DataFrame = field(default_factory=lambda: _errors(pd.Series(dtype=str)))
    beta: pd.DataFrame | None = None
    beta_se: pd.DataFrame | None = None
    key: str | None = None
    varcorr: pd.DataFrame | None = None
    theta: pd.DataFrame | None = None
    gradient: pd.DataFrame | None = None
    hessian: pd.DataFrame | None = None
    heritability: pd.DataFrame | None = None
    blups: Mapping[str, pd.DataFrame] | None = None
    blup_var: Mapping[str, pd.DataFrame] | None = None
    design: DesignAudit | None = None
    lrt: pd.DataFrame | None = None
    pvalue: pd.DataFrame | None = None
    qvalue: pd.DataFrame | None = None
    variance_se: pd.DataFrame | None = None
    ci_low: pd.DataFrame | None = None
    ci_high: pd.DataFrame | None = None
    boot_low: pd.DataFrame | None = None
    boot_high: pd.DataFrame | None = None
    distribution: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        """Check that every table is indexed by the genes, in order, and has the components."""
        genes = self.fractions.index
        for name, table in self._tables().items():
            if table is not None and not table.index.equals(genes):
                raise ValueError(
                    f"The {name} table is not indexed by the genes of the fractions, in order."
                )
        if not self.variance.columns.equals(self.fractions.columns):
            raise ValueError("The variance and fractions tables have different components.")

    def _tables(self) -> dict[str, pd.DataFrame | None]:
        """Every genes x something table but the fractions, by name."""
        out = {n: getattr(self, n) for n in _TABLES if n != "fractions"}
        out["per_gene"] = self.per_gene
        for n in _TERM_TABLES:
            for term, table in (getattr(self, n) or {}).items():
                out[f"{n}[{term}]"] = table
        return out

    def _stored_tables(self, key: str) -> dict[str, pd.DataFrame]:
        """The varm tables under ``key``: name -> table."""
        out = {f"{key}{s}": getattr(self, n) for n, s in _TABLES.items()}
        for n, s in _TERM_TABLES.items():
            for term, table in (getattr(self, n) or {}).items():
                out[f"{key}{s}{term}"] = table
        return {k: v for k, v in out.items() if v is not None}

    # -- what it holds ---------------------------------------------------------------

    @property
    def genes(self) -> pd.Index:
        """The genes, in order."""
        return self.fractions.index

    @property
    def components(self) -> list[str]:
        """The components in the model's order: random terms, fixed terms, residual."""
        return [str(c) for c in self.fractions.columns]

    @property
    def batch(self) -> list[str]:
        """The technical components (``batch=`` of the fit)."""
        return _names(self.params.get("batch"))

    @property
    def signal(self) -> list[str]:
        """The biological components (``signal=`` of the fit)."""
        return _names(self.params.get("signal"))

    @property
    def failed(self) -> np.ndarray:
        """Mask of the genes without estimates."""
        return self.genes.isin(self.errors.index)

    @property
    def summary(self) -> dict:
        """Median fraction per component over the fitted genes, and counts of genes.

        The numbers of genes, singular fits, non-converged fits and genes without
        estimates.
        """
        failed = self.failed
        fitted = self.fractions[~failed]
        return {
            "median_fraction": {
                c: float(np.median(fitted[c])) if len(fitted) else np.nan
                for c in self.fractions.columns
            },
            "n_genes": len(self.genes),
            "n_singular": int(self.per_gene["singular"].sum()),
            "n_not_converged": int((~self.per_gene["converged"] & ~failed).sum()),
            "n_failed": int(failed.sum()),
        }

    @property
    def rho(self) -> pd.Series:
        """The batch-to-signal ratio of each gene.

        Raises
        ------
        KeyError
            When the fit was given no ``batch`` and ``signal``, saying so.
        """
        if "rho" not in self.per_gene:
            where = "in this result" if self.key is None else f"under key {self.key!r}"
            raise KeyError(
                f"No rho {where}: fit with batch= and signal= (the model terms that are "
                "technical and biological), e.g. svp.tl.variance_partition(adata, formula, "
                "batch=..., signal=...)."
            )
        return self.per_gene["rho"]

    def component_order(self) -> list[str]:
        """Components by decreasing median fraction, the residual last (``sortCols``)."""
        return component_order(self.fractions)

    def subset(self, genes: Sequence[str]) -> VarPartResult:
        """The result of ``genes`` only, in that order."""
        index = self._genes(genes)

        def rows(table: pd.DataFrame | None) -> pd.DataFrame | None:
            return None if table is None else table.loc[index]

        def term_rows(tables: Mapping[str, pd.DataFrame] | None):
            return None if tables is None else {t: rows(v) for t, v in tables.items()}

        return replace(
            self,
            per_gene=rows(self.per_gene),
            errors=self.errors[self.errors.index.isin(index)],
            **cast(dict[str, Any], {n: rows(getattr(self, n)) for n in _TABLES}),
            **cast(dict[str, Any], {n: term_rows(getattr(self, n)) for n in _TERM_TABLES}),
        )

    def with_params(self, **params: Any) -> VarPartResult:
        """The same result with ``params`` added to its record of the analysis."""
        return replace(self, params={**self.params, **params})

    # -- derived tables --------------------------------------------------------------

    def _genes(self, genes: Sequence[str] | None) -> pd.Index:
        if genes is None:
            return self.genes
        index = pd.Index([genes] if isinstance(genes, str) else list(genes))
        missing = index.difference(self.genes)
        if len(missing):
            raise KeyError(f"{len(missing)} gene(s) are not in the result: {list(missing[:5])}.")
        return index

    def _sorted(self, genes: pd.Index, sort_by: str | None, table: pd.DataFrame) -> pd.Index:
        if sort_by is None:
            return genes
        if sort_by not in table.columns:
            raise KeyError(f"sort_by={sort_by!r} is not one of {[str(c) for c in table.columns]}.")
        values = table.loc[genes, sort_by]
        return values.sort_values(ascending=False, na_position="last", kind="stable").index

    def long(self, genes: Sequence[str] | None = None, sort_by: str | None = None) -> pd.DataFrame:
        """Tidy table: one row per gene and component (see :func:`scvarpart.get.varpart_df`)."""
        index = self._sorted(self._genes(genes), sort_by, self.fractions)
        comps = self.component_order()
        frac = self.fractions.loc[index, comps]
        var = self.variance.loc[index, comps]
        out = pd.DataFrame(
            {
                "gene": np.repeat(index.to_numpy(dtype=object), len(comps)),
                "component": pd.Categorical(np.tile(comps, len(index)), categories=comps),
                "fraction": frac.to_numpy().ravel(),
                "variance": var.to_numpy().ravel(),
            }
        )
        return out

    def rho_table(
        self, genes: Sequence[str] | None = None, sort_by: str | None = "rho"
    ) -> pd.DataFrame:
        """Per gene, ``rho`` and what it is computed from.

        The batch and signal variances and fractions (see :func:`scvarpart.get.rho_df`).
        """
        batch, signal = self.batch, self.signal
        table = pd.DataFrame(
            {
                "rho": self.rho,
                "batch_variance": self.variance[batch].sum(axis=1, min_count=1),
                "signal_variance": self.variance[signal].sum(axis=1, min_count=1),
                "batch_fraction": self.fractions[batch].sum(axis=1, min_count=1),
                "signal_fraction": self.fractions[signal].sum(axis=1, min_count=1),
                "batch_dominated": False,
            },
            index=self.genes,
        )
        table.loc[self.batch_dominated().index, "batch_dominated"] = True
        table.index.name = "gene"
        return table.loc[self._sorted(self._genes(genes), sort_by, table)]

    def beta_table(self, genes: Sequence[str] | None = None) -> pd.DataFrame:
        """Tidy fixed effects.

        One row per gene and coefficient, with ``estimate`` and ``se`` (see
        :func:`scvarpart.get.beta_df`).
        """
        if self.beta is None or self.beta_se is None:
            raise KeyError(
                "This result was stored without fixed effects (by an earlier version of "
                "scvarpart): fit again to get them."
            )
        index = self._genes(genes)
        columns = [str(c) for c in self.beta.columns]
        return pd.DataFrame(
            {
                "gene": np.repeat(index.to_numpy(dtype=object), len(columns)),
                "coefficient": pd.Categorical(np.tile(columns, len(index)), categories=columns),
                "estimate": self.beta.loc[index].to_numpy().ravel(),
                "se": self.beta_se.loc[index].to_numpy().ravel(),
            }
        )

    def varcorr_table(self, genes: Sequence[str] | None = None) -> pd.DataFrame:
        """Tidy ``VarCorr``: one row per gene and covariance entry.

        Columns ``gene``, ``term``, ``var1``, ``var2`` (empty for a variance), ``vcov``
        (variance or covariance) and ``sdcor`` (standard deviation, or correlation), as
        lme4's ``as.data.frame(VarCorr(fit))``; the residual's row has term
        ``"Residual"`` (see :func:`scvarpart.get.varcorr_df`).
        """
        if self.varcorr is None:
            raise KeyError("This result has no VarCorr table: fit again to get it.")
        index = self._genes(genes)
        table = self.varcorr.loc[index]
        parts = [str(c).split("|") for c in table.columns]
        var_col = {tuple(p): str(c) for p, c in zip(parts, table.columns, strict=True)}
        values = table.to_numpy()
        sdcor = np.empty_like(values)
        for j, p in enumerate(parts):
            if len(p) == 3:
                va = table[var_col[(p[0], p[1])]].to_numpy()
                vb = table[var_col[(p[0], p[2])]].to_numpy()
                with np.errstate(invalid="ignore", divide="ignore"):
                    sdcor[:, j] = values[:, j] / np.sqrt(va * vb)
            else:
                sdcor[:, j] = np.sqrt(values[:, j])
        pad = [(*p, "", "")[:3] for p in parts]
        return pd.DataFrame(
            {
                "gene": np.repeat(index.to_numpy(dtype=object), len(parts)),
                "term": np.tile([p[0] for p in pad], len(index)),
                "var1": np.tile([p[1] for p in pad], len(index)),
                "var2": np.tile([p[2] for p in pad], len(index)),
                "vcov": values.ravel(),
                "sdcor": sdcor.ravel(),
            }
        )

    def blup_table(self, term: str, genes: Sequence[str] | None = None) -> pd.DataFrame:
        """The conditional modes of ``term``'s effects, genes x levels.

        See :func:`scvarpart.get.blups`.

        Raises
        ------
        KeyError
            Without stored BLUPs, or for a term without any, naming those with.
        """
        if not self.blups:
            raise KeyError(
                "This result has no BLUPs: fit with store_blups=True to keep the "
                "conditional modes of the random effects."
            )
        if term not in self.blups:
            raise KeyError(f"No BLUPs of {term!r}; terms with BLUPs: {list(self.blups)}.")
        return self.blups[term].loc[self._genes(genes)]

    def batch_dominated(self, *, min_rho: float = 1.0, n_top: int | None = None) -> pd.DataFrame:
        """The batch-dominated genes, ranked (see :mod:`scvarpart.varpart.ranking`)."""
        return batch_dominated(
            self.fractions,
            self.rho,
            self.batch,
            self.signal,
            min_rho=min_rho,
            n_top=n_top,
        )

    def gene_table(self) -> pd.DataFrame:
        """Everything per gene in one flat table (the TSV of ``scvarpart report``).

        Fractions, variances, fixed effects and standard errors, the random terms'
        variances and covariances (``varcorr_``), heritability-style ratios (``h2_``),
        fields, error.
        """
        parts = [
            self.fractions.add_prefix("fraction_"),
            self.variance.add_prefix("variance_"),
        ]
        if self.beta is not None and self.beta_se is not None:
            parts += [self.beta.add_prefix("beta_"), self.beta_se.add_prefix("beta_se_")]
        if self.varcorr is not None:
            parts.append(self.varcorr.add_prefix("varcorr_"))
        if self.heritability is not None:
            parts.append(self.heritability.add_prefix("h2_"))
        table = pd.concat([*parts, self.per_gene], axis=1)
        table["error"] = self.errors["reason"].reindex(table.index).fillna("")
        table.index.name = "gene"
        return table

    # -- storage in an AnnData -------------------------------------------------------

    def layout(self, key: str) -> dict[str, list[str]]:
        """The ``var`` columns and ``varm`` keys this result occupies under ``key``."""
        return {
            "var": [f"{key}_{f}" for f in self.per_gene.columns],
            "varm": list(self._stored_tables(key)),
        }

    def uns_entry(self, key: str) -> dict:
        """What is stored in ``uns[key]``."""
        entry = {
            "params": self.params,
            "components": self.components,
            "summary": self.summary,
            "errors": self.errors,
            "result_keys": self.layout(key),
        }
        if self.design is not None:
            entry["design"] = self.design.to_dict()
        return entry

    def write(self, adata: AnnData, key: str) -> None:
        """Store the result in ``adata`` under ``key``.

        This replaces exactly what an earlier fit under ``key`` stored.

        Everything is checked and prepared before ``adata`` is touched; ``adata``
        must be an actual object (not a view) whose genes are those of the result,
        in order.
        """
        if not adata.var_names.equals(self.genes):
            raise ValueError(
                "The result is not indexed by this object's genes, in order: results "
                "computed from another object cannot be stored here."
            )
        uns = self.uns_entry(key)
        per_gene = {f"{key}_{c}": self.per_gene[c].to_numpy() for c in self.per_gene}
        tables = self._stored_tables(key)
        stale = stored_keys(adata, key)
        # from here on nothing can fail: every value is aligned and complete
        adata.var.drop(columns=stale["var"], inplace=True)
        for name in stale["varm"]:
            del adata.varm[name]
        for name, table in tables.items():
            adata.varm[name] = table
        for col, values in per_gene.items():
            adata.var[col] = values
        adata.uns[key] = uns

    @classmethod
    def read(cls, adata: AnnData, key: str = "varpart") -> VarPartResult:
        """The result stored in ``adata`` under ``key`` (also by earlier versions).

        Raises
        ------
        KeyError
            When ``adata`` holds no variance partition under ``key``, naming the keys
            that do hold one.
        """
        keys = stored_keys(adata, key)
        if key not in keys["varm"]:
            found = [k for k in adata.uns if stored_keys(adata, k)["varm"]]
            raise KeyError(
                f"No variance partition under key {key!r} (results found: {found}): run "
                f"svp.tl.variance_partition(adata, ..., key_added={key!r}) first."
            )
        entry = adata.uns[key]
        prefix = len(key) + 1
        per_gene = adata.var[keys["var"]].rename(columns=lambda c: c[prefix:])
        tables = {
            n: (pd.DataFrame(adata.varm[f"{key}{s}"]) if f"{key}{s}" in keys["varm"] else None)
            for n, s in _TABLES.items()
        }
        term_tables = {
            n: {
                k[len(key) + len(s) :]: pd.DataFrame(adata.varm[k])
                for k in keys["varm"]
                if k.startswith(f"{key}{s}")
            }
            or None
            for n, s in _TERM_TABLES.items()
        }
        errors = entry.get("errors")
        errors = _errors(pd.Series(dtype=str)) if errors is None else errors
        design = entry.get("design")
        return cls(
            per_gene=per_gene,
            params=dict(entry["params"]),
            errors=errors,
            key=key,
            design=None if design is None else DesignAudit.from_dict(design),
            **cast(dict[str, Any], tables),
            **cast(dict[str, Any], term_tables),
        )

    @classmethod
    def concat(cls, parts: Sequence[VarPartResult]) -> VarPartResult:
        """The result of all genes from results of consecutive gene chunks.

        The chunks come from the same analysis: their ``params`` (formula, method,
        batch, signal, test) and components must agree, and either all or none have
        tests. The q-values are adjusted again over all genes (Benjamini-Hochberg of
        the combined p-values, each chunk's being over its own genes only): the
        combined result is that of one fit of every gene.
        """
        if not parts:
            raise ValueError("No results to combine.")
        first = parts[0]
        for part in parts[1:]:
            differ = [k for k in _ANALYSIS if str(part.params.get(k)) != str(first.params.get(k))]
            if part.components != first.components:
                differ.insert(0, "components")
            if (part.pvalue is None) != (first.pvalue is None):
                differ.append("tests")
            # fits outside svp.tl record no n_boot: the tables tell
            if (part.boot_low is None) != (first.boot_low is None) and "n_boot" not in differ:
                differ.append("bootstrap intervals")
            if (part.ci_low is None) != (first.ci_low is None) and "ci" not in differ:
                differ.append("intervals")
            if differ:
                raise ValueError(
                    f"The results come from different analyses ({', '.join(differ)} "
                    "differ); they cannot be combined."
                )

        def cat(name: str) -> pd.DataFrame | None:
            tables = [getattr(p, name) for p in parts]
            return None if any(t is None for t in tables) else pd.concat(tables)

        def cat_terms(name: str) -> dict[str, pd.DataFrame] | None:
            maps = [getattr(p, name) for p in parts]
            if any(m is None for m in maps):
                return None
            return {t: pd.concat([m[t] for m in maps]) for t in maps[0]}

        errors = pd.concat([p.errors for p in parts])
        errors.index.name = "gene"
        tables = {n: cat(n) for n in _TABLES}
        pvalue = tables["pvalue"]
        if pvalue is not None:  # a q-value depends on every gene's p-value
            q = benjamini_hochberg(pvalue.to_numpy(dtype=float))
            tables["qvalue"] = pd.DataFrame(q, index=pvalue.index, columns=pvalue.columns)
        return cls(
            per_gene=cast(pd.DataFrame, cat("per_gene")),
            params=first.params,
            errors=errors,
            design=first.design,  # the same analysis: the same design
            **cast(dict[str, Any], tables),
            **cast(dict[str, Any], {n: cat_terms(n) for n in _TERM_TABLES}),
        )


def _errors(reasons: pd.Series) -> pd.DataFrame:
    """The ``errors`` table: one row per gene without estimates, with the reason."""
    errors = pd.DataFrame({"reason": reasons.astype(str)})
    errors.index.name = "gene"
    return errors


def assemble(
    genes: pd.Index,
    components: Sequence[str],
    variances: np.ndarray,
    fractions_: np.ndarray,
    fields: Mapping[str, np.ndarray],
    error: np.ndarray,
    *,
    beta: np.ndarray | None = None,
    beta_se: np.ndarray | None = None,
    columns: Sequence[str] = (),
    params: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> VarPartResult:
    """A :class:`VarPartResult` from per-gene arrays.

    ``rho`` is added from the variances when ``params`` names ``batch`` and ``signal``.
    ``extra``: further tables of the result, by attribute (``varcorr``, ``theta``,
    ``blups``, ...), already indexed by ``genes``.
    """
    params = dict(params or {})
    comps = list(components)
    per_gene = pd.DataFrame(index=genes)
    batch, signal = _names(params.get("batch")), _names(params.get("signal"))
    if batch and signal:
        per_gene["rho"] = rho(variances, comps, batch, signal)
    for name, values in fields.items():
        per_gene[name] = np.asarray(values).astype(PER_GENE_FIELDS[name])
    ok = error == ""
    return VarPartResult(
        fractions=pd.DataFrame(fractions_, index=genes, columns=comps),
        variance=pd.DataFrame(variances, index=genes, columns=comps),
        per_gene=per_gene[[f for f in PER_GENE_FIELDS if f in per_gene]],
        params=params,
        errors=_errors(pd.Series(error[~ok], index=genes[~ok], dtype=object)),
        beta=None if beta is None else pd.DataFrame(beta, index=genes, columns=list(columns)),
        beta_se=(
            None if beta_se is None else pd.DataFrame(beta_se, index=genes, columns=list(columns))
        ),
        **dict(extra or {}),
    )


def gene_names(var_names: Sequence[str] | None, n_cols: int) -> pd.Index:
    """The genes' names: ``var_names``, checked to name every column, or numbers."""
    names = pd.Index([str(j) for j in range(n_cols)] if var_names is None else var_names)
    if len(names) != n_cols:
        raise ValueError(f"var_names has {len(names)} names for the {n_cols} columns of Y.")
    return names
