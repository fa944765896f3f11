"""Tidy tables of stored results, as scanpy's ``sc.get.rank_genes_groups_df``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData

from .._docs import doc_adata_fitted, doc_adata_rho, doc_group, doc_key, doc_min_rho, doc_params
from ..design import DesignAudit
from ..varpart.grouped import group_names, group_table, is_grouped, read_group
from ..varpart.result import VarPartResult
from ..varpart.result import stored_keys as result_keys

__all__ = [
    "batch_dominated",
    "batch_metrics_df",
    "beta_df",
    "blups",
    "check_var_names",
    "declared_checks",
    "design",
    "diagnostics",
    "groups",
    "result",
    "result_keys",
    "rho_df",
    "varcorr_df",
    "varpart_df",
]


def check_var_names(
    var_names: pd.Index,
    source: str = "adata.var_names",
    fix: str = "run adata.var_names_make_unique() first",
) -> None:
    """Refuse duplicated gene names: results are stored and looked up by name."""
    if var_names.is_unique:
        return
    dups = var_names[var_names.duplicated()].unique()
    shown = ", ".join(map(repr, dups[:5])) + (f" and {len(dups) - 5} more" if len(dups) > 5 else "")
    raise ValueError(
        f"{source} has {len(dups)} duplicated gene name(s): {shown}. Results are stored and "
        f"looked up by gene name, so every name must be unique: {fix}."
    )


@doc_params(doc_adata=doc_adata_fitted, doc_key=doc_key)
def result(adata: AnnData, *, key: str = "varpart", group: str | None = None) -> VarPartResult:
    """The variance partition stored in ``adata`` under ``key``, as one object.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    group
        For results fitted per group (``groupby=``), the group whose result to return.

    Returns
    -------
    VarPartResult
        The :class:`~scvarpart.varpart.VarPartResult`, with the fractions, variances,
        fixed effects, per-gene fields, errors and the analysis parameters.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, method="REML", progress=False
    ... )
    >>> svp.get.result(adata).summary["n_genes"]
    20
    """
    check_var_names(adata.var_names)
    if is_grouped(adata, key):
        if group is None:
            groupby = adata.uns[key]["params"].get("groupby")
            raise KeyError(
                f"The results under {key!r} were fitted per group of {groupby!r}: read one "
                f"group's with group= (one of {group_names(adata, key)}), or the tables "
                "(svp.get.varpart_df, ...), which stack the groups. Tools that refit a fit "
                "(diagnose, remove_batch_effects, batch_metrics) need a fit of one group's "
                f"cells: variance_partition(adata[adata.obs[{groupby!r}] == group], ...)."
            )
        return read_group(adata, key, group)
    if group is not None:
        raise ValueError(f"The results under {key!r} were not fitted per group (groupby=).")
    return VarPartResult.read(adata, key)


def _stacked(adata: AnnData, key: str, group, table) -> pd.DataFrame:
    """``table(result)``, of one result or of every group's, stacked."""
    if group is not None or not is_grouped(adata, key):
        return table(result(adata, key=key, group=group))
    names = group_names(adata, key)
    parts = {g: table(read_group(adata, key, g)) for g in names}
    if isinstance(next(iter(parts.values())).index, pd.RangeIndex):
        out = pd.concat([p.assign(group=g) for g, p in parts.items()], ignore_index=True)
        out.insert(0, "group", pd.Categorical(out.pop("group"), categories=names))
        return out
    return pd.concat(parts, names=["group"])


@doc_params(doc_key=doc_key)
def groups(adata: AnnData, *, key: str = "varpart") -> pd.DataFrame:
    """The groups of a fit per group (``groupby=``): which were fitted, and why not.

    Parameters
    ----------
    adata
        Annotated data with :func:`scvarpart.tl.variance_partition` results fitted with
        ``groupby=``.
    {doc_key}

    Returns
    -------
    DataFrame
        One row per group: ``group``, ``n_obs``, ``n_genes`` (the genes fitted: for
        pseudobulk data, those the group's filter kept), ``status`` (``"fitted"`` or
        ``"skipped"``), ``reason`` (why it was skipped), ``warnings`` (about its design
        and fit) and ``n_fitted_genes`` (genes with estimates).

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=900, n_genes=5, seed=1)
    >>> adata.obs["cell_type"] = ["B", "T", "NK"] * 300
    >>> svp.tl.variance_partition(
    ...     adata, "~ (1|patient) + (1|chemistry)", groupby="cell_type", progress=False
    ... )
    >>> svp.get.groups(adata)[["group", "n_obs", "status"]]
      group  n_obs  status
    0     B    300  fitted
    1    NK    300  fitted
    2     T    300  fitted
    """
    return group_table(adata, key)


@doc_params(doc_adata=doc_adata_fitted, doc_key=doc_key, doc_group=doc_group)
def varpart_df(
    adata: AnnData,
    *,
    key: str = "varpart",
    genes: str | Sequence[str] | None = None,
    sort_by: str | None = None,
    group: str | None = None,
) -> pd.DataFrame:
    """Variance fractions and variances as a tidy table: one row per gene and component.

    Components come in variancePartition's ``sortCols`` order (by decreasing median
    fraction over the genes, ``"Residual"`` last), the order of every plot.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    {doc_group}
    genes
        Only these genes, in this order (default: all, in ``adata.var_names`` order).
    sort_by
        A component: order the genes by its fraction, largest first (genes without
        estimates last).

    Returns
    -------
    DataFrame
        Columns ``gene``, ``component`` (categorical, in ``sortCols``
        order), ``fraction`` and ``variance``.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, method="REML", progress=False
    ... )
    >>> df = svp.get.varpart_df(adata, sort_by="patient")
    >>> df.columns.tolist()
    ['gene', 'component', 'fraction', 'variance']
    """
    return _stacked(adata, key, group, lambda r: r.long(genes, sort_by))


@doc_params(doc_adata=doc_adata_rho, doc_key=doc_key, doc_group=doc_group)
def rho_df(
    adata: AnnData,
    *,
    key: str = "varpart",
    genes: str | Sequence[str] | None = None,
    sort_by: str | None = "rho",
    group: str | None = None,
) -> pd.DataFrame:
    """The batch-to-signal ratio of each gene, with the parts it is made of.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    {doc_group}
    genes
        Only these genes, in this order (default: all).
    sort_by
        A column to order the genes by, largest first (``None``: ``genes`` order).

    Returns
    -------
    DataFrame
        Indexed by gene, with columns ``rho``, ``batch_variance``,
        ``signal_variance``, ``batch_fraction``, ``signal_fraction`` and
        ``batch_dominated`` (``rho >= 1``, as :func:`batch_dominated` ranks them).

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", method="REML", progress=False,
    ... )
    >>> svp.get.rho_df(adata).columns.tolist()[:3]
    ['rho', 'batch_variance', 'signal_variance']
    """
    return _stacked(adata, key, group, lambda r: r.rho_table(genes, sort_by))


@doc_params(doc_adata=doc_adata_fitted, doc_key=doc_key, doc_group=doc_group)
def beta_df(
    adata: AnnData,
    *,
    key: str = "varpart",
    genes: str | Sequence[str] | None = None,
    group: str | None = None,
) -> pd.DataFrame:
    """Fixed effects with their standard errors, one row per gene and coefficient.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    {doc_group}
    genes
        Only these genes, in this order (default: all).

    Returns
    -------
    DataFrame
        Columns ``gene``, ``coefficient`` (the columns of the
        fixed-effect design, as R names them, e.g. ``"(Intercept)"``, ``"log_umi"``,
        ``"groupB"``), ``estimate`` and ``se`` (lme4's ``fixef`` and
        ``sqrt(diag(vcov))``, given the estimated variances).

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, method="REML", progress=False
    ... )
    >>> svp.get.beta_df(adata).coefficient.unique().tolist()
    ['(Intercept)', 'log_umi']
    """
    return _stacked(adata, key, group, lambda r: r.beta_table(genes))


@doc_params(doc_adata=doc_adata_fitted, doc_key=doc_key, doc_group=doc_group)
def varcorr_df(
    adata: AnnData,
    *,
    key: str = "varpart",
    genes: str | Sequence[str] | None = None,
    group: str | None = None,
) -> pd.DataFrame:
    """Every random term's variances, covariances and correlations, as lme4's ``VarCorr``.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    {doc_group}
    genes
        Only these genes, in this order (default: all).

    Returns
    -------
    DataFrame
        One row per gene and entry, as ``as.data.frame(VarCorr(fit))`` in R: ``gene``,
        ``term``, ``var1``, ``var2`` (empty for a variance), ``vcov`` (the variance or
        covariance) and ``sdcor`` (the standard deviation, or the correlation); the
        residual's row has term ``"Residual"``.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=5, seed=1)
    >>> adata.obs["time"] = adata.obs["log_umi"] - adata.obs["log_umi"].mean()
    >>> svp.tl.variance_partition(
    ...     adata, "~ (1 + time|patient) + (1|chemistry)", method="REML", progress=False
    ... )
    >>> svp.get.varcorr_df(adata, genes="gene0001")[["term", "var1", "var2"]]
            term         var1  var2
    0    patient  (Intercept)
    1    patient         time
    2    patient  (Intercept)  time
    3  chemistry  (Intercept)
    4   Residual
    """
    return _stacked(adata, key, group, lambda r: r.varcorr_table(genes))


@doc_params(doc_adata=doc_adata_fitted, doc_key=doc_key)
def blups(
    adata: AnnData,
    term: str,
    *,
    key: str = "varpart",
    genes: str | Sequence[str] | None = None,
    variance: bool = False,
    group: str | None = None,
) -> pd.DataFrame:
    """The conditional modes (BLUPs) of a random term's effects, genes x levels.

    Stored by ``svp.tl.variance_partition(..., store_blups=True)``: no refit.

    Parameters
    ----------
    {doc_adata}
    term
        The random term, e.g. ``"patient"``.
    {doc_key}
    genes
        Only these genes, in this order (default: all).
    variance
        Return the conditional variances instead (lme4's ``condVar``, given the fixed
        effects).
    group
        For results fitted per group (``groupby=``), the group whose BLUPs to return
        (the levels differ between groups).

    Returns
    -------
    DataFrame
        Genes x levels of the term (``"level|coefficient"`` for a term with random
        slopes), in the genes' units: each level's deviation from the fixed effects.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=5, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, store_blups=True, progress=False
    ... )
    >>> svp.get.blups(adata, "chemistry").shape
    (5, 3)
    """
    res = result(adata, key=key, group=group)
    if not variance:
        return res.blup_table(term, genes)
    res.blup_table(term)  # the same checks and messages
    assert res.blup_var is not None
    return res.blup_var[term].loc[res._genes(genes)]


@doc_params(doc_adata=doc_adata_rho, doc_key=doc_key, doc_min_rho=doc_min_rho, doc_group=doc_group)
def batch_dominated(
    adata: AnnData,
    *,
    key: str = "varpart",
    n_top: int | None = None,
    min_rho: float = 1.0,
    group: str | None = None,
) -> pd.DataFrame:
    """The batch-dominated genes, most batch-dominated first.

    A gene is batch-dominated when its batch-to-signal ratio ``rho`` is at least
    ``min_rho``; these genes are ranked by their batch fraction (the ``batch``
    components' share of the gene's variance), largest first. Ranking by ``rho`` itself
    would put noise first: a gene with no signal variance has ``rho = inf`` however
    little batch variance it has. This is the ranking of ``scvarpart report`` and
    :func:`scvarpart.pl.percent_bars` (see :mod:`scvarpart.varpart.ranking`).

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    {doc_group}
    n_top
        Return only the first ``n_top`` genes (default: all batch-dominated genes).
    {doc_min_rho}

    Returns
    -------
    DataFrame
        Indexed by gene, in rank order, with columns ``batch_fraction``,
        ``signal_fraction`` and ``rho``.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=40, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", method="REML", progress=False,
    ... )
    >>> top = svp.get.batch_dominated(adata, n_top=5)
    >>> top.columns.tolist()
    ['batch_fraction', 'signal_fraction', 'rho']
    """
    return _stacked(adata, key, group, lambda r: r.batch_dominated(min_rho=min_rho, n_top=n_top))


@doc_params(doc_key=doc_key)
def design(adata: AnnData, *, key: str = "varpart", group: str | None = None) -> DesignAudit:
    """The design audit stored under ``key``: its terms, pairs of terms and problems.

    Stored by :func:`scvarpart.pp.check_design` and by every
    :func:`scvarpart.tl.variance_partition` fit.

    Parameters
    ----------
    adata
        Annotated data after :func:`~scvarpart.pp.check_design` or a fit.
    {doc_key}
    group
        For results fitted per group (``groupby=``), the group whose design to return.

    Returns
    -------
    DesignAudit
        ``terms`` and ``pairs`` (DataFrames), ``errors``, ``warnings``, ``ok``;
        ``print()`` shows it as a table.

    Raises
    ------
    KeyError
        When nothing under ``key`` holds an audit, saying how to make one.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=5, seed=1)
    >>> svp.pp.check_design(adata, svp.datasets.EXAMPLE_FORMULA, show=False)
    >>> pairs = svp.get.design(adata).pairs
    >>> pairs.loc[pairs["relation"] != "", ["term", "other", "relation"]].head(3)
           term      other           relation
    0   patient  chemistry  partially crossed
    1   patient        day  partially crossed
    2   patient   operator  partially crossed
    """
    if is_grouped(adata, key) or group is not None:
        audit = result(adata, key=key, group=group).design
        assert audit is not None  # every fit stores its design
        return audit
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping) or "design" not in entry:
        raise KeyError(
            f"No design audit under key {key!r}: run svp.pp.check_design(adata, formula, "
            f"key_added={key!r}) or svp.tl.variance_partition(..., key_added={key!r})."
        )
    return DesignAudit.from_dict(entry["design"])


def diagnostics(
    adata: AnnData, table: str = "influence", *, key: str = "varpart_diagnostics"
) -> pd.DataFrame:
    """A table of :func:`scvarpart.tl.diagnose`: ``"influence"``, ``"blups"`` or ``"residuals"``.

    Parameters
    ----------
    adata
        Annotated data after :func:`~scvarpart.tl.diagnose`.
    table
        ``"influence"``: one row per gene and left-out level (``gene``, ``term``,
        ``level``, each component's fraction, ``rho``). ``"blups"``: one row per gene, term
        and level (``blup``, ``cond_var``, ``std_blup``). ``"residuals"``: one row per gene
        and grouping factor (``bartlett``, ``pvalue``, ``var_ratio``).
    key
        Where the diagnostics were stored (``key_added`` of the call).

    Returns
    -------
    DataFrame
        A copy: changing it changes nothing stored.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=800, n_genes=2, seed=1)
    >>> svp.tl.variance_partition(adata, svp.datasets.EXAMPLE_FORMULA, progress=False)
    >>> svp.tl.diagnose(adata, leave_out="chemistry")
    >>> svp.get.diagnostics(adata, "influence")[["gene", "term", "level"]].head(3)
           gene       term  level
    0  gene0001  chemistry  3p_v2
    1  gene0002  chemistry  3p_v2
    2  gene0001  chemistry  5p_v2
    """
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping) or "blups" not in entry:
        raise KeyError(
            f"No diagnostics under adata.uns[{key!r}]: run svp.tl.diagnose(adata) first "
            "(or pass its key_added as key=)."
        )
    if table not in ("influence", "blups", "residuals"):
        raise ValueError(f"table must be 'influence', 'blups' or 'residuals', got {table!r}.")
    return pd.DataFrame(entry[table]).copy()


def batch_metrics_df(
    adata: AnnData, table: str = "embedding", *, key: str = "batch_metrics"
) -> pd.DataFrame:
    """A table of :func:`scvarpart.tl.batch_metrics`: ``"embedding"`` or ``"genes"``.

    Parameters
    ----------
    adata
        Annotated data after :func:`~scvarpart.tl.batch_metrics`.
    table
        ``"embedding"``: one row per metric and variable (``metric``, ``variable``,
        ``before``, ``after``, ``better``, ``chance``, ``role``). ``"genes"``: one row per
        gene, its batch and signal fractions, ``rho`` and signal variance before and after,
        and whether it lost signal (``gene`` as a column).
    key
        Where the metrics were stored (``key_added`` of the call).

    Returns
    -------
    DataFrame
        A copy: changing it changes nothing stored.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=600, n_genes=12, seed=1)
    >>> svp.tl.remove_batch_effects(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, terms=["chemistry", "day", "operator"],
    ...     signal="patient", progress=False,
    ... )
    >>> svp.tl.batch_metrics(adata, n_comps=8)
    >>> svp.get.batch_metrics_df(adata, "genes").columns[:3].tolist()
    ['gene', 'batch_before', 'batch_after']
    """
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping) or "embedding" not in entry:
        raise KeyError(
            f"No batch metrics under adata.uns[{key!r}]: run svp.tl.batch_metrics(adata) "
            "first (or pass its key_added as key=)."
        )
    if table not in ("embedding", "genes"):
        raise ValueError(f"table must be 'embedding' or 'genes', got {table!r}.")
    if table not in entry:
        raise KeyError(
            f"adata.uns[{key!r}] has no per-gene comparison: batch_metrics compares genes when "
            "adata holds a variance partition under key= and after= is a layer."
        )
    frame = pd.DataFrame(entry[table]).copy()
    if table == "genes":
        frame = frame.rename_axis("gene").reset_index()
    return frame


# The diagnostics' per-gene flags: the plan's threshold key, the var column's suffix, text.
_FLAGS = (
    ("max_std_blup", "max_std_blup", "a standardised BLUP beyond +-{}"),
    ("max_var_ratio", "max_var_ratio", "residual variances across a factor's levels over {}x"),
    ("max_change", "max_change", "batch fraction moved by more than {} without one level"),
)


def declared_checks(adata, res, key: str, top: int) -> list[str]:
    """The plan's declared checks: each one, whether it ran, and what it found."""
    checks = res.params.get("checks")
    if not checks:
        return []
    lines = ["", "declared checks (the plan's [checks]):"]
    level = res.params.get("ci")
    ran = res.ci_low is not None
    lines.append(
        "  intervals of the fractions and rho: "
        + (f"ran (level {level})" if ran else 'not run (ci = "none")')
    )
    fdr = float(checks.get("fdr", 0.05))
    if res.qvalue is not None:
        counts = ", ".join(f"{t} {int((res.qvalue[t] < fdr).sum())}" for t in res.qvalue)
        lines.append(f"  likelihood-ratio tests: ran; genes with q < {fdr:g}: {counts}")
    else:
        lines.append('  likelihood-ratio tests: not run (the plan has no test = "lrt")')
    if not checks.get("diagnose"):
        lines.append("  diagnostics: not declared (checks.diagnose = false)")
        return lines
    added = f"{key}_diagnostics"
    if added not in adata.uns:
        lines.append(f"  diagnostics: declared but NOT run (nothing under uns[{added!r}])")
        return lines
    lines.append(f"  diagnostics: ran on {len(adata.uns[added]['params']['genes'])} genes")
    for threshold, suffix, text in _FLAGS:
        column = f"{added}_{suffix}"
        limit = float(checks[threshold])
        if column not in adata.var:
            lines.append(f"    {text.format(limit)}: not run")
            continue
        values = adata.var[column]
        flagged = values[values > limit].sort_values(ascending=False)
        shown = ", ".join(map(str, flagged.index[:top]))
        lines.append(
            f"    {text.format(limit)}: {len(flagged)} genes" + (f" ({shown})" if shown else "")
        )
    return lines
