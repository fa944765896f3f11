"""Command line interface: ``scvarpart <command>`` (also ``python -m scvarpart``).

Commands: ``fit`` (a whole file, or one chunk of its genes), ``merge`` (chunks into
the complete result), ``report`` (a summary table, a TSV of per-gene results, an HTML
report), ``correct`` (a copy of a fitted file with a batch-corrected layer), ``simulate``
(example data) and ``example`` (the main job on the built-in example).

Exit codes, for pipelines:

====  ==========================================================================
0     success
1     unexpected error (a bug: please report it with the message)
2     invalid command line (an unknown option, a missing argument)
3     invalid input: analysis plan, formula, design, data, or a missing,
      unreadable or damaged file; or an output that cannot be written
4     the output exists (pass --force) or would replace an input (whatever
      --force)
5     merge refused: chunks from different inputs, parameters or versions, or
      missing or duplicated chunks
130   interrupted by SIGINT (Ctrl-C)
143   terminated by SIGTERM (``kill``, a scheduler, Nextflow)
====  ==========================================================================

Errors are one line on stderr naming the file or option and the fix; only an
unexpected error (1) prints a traceback. On SIGINT or SIGTERM the temporary files of
an output being written are removed and no partial output is left.

The command modules import the scientific stack (anndata, scanpy, numba) only when
a command runs, so that ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from .._io import handle_sigterm_during_writes
from . import _correct, _example, _fit, _groups, _merge, _report
from ._common import EXIT_CODES, CLIError, MergeError

__all__ = ["Terminated", "main"]


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt.

    Raised so that cleanups run; a BaseException, so that ``except Exception`` does not
    swallow it.
    """


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
    for module in (_fit, _groups, _merge, _report, _correct, _example):
        module.add_parsers(sub)
    return parser


def _raise_terminated(signum, frame) -> None:
    # a second SIGTERM must not interrupt the cleanup of the first
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While a command runs, make SIGTERM raise :class:`Terminated` during its writes.

    SIGTERM's default action kills the process at once, leaving the temporary copy of an
    output being written (as large as the input); raised as an exception it unwinds the
    ``finally`` blocks that remove it, as SIGINT does. The handler is in place only while
    a temporary output exists (see :func:`scvarpart._io.handle_sigterm_during_writes`):
    before that there is nothing to remove, and the default action also ends a process
    stuck in C code. The previous handler is restored after each write; a caller's own
    handler, an ignored SIGTERM and other threads than the main one are left alone.
    """
    with handle_sigterm_during_writes(_raise_terminated):
        yield


def _os_error(err: OSError) -> str:
    """One line for a file that cannot be read or written (permissions, a full disk)."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    # imported once the command line is parsed: --help and --version need none of them
    from .._io import InputError, OutputExistsError, OutputNotWritableError
    from ..design import DesignError, FormulaError
    from ..plan import PlanError

    name = f"scvarpart {args.command}"
    try:
        with sigterm_raises():
            return args.func(args) or 0
    except Terminated:
        print(f"{name}: terminated by SIGTERM; temporary files removed.", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"{name}: interrupted; temporary files removed.", file=sys.stderr)
        return 128 + signal.SIGINT
    except CLIError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return err.code
    except OutputExistsError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 4
    except MergeError as err:
        print(f"{name}: merge refused: {err}", file=sys.stderr)
        return 5
    except OutputNotWritableError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 3
    except (
        InputError,
        PlanError,
        FormulaError,
        DesignError,
        FileNotFoundError,
        KeyError,
        ValueError,
    ) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{name}: invalid input: {message}", file=sys.stderr)
        return 3
    except OSError as err:  # a file that cannot be read or written: not a bug
        print(f"{name}: error: {_os_error(err)}", file=sys.stderr)
        return 3
    except Exception:
        traceback.print_exc()
        print(f"{name}: unexpected error (exit code 1); please report it.", file=sys.stderr)
        return 1
