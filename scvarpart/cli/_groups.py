"""Fits per group on the command line: ``fit --groupby``, ``groups``, and their merge.

``scvarpart fit IN --groupby cell_type`` fits every group (as ``svp.tl.variance_partition(
..., groupby=)``) into a copy of the input. A workflow scatters instead:
``scvarpart groups IN --groupby cell_type`` lists the groups, one task per group (and
chunk of its genes) runs ``fit IN --groupby cell_type --group G [--genes I/N]`` and writes
a chunk file, and ``scvarpart merge`` gathers the chunks of every group into what one run
writes. A group that cannot be fitted still writes its chunk, saying why, so that the
merge knows every group was tried.

Each group's observations are read into memory (from an ``.h5ad`` file opened backed:
that group's rows only); its fits are those of the API on the same rows and genes.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import check_input, read_var, reading, write_h5ad_atomic, write_results_file
from ._common import EXIT_CODES, MergeError

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

    from ..varpart import VarPartResult

__all__ = ["add_parsers", "merge_group_chunks", "run_grouped"]

_EXAMPLES = """example:
  scvarpart groups bulk.h5ad --groupby cell_type
  for g in $(scvarpart groups bulk.h5ad --groupby cell_type); do
    scvarpart fit bulk.h5ad --plan plan.toml --groupby cell_type --group "$g" -o "$g.h5ad"
  done
  scvarpart merge *.h5ad --into bulk.h5ad -o bulk.varpart.h5ad

"""


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "groups",
        help="list the groups of an obs column (to scatter 'fit --groupby --group' over)",
        description=(
            "Print the groups of an obs column of an .h5ad file or .zarr store, one per "
            "line, in the order 'fit --groupby' fits them (a categorical column's order, "
            "else sorted); observations without a label belong to none."
        ),
        epilog=_EXAMPLES + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help=".h5ad file or .zarr store")
    p.add_argument("--groupby", required=True, metavar="COLUMN", help="obs column of the groups")
    p.set_defaults(func=run_groups)


def _read_obs(source: Path) -> pd.DataFrame:
    import anndata as ad

    from ..storage.stores import open_store

    with open_store(source) as root:
        return ad.io.read_elem(root["obs"])


def run_groups(args: argparse.Namespace) -> int:
    from .._groups import group_order

    source = check_input(args.input)
    with reading(source):
        obs = _read_obs(source)
    groups, _ = group_order(obs, args.groupby)  # a KeyError for another column: exit 3
    for group in groups:
        print(group)
    return 0


def _open(source: Path) -> ad.AnnData:
    """The input: an ``.h5ad`` file backed (groups are read row by row), a store in memory."""
    import anndata as ad

    from .._io import _is_zarr

    return ad.read_zarr(source) if _is_zarr(source) else ad.read_h5ad(source, backed="r")


def _options(analysis: dict, covariance, args: argparse.Namespace) -> dict:
    """:func:`~scvarpart.tl.variance_partition`'s arguments from the CLI's analysis."""
    out = {k: v for k, v in analysis.items() if k not in ("n_boot", "seed", "ci")}
    out.update(
        n_boot=analysis.get("n_boot", 0), seed=analysis.get("seed", 0), ci=analysis.get("ci"),
        covariance=covariance, n_jobs=args.n_jobs, progress=False if args.quiet else None,
    )  # fmt: skip
    if args.chunk_size is not None:
        out["chunk_size"] = args.chunk_size
    return out


def _fitter(data, options: dict, provenance: dict):
    """A group's fit: its rows in memory, the API's fit of them, the run's provenance.

    From a backed file only the group's rows are read.
    """
    from ..tl._variance_partition import variance_partition

    def fit(view):
        sub = view.to_memory() if data.isbacked else view
        return variance_partition(sub, inplace=False, **options).with_params(**provenance)

    return fit


def run_grouped(args, source: Path, analysis: dict, provenance: dict, covariance, others) -> int:
    """``fit --groupby``: every group into a copy of the input, or one group's chunk."""
    from ..tl._grouped import check_groups, fit_groups
    from ..tl._variance_partition import _prepare
    from ..varpart.grouped import grouped_params, write_grouped

    groupby, key = args.groupby, analysis["key_added"]
    options = _options(analysis, covariance, args)
    with reading(source):
        data = _open(source)
    try:
        layers = list(data.layers)

        def prepare(obs):
            return _prepare(
                obs, options["formula"], options["method"], options["batch"],
                options["signal"], options["cells"], options["weights"], covariance, layers,
            )  # fmt: skip

        with warnings.catch_warnings():  # the whole data's design: every group's is warned of
            warnings.simplefilter("ignore")
            prepare(data.obs)
        if args.group is not None:
            table, ready = check_groups(data, groupby, prepare, [args.group])
            return _one_group(args, source, data, table, ready, options, provenance, others)
        results, table = fit_groups(data, groupby, prepare, _fitter(data, options, provenance))
    finally:
        if data.isbacked:
            data.file.close()
    params = grouped_params(groupby, results)
    write_results_file(
        source, args.output, lambda holder: write_grouped(holder, results, table, key, params),
        force=args.force, inputs=others,
    )  # fmt: skip
    print(f"scvarpart fit: wrote {args.output} ({len(results)} groups of {groupby!r}, key {key!r})")
    return 0


def _one_group(args, source, data, table, ready, options, provenance, others) -> int:
    """``fit --groupby --group G [--genes I/N]``: one group's chunk file."""
    import numpy as np
    from anndata import AnnData

    from .. import __version__
    from ..tl._grouped import fit_group
    from ..tl._variance_partition import write_results
    from ._fit import CHUNK_KEY, chunk_bounds

    i, n = args.genes or (1, 1)
    row = table.iloc[0].to_dict()
    group = str(row["group"])
    info: dict[str, Any] = {
        "index": i, "n_chunks": n, "key": options["key_added"], "groupby": args.groupby,
        "group": group, "groups": _all_groups(data.obs, args.groupby),
        "status": row["status"], "reason": row["reason"], "n_obs": int(row["n_obs"]),
        "n_group_genes": int(row["n_genes"]), "input_fingerprint": provenance["input_fingerprint"],
        "covariance_fingerprints": provenance["covariance_fingerprints"],
        "params_fingerprint": provenance["params_fingerprint"], "version": __version__,
    }  # fmt: skip
    chunk = AnnData()
    if ready:
        _, mask, genes = ready[0]
        names = data.var_names if genes is None else data.var_names[genes]
        bounds = chunk_bounds(len(names), n)
        start, stop = int(bounds[i - 1]), int(bounds[i])
        info.update(start=start, stop=stop)
        if stop > start:
            chosen = np.isin(data.var_names, names[start:stop])
            fit = _fitter(data, options, provenance)
            result = fit_group(data, table, group, mask, chosen, fit)
            chunk = AnnData(var=data.var.loc[names[start:stop]].copy())
            write_results(chunk, result, options["key_added"])
    info["warnings"] = str(table.iloc[0]["warnings"])
    chunk.uns[CHUNK_KEY] = info
    write_h5ad_atomic(chunk, args.output, force=args.force, inputs=(source, *others))
    what = "skipped: " + row["reason"] if row["status"] != "fitted" else f"{chunk.n_vars} genes"
    print(f"scvarpart fit: wrote group {group!r} chunk {i}/{n} ({what}) to {args.output}")
    return 0


def _all_groups(obs, groupby: str) -> list[str]:
    from .._groups import group_order

    return [str(g) for g in group_order(obs, groupby)[0]]


def _chunks_by_group(names: list[str], infos: list[dict]) -> dict[str, list[int]]:
    """Per group, its chunks in order (indices into ``infos``), checked to be complete.

    MergeError for chunks of different analyses, missing or duplicated chunks, a group
    without chunks or one the input does not have.
    """
    for field in ("groupby", "key", "params_fingerprint", "version", "input_fingerprint",
                  "covariance_fingerprints"):  # fmt: skip
        values = {str(info.get(field)) for info in infos}
        if len(values) > 1:
            raise MergeError(f"the chunks differ in {field} ({', '.join(sorted(values))}).")
    groups = [str(g) for g in infos[0]["groups"]]
    by_group: dict[str, dict[int, list[int]]] = {}
    for j, info in enumerate(infos):
        by_group.setdefault(str(info["group"]), {}).setdefault(int(info["index"]), []).append(j)
    problems = [f"group {g!r} has no chunk" for g in groups if g not in by_group]
    problems += [f"group {g!r} is not a group of the input" for g in by_group if g not in groups]
    sizes = {}  # each group's number of chunks (a small group may be split in fewer)
    for g, files in by_group.items():
        counts = {int(infos[j]["n_chunks"]) for js in files.values() for j in js}
        if len(counts) > 1:
            problems.append(f"group {g!r} has chunks of {' and '.join(map(str, sorted(counts)))}")
            continue
        n = sizes[g] = counts.pop()
        problems += [f"group {g!r} chunk {i}/{n} twice: {', '.join(names[j] for j in js)}"
                     for i, js in files.items() if len(js) > 1]  # fmt: skip
        missing = sorted(set(range(1, n + 1)) - set(files))
        if missing:
            problems.append(f"group {g!r} misses chunks {', '.join(f'{i}/{n}' for i in missing)}")
    if problems:
        raise MergeError("; ".join(problems) + ".")
    return {g: [by_group[g][i][0] for i in range(1, sizes[g] + 1)] for g in groups}


def _group_result(g: str, order: list[int], names, chunks, infos, key: str) -> VarPartResult:
    """A fitted group's result from its chunks, which must hold its genes in order."""
    from ..varpart import VarPartResult

    stop = 0
    for j in order:  # each chunk starts where the last stopped
        if int(infos[j]["start"]) != stop:
            raise MergeError(f"{names[j]} does not continue group {g!r}'s genes.")
        stop = int(infos[j]["stop"])
    if stop != int(infos[order[0]]["n_group_genes"]):
        raise MergeError(f"the chunks of group {g!r} do not hold all its genes.")
    return VarPartResult.concat([VarPartResult.read(chunks[j], key) for j in order
                                 if chunks[j].n_vars])  # fmt: skip


def merge_group_chunks(
    names: list[str], chunks: list, infos: list[dict]
) -> tuple[dict[str, VarPartResult], pd.DataFrame, str, str]:
    """The results per group and the table of the groups, from chunks of every group.

    Returns the results, the table, the key and the ``groupby`` column.
    """
    import pandas as pd

    from ..tl._grouped import count_fitted

    key = str(infos[0]["key"])
    rows, results = [], {}
    for g, order in _chunks_by_group(names, infos).items():
        first = infos[order[0]]
        said = [str(infos[j].get("warnings", "")) for j in order]
        warned = " | ".join(dict.fromkeys(w for s in said for w in s.split(" | ") if w))
        rows.append({"group": g, "n_obs": int(first["n_obs"]),
                     "n_genes": int(first["n_group_genes"]), "status": str(first["status"]),
                     "reason": str(first["reason"]), "warnings": warned})  # fmt: skip
        if first["status"] == "fitted":
            results[g] = _group_result(g, order, names, chunks, infos, key)
    if not results:
        raise MergeError("no group was fitted in any chunk.")
    return results, count_fitted(pd.DataFrame(rows), results), key, str(infos[0]["groupby"])


def write_merged_groups(source, output, results, table, key, groupby, force, inputs) -> None:
    """The merged results per group, into a copy of the input."""
    from ..varpart.grouped import grouped_params, write_grouped

    params = grouped_params(groupby, results)
    write_results_file(
        source, output, lambda holder: write_grouped(holder, results, table, key, params),
        force=force, inputs=inputs,
    )  # fmt: skip
    n = len(read_var(source))
    print(f"scvarpart merge: {len(table)} groups of {groupby!r} ({n} genes) -> {output}")
