"""Every README snippet runs as written: the ```python blocks in order, in one namespace,
and the ``scvarpart`` commands of the ```bash blocks, in a temporary folder. A ```text
block right after a ```python block is that block's output, and must match it."""

from __future__ import annotations

import contextlib
import glob
import io
import re
import shlex
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

README = Path(__file__).parent.parent / "README.md"
# the two set-up commands (pip install) are not run by the tests they install
SETUP = "pip install"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HEREDOC = re.compile(r"cat > (\S+) <<'(\w+)'")


def readme_blocks() -> list[tuple[str, str, int]]:
    """(language, code, line of the first code line) of every fenced block."""
    text = README.read_text()
    return [
        (m.group(1), m.group(2), text.count("\n", 0, m.start(2)) + 1) for m in _FENCE.finditer(text)
    ]


def shell_steps(code: str, first_line: int):
    """The steps of a bash block: ("write", path, text) for a here-document,
    ("run", argv, line) for a command; continuation lines joined, comments dropped."""
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        line, number = lines[i], first_line + i
        while line.endswith("\\"):
            i += 1
            line = line[:-1] + lines[i]
        i += 1
        heredoc = _HEREDOC.fullmatch(line.strip())
        if heredoc:
            end = lines.index(heredoc.group(2), i)
            yield "write", heredoc.group(1), "\n".join(lines[i:end]) + "\n", number
            i = end + 1
            continue
        argv = shlex.split(line, comments=True)
        if argv:
            yield "run", argv, None, number


def run_shell(code: str, first_line: int, capsys) -> None:
    from scvarpart.cli import main

    for kind, what, text, number in shell_steps(code, first_line):
        if kind == "write":
            Path(what).write_text(text)
            continue
        if what[0] != "scvarpart":
            pytest.fail(f"README.md:{number}: {what[0]!r} is not a command this test can run")
        argv = [a for arg in what[1:] for a in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
        code_ = main(argv)
        out = capsys.readouterr()
        assert code_ == 0, f"README.md:{number}: {shlex.join(what)} exited {code_}\n{out.err}"


def run_python(code: str, first_line: int, namespace: dict) -> str:
    # blank lines in front: tracebacks give the README's line numbers
    source = compile("\n" * (first_line - 1) + code, str(README), "exec")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(source, namespace)
    plt.close("all")
    return out.getvalue()


def test_readme_blocks_are_found():
    langs = [lang for lang, _, _ in readme_blocks()]
    assert langs.count("python") >= 4 and langs.count("bash") >= 3
    setup = [code for lang, code, _ in readme_blocks() if lang == "bash" and SETUP in code]
    assert len(setup) == 2


# every snippet, about 80 s: in the slow suite (.ci/run runs it on every change)
@pytest.mark.slow
def test_readme_runs_as_written(tmp_path, monkeypatch, capsys):
    import scanpy as sc

    monkeypatch.chdir(tmp_path)
    autoshow, figdir = sc.settings.autoshow, sc.settings.figdir
    sc.settings.autoshow, sc.settings.figdir = False, tmp_path / "figures"
    namespace = {"__name__": "readme"}
    blocks = readme_blocks()
    try:
        for i, (lang, code, line) in enumerate(blocks):
            if lang == "python":
                printed = run_python(code, line, namespace)
                if i + 1 < len(blocks) and blocks[i + 1][0] == "text":
                    expected = blocks[i + 1][1]
                    assert printed.strip() == expected.strip(), f"README.md:{line}: output"
            elif lang == "bash" and SETUP not in code:
                run_shell(code, line, capsys)
    finally:
        sc.settings.autoshow, sc.settings.figdir = autoshow, figdir
        client = namespace.get("client")
        if client is not None:
            client.close()
    # what the snippets say they write
    for name in ("fitted.h5ad", "atlas_varpart.h5ad", "cells.varpart.tsv", "cells.merged.h5ad"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "figures" / "variance_partition_reml.png").exists()
