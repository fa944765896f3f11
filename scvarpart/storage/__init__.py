"""Where the expression matrix comes from, and how it is read.

* :mod:`.matrix`: how to read blocks of any supported matrix type (NumPy, SciPy
  sparse, anndata's backed sparse datasets, h5py, zarr, Dask) and run a pass over
  them;
* :mod:`.select`: which matrix of an AnnData object or file to use (``X``, a layer
  or ``raw``);
* :mod:`.stores`: open an ``.h5ad`` file or ``.zarr`` store.

Nothing is imported here, so that the command line can open stores without
importing NumPy or anndata.
"""
