"""``scvarpart fit``: the variance partition of a file, whole or one chunk of genes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

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
from ..plan import read_plan
from ..provenance import file_fingerprint, params_fingerprint
from ._common import EXIT_CODES, CLIError, add_output, quiet_logging

if TYPE_CHECKING:
    import numpy as np


__all__ = ["CHUNK_KEY", "add_parsers", "chunk_bounds"]

#: uns key of a chunk file's provenance.
CHUNK_KEY = "scvarpart_chunk"

_EXAMPLES = """examples:
  scvarpart fit cells.h5ad --formula "~ log_umi + (1|patient) + (1|chemistry) + (1|day)" \\
      --batch chemistry,day --signal patient -o cells.varpart.h5ad
  scvarpart fit cells.h5ad --plan plan.toml --n-jobs 8 -o cells.varpart.h5ad
  scvarpart fit cells.h5ad --plan plan.toml --genes 3/10 -o chunk3.h5ad   # then: merge

"""

_MODEL_OPTIONS = ("formula", "batch", "signal", "method", "layer", "use_raw", "key", "min_cells")


def _names(text: str) -> list[str]:
    """A comma-separated option value as a list of names (argparse type)."""
    names = as_names(text, "the option", split=True)
    if not names:
        raise argparse.ArgumentTypeError("give one or more comma-separated names")
    return names


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
    p.add_argument("input", help="log-normalised expression: .h5ad file or .zarr store")
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
    execution = p.add_argument_group("execution (the results do not depend on these)")
    execution.add_argument(
        "--genes", type=_chunk, metavar="I/N", help="fit only the I-th of N chunks of genes"
    )
    execution.add_argument("--n-jobs", type=int, default=1, metavar="N", help="threads (default 1)")
    execution.add_argument("--chunk-size", type=int, metavar="CELLS", help="cells read per block")
    execution.add_argument("--dask", action="store_true", help="read the cells as a Dask graph")
    execution.add_argument("--quiet", action="store_true", help="no progress bars or log messages")
    add_output(p, "output: a copy of the input with results (.h5ad/.zarr), or a chunk file")
    p.set_defaults(func=run)


def _analysis(args: argparse.Namespace) -> tuple[dict, dict]:
    """The analysis parameters (from the plan or the options) and the plan's record."""
    given = [o for o in _MODEL_OPTIONS if getattr(args, o) is not None] + (
        ["cells"] if args.cells else []
    )
    if args.plan:
        if given:
            options = ", ".join("--" + o.replace("_", "-") for o in given)
            raise CLIError(f"{options}: fixed by the plan {args.plan}; remove them.", code=2)
        plan = read_plan(args.plan)
        return plan.as_kwargs(), {"plan": Path(plan.path).name, "plan_sha256": plan.sha256}
    if args.formula is None:
        raise CLIError("give the model: --formula (and --batch, --signal...) or --plan", code=2)
    return {
        "formula": args.formula,
        "method": args.method or "ML",
        "batch": args.batch,
        "signal": args.signal,
        "layer": args.layer,
        "use_raw": bool(args.use_raw),
        "key_added": args.key or "varpart",
        "min_cells": args.min_cells or 0,
        "cells": _cells(args.cells),
    }, {"plan": None, "plan_sha256": None}


def _check_files(args: argparse.Namespace) -> Path:
    """The input, checked with the output before any work.

    The input opens as an AnnData file or store, the output is neither the input nor the
    plan, does not exist (or --force) and can be written, and is of the kind --genes
    writes.
    """
    source = check_input(args.input)
    if args.genes is None and _is_zarr(source) != _is_zarr(Path(args.output)):
        kind = ".zarr store" if _is_zarr(source) else ".h5ad file"
        raise CLIError(f"the output {args.output} must be a {kind}, as the input is.", code=2)
    if args.genes is not None and _is_zarr(Path(args.output)):
        raise CLIError(f"a chunk (--genes) is an .h5ad file; got -o {args.output}.", code=2)
    inputs = (source, args.plan) if args.plan else (source,)
    check_output(args.output, force=args.force, inputs=inputs)
    return source


def run(args: argparse.Namespace) -> int:
    analysis, plan_record = _analysis(args)
    source = _check_files(args)
    quiet_logging(args)
    from anndata import AnnData

    from ..tl._file import partition_file
    from ..tl._variance_partition import write_results

    key = analysis["key_added"]
    provenance = {
        "input": source.name,
        "input_fingerprint": file_fingerprint(source),
        **plan_record,
        "params_fingerprint": params_fingerprint({**analysis, **plan_record}),
    }

    genes = None
    if args.genes is not None:
        n_genes = len(read_var(source))
        i, n = args.genes
        if n > n_genes:
            raise CLIError(f"--genes {i}/{n}: more chunks than the {n_genes} genes of {source}")
        bounds = chunk_bounds(n_genes, n)
        genes = slice(int(bounds[i - 1]), int(bounds[i]))

    with reading(source):
        _, var, partitioned = partition_file(
            source,
            **analysis,
            n_jobs=args.n_jobs,
            batch_size=256,
            chunk_size=args.chunk_size,
            dask=args.dask,
            progress=False if args.quiet else None,
            genes=genes,
        )
    results = partitioned.with_params(**provenance)

    if genes is None:
        write_results_file(
            source,
            args.output,
            lambda holder: write_results(holder, results, key),
            force=args.force,
            inputs=(args.plan,) if args.plan else (),
        )
        print(f"scvarpart fit: wrote {args.output} ({len(var)} genes, key {key!r})")
        return 0

    chunk = AnnData(var=var)
    write_results(chunk, results, key)
    i, n = args.genes
    chunk.uns[CHUNK_KEY] = {
        "index": i,
        "n_chunks": n,
        "start": genes.start,
        "stop": genes.stop,
        "key": key,
        "input_fingerprint": provenance["input_fingerprint"],
        "params_fingerprint": provenance["params_fingerprint"],
        "version": __version__,
    }
    inputs = (source, args.plan) if args.plan else (source,)
    write_h5ad_atomic(chunk, args.output, force=args.force, inputs=inputs)
    print(
        f"scvarpart fit: wrote chunk {i}/{n} (genes {genes.start + 1}-{genes.stop}) to "
        f"{args.output}"
    )
    return 0
