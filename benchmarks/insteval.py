"""lme4's InstEval (73,421 ratings; 2,972 students x 1,128 lecturers x 14 departments).

Usage::

    python benchmarks/insteval.py [--repeats 3]

Fits lme4's reference models (REML, and ML with a fixed effect) with scvarpart
(the blocked engine is chosen automatically) and, in the same run and
alternating with it, with lme4 (``benchmarks/lmer_insteval.R``, when ``Rscript``
with lme4 is installed; only the ``lmer`` call is timed). Prints the median and
range of the times over ``--repeats``, the ratio of the medians, and both
objectives. Run in the user's default environment: scvarpart limits BLAS to one
thread inside its fits by itself.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(TESTS))
from conftest import fit_frame, read_reference_csv  # noqa: E402

CASES = [
    ("y ~ 1 + (1 | s) + (1 | d) + (1 | dept)", True),
    ("y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", False),
]


def _lme4(formula: str, reml: bool) -> tuple[float, float] | None:
    if shutil.which("Rscript") is None:
        return None
    out = subprocess.run(
        [
            "Rscript",
            str(HERE / "lmer_insteval.R"),
            str(TESTS / "data" / "InstEval.csv.gz"),
            formula,
            "TRUE" if reml else "FALSE",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, objective = map(float, out.stdout.split())
    return seconds, objective


def _spread(times: list[float]) -> str:
    return f"{np.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    frame = read_reference_csv("InstEval")
    fit_frame(CASES[0][0], frame.head(5000), reml=True)  # compile
    for formula, reml in CASES:
        ours, theirs, objectives = [], [], {}
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, fit = fit_frame(formula, frame, reml=reml)
            ours.append(time.perf_counter() - start)
            objectives["scvarpart"] = fit.deviance[0]
            res = _lme4(formula, reml)
            if res is not None:
                theirs.append(res[0])
                objectives["lme4"] = res[1]
        print(f"{formula}  ({'REML' if reml else 'ML'}), {args.repeats} repeats, alternating")
        line = f"  scvarpart {_spread(ours)}"
        if theirs:
            line += (
                f"; lme4 {_spread(theirs)}: {np.median(theirs) / np.median(ours):.1f}x; "
                f"objective {objectives['scvarpart']:.6f} vs lme4 {objectives['lme4']:.6f} "
                f"(difference {objectives['scvarpart'] - objectives['lme4']:+.2e})"
            )
        else:
            line += f"; objective {objectives['scvarpart']:.6f} (lme4 not installed)"
        print(line)


if __name__ == "__main__":
    main()
