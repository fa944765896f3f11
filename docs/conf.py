"""Sphinx configuration of the scvarpart documentation.

Build with ``python -m sphinx -W -b html docs docs/_build``. The build is offline: the
intersphinx inventories are read from ``docs/_inv`` (see ``docs/_inv/README.md``), the
notebooks are executed locally (their outputs are cached between builds in
``docs/_build/.jupyter_cache``) and the command-line help pages are produced by running
``scvarpart COMMAND --help``.
"""

from __future__ import annotations

import filecmp
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

HERE = Path(__file__).parent
ROOT = HERE.parent
# document the checkout this configuration belongs to, whatever is installed
sys.path.insert(0, str(ROOT))

import scvarpart  # noqa: E402

logger = logging.getLogger(__name__)

project = "scvarpart"
author = "scvarpart developers"
copyright = "scvarpart developers"
release = scvarpart.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
]

# myst-nb writes executed notebooks to jupyter_execute beside the output folder, which is
# docs/ itself for `sphinx docs docs/_build`: not a source
exclude_patterns = [
    "_build",
    "_inv",
    "jupyter_execute",
    ".jupyter_cache",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
]
# .rst first: autosummary writes its generated pages with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# -- API reference ----------------------------------------------------------------------
autosummary_generate = True
# classes list their own documented members only (_templates/autosummary/class.rst)
templates_path = ["_templates"]
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
# "Attributes" sections as fields of the class: autodoc documents the members themselves,
# and two descriptions of one attribute (NamedTuple fields) are a duplicate-object warning
napoleon_use_ivar = True

# -- Cross-references, offline ----------------------------------------------------------
# Inventories cached from the Debian documentation packages (docs/_inv/README.md): the
# build never downloads one. Projects without a cached inventory are not linked.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(HERE / "_inv" / "python.inv")),
    "scipy": ("https://docs.scipy.org/doc/scipy", str(HERE / "_inv" / "scipy.inv")),
    "pandas": ("https://pandas.pydata.org/docs", str(HERE / "_inv" / "pandas.inv")),
}
intersphinx_timeout = 1

# -- MyST and notebooks -----------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
# The notebooks are stored without outputs (tests/test_notebooks.py checks it), so the
# docs run them; results are cached by content, so a rebuild without changes to a
# notebook does not run it again. Each takes ~10 s on simulated data: no download.
nb_execution_mode = "cache"
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_in_temp = True  # whatever a notebook writes goes to a temporary folder
nb_merge_streams = True

# -- HTML -------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"scvarpart {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False


# -- Build-time steps -------------------------------------------------------------------
# Public modules of the API reference, and the page that lists their names.
API_MODULES = ("pp", "tl", "pl", "get", "varpart", "lmm", "datasets")
API_PAGE = HERE / "api.md"


def copy_notebooks() -> None:
    """Copy ``notebooks/*.ipynb`` into ``docs/notebooks``, where Sphinx reads sources.

    Unchanged copies are left alone, so that Sphinx does not read them again.
    """
    target = HERE / "notebooks"
    target.mkdir(exist_ok=True)
    sources = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for source in sources:
        copy = target / source.name
        if not copy.exists() or not filecmp.cmp(source, copy, shallow=False):
            shutil.copyfile(source, copy)
    for stale in set(target.glob("*.ipynb")) - {target / s.name for s in sources}:
        stale.unlink()


CLI_COMMANDS = ("", "fit", "merge", "report", "correct", "example", "simulate")


def write_cli_help() -> None:
    """Write ``scvarpart [COMMAND] --help`` into the text files that ``cli.md`` includes.

    The page then shows exactly what the command prints.
    """
    target = HERE / "generated" / "cli"
    target.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COLUMNS": "88", "PYTHONPATH": str(ROOT)}
    for command in CLI_COMMANDS:
        args = [sys.executable, "-m", "scvarpart", *([command] if command else []), "--help"]
        text = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout
        path = target / f"{command or 'scvarpart'}.txt"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def listed_elsewhere(obj, listed: set[str]) -> bool:
    """Whether a class or function is listed under another public module of ``api.md``.

    A class re-exported by a second module (``svp.lmm.VarPartResult`` is
    ``svp.varpart.VarPartResult``) has one page, under the module it belongs to: two pages
    would describe the same object twice (a duplicate-object warning).
    """
    if not (isinstance(obj, type) or callable(obj)):
        return False
    for entry in listed:
        module, name = entry.split(".", 1)
        try:
            if getattr(importlib.import_module(f"scvarpart.{module}"), name, None) is obj:
                return True
        except ImportError:
            continue
    return False


def check_api_page(app) -> None:
    """Warn about every name a public module exports that ``api.md`` does not list.

    A name added to a module's ``__all__`` and not to the page fails the build (``-W``).
    """
    entry = re.compile(r"^\s*([a-z]+\.[A-Za-z_][A-Za-z0-9_]*)\s*$", re.M)
    listed = set(entry.findall(API_PAGE.read_text()))
    for name in API_MODULES:
        module = importlib.import_module(f"scvarpart.{name}")
        for public in getattr(module, "__all__", []):
            if f"{name}.{public}" not in listed and not listed_elsewhere(
                getattr(module, public), listed
            ):
                logger.warning(
                    f"scvarpart.{name}.{public} is exported (in __all__) but not in the API "
                    f"reference: add '{name}.{public}' to the list of its module in "
                    "docs/api.md."
                )


def skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leave out the "Alias for field number N" members of NamedTuples.

    Their fields are described in the class's own Attributes section.
    """
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def reexported_constant_docs(app, what, name, obj, options, lines) -> None:
    """Document a re-exported constant with the ``#:`` comment where it is defined.

    Without this, autodoc shows the docstring of its type (``str``'s, for a formula).
    """
    type_doc = (type(obj).__doc__ or "").strip().splitlines()
    if what != "data" or not lines or not type_doc or lines[0].strip() != type_doc[0].strip():
        return
    package, _, attr = name.rpartition(".")
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith(f"{package}.") and getattr(module, attr, None) is obj:
            docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
            if ("", attr) in docs:
                lines[:] = list(docs["", attr])
                return


def setup(app) -> None:
    """Generate the notebook copies and CLI help before reading, check the API page."""
    copy_notebooks()
    write_cli_help()
    app.connect("builder-inited", check_api_page)
    app.connect("autodoc-skip-member", skip_namedtuple_fields)
    app.connect("autodoc-process-docstring", reexported_constant_docs)
