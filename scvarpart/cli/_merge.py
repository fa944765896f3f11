"""``scvarpart merge``: combine chunk results into the result of the whole file."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .._io import check_input, check_output, read_var, reading, write_results_file
from ..provenance import file_fingerprint
from ._common import EXIT_CODES, MergeError, add_output
from ._fit import CHUNK_KEY, chunk_bounds

if TYPE_CHECKING:
    import anndata as ad

    from ..varpart import VarPartResult

__all__ = ["add_parsers", "merge_chunks"]

_EXAMPLES = """example:
  scvarpart merge chunk*.h5ad --into cells.h5ad -o cells.varpart.h5ad

"""


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="combine chunk results of 'fit --genes I/N' into one result",
        description=(
            "Gather the chunk files of 'scvarpart fit --genes I/N' into a copy of the input "
            "with the results of every gene: exactly what one 'scvarpart fit' of the whole "
            "file writes. Refuses chunks computed from another input, with other parameters "
            "or another scvarpart version (each chunk carries fingerprints of the input, of "
            "its covariance files and of the parameters), and reports missing or duplicated "
            "chunks."
        ),
        epilog=_EXAMPLES + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("chunks", nargs="+", metavar="CHUNK", help="chunk files, in any order")
    p.add_argument(
        "--into", required=True, metavar="INPUT", help="the input the chunks were computed from"
    )
    add_output(p, "output: a copy of INPUT with the merged results")
    p.set_defaults(func=run)


def _check_consistent(names: list[str], infos: list[dict]) -> dict:
    """The chunks' common provenance; MergeError naming the files that differ."""
    for field, what in (
        ("input_fingerprint", "inputs"),
        ("covariance_fingerprints", "covariance files"),
        ("params_fingerprint", "analysis parameters"),
        ("version", "scvarpart versions"),
        ("n_chunks", "numbers of chunks"),
        ("key", "result keys"),
    ):
        groups: dict[str, list[str]] = {}
        for name, info in zip(names, infos, strict=True):
            # .get: a chunk of an older version may lack a field
            groups.setdefault(str(info.get(field)), []).append(name)
        if len(groups) > 1:
            listing = "; ".join(f"{v}: {', '.join(files)}" for v, files in groups.items())
            raise MergeError(f"the chunks come from different {what} ({listing}).")
    n = int(infos[0]["n_chunks"])
    files: dict[int, list[str]] = {}
    for name, info in zip(names, infos, strict=True):
        files.setdefault(int(info["index"]), []).append(name)
    problems = []
    duplicated = {i: f for i, f in sorted(files.items()) if len(f) > 1}
    if duplicated:
        listing = "; ".join(f"{i}/{n}: {', '.join(f)}" for i, f in duplicated.items())
        problems.append(f"duplicated chunks {listing}")
    missing = sorted(set(range(1, n + 1)) - set(files))
    if missing:
        problems.append(f"missing chunks {', '.join(f'{i}/{n}' for i in missing)}")
    if problems:
        raise MergeError("; ".join(problems) + ".")
    return infos[0]


def merge_chunks(chunks: list[ad.AnnData], key: str) -> VarPartResult:
    """The result of the whole file from its chunks (in chunk order)."""
    from ..varpart import VarPartResult

    return VarPartResult.concat([VarPartResult.read(chunk, key) for chunk in chunks])


def _merge_diagnostics(chunks: list, names: list[str], key: str):
    """The chunks' diagnostics (``svp.tl.diagnose`` per chunk) as one: ``(uns, var)``.

    ``None`` when no chunk has any; MergeError when only some have them. The tables are
    concatenated in chunk order, as one run over every gene would give them.
    """
    import numpy as np
    import pandas as pd

    added = f"{key}_diagnostics"
    have = [added in c.uns for c in chunks]
    if not any(have):
        return None
    if not all(have):
        without = [n for n, h in zip(names, have, strict=True) if not h]
        raise MergeError(f"{', '.join(without)} hold no diagnostics, the other chunks do.")
    first = chunks[0].uns[added]
    uns = {}
    # a table is grouped by term (and level), genes in order within a group: the chunks'
    # rows are put back into the groups, in the first chunk's order of the groups
    for table, group in (("blups", ["term"]), ("influence", ["term", "level"]),
                         ("residuals", ["term"])):  # fmt: skip
        parts = [pd.DataFrame(c.uns[added][table]) for c in chunks]
        whole = pd.concat(parts, ignore_index=True)
        if whole.empty:
            uns[table] = whole
            continue
        keys = list(dict.fromkeys(map(tuple, parts[0][group].to_numpy())))
        rank = {k: i for i, k in enumerate(keys)}
        position = [rank[tuple(row)] for row in whole[group].to_numpy()]
        order = np.argsort(np.asarray(position), kind="stable")
        uns[table] = whole.iloc[order].reset_index(drop=True)
    params = dict(first["params"])
    params["genes"] = [g for c in chunks for g in c.uns[added]["params"]["genes"]]
    uns["params"] = params
    columns = [c for c in chunks[0].var.columns if c.startswith(f"{added}_")]
    var = pd.concat([c.var[columns] for c in chunks])
    return uns, var


def run(args: argparse.Namespace) -> int:
    # every file is checked before any is read: an output may be neither --into nor a chunk
    source = check_input(args.into, "input (--into)")
    for name in args.chunks:
        check_input(name, "chunk")
    check_output(args.output, force=args.force, inputs=(source, *args.chunks))
    import anndata as ad
    import numpy as np

    from ..tl._variance_partition import write_results

    chunks, infos = [], []
    for name in args.chunks:
        with reading(name, "chunk"):
            chunk = ad.read_h5ad(name)
        if CHUNK_KEY not in chunk.uns:
            raise MergeError(f"{name} is not a chunk of 'scvarpart fit --genes I/N'.")
        chunks.append(chunk)
        infos.append(dict(chunk.uns[CHUNK_KEY]))
    grouped = ["groupby" in info for info in infos]
    if any(grouped):
        return _merge_groups(args, source, chunks, infos, grouped)
    common = _check_consistent(args.chunks, infos)
    if file_fingerprint(source) != common["input_fingerprint"]:
        raise MergeError(
            f"the chunks were computed from another input than {source} (its content "
            "fingerprint differs)."
        )
    var_names = read_var(source).index
    bounds = chunk_bounds(len(var_names), int(common["n_chunks"]))
    order = sorted(range(len(chunks)), key=lambda j: int(infos[j]["index"]))
    for j in order:
        i = int(infos[j]["index"])
        if not np.array_equal(chunks[j].var_names, var_names[bounds[i - 1] : bounds[i]]):
            raise MergeError(f"{args.chunks[j]} (chunk {i}) does not hold chunk {i}'s genes.")
    key = str(common["key"])
    ordered = [chunks[j] for j in order]
    results = merge_chunks(ordered, key)
    diagnostics = _merge_diagnostics(ordered, [args.chunks[j] for j in order], key)

    def add(holder) -> None:
        write_results(holder, results, key)
        if diagnostics is not None:
            uns, var = diagnostics
            holder.uns[f"{key}_diagnostics"] = uns
            for column in var.columns:
                holder.var[column] = var[column].to_numpy()

    write_results_file(source, args.output, add, force=args.force, inputs=args.chunks)
    print(f"scvarpart merge: {len(order)} chunks, {len(var_names)} genes -> {args.output}")
    return 0


def _merge_groups(args, source, chunks, infos, grouped) -> int:
    """Chunks of ``fit --groupby --group``: the results per group, into a copy of the input."""
    from ._groups import merge_group_chunks, write_merged_groups

    if not all(grouped):
        plain = [n for n, g in zip(args.chunks, grouped, strict=True) if not g]
        raise MergeError(
            f"{', '.join(plain)} are chunks of a fit without --groupby; the others are per group."
        )
    if file_fingerprint(source) != infos[0]["input_fingerprint"]:
        raise MergeError(
            f"the chunks were computed from another input than {source} (its content "
            "fingerprint differs)."
        )
    results, table, key, groupby = merge_group_chunks(args.chunks, chunks, infos)
    write_merged_groups(source, args.output, results, table, key, groupby, args.force, args.chunks)
    return 0
