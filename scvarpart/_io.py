"""Safe output: results are written next to their destination and renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from anndata import AnnData

__all__ = ["write_h5ad_atomic"]


def write_h5ad_atomic(adata: AnnData, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``adata`` to ``path`` so that a killed run never leaves a partial file.

    Parameters
    ----------
    adata
        The object to write.
    path
        Destination ``.h5ad`` file.
    force
        Replace an existing file; without it an existing file is an error.

    Returns
    -------
    The destination path.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
