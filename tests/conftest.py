"""Shared test fixtures. Reference data in tests/data/ come from ../shared/reference/
(lme4 1.1-31 fits of lme4's bundled datasets, and a simulated crossed design fitted
by lme4 and variancePartition 1.28.9); see tests/data/README.md."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _compiled_sources_cache() -> str:
    """A numba cache folder for this version of the compiled sources.

    numba keys a cached function by its own file only: after an edit of a function in
    one module, its callers in other modules load their stale compiled copies, with the
    old callee inside. A folder per hash of every compiled module makes a test run after
    any such edit compile afresh. Older folders are removed.
    """
    sources = sorted((ROOT / "scvarpart").rglob("*.py"))
    digest = hashlib.sha256()
    for path in sources:
        text = path.read_bytes()
        if b"numba" in text:
            digest.update(path.relative_to(ROOT).as_posix().encode() + text)
    parent = ROOT / ".numba_cache"
    folder = parent / digest.hexdigest()[:16]
    if parent.is_dir():
        for old in parent.iterdir():
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    return str(folder)


# before numba is imported (by scvarpart); subprocesses of the CLI tests inherit it
os.environ.setdefault("NUMBA_CACHE_DIR", _compiled_sources_cache())

import pytest  # noqa: E402

import scvarpart as svp  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def read_reference_csv(name: str):
    """A dataset of tests/data as lme4 saw it: grouping codes as categorical."""
    import pandas as pd

    path = DATA / (f"{name}.csv.gz" if name == "InstEval" else f"{name}.csv")
    frame = pd.read_csv(path)
    for col in frame.columns:
        if frame[col].dtype == object or col in {"s", "d", "dept", "replicate", "service"}:
            frame[col] = frame[col].astype(str).astype("category")
    return frame


def fit_frame(formula: str, frame, *, reml: bool, engine: str = "auto"):
    """Fit ``response ~ ...`` on a DataFrame with the package's layers (no AnnData)."""
    from scvarpart.design import build_design, parse_formula
    from scvarpart.lmm import fit_lmm

    parsed = parse_formula(formula)
    design = build_design(parsed, frame)
    y = frame[[parsed.response]].to_numpy(float)  # rows the design drops are skipped
    stats = svp.lmm.response_stats(y, design)
    terms = [t.term for t in stats.terms]
    fit = fit_lmm(stats.gram, stats.response, reml=reml, engine=engine, terms=terms)
    return design, fit
