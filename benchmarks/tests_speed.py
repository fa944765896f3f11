"""Speed of the fit phase with the tests of variance components on, in genes per second.

Usage::

    python benchmarks/tests_speed.py [--n-cells 20000] [--n-genes 5000] [--repeats 5]

The design of ``benchmarks/fit_speed.py`` (patient x chemistry x day x operator, two
covariates; simulated counts, log-normalised). The sufficient statistics are computed
once; then ``svp.lmm.fit_stats`` (the fit and the per-gene tables) runs without and with
``test="lrt"`` (one refit per random term, from the same statistics), alternating, on 2
cores (``n_jobs=2``), ML and REML. Prints the median and range of genes/s over
``--repeats`` runs and the ratio of the medians.
"""

from __future__ import annotations

import time

import numpy as np
from _data import fit_phase_data

import scvarpart as svp


def _spread(rates: list[float]) -> str:
    return f"{np.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def main() -> None:
    args, adata = fit_phase_data(__doc__.splitlines()[0])
    stats = svp.lmm.response_stats(adata.X, svp.datasets.SIMULATION_FORMULA, obs=adata.obs)
    formula = svp.datasets.SIMULATION_FORMULA
    svp.lmm.fit(formula, adata.X[:, :16], obs=adata.obs, test="lrt")  # compile
    print(
        f"fit phase with tests: {args.n_genes} genes, {args.n_cells} cells, "
        f"{svp.datasets.SIMULATION_FORMULA}; 2 cores; {args.repeats} repeats"
    )
    for method in ("ML", "REML"):
        rates: dict[str | None, list[float]] = {None: [], "lrt": []}
        for _ in range(args.repeats):
            for test in (None, "lrt"):
                start = time.perf_counter()
                svp.lmm.fit_stats(stats, method=method, n_jobs=2, test=test)
                rates[test].append(args.n_genes / (time.perf_counter() - start))
        ratio = np.median(rates[None]) / np.median(rates["lrt"])
        print(
            f"  {method}: without tests {_spread(rates[None])} genes/s; with test='lrt' "
            f"{_spread(rates['lrt'])} genes/s ({ratio:.2f}x the time)"
        )


if __name__ == "__main__":
    main()
