"""Safe input and output: inputs checked before any work, outputs renamed into place.

Results are written next to their destination and renamed into place.

The input is never opened for writing: a result file is a copy of the input with
the result elements added, written under a temporary name in the destination's
folder and renamed, so a killed run leaves either the old file or the complete
new one. An output may never be one of the inputs (nor lie inside one, nor hold
one), even with ``force``.

The temporary folder of an output ``OUT`` is ``.OUT.PID.XXXXXXXX.tmp`` beside it,
with a marker file recording the process that owns it (host, PID and the process's
start time). A run that is killed (SIGKILL, power loss) leaves it behind; the next
run writing ``OUT`` removes it once its owner is no longer running, and never
touches a temporary folder whose owner may still be alive.

anndata and h5py are imported when first needed, so that the command line starts
quickly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .storage.stores import is_zarr as _is_zarr
from .storage.stores import open_store

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

__all__ = [
    "InputError",
    "OutputExistsError",
    "OutputNotWritableError",
    "atomic_output",
    "check_input",
    "check_output",
    "handle_sigterm_during_writes",
    "open_store",
    "read_covariance_file",
    "read_results",
    "read_var",
    "reading",
    "remove_stale_temporaries",
    "write_h5ad_atomic",
    "write_results_file",
]

#: Test hook (used by tests/test_cli_faults.py only): when this environment variable
#: names a file, a write creates that file and then waits (up to a minute) just before
#: renaming its complete temporary output into place, so that a test can kill the
#: process mid-write deterministically.
PAUSE_HOOK = "SCVARPART_TEST_PAUSE_BEFORE_RENAME"

_MARKER = "owner.json"


class OutputExistsError(FileExistsError):
    """The output exists (and ``force`` was not given) or would replace an input."""


class OutputNotWritableError(OSError):
    """The output cannot be created: its folder is missing, not a folder or read-only."""


class InputError(ValueError):
    """An input that cannot be read: missing, not an AnnData file or store, or damaged."""


# ---------------------------------------------------------------------------------------
# inputs


def _is_zarr_store(path: Path) -> bool:
    return any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zattrs"))


def _damage(path: Path, err: BaseException) -> str:
    """What is wrong with an input that h5py or zarr could not read, and what to do."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if _is_zarr(path):
        if path.is_dir() and not _is_zarr_store(path):
            return (
                "is a folder but not a zarr store (no zarr.json or .zgroup); give an .h5ad "
                "file or a .zarr store written by anndata"
            )
        return f"is not a readable zarr store ({text}); write it again with anndata"
    if "truncated file" in text:
        sizes = re.search(r"eof = (\d+).*stored_eof = (\d+)", text)
        got = f" ({int(sizes[1]):,} of {int(sizes[2]):,} bytes)" if sizes else ""
        return f"is truncated{got}, e.g. by an interrupted copy or download; copy it again"
    if "file signature not found" in text:
        return (
            "is not an HDF5 file, so not an .h5ad file; give an AnnData file written by "
            "anndata (write_h5ad) or a .zarr store"
        )
    return (
        f"cannot be read ({text}): it is damaged or not written by anndata; write or copy it again"
    )


def check_input(path: str | os.PathLike, what: str = "input") -> Path:
    """Check that ``path`` is an AnnData ``.h5ad`` file or ``.zarr`` store that opens.

    Raises
    ------
    InputError
        Naming the file, what is wrong with it and what to do: it does not exist, it is
        a text file or another non-HDF5 file, it is truncated or damaged, a folder that
        is not a zarr store, or an HDF5 file or zarr store without ``obs`` and ``var``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"the {what} {path} does not exist.")
    try:
        with open_store(path) as root:
            missing = [key for key in ("obs", "var") if key not in root]
    except Exception as err:  # h5py and zarr raise OSError, KeyError, ValueError...
        raise InputError(f"the {what} {path} {_damage(path, err)}.") from err
    if missing:
        raise InputError(
            f"the {what} {path} is not an AnnData file: it has no {' or '.join(missing)}; "
            "give a file written by anndata (write_h5ad or write_zarr)."
        )
    return path


def _raised_by_storage(err: BaseException) -> bool:
    """Whether ``err`` was raised inside h5py, zarr or their codecs.

    A damaged file makes them raise KeyError, RuntimeError or ValueError as well as
    OSError.
    """
    tb, filename = err.__traceback__, ""
    while tb is not None:
        filename, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return any(
        f"{os.sep}{package}{os.sep}" in filename or filename.startswith(f"{package}/")
        for package in ("h5py", "zarr", "numcodecs")
    )


@contextmanager
def reading(path: str | os.PathLike, what: str = "input") -> Iterator[None]:
    """Turn an error of h5py or zarr while reading ``path`` into an :class:`InputError`.

    The error names the file (the header of a damaged file can be intact and its
    content not). Errors of scvarpart's own checks (a missing obs column...) pass
    unchanged.
    """
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as err:
        if isinstance(err, OSError) or _raised_by_storage(err):
            raise InputError(f"the {what} {path} {_damage(Path(path), err)}.") from err
        raise


# ---------------------------------------------------------------------------------------
# outputs


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same file.

    Resolved paths first (symlinks, ``..``, relative paths), then the device and inode
    (hard links, bind mounts) where both exist.
    """
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _clash(output: Path, source: Path) -> str | None:
    """Why writing ``output`` would replace or change the input ``source``, if it would."""
    if _same(output, source):
        return "is an input"
    out, src = output.resolve(), source.resolve()
    if out in src.parents:
        return f"holds the input {source}"
    if src in out.parents:
        return f"lies inside the input {source}"
    return None


def _writable_folder(path: Path) -> None:
    """Raise :class:`OutputNotWritableError` unless ``path`` can be created.

    Its nearest existing ancestor must be a folder in which this process can create
    entries (tried for real, since permission bits say nothing for root or on read-only
    mounts).
    """
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputNotWritableError(
            f"cannot write {path}: {folder} is a file, not a folder; choose another output path."
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".scvarpart-probe.", dir=folder))
    except OSError as err:
        raise OutputNotWritableError(
            f"cannot write {path}: cannot create files in {folder} ({err.strerror}); choose a "
            "writable output folder."
        ) from err


def check_output(
    path: str | os.PathLike, *, force: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Check, before any work, that ``path`` can be written as an output.

    Raises
    ------
    OutputExistsError
        If ``path`` is one of ``inputs`` (compared as resolved paths, and by device and
        inode so that hard links count), lies inside one or holds one, whatever
        ``force``; if ``path`` exists and ``force`` is false; or if ``path`` is a folder
        other than a zarr store (a whole folder is never deleted to make room).
    OutputNotWritableError
        If ``path`` cannot be created (its folder is a file or is not writable).
    """
    path = Path(path)
    for source in inputs:
        why = _clash(path, Path(source))
        if why:
            raise OutputExistsError(
                f"the output {path} {why}; an input is never replaced, even with --force: "
                "write to another path."
            )
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputExistsError(f"{path} exists; pass --force (force=True) to replace it.")
    if path.is_dir() and not path.is_symlink() and not _is_zarr_store(path):
        raise OutputExistsError(
            f"{path} is a folder that is not a zarr store; it is not replaced, even with "
            "--force: remove it yourself or write to another path."
        )
    _writable_folder(path)
    return path


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux), or None where /proc is not available.

    It tells the process from a later one with the same PID.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def _may_be_running(owner: dict) -> bool:
    """Whether the process that wrote a temporary's marker may still be running.

    True when it cannot be told (another host, an unreadable marker).
    """
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    start = _start_time(pid)
    return start is None or owner.get("start") is None or start == owner["start"]


def _temporary_pattern(path: Path) -> re.Pattern:
    # tempfile.mkdtemp's random part: 8 characters of [a-z0-9_]
    return re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders of earlier writes of ``path`` whose process died.

    The process was killed (SIGKILL, a crash). Only folders named as
    :func:`atomic_output` names those of ``path``, holding a marker of a process of this
    host that is no longer running, are removed. Returns the removed folders.
    """
    path = Path(path)
    pattern = _temporary_pattern(path)
    removed: list[Path] = []
    try:
        candidates = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return removed
    for tmp in candidates:
        try:
            owner = json.loads((tmp / _MARKER).read_text())
        except (OSError, ValueError):
            continue  # no marker (yet): its owner cannot be told, leave it
        if isinstance(owner, dict) and not _may_be_running(owner):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _pause_for_tests() -> None:
    flag = os.environ.get(PAUSE_HOOK)
    if flag:
        Path(flag).touch()
        time.sleep(60)


#: The SIGTERM handler of writes (see handle_sigterm_during_writes).
_sigterm_handler: Callable | None = None


@contextmanager
def handle_sigterm_during_writes(handler: Callable) -> Iterator[None]:
    """Within this context, SIGTERM calls ``handler`` while a temporary output exists.

    :func:`atomic_output` installs ``handler`` for SIGTERM while its temporary output
    exists, and restores the previous handler after.

    The command line passes a handler that raises an exception, so that SIGTERM removes
    the temporary as SIGINT does. Only writes need it: elsewhere SIGTERM keeps its
    default action and ends the process at once, even one stuck in C code (HDF5 can
    loop on a damaged file), which a Python handler would wait for. Library use (no
    such context) leaves signals alone.
    """
    global _sigterm_handler
    previous, _sigterm_handler = _sigterm_handler, handler
    try:
        yield
    finally:
        _sigterm_handler = previous


@contextmanager
def _sigterm_handled() -> Iterator[None]:
    # only the main thread may set handlers; a caller's own handler (or SIG_IGN) is kept
    if (
        _sigterm_handler is None
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _sigterm_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def atomic_output(
    path: str | os.PathLike, *, force: bool = False, inputs: Iterable = ()
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    Temporaries of earlier writes of ``path`` that were killed are removed first (see
    :func:`remove_stale_temporaries`); this write's temporary is removed whether it
    succeeds or fails (SIGINT included, and SIGTERM under
    :func:`handle_sigterm_during_writes`, as in the command line).

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``force`` is false, or ``path`` is one of ``inputs``.
    OutputNotWritableError
        If the output's folder cannot be written.
    """
    path = Path(path)
    inputs = tuple(inputs)
    check_output(path, force=force, inputs=inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
    except OSError as err:
        raise OutputNotWritableError(f"cannot write {path}: {err.strerror}.") from err
    owner = _owner()
    with _sigterm_handled():
        try:
            tmp = Path(
                tempfile.mkdtemp(
                    prefix=f".{path.name}.{owner['pid']}.", suffix=".tmp", dir=path.parent
                )
            )
        except OSError as err:
            raise OutputNotWritableError(f"cannot write {path}: {err.strerror}.") from err
        try:
            (tmp / _MARKER).write_text(json.dumps(owner))
            yield tmp / path.name
            _pause_for_tests()
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # a .zarr store: directories cannot be replaced atomically
            os.replace(tmp / path.name, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_h5ad_atomic(
    adata: AnnData, path: str | os.PathLike, *, force: bool = False, inputs: Iterable = ()
) -> Path:
    """Write ``adata`` to ``path`` so that a killed run never leaves a partial file."""
    with atomic_output(path, force=force, inputs=inputs) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def _replace_elem(group, key: str, value) -> None:
    import anndata as ad

    if key in group:
        del group[key]
    ad.io.write_elem(group, key, value)


def write_results_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    add_results: Callable[[AnnData], None],
    *,
    force: bool = False,
    inputs: Iterable = (),
    write_elements: Callable[[Any], None] | None = None,
) -> Path:
    """Copy ``source`` (``.h5ad`` or ``.zarr``) to ``output`` with results added.

    The expression matrix is copied byte for byte, never loaded. ``add_results``
    receives an AnnData holding the file's ``var``, ``varm`` and ``uns`` (no
    ``X``) and adds the results to it; those three elements are then rewritten.
    ``write_elements``, if given, first receives the copy's open root group, to write
    larger elements (a layer, block by block). ``output`` may be neither ``source``
    nor one of the other ``inputs``.
    """
    import anndata as ad
    from anndata import AnnData

    source, output = Path(source), Path(output)
    if _is_zarr(source) != _is_zarr(output):
        kind = ".zarr" if _is_zarr(source) else ".h5ad"
        raise ValueError(f"The output {output} must be a {kind}, as the input is.")
    with atomic_output(output, force=force, inputs=(source, *inputs)) as tmp:
        if _is_zarr(source):
            shutil.copytree(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        with open_store(tmp, "r+") as root:
            if write_elements is not None:
                write_elements(root)
            with reading(source):
                var = ad.io.read_elem(root["var"])
                varm = ad.io.read_elem(root["varm"]) if "varm" in root else {}
                uns = ad.io.read_elem(root["uns"]) if "uns" in root else {}
            holder = AnnData(var=var, varm=varm, uns=uns)
            add_results(holder)
            _replace_elem(root, "var", holder.var)
            _replace_elem(root, "varm", dict(holder.varm))
            _replace_elem(root, "uns", dict(holder.uns))
    return output


def read_var(path: str | os.PathLike, what: str = "input"):
    """The ``var`` table of a file (``what`` names the file in errors)."""
    import anndata as ad

    with reading(path, what), open_store(path) as root:
        return ad.io.read_elem(root["var"])


def read_results(path: str | os.PathLike, what: str = "input") -> AnnData:
    """The ``obs``, ``var``, ``varm`` and ``uns`` of a file, without its matrices.

    ``what`` names the file in errors.
    """
    import anndata as ad
    from anndata import AnnData

    with reading(path, what), open_store(path) as root:
        elems = {
            key: ad.io.read_elem(root[key]) for key in ("obs", "var", "varm", "uns") if key in root
        }
    return AnnData(**elems)


# ---------------------------------------------------------------------------------------
# known covariances between levels (kinship matrices)

#: Separator of a covariance file by its extension (after an optional ``.gz``).
COVARIANCE_FORMATS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
_COVARIANCE_LAYOUT = (
    "a square levels x levels matrix with a header row of level names and the level "
    "names as first column"
)


def _covariance_separator(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    sep = COVARIANCE_FORMATS.get(suffixes[-1]) if suffixes else None
    if sep is None:
        raise InputError(
            f"the covariance file {path} must be named .csv (comma-separated), .tsv or .txt "
            "(tab-separated), optionally gzipped (.csv.gz, ...): its extension tells how it "
            "is read."
        )
    return sep


def _first(mask, frame) -> tuple[str, str, object]:
    """Row level, column level and value of the first True of ``mask`` (row-major)."""
    import numpy as np

    i, j = np.argwhere(np.asarray(mask))[0]
    return frame.index[i], frame.columns[j], frame.iat[i, j]


def read_covariance_file(path: str | os.PathLike) -> pd.DataFrame:  # noqa: C901
    """Read a known covariance between the levels of a term (a kinship matrix).

    A ``.csv`` (comma-separated) or ``.tsv``/``.txt`` (tab-separated) file, optionally
    gzipped, holding a square matrix: a header row of level names, then one row per
    level, its name first (``pandas.read_csv(path, index_col=0)``). Level names are read
    as text (``007`` stays ``007``) and the numbers exactly (round trip), so a matrix
    written by :meth:`pandas.DataFrame.to_csv` reads back bitwise.

    Only the file's layout is checked here; whether the matrix is symmetric, positive
    semi-definite and covers every modelled level is checked with the design
    (:func:`scvarpart.design.relmat.relationship_factor`).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    DataFrame
        Levels x levels, float64, indexed by the level names (str), the columns in the
        order of the rows.

    Raises
    ------
    InputError
        Naming the file, what is wrong and the fix: it does not exist or cannot be read,
        has another extension, does not parse, is not square, its header and first
        column do not name the same levels (or name one twice), or it has a non-numeric,
        missing or infinite entry.
    """
    import numpy as np
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise InputError(f"the covariance file {path} {what}.")
    sep = _covariance_separator(path)
    kind = "comma-separated" if sep == "," else "tab-separated"
    try:
        # the header as written (read_csv renames a repeated name "a" to "a.1")
        header = pd.read_csv(
            path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False
        ).iloc[0, 1:]
        # level names as text; values parsed exactly ("round_trip": the default parser
        # may be off by an ulp, and the results must equal the API's for the same matrix)
        frame = pd.read_csv(
            path,
            sep=sep,
            index_col=0,
            dtype={0: str},
            keep_default_na=False,
            na_values=[""],
            float_precision="round_trip",
        )
    except OSError as err:
        raise InputError(
            f"the covariance file {path} cannot be read: {err.strerror or err}."
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(
            f"the covariance file {path} does not parse as a {kind} table ({err}); it must "
            f"be {_COVARIANCE_LAYOUT}."
        ) from None
    n_rows, n_cols = frame.shape
    if n_rows != n_cols or n_rows == 0 or len(header) != n_cols:
        hint = ""
        if n_cols == 0 and n_rows:  # one field per line: probably the other separator
            if sep == "," and "\t" in str(frame.index[0]):
                hint = " It looks tab-separated: name it .tsv."
            elif sep == "\t" and "," in str(frame.index[0]):
                hint = " It looks comma-separated: name it .csv."
        raise InputError(
            f"the covariance file {path} is not square: {n_rows} rows x {n_cols} columns of "
            f"values as a {kind} table; it must be {_COVARIANCE_LAYOUT}.{hint}"
        )
    frame.columns = pd.Index(header.astype(str).to_numpy())
    frame.index = pd.Index(frame.index.astype(str))
    for axis, names in (("header row", frame.columns), ("first column", frame.index)):
        if names.has_duplicates:
            dup = names[names.duplicated()].unique()[:5].tolist()
            raise InputError(
                f"the covariance file {path} names levels more than once in its {axis}: "
                f"{dup}; each level has one row and one column."
            )
    if not frame.index.equals(frame.columns):
        only_header = frame.columns.difference(frame.index)
        only_index = frame.index.difference(frame.columns)
        if len(only_header) or len(only_index):
            raise InputError(
                f"the covariance file {path}: its header row and first column do not name "
                f"the same levels (only in the header: {only_header[:5].tolist()}; only in "
                f"the first column: {only_index[:5].tolist()}); it must be "
                f"{_COVARIANCE_LAYOUT}."
            )
        frame = frame[frame.index]  # the same levels in another order: align the columns
    text = frame.select_dtypes(include="object").columns  # columns with a non-number
    if len(text):
        block = frame[text]
        wrong = pd.DataFrame(
            {c: pd.to_numeric(block[c], errors="coerce").isna() & block[c].notna() for c in text}
        )
        if wrong.to_numpy().any():
            row, column, value = _first(wrong, block)
            raise InputError(
                f"the covariance file {path} has non-numeric entries, e.g. {value!r} in row "
                f"{row!r}, column {column!r}; every entry must be a number."
            )
    values = frame.to_numpy(dtype=float)
    finite = np.isfinite(values)
    if not finite.all():
        row, column, _ = _first(~finite, frame)
        raise InputError(
            f"the covariance file {path} has missing or infinite entries, e.g. in row "
            f"{row!r}, column {column!r}; every entry must be a finite number."
        )
    return pd.DataFrame(values, index=frame.index, columns=frame.index)
