"""Simulated single-cell counts at any size: negative binomial with crossed batch effects."""

from __future__ import annotations

import math
import os
from pathlib import Path

import anndata as ad
import h5py
import numba as nb
import numpy as np
import pandas as pd
import scipy.sparse as sp
from joblib import Parallel, delayed

__all__ = ["SIMULATION_FORMULA", "simulate_counts"]

#: The model matching :func:`simulate_counts`' design (two continuous covariates).
SIMULATION_FORMULA = "~ log_umi + pct_mito + (1|patient) + (1|chemistry) + (1|day) + (1|operator)"

_DEFAULT_LEVELS = {"patient": 24, "chemistry": 3, "day": 8, "operator": 6}


@nb.njit(cache=True, nogil=True)
def _nb_draw(lam, r):
    """One negative binomial draw with mean ``lam`` and size ``r``.

    The variance is ``lam + lam^2 / r``. Drawn by inversion of the CDF for small means
    (one uniform, mostly a zero), as a gamma-Poisson mixture otherwise.
    """
    if lam > 8.0:
        return np.random.poisson(np.random.gamma(r, lam / r))
    prob = lam / (r + lam)  # NB success probability in the pmf recursion
    pmf = math.exp(r * math.log1p(-prob))  # P(Y = 0)
    u = np.random.random()
    cdf = pmf
    k = 0
    while u > cdf and k < 10_000:
        pmf *= (k + r) / (k + 1) * prob
        k += 1
        cdf += pmf
    return k


@nb.njit(cache=True, nogil=True)
def _chunk(seed, eta, lib, size, mito, slope, r, target_sum, capacity):
    """Counts of a block of cells, log-normalised, as CSR arrays (and the counts' data)."""
    np.random.seed(seed)
    n, G = lib.shape[0], eta.shape[1]
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices = np.empty(capacity, dtype=np.int32)
    data = np.empty(capacity, dtype=np.float32)
    raw = np.empty(capacity, dtype=np.float32)
    counts = np.empty(G, dtype=np.int64)
    totals = np.empty(n)
    nnz = 0
    for c in range(n):
        total = 0
        start = nnz
        for g in range(G):
            y = _nb_draw(size[c] * math.exp(eta[lib[c], g] + slope[g] * mito[c]), r[g])
            if y > 0:
                if nnz == indices.shape[0]:  # grow the buffers
                    indices = np.concatenate((indices, np.empty_like(indices)))
                    data = np.concatenate((data, np.empty_like(data)))
                    raw = np.concatenate((raw, np.empty_like(raw)))
                indices[nnz] = g
                counts[nnz - start] = y
                nnz += 1
                total += y
        totals[c] = total
        scale = target_sum / max(total, 1)
        for j in range(start, nnz):
            data[j] = math.log1p(counts[j - start] * scale)
            raw[j] = counts[j - start]
        indptr[c + 1] = nnz
    return indptr, indices[:nnz], data[:nnz], totals, raw[:nnz]


def _design(n_cells, levels, libraries_per_patient, rng):
    names = list(levels)
    signal = names[0]
    n_lib = levels[signal] * libraries_per_patient
    lib_levels = {signal: np.repeat(np.arange(levels[signal]), libraries_per_patient)}
    for f in names[1:]:
        lib_levels[f] = rng.permutation(np.arange(n_lib) % levels[f])
    weights = rng.dirichlet(np.full(n_lib, 4.0))
    lib = rng.choice(n_lib, size=n_cells, p=weights)
    obs = pd.DataFrame(index=[f"cell{i:07d}" for i in range(n_cells)])
    for f in names:
        cats = [f"{f[:3]}{j + 1:02d}" for j in range(levels[f])]
        obs[f] = pd.Categorical.from_codes(lib_levels[f][lib], categories=cats)
    obs["library"] = pd.Categorical.from_codes(lib, [f"lib{j + 1:03d}" for j in range(n_lib)])
    return obs, lib, lib_levels, n_lib


def _genes(n_genes, levels, lib_levels, n_lib, rng):
    names = list(levels)
    mean_log = rng.normal(-3.6, 1.5, n_genes)
    var = pd.DataFrame(index=[f"gene{i + 1:05d}" for i in range(n_genes)])
    var["mean_log"] = mean_log
    var["dispersion"] = np.exp(rng.normal(np.log(0.2), 0.5, n_genes))
    eta = np.tile(mean_log, (n_lib, 1))
    for j, f in enumerate(names):
        typical, p_zero = (0.3, 0.2) if j == 0 else (0.15, 0.4)
        sd = typical * np.minimum(np.exp(rng.normal(0.0, 0.5, n_genes)), 3.0)
        sd *= rng.random(n_genes) > p_zero
        var[f"sd_{f}"] = sd
        effects = rng.normal(size=(levels[f], n_genes)) * sd
        eta += effects[lib_levels[f]]
    slope = np.where(rng.random(n_genes) < 0.2, rng.normal(0, 3.0, n_genes), 0.0)
    var["slope_pct_mito"] = slope
    return var, eta, slope


def simulate_counts(
    n_cells: int = 10_000,
    n_genes: int = 2_000,
    *,
    seed: int = 0,
    levels: dict[str, int] | None = None,
    libraries_per_patient: int = 2,
    target_sum: float = 1e4,
    chunk_cells: int = 4096,
    path: str | os.PathLike | None = None,
    n_jobs: int = 1,
    counts: bool = False,
) -> ad.AnnData:
    """Simulate log-normalised single-cell expression from negative binomial counts.

    The design crosses a biological factor (the first of ``levels``, by default 24
    patients, each sequenced in ``libraries_per_patient`` libraries) with technical
    factors (by default 3 chemistries, 8 days, 6 operators) assigned per library,
    unbalanced. For gene ``g`` in cell ``c`` of library ``l``::

        mu_cg = size_c * exp(m_g + sum_f b_{f, level_f(l), g} + s_g * pct_mito_c)
        counts_cg ~ NegativeBinomial(mean mu_cg, dispersion phi_g)

    with gene means ``m_g ~ N(-3.6, 1.5)`` (about 7% non-zero, ~1,500 counts per
    cell at 20,000 genes), factor effects ``b ~ N(0, sd_fg^2)`` (some ``sd_fg`` exactly 0),
    a ``pct_mito`` slope for 20% of genes and ``phi_g`` around 0.2. Expression is
    then ``log1p(counts / total * target_sum)`` (scanpy's ``normalize_total`` and
    ``log1p``), stored as CSR float32. The variances to expect are on the latent
    log scale (``var["sd_<factor>"]``), not those of the log-normalised values.

    Parameters
    ----------
    n_cells, n_genes
        Size of the dataset.
    seed
        Random seed: the same seed, sizes and ``chunk_cells`` give the same data
        (whatever ``n_jobs``).
    levels
        Levels per factor, the biological factor first.
    libraries_per_patient
        Libraries per level of the biological factor.
    target_sum
        Counts per cell after normalisation.
    chunk_cells
        Cells simulated per block.
    path
        Write an ``.h5ad`` file block by block instead of building the matrix in
        memory (for datasets larger than memory), and return it opened in backed
        mode.
    n_jobs
        Threads simulating blocks in parallel.
    counts
        Also keep the counts, in ``layers["counts"]`` (CSR float32, the same cells and
        sparsity as ``X``; ``X`` is unchanged).

    Returns
    -------
    AnnData
        With ``X`` (log-normalised, CSR float32), ``obs`` columns for every
        factor, ``library``, ``pct_mito``, ``log_umi`` (log total counts) and
        ``log_size_factor`` (the simulation's ``log size_c``, the offset of a count model
        such as ``svp.tl.variance_partition(family="nb")``); ``var``
        with the simulation's parameters; with ``counts``, ``layers["counts"]``.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.simulate_counts(n_cells=300, n_genes=30, seed=0)
    >>> adata.shape
    (300, 30)
    >>> adata.obs.columns.tolist()
    ['patient', 'chemistry', 'day', 'operator', 'library', 'pct_mito', 'log_umi', 'log_size_factor']
    """
    levels = dict(_DEFAULT_LEVELS if levels is None else levels)
    if n_cells < 1 or n_genes < 1 or chunk_cells < 1:
        raise ValueError("n_cells, n_genes and chunk_cells must be positive.")
    rng = np.random.default_rng(seed)
    obs, lib, lib_levels, n_lib = _design(n_cells, levels, libraries_per_patient, rng)
    var, eta, slope = _genes(n_genes, levels, lib_levels, n_lib, rng)
    lib_depth = np.exp(rng.normal(0, 0.3, n_lib))
    size = lib_depth[lib] * np.exp(rng.normal(0, 0.35, n_cells))
    mito = rng.beta(2, 30, n_cells)
    mito_c = mito - mito.mean()
    r = 1.0 / var["dispersion"].to_numpy()
    capacity = max(1024, int(chunk_cells * n_genes * 0.1))
    chunk_seeds = np.random.SeedSequence(seed).generate_state(-(-n_cells // chunk_cells))

    def block(i):
        a, b = i * chunk_cells, min((i + 1) * chunk_cells, n_cells)
        indptr, indices, data, totals, raw = _chunk(
            int(chunk_seeds[i]),
            eta,
            lib[a:b],
            size[a:b],
            mito_c[a:b],
            slope,
            r,
            target_sum,
            capacity,
        )
        shape = (b - a, n_genes)
        kept = sp.csr_matrix((raw, indices, indptr), shape=shape) if counts else None
        return sp.csr_matrix((data, indices, indptr), shape=shape), totals, kept

    n_blocks = len(chunk_seeds)
    obs["pct_mito"] = (100 * mito).round(4)
    log_size = np.log(size)  # the true size factors: the offset of a count model
    var.index.name = None
    if path is None:
        blocks = Parallel(n_jobs=n_jobs, prefer="threads")(
            delayed(block)(i) for i in range(n_blocks)
        )
        X = sp.vstack([b[0] for b in blocks], format="csr")
        obs["log_umi"] = np.log(np.maximum(np.concatenate([b[1] for b in blocks]), 1.0))
        obs["log_size_factor"] = log_size
        adata = ad.AnnData(X=X, obs=obs, var=var)
        if counts:
            adata.layers["counts"] = sp.vstack([b[2] for b in blocks], format="csr")
        adata.uns["simulation"] = {"formula": SIMULATION_FORMULA, "seed": seed, "levels": levels}
        return adata

    # Out of core: obs needs log_umi from every block, so X is written first
    # (block by block, appended on disk) and obs/var/uns afterwards.
    path = Path(path)
    totals = np.empty(n_cells)
    with h5py.File(path, "w") as f:
        for start in range(0, n_blocks, max(n_jobs, 1)):
            idx = range(start, min(start + max(n_jobs, 1), n_blocks))
            done = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(block)(i) for i in idx)
            for i, (Xb, tb, Cb) in zip(idx, done, strict=True):
                totals[i * chunk_cells : i * chunk_cells + Xb.shape[0]] = tb
                for group, name, values in ((f, "X", Xb), (f, "layers/counts", Cb)):
                    if values is None:
                        continue
                    if i == 0:
                        ad.io.write_elem(group, name, values)  # appendable along rows
                    else:
                        ad.io.sparse_dataset(group[name]).append(values)
        obs["log_umi"] = np.log(np.maximum(totals, 1.0))
        obs["log_size_factor"] = log_size
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", var)
        ad.io.write_elem(
            f,
            "uns",
            {"simulation": {"formula": SIMULATION_FORMULA, "seed": seed, "levels": levels}},
        )
        for key in ("obsm", "varm", "obsp", "varp", "layers"):
            if key not in f:
                ad.io.write_elem(f, key, {})
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
    return ad.read_h5ad(path, backed="r")
