"""Speed of the fit phase with intervals and tests of variance components, in genes/s.

Usage::

    python benchmarks/tests_speed.py [--n-cells 20000] [--n-genes 5000] [--repeats 5]

The design of ``benchmarks/fit_speed.py`` (patient x chemistry x day x operator, two
covariates; simulated counts, log-normalised). The sufficient statistics are computed
once; then ``svp.lmm.fit_stats`` (the fit and the per-gene tables) runs with ``ci=None``
(no intervals), with the default intervals (``ci=0.95``: standard errors, Wald and
likelihood-ratio bounds, local refits without each term) and with intervals and
``test="lrt"`` (one global refit per random term, which the intervals then reuse),
alternating, on 2 cores (``n_jobs=2``), ML and REML. Prints the median and range of
genes/s over ``--repeats`` runs and the ratios of the medians.
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
        f"fit phase with intervals and tests: {args.n_genes} genes, {args.n_cells} cells, "
        f"{svp.datasets.SIMULATION_FORMULA}; 2 cores; {args.repeats} repeats"
    )
    configs = {"ci=None": {"ci": None}, "ci=0.95": {}, "ci=0.95, test='lrt'": {"test": "lrt"}}
    for method in ("ML", "REML"):
        rates: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.repeats):
            for name, options in configs.items():
                start = time.perf_counter()
                svp.lmm.fit_stats(stats, method=method, n_jobs=2, **options)
                rates[name].append(args.n_genes / (time.perf_counter() - start))
        base = np.median(rates["ci=None"])
        parts = [
            f"{name} {_spread(r)} ({base / np.median(r):.2f}x the time)"
            for name, r in rates.items()
        ]
        print(f"  {method}: " + "; ".join(parts) + " genes/s")


if __name__ == "__main__":
    main()
