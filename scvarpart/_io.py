"""Safe output: results are written next to their destination and renamed into place.

The input is never opened for writing: a result file is a copy of the input with
the result elements added, written under a temporary name in the destination's
folder and renamed, so a killed run leaves either the old file or the complete
new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import h5py
from anndata import AnnData

__all__ = [
    "OutputExistsError",
    "atomic_output",
    "open_store",
    "read_results",
    "read_var",
    "write_h5ad_atomic",
    "write_results_file",
]


class OutputExistsError(FileExistsError):
    """The output exists (and ``force`` was not given) or would replace the input."""


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or path.is_dir()


@contextmanager
def open_store(path: str | os.PathLike, mode: str = "r"):
    """The root group of an ``.h5ad`` file or a ``.zarr`` store."""
    path = Path(path)
    if _is_zarr(path):
        import zarr

        if mode == "r":
            yield zarr.open_group(str(path), mode="r")
        else:  # edit around anndata's consolidated metadata, then consolidate again
            yield zarr.open_group(str(path), mode=mode, use_consolidated=False)
            zarr.consolidate_metadata(str(path))
    else:
        with h5py.File(path, mode) as f:
            yield f


@contextmanager
def atomic_output(
    path: str | os.PathLike, *, force: bool = False, inputs: tuple = ()
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``force`` is false, or ``path`` is one of ``inputs``.
    """
    path = Path(path)
    for source in inputs:
        if Path(source).resolve() == path.resolve():
            raise OutputExistsError(f"The output {path} is an input; write to another path.")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force (force=True) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # a .zarr store: directories cannot be replaced atomically
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_h5ad_atomic(adata: AnnData, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``adata`` to ``path`` so that a killed run never leaves a partial file."""
    with atomic_output(path, force=force) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def _replace_elem(group, key: str, value) -> None:
    if key in group:
        del group[key]
    ad.io.write_elem(group, key, value)


def write_results_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    add_results: Callable[[AnnData], None],
    *,
    force: bool = False,
) -> Path:
    """Copy ``source`` (``.h5ad`` or ``.zarr``) to ``output`` with results added.

    The expression matrix is copied byte for byte, never loaded. ``add_results``
    receives an AnnData holding the file's ``var``, ``varm`` and ``uns`` (no
    ``X``) and adds the results to it; those three elements are then rewritten.
    """
    source, output = Path(source), Path(output)
    if _is_zarr(source) != _is_zarr(output):
        kind = ".zarr" if _is_zarr(source) else ".h5ad"
        raise ValueError(f"The output {output} must be a {kind}, as the input is.")
    with atomic_output(output, force=force, inputs=(source,)) as tmp:
        if _is_zarr(source):
            shutil.copytree(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        with open_store(tmp, "r+") as root:
            var = ad.io.read_elem(root["var"])
            varm = ad.io.read_elem(root["varm"]) if "varm" in root else {}
            uns = ad.io.read_elem(root["uns"]) if "uns" in root else {}
            holder = AnnData(var=var, varm=varm, uns=uns)
            add_results(holder)
            _replace_elem(root, "var", holder.var)
            _replace_elem(root, "varm", dict(holder.varm))
            _replace_elem(root, "uns", dict(holder.uns))
    return output


def read_var(path: str | os.PathLike):
    """The ``var`` table of a file."""
    with open_store(path) as root:
        return ad.io.read_elem(root["var"])


def read_results(path: str | os.PathLike) -> AnnData:
    """The ``obs``, ``var``, ``varm`` and ``uns`` of a file, without its matrices."""
    with open_store(path) as root:
        elems = {
            key: ad.io.read_elem(root[key]) for key in ("obs", "var", "varm", "uns") if key in root
        }
    return AnnData(**elems)
