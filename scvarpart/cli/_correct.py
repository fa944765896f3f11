"""``scvarpart correct``: a copy of a fitted file with the batch taken out, block by block."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._io import check_input, check_output
from ._common import EXIT_CODES, add_output

__all__ = ["add_parsers"]

_EXAMPLES = """examples:
  scvarpart correct cells.varpart.h5ad -o cells.corrected.h5ad
  scvarpart correct cells.varpart.h5ad -o cells.corrected.h5ad --terms chemistry,day \\
      --genes hvg.txt --batch-layer varpart_batch

"""


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "correct",
        help="write a copy of a fitted file with a batch-corrected layer",
        description=(
            "Subtract each gene's fitted technical effects (the batch terms' BLUPs at each "
            "cell's levels, and centred technical fixed effects) from the values the fit "
            "read, as svp.tl.remove_batch_effects_file: the corrected layer is written into "
            "a copy of RESULT (.h5ad or .zarr) block by block of cells, never held in "
            "memory. RESULT is the output of 'scvarpart fit' or 'merge'; a fit without its "
            "BLUPs is refitted for them first."
        ),
        epilog=_EXAMPLES + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("result", help="output of 'scvarpart fit' or 'merge' (.h5ad or .zarr)")
    add_output(p, "output: a copy of RESULT with the corrected layer (of RESULT's kind)")
    p.add_argument("--key", default="varpart", help="result key (default varpart)")
    p.add_argument(
        "--terms",
        metavar="A,B",
        help="technical terms to remove, random or fixed (default: the fit's batch terms)",
    )
    p.add_argument(
        "--genes",
        metavar="FILE",
        help="correct only the genes listed in FILE, one name a line (default: all)",
    )
    p.add_argument("--layer", default="varpart_corrected", help="name of the corrected layer")
    p.add_argument("--batch-layer", metavar="NAME", help="also store the removed part here")
    p.add_argument(
        "--chunk-size", type=int, metavar="N", help="cells per block (default: ~4M values)"
    )
    p.add_argument("--n-jobs", type=int, default=1, metavar="N", help="threads (default 1)")
    p.set_defaults(func=run)


def _genes(path: str) -> list[str]:
    """The gene names of a list file, one a line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--genes {path} does not exist.") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"--genes {path} lists no gene: give one gene name a line.")
    return names


def run(args: argparse.Namespace) -> int:
    path = check_input(args.result, "result")
    check_output(args.output, force=args.force, inputs=(path,))
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be at least 1, got {args.chunk_size}.")
    genes = _genes(args.genes) if args.genes else None
    terms = [t.strip() for t in args.terms.split(",") if t.strip()] if args.terms else None
    from ..tl import remove_batch_effects_file

    done = remove_batch_effects_file(
        path, args.output, terms=terms, key=args.key, genes=genes, layer_added=args.layer,
        batch_layer=args.batch_layer, n_jobs=args.n_jobs, chunk_size=args.chunk_size,
        force=args.force,
    )  # fmt: skip
    corrected = int(done.var[args.layer].sum())
    params = done.uns[args.layer]["params"]
    print(
        f"scvarpart correct: wrote {args.output}: layer {args.layer!r}, {corrected:,} genes "
        f"corrected for {', '.join(params['terms'])}"
    )
    uncorrected = done.uns[args.layer]["uncorrected"]
    if len(uncorrected):
        print(f"left as they were (no estimates): {len(uncorrected)} genes")
    return 0
