"""Command line interface: ``scvarpart <command>`` (also ``python -m scvarpart``).

Commands: ``fit`` (a whole file, or one chunk of its genes), ``merge`` (chunks into
the complete result), ``report`` (a summary table and a TSV of per-gene results),
``simulate`` (example data) and ``example`` (the main job on the built-in example).

Exit codes, for pipelines:

====  ==========================================================================
0     success
1     unexpected error (a bug: please report it with the message)
2     invalid command line (an unknown option, a missing argument)
3     invalid input: analysis plan, formula, design, data or missing file
4     the output exists (pass --force) or would replace an input
5     merge refused: chunks from different inputs, parameters or versions, or
      missing or duplicated chunks
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import sys
import traceback

from .._io import OutputExistsError
from ..design import DesignError, FormulaError
from ..plan import PlanError
from . import _example, _fit, _merge, _report
from ._common import EXIT_CODES, CLIError, MergeError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="scvarpart",
        description="Exact per-gene variance partition of single-cell data "
        "(linear mixed models with crossed random effects).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"scvarpart {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (_fit, _merge, _report, _example):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except CLIError as err:
        print(f"scvarpart {args.command}: error: {err}", file=sys.stderr)
        return err.code
    except OutputExistsError as err:
        print(f"scvarpart {args.command}: error: {err}", file=sys.stderr)
        return 4
    except MergeError as err:
        print(f"scvarpart {args.command}: merge refused: {err}", file=sys.stderr)
        return 5
    except (PlanError, FormulaError, DesignError, FileNotFoundError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"scvarpart {args.command}: invalid input: {message}", file=sys.stderr)
        return 3
    except Exception:
        traceback.print_exc()
        print(
            f"scvarpart {args.command}: unexpected error (exit code 1); please report it.",
            file=sys.stderr,
        )
        return 1
