"""``scvarpart fit``: the variance partition of a file, whole or one chunk of genes."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import __version__
from .._io import (
    _is_zarr,
    check_input,
    check_output,
    read_var,
    reading,
    write_h5ad_atomic,
    write_results_file,
)
from .._names import as_names
from ..plan import (
    BOOTSTRAP_DEFAULTS,
    BOOTSTRAP_KEYS,
    AnalysisPlan,
    PlanError,
    bootstrap_problem,
    read_plan,
)
from ..provenance import file_fingerprint, params_fingerprint
from ._common import EXIT_CODES, CLIError, add_output, quiet_logging

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


__all__ = ["CHUNK_KEY", "add_parsers", "chunk_bounds"]

#: uns key of a chunk file's provenance.
CHUNK_KEY = "scvarpart_chunk"

_EXAMPLES = """examples:
  scvarpart fit cells.h5ad --formula "~ log_umi + (1|patient) + (1|chemistry) + (1|day)" \\
      --batch chemistry,day --signal patient -o cells.varpart.h5ad
  scvarpart fit cells.h5ad --plan plan.toml --n-jobs 8 -o cells.varpart.h5ad
  scvarpart fit cells.h5ad --plan plan.toml --genes 3/10 -o chunk3.h5ad   # then: merge
  scvarpart fit cells.h5ad --formula "~ log_umi + (1|donor) + (1|day)" --weights w \\
      --covariance donor=kinship.csv --store-blups -o cells.varpart.h5ad
  scvarpart fit cells.h5ad --plan plan.toml --test lrt -o cells.varpart.h5ad
  scvarpart fit cells.h5ad --plan plan.toml --n-boot 200 --seed 1 -o cells.varpart.h5ad

covariance files: .csv (comma-separated) or .tsv/.txt (tab-separated), optionally
gzipped; a square matrix with a header row of level names and the level names as first
column. Each file's fingerprint is recorded with the results, as the input's is.

with --plan: the plan fixes the options it sets; --weights, --covariance TERM=PATH,
--store-blups, --test, --n-boot, --seed and --ci may complete a plan that does not set
them (the plan's SHA-256, the options and the covariance files' fingerprints are all
recorded).

--test lrt: per gene and random term, the likelihood-ratio test of the term's
variance = 0 (varm KEY_lrt, KEY_pvalue, KEY_qvalue); random intercepts and terms with
a known covariance only. Chunks are merged with their q-values adjusted over all genes.

--n-boot N: per gene, N parametric bootstrap replicates simulated from the fitted model
(from the sufficient statistics: no cell is read again) and refitted; percentile
intervals at level --ci (default 0.95) of the fractions (varm KEY_boot_low,
KEY_boot_high) and of rho (var KEY_rho_boot_low, KEY_rho_boot_high). A gene's
replicates depend on --seed (default 0) and its name only: chunks merge into the single
fit bit for bit. --seed and --ci need replicates (--n-boot, or n_boot in the plan).

"""

_MODEL_OPTIONS = (
    "formula", "batch", "signal", "method", "family", "offset", "approximation", "layer",
    "use_raw", "key", "min_cells",
)  # fmt: skip


class _CovarianceSource(NamedTuple):
    """Where a term's covariance file comes from, to name it in errors."""

    path: Path
    origin: str  # "--covariance donor=k.csv" or "The plan p.toml, [covariance] donor"
    from_plan: bool

    @property
    def described(self) -> str:
        """The option, or the file and the plan's key: what the user wrote."""
        return f"{self.origin} ({self.path})" if self.from_plan else self.origin


def _names(text: str) -> list[str]:
    """A comma-separated option value as a list of names (argparse type)."""
    names = as_names(text, "the option", split=True)
    if not names:
        raise argparse.ArgumentTypeError("give one or more comma-separated names")
    return names


def _column(text: str) -> str:
    """An obs column name (argparse type): not empty, which would mean no weights."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give the name of an obs column")
    return text


def _bootstrap_value(key: str, convert):
    """An argparse type for the bootstrap's parameter ``key``, checked as the plan's."""

    def parse(text: str):
        if key == "ci" and text.lower() == "none":
            return "none"
        try:
            value = convert(text)
        except ValueError:
            value = text
        problem = bootstrap_problem(key, value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}; got {text!r}")
        return value

    return parse


def _chunk(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 3/10), got {text!r}") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"chunk {i}/{n}: need 1 <= I <= N")
    return i, n


def _cells(entries: list[str] | None) -> dict[str, list[str]] | None:
    if not entries:
        return None
    out: dict[str, list[str]] = {}
    for entry in entries:
        column, sep, values = entry.partition("=")
        if not sep or not column or not values:
            raise CLIError(f"--cells expects COLUMN=VALUE[,VALUE...], got {entry!r}", code=2)
        out[column] = _names(values)
    return out


def _covariance_options(entries: list[str] | None) -> dict[str, Path]:
    """``--covariance TERM=PATH`` options as term -> path."""
    out: dict[str, Path] = {}
    for entry in entries or ():
        term, sep, path = entry.partition("=")
        term, path = term.strip(), path.strip()
        if not sep or not term or not path:
            raise CLIError(
                f"--covariance expects TERM=PATH (e.g. donor=kinship.csv), got {entry!r}", code=2
            )
        if term in out:
            raise CLIError(f"--covariance {term}=...: given twice; one file per term.", code=2)
        out[term] = Path(path)
    return out


def chunk_bounds(n_genes: int, n_chunks: int) -> np.ndarray:
    """Gene boundaries of ``n_chunks`` contiguous chunks of sizes differing by <= 1."""
    import numpy as np

    return np.array([n_genes * j // n_chunks for j in range(n_chunks + 1)])


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="fit every gene of a file (or one chunk of its genes)",
        description=(
            "Fit the linear mixed model of the formula (or of a pre-registered plan) to every "
            "gene of an .h5ad file or .zarr store, as svp.tl.variance_partition does, reading "
            "the cells block by block. The output is a copy of the input with the results "
            "added; with --genes I/N only the I-th of N chunks of genes is fitted and a small "
            "chunk file is written, to be combined by 'scvarpart merge'. The input is never "
            "modified; outputs are written to a temporary file and renamed into place."
        ),
        epilog=_EXAMPLES + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input", help="log-normalised expression (raw counts with --family nb or poisson): "
        ".h5ad file or .zarr store",
    )  # fmt: skip
    model = p.add_argument_group("the analysis (from --plan, or from these options)")
    model.add_argument(
        "--plan",
        metavar="PLAN",
        help="pre-registered analysis plan (.toml or .yaml) fixing the options below; its "
        "SHA-256 is recorded with the results",
    )
    model.add_argument("--formula", help='lme4 formula, e.g. "~ log_umi + (1|patient)"')
    model.add_argument("--batch", type=_names, metavar="A,B", help="technical components")
    model.add_argument("--signal", type=_names, metavar="A,B", help="biological components")
    model.add_argument("--method", type=str.upper, choices=["ML", "REML"], help="default ML")
    model.add_argument(
        "--family", choices=["gaussian", "poisson", "nb"],
        help="gaussian (log-normalised values, the default), or a count model of raw counts "
        "(with --layer counts): nb or poisson",
    )  # fmt: skip
    model.add_argument(
        "--offset", metavar="COLUMN",
        help="with a count family: obs column of log size factors (default: log library size)",
    )  # fmt: skip
    model.add_argument(
        "--approximation", choices=["lognormal", "trigamma"],
        help="with a count family: the distribution-specific variance (default lognormal)",
    )  # fmt: skip
    model.add_argument("--layer", help="use this layer instead of X")
    model.add_argument("--use-raw", action="store_true", default=None, help="use raw.X")
    model.add_argument("--key", metavar="KEY", help="prefix of the result keys (default varpart)")
    model.add_argument(
        "--min-cells", type=int, metavar="N", help="do not fit genes non-zero in fewer cells"
    )
    model.add_argument(
        "--cells",
        action="append",
        metavar="COLUMN=V1,V2",
        help="model only cells whose obs COLUMN is one of the values (repeatable)",
    )
    model.add_argument(
        "--weights",
        type=_column,
        metavar="COLUMN",
        help="obs column (shared by every gene) or layer (one per cell and gene, e.g. from "
        "svp.pp.voom_weights) of positive observation weights (residual variance sigma^2 / w, "
        "as lme4's weights=)",
    )
    model.add_argument(
        "--covariance",
        action="append",
        metavar="TERM=PATH",
        help="known covariance between the levels of random intercept TERM, e.g. a donor "
        "kinship matrix: a square .csv/.tsv file with level names as header and first "
        "column (repeatable, one per term)",
    )
    model.add_argument(
        "--store-blups",
        action="store_true",
        default=None,
        help="also store every random term's BLUPs and conditional variances "
        "(varm KEY_blup_TERM, KEY_blupvar_TERM; read with svp.get.blups)",
    )
    model.add_argument(
        "--test",
        choices=["lrt"],
        help="lrt: per gene, the likelihood-ratio test of each random term's variance = 0 "
        "(varm KEY_lrt, KEY_pvalue, KEY_qvalue: statistic, p-value of the mixture of 0 "
        "and chi-squared(1) with the design's weight of 0, Benjamini-Hochberg q-value over "
        "the genes); a term with slopes for its last coefficient (the 50:50 "
        "chi-squared(r-1)/(r) mixture)",
    )
    model.add_argument(
        "--n-boot",
        type=_bootstrap_value("n_boot", int),
        metavar="N",
        help="parametric bootstrap replicates per gene (0: none, else at least 20; hundreds "
        "for 95%% intervals): percentile intervals of the fractions (varm KEY_boot_low, "
        "KEY_boot_high) and of rho (var KEY_rho_boot_low, KEY_rho_boot_high)",
    )
    model.add_argument(
        "--seed",
        type=_bootstrap_value("seed", int),
        metavar="S",
        help="the bootstrap's seed (default 0): with its name, it fixes each gene's "
        "replicates (whatever the other genes, chunks or threads)",
    )
    model.add_argument(
        "--ci",
        type=_bootstrap_value("ci", float),
        metavar="LEVEL",
        help="level of the intervals (default 0.95; 'none': none): per gene, standard "
        "errors of the variances (varm KEY_variance_se) and intervals of the fractions "
        "(varm KEY_ci_low, KEY_ci_high) and of rho (var KEY_rho_ci_low, KEY_rho_ci_high), "
        "and the bootstrap's",
    )
    model.add_argument(
        "--groupby",
        type=_column,
        metavar="COLUMN",
        help="fit each group of this obs column (a cell type) on its own, as "
        "svp.tl.variance_partition(groupby=); pseudobulk data are fitted on each group's "
        "expressed genes",
    )
    execution = p.add_argument_group("execution (the results do not depend on these)")
    execution.add_argument(
        "--genes", type=_chunk, metavar="I/N", help="fit only the I-th of N chunks of genes"
    )
    execution.add_argument(
        "--group",
        metavar="NAME",
        help="with --groupby: fit only this group (and --genes I/N of its genes) into a "
        "chunk file for 'scvarpart merge' ('scvarpart groups' lists them)",
    )
    execution.add_argument("--n-jobs", type=int, default=1, metavar="N", help="threads (default 1)")
    execution.add_argument("--chunk-size", type=int, metavar="CELLS", help="cells read per block")
    execution.add_argument("--dask", action="store_true", help="read the cells as a Dask graph")
    execution.add_argument("--quiet", action="store_true", help="no progress bars or log messages")
    add_output(p, "output: a copy of the input with results (.h5ad/.zarr), or a chunk file")
    p.set_defaults(func=run)


def _analysis(args: argparse.Namespace) -> tuple[dict, dict, dict[str, _CovarianceSource]]:
    """The analysis parameters, the plan's record and where each covariance comes from.

    From the plan or the options. A plan fixes every key it sets: the options of those
    keys are refused. ``--weights``, ``--covariance`` (per term), ``--store-blups``,
    ``--test``, ``--n-boot``, ``--seed`` and ``--ci`` may complete a plan that does not
    set them, so that a workflow can stage a kinship file and pass it to a
    pre-registered plan; they are recorded as the plan is. ``test`` is among the
    parameters only when a test is asked for, ``n_boot`` and ``seed`` only with
    bootstrap replicates, ``ci`` unless no intervals (as the fit records them).
    """
    given = [o for o in _MODEL_OPTIONS if getattr(args, o) is not None] + (
        ["cells"] if args.cells else []
    )
    options = _covariance_options(args.covariance)
    sources = {
        term: _CovarianceSource(path, f"--covariance {term}={path}", False)
        for term, path in options.items()
    }
    if args.plan:
        if given:
            listing = ", ".join("--" + o.replace("_", "-") for o in given)
            raise CLIError(f"{listing}: fixed by the plan {args.plan}; remove them.", code=2)
        plan = read_plan(args.plan)
        analysis = plan.as_kwargs(read_covariance=False)
        fixed = [
            option
            for option, by_plan in (
                ("--weights", args.weights is not None and plan.weights is not None),
                ("--store-blups", args.store_blups is not None and plan.store_blups is not None),
                ("--test", args.test is not None and plan.test is not None),
                *((f"--covariance {t}=...", t in (plan.covariance or {})) for t in options),
            )
            if by_plan
        ]
        fixed += [
            f"--{key.replace('_', '-')}"
            for key in BOOTSTRAP_KEYS
            if getattr(args, key) is not None and getattr(plan, key) is not None
        ]
        if fixed:
            raise CLIError(
                f"{', '.join(fixed)}: fixed by the plan {args.plan}; remove them.", code=2
            )
        for term, file in (plan.covariance or {}).items():
            origin = f"The plan {args.plan}, [covariance] {term}"
            sources[term] = _CovarianceSource(Path(file), origin, True)
        if args.weights is not None:
            analysis["weights"] = args.weights
        if args.store_blups:
            analysis["store_blups"] = True
        if args.test is not None:
            analysis["test"] = args.test
        analysis.pop("ci", None)  # the level (if any) comes with the bootstrap's parameters
        analysis.update(_bootstrap(args, plan))  # the plan's, completed by the options
        record: dict[str, Any] = {"plan": Path(plan.path).name, "plan_sha256": plan.sha256}
        if plan.checks is not None:  # uns holds no None
            record["checks"] = {k: v for k, v in plan.checks.items() if v is not None}
        return analysis, record, sources
    if args.formula is None:
        raise CLIError("give the model: --formula (and --batch, --signal...) or --plan", code=2)
    analysis = {
        "formula": args.formula,
        "method": args.method or "ML",
        "batch": args.batch,
        "signal": args.signal,
        "layer": args.layer,
        "use_raw": bool(args.use_raw),
        "key_added": args.key or "varpart",
        "min_cells": args.min_cells or 0,
        "cells": _cells(args.cells),
        "weights": args.weights,
        **_count_model(args),
        "store_blups": bool(args.store_blups),
        **({"test": args.test} if args.test else {}),
        **_bootstrap(args, None),
    }
    return analysis, {"plan": None, "plan_sha256": None}, sources


def _count_model(args: argparse.Namespace) -> dict:
    """``family``, ``offset`` and ``approximation`` of a count model (empty for gaussian)."""
    family = args.family or "gaussian"
    if family == "gaussian":
        if args.offset is not None or args.approximation is not None:
            raise CLIError(
                "--offset and --approximation are for count models: add --family nb (or "
                "poisson) and --layer counts.",
                code=2,
            )
        return {}
    return {
        "family": family, "offset": args.offset,
        "approximation": args.approximation or "lognormal",
    }  # fmt: skip


def _bootstrap(args: argparse.Namespace, plan: AnalysisPlan | None) -> dict:
    """The intervals' level and the bootstrap's parameters, as the fit records them.

    ``ci`` (absent for no intervals), and ``n_boot`` and ``seed`` with replicates, their
    defaults filled in, from the options and the plan (which never set the same one).

    ``--seed`` without replicates would do nothing: refused (a plan's ``seed`` without
    ``n_boot`` is not, so that ``--n-boot`` may complete a plan that fixes it).
    """
    given = {k: getattr(args, k) for k in BOOTSTRAP_KEYS if getattr(args, k) is not None}
    values = {k: given.get(k, getattr(plan, k, None)) for k in BOOTSTRAP_KEYS}
    ci = values["ci"]
    level = {} if ci == "none" else {"ci": BOOTSTRAP_DEFAULTS["ci"] if ci is None else ci}
    if not values["n_boot"]:
        if "seed" in given:
            if plan is not None and plan.n_boot is not None:
                fix = f"the plan {args.plan} sets n_boot = {plan.n_boot}: remove it"
            else:
                where = f" or n_boot in the plan {args.plan}" if plan is not None else ""
                fix = f"give --n-boot N (at least 20){where}, or remove it"
            raise CLIError(
                f"--seed: used only with bootstrap replicates, and none are asked for; {fix}.",
                code=2,
            )
        return level
    if not level:
        raise CLIError(
            'bootstrap replicates need the intervals\' level: --ci none (or ci = "none" '
            "in the plan) leaves none; give a level or no replicates.",
            code=2,
        )
    seed = BOOTSTRAP_DEFAULTS["seed"] if values["seed"] is None else values["seed"]
    return {"n_boot": values["n_boot"], "seed": seed, **level}


def _read_covariance(sources: Mapping[str, _CovarianceSource]) -> dict[str, pd.DataFrame] | None:
    """Every covariance file, read and checked for its layout before any data are read.

    A file of the plan is a PlanError, of an option a CLIError: both name the file, the
    term and the fix, and exit with code 3.
    """
    if not sources:
        return None
    from .._io import InputError, read_covariance_file

    out = {}
    for term, source in sources.items():
        try:
            out[term] = read_covariance_file(source.path)
        except InputError as err:
            message = f"{source.origin}: {err}"
            raise (PlanError(message) if source.from_plan else CLIError(message)) from None
    return out


@contextmanager
def _naming_covariance_files(sources: Mapping[str, _CovarianceSource]) -> Iterator[None]:
    """Name the file in the design's errors about a covariance (not symmetric, ...).

    The design checks the matrices (symmetric, positive semi-definite, every modelled
    level present) and names them ``covariance['donor']``; on the command line the
    user knows them by their files. The error stays a ValueError: exit code 3, as every
    other error of the model.
    """
    try:
        yield
    except ValueError as err:
        text = str(err)
        about = [t for t in sources if "covariance" in text and repr(t) in text]
        if not about:
            raise
        origins = "; ".join(sources[t].described for t in about)
        raise ValueError(f"{origins}: {text}") from err


def _diagnose(source: Path, holder, results, key: str, checks: dict, covariance, n_jobs) -> None:
    """The plan's declared diagnostics of the genes of ``holder``, added to its var and uns.

    :func:`scvarpart.tl.diagnose` on the input with the results just fitted: backed for an
    ``.h5ad`` file; a chunk's genes (``--genes``) are read into memory (every cell, the
    chunk's genes only).
    """
    import anndata as ad

    from ..tl import diagnose
    from ..tl._variance_partition import write_results

    data = ad.read_zarr(source) if _is_zarr(source) else ad.read_h5ad(source, backed="r")
    try:
        if len(holder.var_names) != data.n_vars:  # a chunk
            data = data[:, holder.var_names].to_memory()
        write_results(data, results, key)
        added = f"{key}_diagnostics"
        diagnose(
            data,
            key=key,
            leave_out=checks.get("leave_out"),
            residuals=bool(checks.get("residuals", True)),
            covariance=covariance,
            key_added=added,
            n_jobs=n_jobs,
        )
        holder.uns[added] = data.uns[added]
        for column in data.var.columns:
            if column.startswith(f"{added}_"):
                holder.var[column] = data.var[column].to_numpy()
    finally:
        if data.isbacked:
            data.file.close()


def _check_files(args: argparse.Namespace, inputs: tuple) -> Path:
    """The input, checked with the output before any work.

    The input opens as an AnnData file or store, the output is none of the inputs (the
    input, the plan, the covariance files), does not exist (or --force) and can be
    written, and is of the kind --genes writes.
    """
    source = check_input(args.input)
    if args.group is not None and args.groupby is None:
        raise CLIError("--group NAME needs --groupby COLUMN (the column of the groups).", code=2)
    if args.groupby is not None and args.genes is not None and args.group is None:
        raise CLIError(
            "with --groupby, --genes I/N splits one group's genes: give --group NAME too.",
            code=2,
        )
    chunked = args.genes is not None or args.group is not None
    if not chunked and _is_zarr(source) != _is_zarr(Path(args.output)):
        kind = ".zarr store" if _is_zarr(source) else ".h5ad file"
        raise CLIError(f"the output {args.output} must be a {kind}, as the input is.", code=2)
    if chunked and _is_zarr(Path(args.output)):
        raise CLIError(
            f"a chunk (--genes, --group) is an .h5ad file; got -o {args.output}.", code=2
        )
    check_output(args.output, force=args.force, inputs=(source, *inputs))
    return source


def run(args: argparse.Namespace) -> int:
    analysis, plan_record, sources = _analysis(args)
    for source_ in sources.values():  # the plan's files were checked when it was read
        if not source_.from_plan and not source_.path.is_file():
            what = "is a folder" if source_.path.is_dir() else "does not exist"
            raise CLIError(
                f"{source_.origin}: the covariance file {source_.path} {what}; give the path "
                "of a .csv or .tsv file holding the matrix."
            )
    # every file besides the input: the output may replace none of them
    others = (*([args.plan] if args.plan else []), *(s.path for s in sources.values()))
    source = _check_files(args, others)
    checks = plan_record.get("checks") or {}
    covariance = _read_covariance(sources)
    quiet_logging(args)
    from anndata import AnnData

    from ..tl._file import partition_file
    from ..tl._variance_partition import write_results

    key = analysis["key_added"]
    # a covariance file is recorded as the input is: by name and content fingerprint,
    # which also stand for its matrix in the parameters' fingerprint (the matrix itself
    # has no canonical JSON, and the file is what the user can check)
    covariance_record = {
        "covariance_files": {t: s.path.name for t, s in sources.items()} or None,
        "covariance_fingerprints": {t: file_fingerprint(s.path) for t, s in sources.items()}
        or None,
    }
    provenance = {
        "input": source.name,
        "input_fingerprint": file_fingerprint(source),
        **covariance_record,
        **plan_record,
        "params_fingerprint": params_fingerprint(
            {**analysis, "covariance": covariance_record["covariance_fingerprints"], **plan_record,
             **({"groupby": args.groupby} if args.groupby else {})}
        ),
    }  # fmt: skip
    if args.groupby is not None:
        if checks.get("diagnose"):
            raise CLIError(
                "the plan declares diagnostics ([checks] diagnose = true), which are not run "
                "per group: fit without --groupby, or without the declared diagnostics."
            )
        from ._groups import run_grouped

        return run_grouped(args, source, analysis, provenance, covariance, others)

    genes = None
    if args.genes is not None:
        n_genes = len(read_var(source))
        i, n = args.genes
        if n > n_genes:
            raise CLIError(f"--genes {i}/{n}: more chunks than the {n_genes} genes of {source}")
        bounds = chunk_bounds(n_genes, n)
        genes = slice(int(bounds[i - 1]), int(bounds[i]))

    # partition_file takes the bootstrap's parameters as one tuple
    fit_options = {k: v for k, v in analysis.items() if k not in BOOTSTRAP_KEYS}
    fit_options["bootstrap"] = (
        analysis.get("n_boot", 0),
        analysis.get("seed", 0),
        analysis.get("ci"),
    )
    with reading(source), _naming_covariance_files(sources):
        _, var, partitioned = partition_file(
            source,
            **fit_options,
            covariance=covariance,
            n_jobs=args.n_jobs,
            batch_size=256,
            chunk_size=args.chunk_size,
            dask=args.dask,
            progress=False if args.quiet else None,
            genes=genes,
        )
    results = partitioned.with_params(**provenance)

    if genes is None:

        def add(holder: AnnData) -> None:
            write_results(holder, results, key)
            if checks.get("diagnose"):
                _diagnose(source, holder, results, key, checks, covariance, args.n_jobs)

        write_results_file(source, args.output, add, force=args.force, inputs=others)
        print(f"scvarpart fit: wrote {args.output} ({len(var)} genes, key {key!r})")
        return 0

    chunk = AnnData(var=var)
    write_results(chunk, results, key)
    if checks.get("diagnose"):  # the chunk's genes: merge gathers them
        _diagnose(source, chunk, results, key, checks, covariance, args.n_jobs)
    i, n = args.genes
    chunk.uns[CHUNK_KEY] = {
        "index": i,
        "n_chunks": n,
        "start": genes.start,
        "stop": genes.stop,
        "key": key,
        "input_fingerprint": provenance["input_fingerprint"],
        "covariance_fingerprints": provenance["covariance_fingerprints"],
        "params_fingerprint": provenance["params_fingerprint"],
        "version": __version__,
    }
    write_h5ad_atomic(chunk, args.output, force=args.force, inputs=(source, *others))
    print(
        f"scvarpart fit: wrote chunk {i}/{n} (genes {genes.start + 1}-{genes.stop}) to "
        f"{args.output}"
    )
    return 0
