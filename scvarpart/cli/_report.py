"""``scvarpart report``: a summary table of a result, and a TSV of per-gene results."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._io import OutputExistsError, atomic_output, check_input, check_output, read_results
from ._common import EXIT_CODES, CLIError

__all__ = ["add_parsers"]

_EXAMPLES = """example:
  scvarpart report cells.varpart.h5ad --tsv cells.varpart.tsv --top 20
  scvarpart report cells.varpart.h5ad --html cells.varpart.html --multiqc cells_mqc.yaml

"""


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "report",
        help="summarise a result and write its per-gene table as TSV",
        description=(
            "Print a summary of the variance partition stored in an .h5ad file or .zarr store "
            "(the model, the design audit, the median fraction of each component, singular, "
            "non-converged and failed fits, the most batch-dominated genes) and write the "
            "per-gene results (fractions, variances, rho, flags, errors) as a TSV file; with "
            "--html, also one self-contained HTML report (figures embedded, opens offline). "
            "Rerunning it on the same result succeeds and leaves the TSV as it is; a TSV "
            "holding anything else "
            "(another result, another key, an older fit) is only replaced with --force."
        ),
        epilog=_EXAMPLES + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("result", help="output of 'scvarpart fit' or 'merge' (.h5ad or .zarr)")
    p.add_argument("--key", default="varpart", help="result key (default varpart)")
    p.add_argument(
        "--tsv", metavar="PATH", help="per-gene table (default: RESULT name + .KEY.tsv, here)"
    )
    p.add_argument("--top", type=int, default=10, metavar="N", help="genes listed (default 10)")
    p.add_argument("--html", metavar="PATH", help="also write the HTML report (svp.pl.report) here")
    p.add_argument(
        "--multiqc",
        metavar="PATH",
        help="also write a MultiQC custom-content table here (name it *_mqc.yaml)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace the TSV if it exists with other content"
    )
    p.set_defaults(func=run)


def _tsv_is_current(tsv: Path, text: str, result: Path, force: bool) -> bool:
    """Whether ``tsv`` already holds exactly ``text``.

    Raises OutputExistsError if it holds something else and ``force`` is false.

    The TSV is a pure function of the result and key, so rerunning ``report`` on the same
    result finds it byte for byte equal and succeeds without rewriting it (a pipeline or
    Makefile can rerun the step, and the file's date keeps telling when it was made).
    Anything else in its place (the table of a refitted or another result sharing the
    default name, or an unrelated file) is only replaced with --force, as every output.
    """
    if not tsv.is_file():
        return False
    if tsv.read_bytes() == text.encode():
        return True
    if not force:
        raise OutputExistsError(
            f"{tsv} exists and holds another table than {result.name} gives now (another "
            "result or key, or the result was refitted); pass --force to replace it, or "
            "--tsv PATH to write elsewhere."
        )
    return False


def _print_summary(adata, res, table, path: Path, key: str, top_n: int) -> None:
    """The summary on standard output: model, fits, design, fractions, genes, checks."""
    import numpy as np

    from ..get._results import declared_checks

    params, summary = res.params, res.summary
    batch, signal = res.batch, res.signal
    print(f"scvarpart report: {path.name} (key {key!r})")
    print(
        f"model {params['formula']} ({params['method']}), {params['n_obs']:,} cells, "
        f"{summary['n_genes']:,} genes"
    )
    extras = [f"observation weights {params['weights']!r}"] if params.get("weights") else []
    files = params.get("covariance_files") or {}
    for term in params.get("covariance") or {}:
        extras.append(
            f"known covariance of {term!r}" + (f" ({files[term]})" if term in files else "")
        )
    if extras:
        print("with " + "; ".join(extras))
    print(
        f"fitted {summary['n_genes'] - summary['n_failed']:,}; singular "
        f"{summary['n_singular']:,}; not converged {summary['n_not_converged']:,}; "
        f"failed {summary['n_failed']:,}"
    )
    if res.design is not None:
        print("\n" + res.design.to_text())
    print(f"\n{'component':<24}{'median fraction':>16}  role")
    for comp in res.components:
        role = "batch" if comp in batch else "signal" if comp in signal else ""
        print(f"{comp:<24}{summary['median_fraction'][comp]:>16.4f}  {role}")

    if "rho" in table:
        ranked = res.batch_dominated(n_top=top_n)  # the one ranking, as svp.get uses
        n_inf = int(np.isinf(table["rho"]).sum())
        print(
            "\nmost batch-dominated genes (rho = batch / signal variance >= 1, ranked by "
            f"batch fraction; {n_inf} genes with no signal variance have rho = inf):"
        )
        top = table.loc[ranked.index, ["rho", *(f"fraction_{c}" for c in batch + signal)]]
        top.insert(1, "batch_fraction", ranked["batch_fraction"])
    else:
        print("\ngenes with the largest residual fraction (no batch/signal given, so no rho):")
        top = table.sort_values("fraction_Residual", ascending=False).head(top_n)
        top = top[["fraction_Residual"]]
    if len(top):
        print(top.to_string(float_format=lambda v: f"{v:.4g}"))
    failed = table[table["error"] != ""]
    if len(failed):
        print(f"\ngenes without estimates ({len(failed)}), e.g.:")
        print(failed["error"].head(top_n).to_string())
    for line in declared_checks(adata, res, key, top_n):
        print(line)


def run(args: argparse.Namespace) -> int:
    path = check_input(args.result, "result")
    key = args.key
    tsv = Path(args.tsv) if args.tsv else Path(f"{path.name.split('.')[0]}.{key}.tsv")
    # the result may never be replaced; whether an existing TSV may be is decided below,
    # once its new content is known, and before anything is printed
    check_output(tsv, force=True, inputs=(path,))
    html = Path(args.html) if args.html else None
    multiqc = Path(args.multiqc) if args.multiqc else None
    for extra in (html, multiqc):
        if extra is not None:
            check_output(extra, force=args.force, inputs=(path, tsv))
    import pandas as pd

    from ..varpart.grouped import group_table

    adata = read_results(path, "result")
    try:
        results = _results(adata, key)
    except KeyError as err:
        raise CLIError(f"{path}: {err.args[0]}") from None
    tables = {g: res.gene_table() for g, res in results.items()}
    if None in tables:  # one result
        table = tables[None]
    else:  # per group: the groups' tables stacked, a group column first
        table = pd.concat(tables, names=["group"])
    text = table.to_csv(sep="\t", float_format="%.10g")
    current = _tsv_is_current(tsv, text, path, args.force)

    if None not in results:
        print(f"scvarpart report: {path.name} (key {key!r}), fitted per group of "
              f"{adata.uns[key]['params']['groupby']!r}")  # fmt: skip
        print(group_table(adata, key).to_string(index=False))
    for g, res in results.items():
        if g is not None:
            print(f"\n=== group {g} ===")
        _print_summary(adata, res, tables[g], path, key, args.top)

    if current:
        print(f"\n{tsv} is up to date ({len(table)} genes): left as it was")
    else:
        with atomic_output(tsv, force=True, inputs=(path,)) as tmp:
            tmp.write_text(text, newline="")
        print(f"\nwrote {tsv} ({len(table)} genes)")
    if html is not None:
        import matplotlib

        matplotlib.use("Agg")  # no display: the figures are only embedded
        from ..pl import report

        report(adata, html, key=key, n_top=args.top, force=args.force)
        print(f"wrote {html}")
    if multiqc is not None:
        import yaml

        sample = path.name.split(".")[0]
        content = _multiqc(results, sample)
        with atomic_output(multiqc, force=args.force, inputs=(path,)) as tmp:
            tmp.write_text(yaml.safe_dump(content, sort_keys=False))
        print(f"wrote {multiqc}")
    return 0


def _results(adata, key: str) -> dict:
    """The result under ``key`` (``{None: result}``), or every fitted group's."""
    from ..varpart import VarPartResult
    from ..varpart.grouped import group_names, is_grouped, read_group

    if is_grouped(adata, key):
        return {g: read_group(adata, key, g) for g in group_names(adata, key)}
    return {None: VarPartResult.read(adata, key)}


def _multiqc(results: dict, sample: str) -> dict:
    """MultiQC custom content: a row of each fit's summary (``sample:group`` per group)."""
    first = next(iter(results.values()))
    rows = {sample if g is None else f"{sample}:{g}": _multiqc_row(r) for g, r in results.items()}
    return {
        "id": "scvarpart",
        "section_name": "scvarpart",
        "description": (
            f"Per-gene variance partition of {first.params['formula']} "
            f"({first.params['method']}): batch and signal fractions, rho = batch / signal."
        ),
        "plot_type": "table",
        "pconfig": {"id": "scvarpart_summary", "title": "scvarpart: variance partition"},
        "data": rows,
    }


def _multiqc_row(res) -> dict:
    """One fit's summary: genes fitted, singular, failed; batch and signal fractions."""
    summary = res.summary
    row: dict[str, float] = {
        "genes": int(summary["n_genes"]),
        "fitted": int(summary["n_genes"] - summary["n_failed"]),
        "singular": int(summary["n_singular"]),
        "not converged": int(summary["n_not_converged"]),
        "failed": int(summary["n_failed"]),
    }
    if res.batch and res.signal:  # over the genes with estimates, as svp.get.rho_df
        table = res.rho_table(sort_by=None)
        row["median batch fraction"] = float(table["batch_fraction"].median())
        row["median signal fraction"] = float(table["signal_fraction"].median())
        row["batch-dominated genes"] = int(table["batch_dominated"].sum())
    return row
