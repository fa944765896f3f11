"""Pieces shared by the commands."""

from __future__ import annotations

import argparse

__all__ = ["EXIT_CODES", "CLIError", "MergeError", "quiet_logging"]

EXIT_CODES = """exit codes:
  0    success
  1    unexpected error (please report it)
  2    invalid command line
  3    invalid input (plan, formula, design, data; a missing, unreadable or
       damaged file) or an output that cannot be written
  4    output exists (pass --force) or would replace an input (even with --force)
  5    merge refused (chunks from different inputs, parameters or versions;
       missing or duplicated chunks)
  130  interrupted (SIGINT), 143 terminated (SIGTERM): no partial output is left"""


class CLIError(Exception):
    """An error with its exit code."""

    def __init__(self, message: str, code: int = 3):
        super().__init__(message)
        self.code = code


class MergeError(Exception):
    """Chunks that cannot be merged into one result."""


def quiet_logging(args: argparse.Namespace) -> None:
    """``--quiet``: no progress bars or log messages (scanpy's verbosity 0)."""
    if getattr(args, "quiet", False):
        import scanpy as sc

        sc.settings.verbosity = 0


def add_output(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-o", "--output", required=True, metavar="PATH", help=what)
    parser.add_argument(
        "--force", action="store_true", help="replace the output if it exists (never an input)"
    )
