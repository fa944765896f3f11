"""Open an ``.h5ad`` file or a ``.zarr`` store written by anndata.

h5py and zarr are imported when first needed, so that the command line starts quickly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

__all__ = ["dense_array", "is_zarr", "open_store"]


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``.zarr`` store (by its suffix, or being a folder)."""
    path = Path(path)
    return path.suffix == ".zarr" or path.is_dir()


# the modes h5py and zarr share
_Mode = Literal["r", "r+", "a", "w", "w-"]


@contextmanager
def open_store(path: str | os.PathLike, mode: _Mode = "r") -> Iterator[Any]:
    """The root group of an ``.h5ad`` file or a ``.zarr`` store.

    Parameters
    ----------
    path
        The file or store.
    mode
        ``"r"`` (read-only, the default) or a writing mode of h5py and zarr. A zarr
        store opened for writing is edited around anndata's consolidated metadata,
        which is consolidated again on closing.

    Yields
    ------
    The root group (``h5py.File`` or ``zarr.Group``), closed on exit.
    """
    path = Path(path)
    if is_zarr(path):
        import zarr

        if mode == "r":
            yield zarr.open_group(str(path), mode="r")
        else:
            yield zarr.open_group(str(path), mode=mode, use_consolidated=False)
            zarr.consolidate_metadata(str(path))
    else:
        import h5py

        with h5py.File(path, mode) as f:
            yield f


def dense_array(group, name: str, shape: tuple[int, int], dtype, chunk_rows: int):
    """A new dense array ``group[name]`` as anndata encodes one, to fill by rows.

    Nothing is written until rows are assigned (``array[a:b] = values``): chunks of
    ``chunk_rows`` rows, so that blocks of that many rows fill whole chunks.
    """
    chunks = (max(1, min(chunk_rows, shape[0])), max(1, shape[1]))
    if hasattr(group, "create_array"):  # zarr
        array = group.create_array(name, shape=shape, dtype=dtype, chunks=chunks)
    else:  # h5py
        array = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)
    array.attrs["encoding-type"] = "array"
    array.attrs["encoding-version"] = "0.2.0"
    return array
