"""lme4's InstEval (73,421 ratings; 2,972 students x 1,128 lecturers x 14 departments).

Usage::

    python benchmarks/insteval.py [--repeats 3]

Fits lme4's reference models with scvarpart (the blocked engine is chosen
automatically) and compares the objective and time with lme4's own fits stored in
tests/data (lme4 1.1-31 on this machine: ``fit_seconds``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TESTS = Path(__file__).parent.parent / "tests"
sys.path.insert(0, str(TESTS))
from conftest import fit_frame, read_reference_csv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    frame = read_reference_csv("InstEval")
    reml = json.loads((TESTS / "data" / "InstEval.json").read_text())
    ml = json.loads((TESTS / "data" / "InstEval.ml.json").read_text())
    cases = [
        (reml["formula"], True, reml["REMLcrit"], reml["fit_seconds"]),
        (ml["formula"], False, ml["deviance_ML"], ml["fit_seconds"]),
    ]
    fit_frame(cases[0][0], frame.head(5000), reml=True)  # compile
    for formula, is_reml, objective, lme4_seconds in cases:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, fit = fit_frame(formula, frame, reml=is_reml)
            times.append(time.perf_counter() - start)
        ours = min(times)
        print(f"{formula}  ({'REML' if is_reml else 'ML'})")
        print(
            f"  scvarpart {ours:.2f} s (best of {args.repeats}), lme4 {lme4_seconds:.1f} s: "
            f"{lme4_seconds / ours:.0f}x; objective {fit.deviance[0]:.6f} vs lme4 "
            f"{objective:.6f} (difference {fit.deviance[0] - objective:+.2e})"
        )


if __name__ == "__main__":
    main()
