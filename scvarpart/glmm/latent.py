"""Variance fractions of a count model on the latent (log) scale.

Nakagawa & Schielzeth (2010) and Nakagawa, Johnson & Schielzeth (2017) partition the
variance of a log-link mixed model on the scale of the linear predictor: each random
term's variance ``sigma_j^2``, the variance of the fixed-effect prediction, and a
*distribution-specific* variance that stands for the observation-level noise of the
counts on that scale. For a Poisson (``1/phi = 0``) or NB2 model with size ``phi`` and
mean count ``lambda``:

- **lognormal** (the default): ``ln(1 + 1/lambda + 1/phi)``, the variance of the log of a
  lognormal variable with the counts' coefficient of variation (insight's default);
- **trigamma**: ``psi_1(1 / (1/lambda + 1/phi))``, the variance of the log of a gamma
  variable with that coefficient of variation, which Nakagawa et al. (2017) found the
  most accurate for the log link. For sparse genes (``lambda`` well below 1) it grows as
  ``1/lambda^2`` where the lognormal one grows as ``ln(1/lambda)``, so at cell level it
  puts nearly every gene's variance in the residual. The lognormal one is the default
  for this reason; both are stored for every gene.

``lambda`` is Nakagawa et al. (2017)'s ``exp(beta_0 + sigma_tau^2 / 2)``: the mean count
over the random effects, at the mean of the linear predictor's fixed part (offset
included) over the observations, with ``sigma_tau^2`` the sum of the random variances.
It does not depend on how the offset is centred. (insight 0.19 uses ``exp(beta_0)``, the
intercept alone.) The residual component of a count fit is this distribution-specific
variance, so the fractions sum to 1 as for a Gaussian fit.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

__all__ = ["APPROXIMATIONS", "distribution_variance", "mean_count"]

#: The distribution-specific variances, by name; the first is the default.
APPROXIMATIONS = ("lognormal", "trigamma")


def mean_count(linear_mean: ArrayLike, random_variance: ArrayLike) -> np.ndarray:
    """``lambda = exp(mean fixed predictor + sum of random variances / 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> from scvarpart.glmm.latent import mean_count
    >>> mean_count(np.array([0.0]), np.array([2 * np.log(2)]))
    array([2.])
    """
    return np.exp(np.asarray(linear_mean) + 0.5 * np.asarray(random_variance))


def distribution_variance(
    lam: ArrayLike, inverse_size: ArrayLike, approximation: str = "lognormal"
) -> np.ndarray:
    """The distribution-specific variance on the log scale, per gene.

    Parameters
    ----------
    lam
        The mean count ``lambda`` (:func:`mean_count`).
    inverse_size
        ``1/phi`` of the NB2 model (0 for Poisson).
    approximation
        ``"lognormal"`` or ``"trigamma"`` (:data:`APPROXIMATIONS`).

    Examples
    --------
    >>> import numpy as np
    >>> from scvarpart.glmm.latent import distribution_variance
    >>> distribution_variance(np.array([1.0]), np.array([0.0]))  # Poisson, lambda 1: ln 2
    array([0.69314718])
    >>> distribution_variance(np.array([1.0]), np.array([0.0]), "trigamma")  # pi^2 / 6
    array([1.64493407])
    """
    cv2 = 1.0 / np.asarray(lam, dtype=float) + np.asarray(inverse_size, dtype=float)
    if approximation == "lognormal":
        return np.log1p(cv2)
    if approximation == "trigamma":
        return special.polygamma(1, 1.0 / cv2)
    raise ValueError(
        f"approximation={approximation!r}: the distribution-specific variance is "
        f"one of {list(APPROXIMATIONS)}."
    )
