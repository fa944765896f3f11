"""The documentation site builds without a warning, offline, and lists the whole API."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scvarpart import _docs

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def test_api_page_lists_every_exported_name():
    # the build checks this too (docs/conf.py), but a build takes a minute
    listed = set(re.findall(r"^\s*([a-z]+\.\w+)\s*$", (DOCS / "api.md").read_text(), re.M))
    modules = ("pp", "tl", "pl", "get", "varpart", "lmm", "datasets")
    # a class re-exported by another module (svp.lmm.VarPartResult) is listed once, where
    # it belongs
    pages = {
        id(getattr(importlib.import_module(f"scvarpart.{m}"), n))
        for m, n in (entry.split(".", 1) for entry in listed)
        if m in modules
    }
    missing = [
        f"{module}.{name}"
        for module in modules
        for name in importlib.import_module(f"scvarpart.{module}").__all__
        if f"{module}.{name}" not in listed
        and not (
            callable(obj := getattr(importlib.import_module(f"scvarpart.{module}"), name))
            and id(obj) in pages
        )
    ]
    assert not missing, f"add these lines to docs/api.md: {missing}"


def test_doc_params_fills_fragments_and_refuses_unknown_ones():
    @_docs.doc_params(doc_layer=_docs.doc_layer)
    def f(adata, layer=None):
        """Do something.

        Parameters
        ----------
        {doc_layer}
        other
            A ``{"dict": 1}`` stays as it is.
        """

    assert f.__doc__.splitlines()[4:] == [
        "layer",
        "    Use ``adata.layers[layer]`` instead of ``adata.X``.",
        "other",
        '    A ``{"dict": 1}`` stays as it is.',
    ]
    with pytest.raises(KeyError, match="doc_lyer"):

        @_docs.doc_params(doc_layer=_docs.doc_layer)
        def g(layer=None):
            """Do something.

            {doc_lyer}
            """


def test_fragments_are_whole_entries():
    # a fragment starts with a parameter name at column 0 and indents its description by 4
    for name in _docs.__all__:
        text = getattr(_docs, name)
        if not isinstance(text, str):
            continue
        lines = text.splitlines()
        assert re.fullmatch(r"[a-z_]+(, [a-z_]+)*", lines[0]), name
        assert all(line.startswith(("    ", *"abcdefghijklmnopqrstuvwxyz")) for line in lines)


# a full build executes the two notebooks (~40 s, cached in docs/_build/.jupyter_cache
# afterwards) and renders the API pages
@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            DOCS,
            tmp_path / "html",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "html" / "generated" / "scvarpart.tl.variance_partition.html").exists()
