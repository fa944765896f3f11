"""``svp.pp.check_design``: what the design lets the model estimate, before any fit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData

from .._cells import cell_filter
from .._docs import doc_cells, doc_covariance, doc_formula, doc_key_added, doc_params, doc_weights
from ..design import DesignAudit, audit_design, build_design

__all__ = ["check_design"]


@doc_params(
    doc_formula=doc_formula,
    doc_cells=doc_cells,
    doc_weights=doc_weights,
    doc_covariance=doc_covariance,
    doc_key_added=doc_key_added,
)
def check_design(
    adata: AnnData,
    formula: str,
    *,
    cells: Mapping[str, Sequence] | None = None,
    weights: str | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    few_levels: int = 5,
    key_added: str = "varpart",
    show: bool = True,
    inplace: bool = True,
) -> DesignAudit | None:
    """Audit the design of a model: what it can separate, and how well.

    Reads only ``adata.obs``. Per model term: its levels and cells per level (and
    levels with a single cell). Per pair of terms: crossed, partially crossed,
    nested, confounded, or a fixed term within a grouping factor's levels, with
    their association (canonical correlation, as variancePartition's
    ``canCorPairs``; Cramér's V for two factors). Then the *errors*, components the
    design cannot separate (each naming the terms and the fix; such a model cannot be
    fitted), and the *warnings*, components it separates only weakly (a random
    factor with fewer than ``few_levels`` levels; a nested factor with a single level
    in most levels of the outer one; a factor whose levels mostly have one cell).
    :func:`~scvarpart.tl.variance_partition` runs the same audit, warns about what it
    finds and stores it with its results.

    Parameters
    ----------
    adata
        Annotated data; its ``obs`` holds the design.
    {doc_formula}
    {doc_cells}
    {doc_weights}
    {doc_covariance}
    few_levels
        A random factor with fewer levels gets a warning.
    {doc_key_added}
    show
        Print the audit as a table.
    inplace
        Store the audit in ``adata.uns[key_added]["design"]`` (where a fit under
        ``key_added`` stores its own) and return ``None``; otherwise return it.

    Returns
    -------
    With ``inplace=False``, the :class:`~scvarpart.design.DesignAudit` (``terms``
    and ``pairs`` tables, ``errors``, ``warnings``, ``ok``; ``print()`` shows it).

    Raises
    ------
    DesignError
        Where the model cannot even be built: a missing column, no random term, no
        intercept, a slope covariate constant within every level, a bad ``K`` or bad
        weights.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> audit = svp.pp.check_design(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, show=False, inplace=False
    ... )
    >>> audit.ok, int(audit.terms.loc["chemistry", "levels"])
    (True, 3)
    >>> audit.warnings[0][:40]
    "'chemistry' has 3 levels: its variance i"
    """
    if few_levels < 2:
        raise ValueError(f"few_levels={few_levels!r} must be at least 2.")
    design = build_design(
        formula,
        adata.obs,
        rows=cell_filter(adata.obs, cells),
        check=False,  # every problem is listed, not only the first
        weights=weights,
        covariance=covariance,
    )
    audit = audit_design(design, few_levels=few_levels)
    if show:
        print(audit.to_text())
    if not inplace:
        return audit
    entry = adata.uns.get(key_added)
    if entry is None:
        adata.uns[key_added] = {"design": audit.to_dict()}
    else:
        entry["design"] = audit.to_dict()
    return None
