"""Count models: Poisson and negative binomial mixed models per gene, on the latent scale.

The array-level entry point is :func:`fit_counts`; ``svp.tl.variance_partition`` calls it
for ``family="poisson"`` or ``"nb"``. The layers, as for :mod:`scvarpart.lmm`: the rows
the likelihood is summed over (:mod:`.rows`), the Laplace criterion and its gradient
(:mod:`._laplace_kernel`), the search (:mod:`.search`), the latent-scale variances
(:mod:`.latent`) and the per-gene driver (:mod:`.genes`).
"""

from .genes import FAMILIES, fit_counts
from .latent import APPROXIMATIONS, distribution_variance, mean_count

__all__ = ["APPROXIMATIONS", "FAMILIES", "distribution_variance", "fit_counts", "mean_count"]
