"""The command line under faults (issue 8): outputs that would replace an input, runs
killed mid-write, damaged or unreadable inputs, unwritable outputs, reruns of report,
where example's results are, and a start-up that imports no scientific stack."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import h5py
import pytest
from test_cli import cli, ok

from scvarpart import _io
from scvarpart.cli import Terminated, sigterm_raises

FORMULA = "~ log_umi + (1|patient)"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """An input, its two chunks and its result."""
    folder = tmp_path_factory.mktemp("faults")
    ok(cli("simulate", "--n-cells", 200, "--n-genes", 6, "-o", folder / "in.h5ad"))
    for i in (1, 2):
        path = folder / f"c{i}.h5ad"
        ok(cli("fit", folder / "in.h5ad", "--formula", FORMULA, "--genes", f"{i}/2", "-o", path))
    ok(cli("fit", folder / "in.h5ad", "--formula", FORMULA, "-o", folder / "full.h5ad"))
    return folder


# --- 1. an output is never an input, with or without --force -----------------------------


def test_merge_never_writes_over_a_chunk_or_its_input(work):
    files = [work / "c1.h5ad", work / "c2.h5ad", work / "in.h5ad"]
    before = [_md5(f) for f in files]
    for target in files:
        proc = cli("merge", *files[:2], "--into", files[2], "-o", target, "--force")
        assert proc.returncode == 4, proc.stderr
        assert f"{target} is an input" in proc.stderr and "even with --force" in proc.stderr
    assert [_md5(f) for f in files] == before


@pytest.mark.parametrize("alias", ["symlink", "hard link", "relative path"])
def test_an_input_under_another_name_is_still_an_input(work, tmp_path, alias):
    chunk = tmp_path / "c1.h5ad"
    chunk.write_bytes((work / "c1.h5ad").read_bytes())
    if alias == "symlink":
        other = tmp_path / "link.h5ad"
        other.symlink_to(chunk)
    elif alias == "hard link":
        other = tmp_path / "hard.h5ad"
        os.link(chunk, other)
    else:  # up and back down again, from another working folder
        other = Path("..") / tmp_path.name / "c1.h5ad"
    before = _md5(chunk)
    args = ("merge", chunk, work / "c2.h5ad", "--into", work / "in.h5ad", "-o", other)
    proc = cli(*args, "--force", cwd=tmp_path)
    assert proc.returncode == 4 and "is an input" in proc.stderr, proc.stderr
    assert _md5(chunk) == before


def test_fit_and_report_never_write_over_their_inputs(work, tmp_path):
    source, plan = work / "in.h5ad", tmp_path / "plan.toml"
    plan.write_text(f'formula = "{FORMULA}"\n')
    before = _md5(source), _md5(plan)
    for args in (
        ("fit", source, "--formula", FORMULA, "--genes", "1/2", "-o", source),  # a chunk
        ("fit", source, "--plan", plan, "--genes", "1/2", "-o", plan),
        ("report", source, "--tsv", source),
    ):
        proc = cli(*args, "--force")
        assert proc.returncode == 4 and "is an input" in proc.stderr, (args, proc.stderr)
    assert (_md5(source), _md5(plan)) == before


def test_an_output_inside_an_input_store_or_holding_one_is_refused(work, tmp_path):
    store = tmp_path / "in.zarr"
    ad.read_h5ad(work / "in.h5ad").write_zarr(store)
    proc = cli("fit", store, "--formula", FORMULA, "-o", store / "out.zarr")
    assert proc.returncode == 4 and "lies inside the input" in proc.stderr
    chunk = tmp_path / "out.zarr" / "c1.h5ad"  # a chunk kept inside the output's folder
    chunk.parent.mkdir()
    chunk.write_bytes((work / "c1.h5ad").read_bytes())
    merge = ("merge", chunk, work / "c2.h5ad", "--into", work / "in.h5ad", "-o", chunk.parent)
    proc = cli(*merge, "--force")
    assert proc.returncode == 4 and "holds the input" in proc.stderr
    assert chunk.exists()


def test_a_folder_other_than_a_zarr_store_is_never_replaced(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    proc = cli("simulate", "--n-cells", 60, "--n-genes", 3, "-o", folder, "--force")
    assert proc.returncode == 4 and "not a zarr store" in proc.stderr
    assert (folder / "notes.txt").read_text() == "mine"


# --- 2. SIGTERM and SIGKILL mid-write -------------------------------------------------------


def _temporaries(output: Path) -> list[Path]:
    return sorted(p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def _paused_write(output: Path) -> subprocess.Popen:
    """``scvarpart simulate -o OUTPUT`` in a new process, stopped by the test hook with
    its complete temporary output written and not yet renamed."""
    flag = output.with_name("paused")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scvarpart", "simulate", "--n-cells", "300", "-o", str(output)],
        env={**os.environ, _io.PAUSE_HOOK: str(flag)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(1200):  # the hook's file appears after imports: seconds, more when busy
        if flag.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert flag.exists(), proc.communicate()
    return proc


def test_sigterm_mid_write_removes_the_temporary_copy(tmp_path):
    output = tmp_path / "sim.h5ad"
    proc = _paused_write(output)
    (tmp,) = _temporaries(output)
    assert (tmp / output.name).stat().st_size > 100_000  # the whole copy, waiting
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip() == "scvarpart simulate: terminated by SIGTERM; temporary files removed."
    assert not output.exists() and _temporaries(output) == []


def _fake_temporary(output: Path, owner: dict, tag: str) -> Path:
    """A temporary folder of ``output`` as atomic_output names them (``tag``: 8 of
    [a-z0-9_]), with the marker of ``owner``."""
    tmp = output.parent / f".{output.name}.{owner['pid']}.{tag}.tmp"
    tmp.mkdir()
    (tmp / "owner.json").write_text(json.dumps(owner))
    (tmp / output.name).write_bytes(b"partial")
    return tmp


def test_sigkill_leftovers_are_removed_by_the_next_run_and_live_ones_kept(tmp_path):
    output = tmp_path / "sim.h5ad"
    proc = _paused_write(output)
    proc.kill()
    proc.communicate(timeout=60)
    (dead,) = _temporaries(output)
    assert (dead / output.name).stat().st_size > 100_000  # what issue 8 found piling up
    me = _io._owner()  # a live run: this process
    live = _fake_temporary(output, me, "live_run")
    # another host's: its PIDs cannot be checked from here
    elsewhere = _fake_temporary(output, {**me, "pid": 1, "host": "x" + me["host"]}, "other_hs")
    unmarked = output.parent / f".{output.name}.{proc.pid}.unmarked.tmp"
    unmarked.mkdir()  # killed before its marker was written: its owner cannot be told
    dead_owner = {**me, "pid": proc.pid}
    another_output = _fake_temporary(output.with_name("other.h5ad"), dead_owner, "not_mine")

    ok(cli("simulate", "--n-cells", 300, "-o", output))
    assert ad.read_h5ad(output).n_obs == 300
    assert _temporaries(output) == sorted([live, elsewhere, unmarked])
    assert another_output.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_reused_pid_does_not_keep_a_stale_temporary(tmp_path):
    """A dead run's PID may belong to a new process: its start time tells them apart."""
    output = tmp_path / "out.h5ad"
    stale = _fake_temporary(output, {**_io._owner(), "start": "1"}, "pid_used")
    assert _io.remove_stale_temporaries(output) == [stale]
    assert not stale.exists()


def test_sigterm_raises_only_while_a_command_writes(tmp_path):
    """The handler is in place while a temporary output exists, and only in commands:
    elsewhere SIGTERM kills at once, even a process stuck in C code."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this test process already handles SIGTERM")
    output = tmp_path / "out.txt"
    with sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # nothing to remove yet
        with pytest.raises(Terminated), _io.atomic_output(output) as tmp:
            tmp.write_text("partial")
            # never send SIGTERM to the test process without the handler in place
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # interrupted by the handler at once
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
        assert not output.exists() and _temporaries(output) == []
    with _io.atomic_output(output) as tmp:  # library use: signals are left alone
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        tmp.write_text("done")

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with sigterm_raises(), _io.atomic_output(output, force=True) as tmp:
            assert signal.getsignal(signal.SIGTERM) is mine  # a caller's own handler stays
            tmp.write_text("again")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert output.read_text() == "again"


# --- 3. damaged and unreadable inputs, unwritable outputs: exit 3, one line ----------------


@pytest.fixture(scope="module")
def bad(work) -> dict[str, tuple[Path, str]]:
    """Inputs that cannot be read, and what the message must say about each."""
    folder = work / "bad"
    folder.mkdir()
    good = (work / "in.h5ad").read_bytes()
    (folder / "truncated.h5ad").write_bytes(good[: len(good) // 2])
    (folder / "text.h5ad").write_text("gene\tcount\nA\t1\n")
    (folder / "notzarr.zarr").mkdir()
    (folder / "notzarr.zarr" / "readme.txt").write_text("not a store")
    with h5py.File(folder / "other.h5ad", "w") as f:
        f["values"] = [1, 2, 3]
    # intact header and groups, but the gene names' data overwritten
    damaged = folder / "damaged.h5ad"
    damaged.write_bytes(good)
    with h5py.File(damaged, "r") as f:
        index = f["var"]["_index"]
        offset, size = index.id.get_offset(), index.id.get_storage_size()
    with open(damaged, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * size)
    return {
        "truncated": (folder / "truncated.h5ad", "is truncated"),
        "text": (folder / "text.h5ad", "is not an HDF5 file"),
        "missing zarr": (folder / "missing.zarr", "does not exist"),
        "folder": (folder / "notzarr.zarr", "is a folder but not a zarr store"),
        "not AnnData": (folder / "other.h5ad", "is not an AnnData file"),
        "damaged": (folder / "damaged.h5ad", "cannot be read"),
    }


def _one_line_error(proc, *words) -> None:
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "please report" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "kind", ["truncated", "text", "missing zarr", "folder", "not AnnData", "damaged"]
)
@pytest.mark.parametrize("role", ["fit", "merge --into", "merge chunk", "report"])
def test_unreadable_inputs_exit_3_with_one_line(work, bad, tmp_path, kind, role):
    path, reason = bad[kind]
    out = tmp_path / ("out.zarr" if path.suffix == ".zarr" and role == "fit" else "out.h5ad")
    chunks = [work / "c1.h5ad", work / "c2.h5ad"]
    args = {
        "fit": ("fit", path, "--formula", FORMULA, "-o", out),
        "merge --into": ("merge", *chunks, "--into", path, "-o", out),
        "merge chunk": ("merge", path, chunks[1], "--into", work / "in.h5ad", "-o", out),
        "report": ("report", path, "--tsv", tmp_path / "t.tsv"),
    }[role]
    proc = cli(*args)
    if role == "merge --into" and kind == "damaged":  # its content is not the chunks' input
        assert proc.returncode == 5 and "computed from another input" in proc.stderr
    else:
        _one_line_error(proc, str(path), reason)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["fit", "fit chunk", "merge", "report", "simulate", "example"])
def test_an_output_under_a_regular_file_exits_3(work, tmp_path, command):
    """A genuinely unwritable place, also for root (who writes into read-only folders):
    a path below a regular file (ENOTDIR for everyone)."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder was expected")
    out = blocker / "sub" / "out.h5ad"
    args = {
        "fit": ("fit", work / "in.h5ad", "--formula", FORMULA, "-o", out),
        "fit chunk": ("fit", work / "in.h5ad", "--formula", FORMULA, "--genes", "1/2", "-o", out),
        "merge": ("merge", work / "c1.h5ad", work / "c2.h5ad", "--into", work / "in.h5ad"),
        "report": ("report", work / "full.h5ad", "--tsv", out),
        "simulate": ("simulate", "--n-cells", 60, "-o", out),
        "example": ("example", "--n-cells", 60, "--n-genes", 2, "-o", out),
    }[command]
    if command == "merge":
        args = (*args, "-o", out)
    proc = cli(*args)
    _one_line_error(proc, str(out), f"{blocker} is a file, not a folder")
    assert proc.stdout == ""  # refused before any work
    assert blocker.read_text() == "a file where a folder was expected"


@contextmanager
def _unwritable_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder in which this process cannot create files.

    A read-only folder for a user; root ignores permission bits, so for root the
    kernel's /proc, where no process can create files.
    """
    if os.geteuid() == 0:
        if not Path("/proc/self").is_dir():
            pytest.skip("root writes into read-only folders, and there is no /proc here")
        yield Path("/proc")
        return
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        yield folder
    finally:
        folder.chmod(0o700)


def test_a_read_only_folder_exits_3(work, tmp_path):
    with _unwritable_folder(tmp_path) as folder:
        proc = cli("simulate", "--n-cells", 60, "-o", folder / "out.h5ad")
    _one_line_error(proc, "cannot create files in", str(folder))


# --- 4. report can be rerun -------------------------------------------------------------------


def test_report_reruns_and_replaces_another_table_only_with_force(work, tmp_path):
    tsv = tmp_path / "full.varpart.tsv"
    ok(cli("report", work / "full.h5ad", cwd=tmp_path))
    first, stamp = tsv.read_bytes(), tsv.stat().st_mtime_ns
    proc = ok(cli("report", work / "full.h5ad", cwd=tmp_path))
    assert "median fraction" in proc.stdout and "full.varpart.tsv is up to date" in proc.stdout
    assert tsv.read_bytes() == first and tsv.stat().st_mtime_ns == stamp  # left as it was

    # a refitted result writes the same default name with another table
    refit = tmp_path / "refit" / "full.h5ad"
    ok(cli("fit", work / "in.h5ad", "--formula", FORMULA, "--method", "REML", "-o", refit))
    proc = cli("report", refit, cwd=tmp_path)
    assert proc.returncode == 4 and "holds another table" in proc.stderr
    assert "--force" in proc.stderr and proc.stdout == ""  # refused before printing
    assert tsv.read_bytes() == first
    proc = ok(cli("report", refit, "--force", cwd=tmp_path))
    assert "wrote full.varpart.tsv" in proc.stdout and tsv.read_bytes() != first


# --- 5. example says where its results are ----------------------------------------------------


def test_example_says_where_its_results_are(tmp_path):
    proc = ok(cli("example", "--n-cells", 200, "--n-genes", 3, "--quiet"))
    assert "results not saved: pass --output" in proc.stdout
    out = tmp_path / "example.h5ad"
    proc = ok(cli("example", "--n-cells", 200, "--n-genes", 3, "--quiet", "-o", out))
    assert f"results saved in {out}" in proc.stdout
    proc = cli("example", "--n-cells", 200, "--n-genes", 3, "--quiet", "-o", out)
    assert proc.returncode == 4 and "fitted in" not in proc.stdout  # refused before the work


# --- 6. start-up ---------------------------------------------------------------------------------

_HEAVY = ("scanpy", "matplotlib", "numba", "anndata", "h5py", "zarr", "pandas", "numpy")


def test_the_command_line_starts_without_the_scientific_stack():
    code = f"""
import sys
import scvarpart, scvarpart.cli
from scvarpart.cli import main
for argv in (["--version"], ["--help"], ["fit", "--help"], ["merge", "--help"],
             ["report", "--help"], ["simulate", "--help"], ["example", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
print("IMPORTED", sorted(m for m in {_HEAVY!r} if m in sys.modules))
print("SUBPACKAGES", sorted(m for m in sys.modules if m.split(".")[:2] in
      (["scvarpart", "tl"], ["scvarpart", "pl"], ["scvarpart", "datasets"])))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-2:] == ["IMPORTED []", "SUBPACKAGES []"]
    assert lines[0].startswith("scvarpart ")  # --version printed

    proc = subprocess.run(
        [sys.executable, "-m", "scvarpart", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: scvarpart")
    assert all(name in proc.stdout for name in ("fit", "merge", "report", "exit codes"))


def test_subpackages_load_on_first_use():
    code = """
import sys
import scvarpart as svp
assert "scvarpart.datasets" not in sys.modules
from scvarpart import datasets
assert datasets is svp.datasets and callable(svp.datasets.crossed_example)
assert callable(svp.get.batch_dominated)
assert {"datasets", "get", "pl", "tl"} <= set(dir(svp)) and "tl" in svp.__all__
try:
    svp.nope
except AttributeError as err:
    assert "nope" in str(err)
else:
    raise AssertionError("svp.nope")
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr
    import scvarpart as svp  # and, as always, the tools and plots
    from scvarpart import pl, tl

    assert tl is svp.tl and callable(tl.variance_partition) and callable(pl.rho)


# --- 7. bad weights and kinship files: one clear line, nothing written -------------------------


def _kinship_cases():
    """name -> (what to write, command-line options, exit code, words of the message)."""

    def write(name, frame, **kw):
        return lambda folder: frame().to_csv(folder / name, **kw)

    def edited(edit):
        def frame():
            K = _K().astype(object)
            edit(K)
            return K

        return frame

    def set_(i, j, value):
        return edited(lambda K: K.iat.__setitem__((i, j), value))

    nsym = edited(lambda K: K.iat.__setitem__((0, 1), K.iat[0, 1] + 0.5))
    cov = ["--covariance", "patient=bad/k.csv"]
    return {
        "missing file": (None, ["--covariance", "patient=bad/nope.csv"], 3,
                         ["--covariance patient=bad/nope.csv", "does not exist"]),
        "extension": (write("k.xlsx", _K), ["--covariance", "patient=bad/k.xlsx"], 3,
                      ["bad/k.xlsx must be named .csv"]),
        "not square": (write("k.csv", lambda: _K().iloc[:, :-1]), cov, 3,
                       ["is not square: 12 rows x 11 columns", "header row of level names"]),
        "other levels": (write("k.csv", lambda: _K().rename(columns={"P12": "P99"})), cov, 3,
                         ["do not name the same levels", "'P99'", "'P12'"]),
        "non-numeric": (write("k.csv", set_(2, 3, "abc")), cov, 3,
                        ["non-numeric entries", "'abc' in row 'P03', column 'P04'"]),
        "missing entry": (write("k.csv", set_(2, 3, None)), cov, 3,
                          ["missing or infinite entries", "row 'P03', column 'P04'"]),
        "tabs in a .csv": (write("k.csv", _K, sep="\t"), cov, 3,
                           ["not square", "It looks tab-separated: name it .tsv"]),
        "not symmetric": (write("k.csv", nsym), cov, 3,
                          ["--covariance patient=bad/k.csv: covariance['patient'] is not sym"]),
        "not PSD": (write("k.csv", set_(0, 0, -5.0)), cov, 3,
                    ["not positive semi-definite", "--covariance patient=bad/k.csv"]),
        "missing level": (write("k.csv", lambda: _K().drop(index="P12", columns="P12")), cov, 3,
                          ["has no row for 1 level(s)", "'P12'", "--covariance patient="]),
        "unknown term": (write("k.csv", _K), ["--covariance", "donor=bad/k.csv"], 3,
                         ["['donor']", "not random terms", "Add (1|donor)"]),
        "not TERM=PATH": (None, ["--covariance", "kinship.csv"], 2,
                          ["--covariance expects TERM=PATH"]),
        "term twice": (write("k.csv", _K), [*cov, *cov], 2, ["given twice"]),
        "weights not a column": (None, ["--weights", "nope"], 3,
                                 ["weights='nope' is not a column"]),
        "weights categorical": (None, ["--weights", "day"], 3, ["must be numeric"]),
    }  # fmt: skip


def _K():
    return _KINSHIP["K"].copy()


_KINSHIP: dict = {}


@pytest.fixture(scope="module")
def kin_faults(tmp_path_factory) -> Path:
    from test_cli import kinship_data

    folder = tmp_path_factory.mktemp("kinship_faults")
    _KINSHIP["K"] = kinship_data(folder)
    return folder


@pytest.mark.parametrize("case", list(_kinship_cases()))
def test_bad_weights_and_kinship_files_exit_with_one_clear_line(kin_faults, tmp_path, case):
    from test_cli import KIN_MODEL

    make, options, code, words = _kinship_cases()[case]
    bad = tmp_path / "bad"
    bad.mkdir()
    if make is not None:
        make(bad)
    files = [kin_faults / "in.h5ad", kin_faults / "kinship.csv", *bad.iterdir()]
    before = [_md5(f) for f in files]
    out = tmp_path / "out" / "o.h5ad"
    out.parent.mkdir()
    for genes in ([], ["--genes", "1/2"]):  # a whole fit and a chunk
        proc = cli("fit", kin_faults / "in.h5ad", *KIN_MODEL, *options, *genes, "-o", out,
                   cwd=tmp_path)  # fmt: skip
        assert proc.returncode == code, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        for word in words:
            assert word in proc.stderr, proc.stderr
    assert list(out.parent.iterdir()) == []  # nothing written, not even a temporary
    assert [_md5(f) for f in files] == before  # the inputs untouched


def test_non_positive_weights_name_the_cell(kin_faults, tmp_path):
    from test_cli import KIN_MODEL

    adata = ad.read_h5ad(kin_faults / "in.h5ad")
    adata.obs.iloc[7, adata.obs.columns.get_loc("w")] = 0.0
    adata.write_h5ad(tmp_path / "zero.h5ad")
    out = tmp_path / "o.h5ad"
    proc = cli("fit", tmp_path / "zero.h5ad", *KIN_MODEL, "--weights", "w", "-o", out)
    _one_line_error(proc, "weights='w' must be positive and finite", "0.0")
    assert not out.exists()


def test_an_output_never_replaces_a_kinship_file(kin_faults, tmp_path):
    from test_cli import KIN_MODEL

    kinship = tmp_path / "k.csv"
    kinship.write_bytes((kin_faults / "kinship.csv").read_bytes())
    before = _md5(kinship)
    proc = cli("fit", kin_faults / "in.h5ad", *KIN_MODEL, "--covariance", f"patient={kinship}",
               "--force", "-o", kinship)  # fmt: skip
    assert proc.returncode == 4 and "is an input" in proc.stderr, proc.stderr
    assert _md5(kinship) == before
