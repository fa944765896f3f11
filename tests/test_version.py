"""The version is written in one place, scvarpart/_version.py, and read from there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

import scvarpart as svp

ROOT = Path(__file__).parent.parent
VERSION_FILE = ROOT / "scvarpart" / "_version.py"
# CHANGELOG.md names every release in its headings: that is history, not a pin
ALLOWED = {VERSION_FILE, ROOT / "CHANGELOG.md"}
ENVIRONMENTS = sorted((ROOT / "workflows").rglob("environment.yml"))


def pins(text: str, version: str) -> list[str]:
    """Places in ``text`` that pin scvarpart's ``version``.

    ``scvarpart==V`` (pip), ``scvarpart=V`` (conda), ``scvarpart@V``, and
    ``version = "V"`` / ``version: V`` (metadata), but not another package's version
    that happens to be equal (``encoding-version``, ``numpy>=V``).
    """
    v = re.escape(version)
    pattern = re.compile(
        rf"scvarpart\s*(?:={{1,3}}|>=|<=|~=|@)\s*v?{v}(?![\w.])"
        rf"|(?<![\w-])(?:__)?version(?:__)?[\"']?\s*[:=]\s*[\"']?v?{v}(?![\w.])",
        re.IGNORECASE,
    )
    return [m.group(0) for m in pattern.finditer(text)]


def project_files() -> list[Path]:
    """Every file of the project that git tracks or would track (not ignored ones)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name and (ROOT / name).is_file()]


def test_version_is_read_from_the_version_file():
    text = VERSION_FILE.read_text()
    assert re.fullmatch(r'__version__ = "[^"]+"\n', text)
    assert svp.__version__ in text


def test_the_check_finds_pins_and_nothing_else():
    # a made-up version, so that this file does not pin the real one
    v = "9.8.7"
    assert pins("      - scvarpart==9.8.7\n", v) == ["scvarpart==9.8.7"]
    assert pins("  - bioconda::scvarpart=9.8.7", v) == ["scvarpart=9.8.7"]
    assert pins('version = "9.8.7"', v) == ['version = "9.8.7']
    assert pins("version: 9.8.7", v) == ["version: 9.8.7"]
    assert pins('__version__ = "9.8.7"', v) == ['__version__ = "9.8.7']
    assert pins('f.attrs["encoding-version"] = "9.8.7"', v) == []
    assert pins("scvarpart==9.8.71", v) == []
    assert pins("numpy>=9.8.7", v) == []


def test_no_file_pins_the_version():
    found = {}
    for path in project_files():
        if path in ALLOWED:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary files (inventories, images, h5ad) hold no pin
        if hits := pins(text, svp.__version__):
            found[str(path.relative_to(ROOT))] = hits
    assert not found, (
        f"the version {svp.__version__} is hard-coded outside scvarpart/_version.py: "
        f"{found}; read it from the package instead"
    )


def test_workflow_environments_install_the_checkout():
    # conda runs pip from the environment file's folder: the relative path must reach
    # the repository's root, whose package carries the one version
    # one per process module: simulate, groups, fit, merge, report
    modules = sorted(p.parent.name for p in ENVIRONMENTS)
    assert modules == ["fit", "groups", "merge", "report", "simulate"]
    for path in ENVIRONMENTS:
        env = yaml.safe_load(path.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        assert len(pip) == 1, path
        target = (path.parent / pip[0]).resolve()
        assert target == ROOT.resolve(), (path, target)
        assert (target / "pyproject.toml").exists()
