"""The Examples sections of the public API run, and every public function has one.

Exactly the names in ``__all__`` of the user-facing modules are collected (with the
methods of public classes), so a helper's docstring is never run by accident and a new
public function without an example fails here.
"""

from __future__ import annotations

import doctest
import importlib
import inspect

import matplotlib
import pytest

matplotlib.use("Agg")

MODULES = ("pp", "tl", "pl", "get", "lmm", "varpart", "datasets")
# Examples that need something this test cannot provide; each is marked
# `# doctest: +SKIP` in its docstring, and its function has another example line or
# is listed here with why.
NEEDS_A_FILE = {
    # reads an .h5ad file of the user's (tl/_file.py's example is skipped as a whole)
    "tl.variance_partition_file",
}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public() -> list[tuple[str, object]]:
    out = []
    for module in MODULES:
        mod = importlib.import_module(f"scvarpart.{module}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if callable(obj):
                out.append((f"{module}.{name}", obj))
    return out


def _tests(name: str, obj: object) -> list[doctest.DocTest]:
    # compiled numba functions: their docstring is the Python function's
    target = getattr(obj, "py_func", obj)
    finder = doctest.DocTestFinder(recurse=isinstance(target, type))
    tests = finder.find(target, f"scvarpart.{name}", globs={})
    return [t for t in tests if t.examples]


PUBLIC = _public()
FUNCTIONS = [(name, obj) for name, obj in PUBLIC if not isinstance(obj, type)]
# functions, and the classes whose docstrings (or methods') have examples
WITH_EXAMPLES = [(name, obj) for name, obj in PUBLIC if _tests(name, obj)]


@pytest.mark.parametrize(("name", "obj"), FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_every_public_function_has_an_example(name, obj):
    target = getattr(obj, "py_func", obj)
    doc = inspect.getdoc(target) or ""
    assert "\nExamples\n--------\n" in doc, f"scvarpart.{name} has no Examples section"
    runnable = [
        ex for test in _tests(name, obj) for ex in test.examples if not ex.options.get(doctest.SKIP)
    ]
    if name not in NEEDS_A_FILE:
        assert runnable, f"scvarpart.{name}: every example line is skipped"


@pytest.mark.parametrize(("name", "obj"), WITH_EXAMPLES, ids=[n for n, _ in WITH_EXAMPLES])
def test_examples_run(name, obj, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import scanpy as sc

    tests = _tests(name, obj)
    # examples that save figures or files write into a temporary directory
    monkeypatch.chdir(tmp_path)
    figdir = sc.settings.figdir
    sc.settings.figdir = tmp_path
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    try:
        for test in tests:
            runner.run(test)
    finally:
        sc.settings.figdir = figdir
        plt.close("all")
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} example(s) of scvarpart.{name} failed"
