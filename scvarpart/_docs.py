"""Parameter descriptions shared by several public functions, written once.

As scanpy's ``_docs.py``: a docstring names a fragment as ``{doc_layer}`` in its
Parameters section and :func:`doc_params` fills it in (see its example), so that
``layer=`` means the same, in the same words, wherever it is accepted.

Each fragment holds whole entries (the parameter's name, then its description indented
by four spaces), with no indentation of its own: :func:`doc_params` removes the
docstring's indentation before filling them in.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "doc_adata",
    "doc_adata_fitted",
    "doc_adata_rho",
    "doc_batch_signal",
    "doc_batch_size",
    "doc_cells",
    "doc_dataset_size",
    "doc_formula",
    "doc_key",
    "doc_key_added",
    "doc_layer",
    "doc_layer_use_raw_fitted",
    "doc_method",
    "doc_min_cells",
    "doc_min_rho",
    "doc_n_jobs",
    "doc_params",
    "doc_progress",
    "doc_show_save",
    "doc_show_save_ax",
    "doc_use_raw",
]

# --- the data -------------------------------------------------------------------------

doc_adata = """\
adata
    Annotated data matrix, cells x genes, with log-normalised expression: in
    memory (dense or sparse), opened in backed mode (``read_h5ad(path,
    backed="r")``: read one block of cells at a time), or with a Dask array
    as ``X`` or layer (the pass over the data runs on the active Dask
    scheduler, e.g. a ``dask.distributed`` cluster)."""

doc_adata_fitted = """\
adata
    Annotated data with the results of :func:`scvarpart.tl.variance_partition`."""

doc_adata_rho = """\
adata
    Annotated data with the results of :func:`scvarpart.tl.variance_partition`,
    run with ``batch=`` and ``signal=``."""

doc_layer = """\
layer
    Use ``adata.layers[layer]`` instead of ``adata.X``."""

doc_use_raw = """\
use_raw
    Use ``adata.raw.X`` (the genes of ``adata.var_names``)."""

doc_layer_use_raw_fitted = """\
layer, use_raw
    Where the expression values are; by default where the fit read them."""

doc_cells = """\
cells
    Model only the cells whose ``obs`` values are among these, per column,
    e.g. ``{"qc": ["pass"], "tissue": ["blood", "marrow"]}``."""

doc_min_cells = """\
min_cells
    Genes non-zero in fewer cells are not fitted (NaN results, with the
    reason in ``uns[key_added]["errors"]``)."""

# --- the model ------------------------------------------------------------------------

doc_formula = """\
formula
    Model in lme4 syntax, e.g. ``"~ log_umi + (1|patient) + (1|chemistry)"``.
    Random intercepts ``(1|g)``, interactions ``(1|a:b)`` and nesting
    ``(1|a/b)`` of ``adata.obs`` columns; correlated random slopes of numeric
    columns ``(1 + time|patient)``, ``(0 + time|patient)``, uncorrelated
    ``(time||patient)``; fixed effects may be continuous or categorical columns,
    with ``a:b`` and ``a*b`` interactions. An intercept is required."""

doc_weights = """weights
    Observation weights (lme4's ``weights=``): the residual variance of observation
    ``i`` is ``sigma^2 / w_i``, and the residual component is ``sigma^2`` times the mean of
    ``1 / w``. Either an ``obs`` column, weights shared by every gene (such as the number
    of cells of a pseudobulk sample; the fast path: the weighted cross-products are
    computed once), or a layer of one weight per observation and gene (precision weights
    from :func:`scvarpart.pp.voom_weights`): each gene is then fitted from its own
    weighted statistics, exactly as ``lmer(weights=)`` fits it (for pseudobulk data;
    about 10-30 ms per gene)."""

doc_covariance = """covariance
    Known covariances between the levels of random intercepts, e.g.
    ``{"donor": K}`` with ``K`` a donors x donors kinship (genetic relationship)
    DataFrame indexed by donor: the donor effects are ``b ~ N(0, sigma_d^2 K)``,
    lme4qtl's ``relmatLmer`` model (``relmatGlmer``'s for a count family). ``K`` must be
    symmetric, positive semi-definite (positive definite for a count family) and have
    every modelled level."""

doc_method = """\
method
    ``"ML"`` (maximum likelihood, variancePartition's default) or ``"REML"``."""

doc_count_model = """\
family
    ``"gaussian"``: the linear mixed model of log-normalised values. ``"nb"`` or
    ``"poisson"``: a negative binomial (glmmTMB's ``nbinom2``, its dispersion estimated
    per gene) or Poisson mixed model of the raw counts (pass ``layer="counts"``), log
    link, fitted by the Laplace approximation of the likelihood (lme4's ``glmer`` with
    ``nAGQ = 1``, glmmTMB); random intercepts, with independent levels or a known
    covariance between them (``covariance=``), no slopes. The components are then on the
    latent (log) scale (Nakagawa & Schielzeth 2010, 2017): each random term's variance,
    each fixed term's, and as ``"Residual"`` the distribution-specific variance of
    ``approximation`` (:mod:`scvarpart.glmm.latent`).
offset
    With a count family: an ``obs`` column of each cell's log size factor. By default
    the log of each cell's library size, its total count over every gene of the
    matrix fitted (``params["offset"]`` is then ``"log_library_size"``).
approximation
    With a count family, the distribution-specific variance: ``"lognormal"``,
    ``ln(1 + 1/lambda + 1/phi)`` (the default: it stays moderate for sparse genes),
    or ``"trigamma"``, ``psi_1(1 / (1/lambda + 1/phi))``. Both are stored per gene
    (``varm[f"{key_added}_distribution"]``), with the NB size ``phi``
    (``var[f"{key_added}_dispersion"]``) and ``lambda`` (``var[f"{key_added}_lambda"]``)."""

doc_batch_signal = """\
batch
    Components that are technical (e.g. ``["chemistry", "day"]``).
signal
    Components that are biological (e.g. ``["patient"]``). ``rho`` is
    computed when both ``batch`` and ``signal`` are given."""

doc_min_rho = """\
min_rho
    Smallest ``rho`` of a batch-dominated gene (1: at least as much batch as signal
    variance)."""

# --- where results go and come from ---------------------------------------------------

doc_key_added = """\
key_added
    Prefix of the result keys."""

doc_key = """\
key
    The results' ``key_added``."""

doc_group = """\
group
    Results fitted per group (``groupby=``): this group's only. ``None``: every fitted
    group's, stacked (a leading ``group`` column, or a ``group`` level of the index)."""

# --- execution ------------------------------------------------------------------------

doc_n_jobs = """\
n_jobs
    Parallel workers (joblib, threads by default: the compiled fits release
    the GIL) for the pass over the data and for the fits; -1 for every core.
    Any joblib backend can be chosen with ``joblib.parallel_config``, e.g.
    ``"loky"`` or ``"dask"``. Results do not depend on it."""

doc_dataset_size = """\
n_cells
    Number of cells.
n_genes
    Number of genes.
seed
    Seed of the random generator: the same seed gives the same data."""

doc_batch_size = """\
batch_size
    Genes fitted in one compiled call (the unit of parallel work)."""

doc_progress = """\
progress
    Show progress bars (after two seconds) for the pass and the fits. By
    default they follow scanpy's verbosity: shown unless it is 0 (errors)."""

# --- plots ----------------------------------------------------------------------------

doc_show_save = """\
show
    Show the figure (scanpy's ``settings.autoshow`` by default); with
    ``False`` the Axes are returned.
save
    Save the figure as scanpy does: ``True`` or a file name suffix, into
    ``sc.settings.figdir`` as the plot's name followed by the suffix (with
    ``save="_ml.pdf"``, :func:`~scvarpart.pl.variance_partition` writes
    ``variance_partition_ml.pdf``)."""

doc_show_save_ax = f"""\
ax
    Axes to draw into; a new figure otherwise.
{doc_show_save}"""

# --- the decorator --------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(doc_[A-Za-z0-9_]+)\}")

F = TypeVar("F", bound=Callable)


def doc_params(**fragments: str) -> Callable[[F], F]:
    """Fill ``{doc_...}`` placeholders of a docstring with shared descriptions.

    Parameters
    ----------
    **fragments
        Placeholder name -> text, usually the fragments of this module
        (``doc_layer=doc_layer``).

    Returns
    -------
    A decorator that replaces the function's ``__doc__``. Only ``{doc_...}``
    placeholders are replaced, so other braces in a docstring (``f"{key}_rho"``, a
    dict in an example) need no escaping.

    Raises
    ------
    KeyError
        When the docstring names a placeholder that was not given: a misspelt name
        would otherwise be published as is.

    Examples
    --------
    >>> @doc_params(doc_key=doc_key)
    ... def table(adata, *, key="varpart"):
    ...     '''A table of the results.
    ...
    ...     Parameters
    ...     ----------
    ...     {doc_key}
    ...     '''
    >>> table.__doc__.splitlines()[-2:]
    ['key', "    The results' ``key_added``."]
    """

    def decorate(obj: F) -> F:
        if obj.__doc__ is None:
            return obj
        text = inspect.cleandoc(obj.__doc__)
        missing = sorted(set(_PLACEHOLDER.findall(text)) - set(fragments))
        if missing:
            raise KeyError(f"{obj.__qualname__}: no fragment given for {missing}")
        obj.__doc__ = _PLACEHOLDER.sub(lambda m: fragments[m.group(1)], text)
        return obj

    return decorate
