"""Compiled kernel of the Laplace approximation for Poisson and NB2 mixed models.

One gene, random intercepts (any number of crossed terms), log link. The model is

    eta = offset + X beta + Z Lambda u,    u ~ N(0, P^-1),    y_i | u ~ f(mu_i = exp(eta_i))

with ``Lambda`` diagonal, ``theta_t`` on the levels of term ``t`` (lme4's
parameterisation). ``P`` is the identity but for a term with a known covariance ``K``
between its levels (a kinship matrix: lme4qtl's ``relmatGlmer``), whose block is
``K^-1``: ``Z`` stays an indicator and the prior carries ``K``. lme4qtl writes the
term's modes as ``R v`` with ``K = R R'`` and ``v ~ N(0, I)`` on the columns ``Z R``: the
same model, and the criterion below equals its (``|v|^2 = u' P u``, and with ``M =
Lambda Z' W Z Lambda``, ``log det(I + R' M R) = log det K + log det(M + P)``). ``f`` is
Poisson (``family = 0``) or the negative binomial with size ``phi`` (``family = 1``;
variance ``mu + mu^2 / phi``, glmmTMB's ``nbinom2``).

The conditional modes ``u_hat`` maximise ``sum log f(y | u) - u'Pu / 2`` (penalised
iteratively reweighted least squares: Newton on ``u`` with step halving). With
``H = Lambda Z' W Z Lambda + P`` (``W`` the observed information of each ``eta_i``),
the Laplace approximation of ``-2 log p(y)`` is

    D = -2 sum log f(y | u_hat) + u_hat' P u_hat + log det H + log det K,

lme4's ``glmer(nAGQ = 1)`` and glmmTMB's criterion. Its exact gradient in ``theta``,
``beta`` and ``log phi`` follows from the implicit function theorem: the first two
terms are stationary in ``u`` at ``u_hat``, and ``log det H`` moves with ``u_hat``
through ``W``, which needs the third derivative of ``log f`` in ``eta`` (``P`` is
constant: the gradient's formulas do not see it).

The prior is the tuple ``(first, cols, precision, logdet_K)``: the term eliminated
first in ``H``'s factor (:mod:`._blocked`; ``-1``: none), the columns of ``u`` of the
terms with a known covariance, ``P``'s block over them (block diagonal, one block per
such term) and the sum of their ``log det K`` (:func:`scvarpart.glmm.rows.row_prior`).

Rows may be observations or classes of observations that share everything but the
response (:mod:`scvarpart.glmm.rows`): the kernel only sees rows.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from scipy import special

from ._blocked import assemble, empty_factor, factorise, leverages, logdet, solve
from ._zero_tables import zero_terms

__all__ = [
    "DIFFERENCE",
    "NB2",
    "OBSERVATION",
    "POISSON",
    "ZEROS",
    "conditional_modes",
    "distinct_counts",
    "laplace",
    "row_layout",
]

POISSON = 0
NB2 = 1
# Kinds of rows: an observation; a non-zero NB2 count less its zero; a class's zeros.
OBSERVATION = 0
DIFFERENCE = 1
ZEROS = 2
# From this NB size on, lgamma(y + phi) - lgamma(phi) is Stirling's series of the
# difference (its error below 1e-15 there), not a difference of two large numbers.
_STIRLING_FROM = 50.0
_SUMMED = 8.0  # counts up to this: lgamma(y + phi) - lgamma(phi) as a sum of y logs
# A Newton decrement below which halving that finds no better point counts as converged.
_STALL = 1e-6


@nb.njit(cache=True, nogil=True)
def _digamma(x):
    """The digamma function for ``x > 0`` (recurrence to ``x >= 6``, then the asymptotic series)."""
    out = 0.0
    while x < 6.0:
        out -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    series = f * (
        -1.0 / 12 + f * (1.0 / 120 + f * (-1.0 / 252 + f * (1.0 / 240 + f * (-1.0 / 132))))
    )
    return out + math.log(x) - 0.5 / x + series


@nb.njit(cache=True, nogil=True)
def _gamma_ratio(y, phi, lg_phi, dg_phi):
    """``lgamma(y + phi) - lgamma(phi)`` and its derivative in ``phi``, for a count ``y``.

    Counts up to :data:`_SUMMED` as the sums ``sum_j log(phi + j)`` and
    ``sum_j 1 / (phi + j)``, ``j < y`` (exact, and cheaper than four special functions);
    larger ones for ``phi >= 50`` by Stirling's series of the difference, written so that
    nothing large cancels (``lgamma(phi)`` alone is ``~ phi log phi``: near the Poisson
    limit its rounding would swamp the difference), and below by the functions themselves
    (``lg_phi``, ``dg_phi``: ``lgamma(phi)`` and ``digamma(phi)``, the same for every count).
    """
    if y <= _SUMMED:
        lg = dg = 0.0
        for j in range(int(y)):
            lg += math.log(phi + j)
            dg += 1.0 / (phi + j)
        return lg, dg
    if phi < _STIRLING_FROM:
        return math.lgamma(y + phi) - lg_phi, _digamma(y + phi) - dg_phi
    x = phi + y
    a, b = 1.0 / x, 1.0 / phi
    a2, b2 = a * a, b * b
    lg = (phi - 0.5) * math.log1p(y / phi) + y * math.log(x) - y
    lg += (a - b) / 12.0 - (a * a2 - b * b2) / 360.0 + (a * a2 * a2 - b * b2 * b2) / 1260.0
    lg -= (a * a2 * a2 * a2 - b * b2 * b2 * b2) / 1680.0
    dg = math.log1p(y / phi) + 0.5 * y * a * b - (a2 - b2) / 12.0
    dg += (a2 * a2 - b2 * b2) / 120.0 - (a2 * a2 * a2 - b2 * b2 * b2) / 252.0
    dg += (a2 * a2 * a2 * a2 - b2 * b2 * b2 * b2) / 240.0
    return lg, dg


@nb.njit(cache=True, nogil=True)
def _row_constants(family, counts, phi, derivative):
    """The part of ``sum log f`` free of ``eta``, and per distinct count its ``phi`` derivative.

    ``sum_i lgamma(y_i + phi) - lgamma(phi) - log y_i!`` over the rows that are counts
    (Poisson: ``-sum log y_i!``), from the distinct counts and how often each occurs
    (:func:`distinct_counts`): a pseudobulk gene's 200 counts hold about 80 values, a
    cell-level gene's thousands of non-zero counts a few dozen. Computed once per
    evaluation, not at every pass of the modes' Newton steps, which never need it.
    Returns ``(sum, dg)``, ``dg`` the digamma difference of each distinct count (only
    with ``derivative``; the rows find theirs through ``counts``' index).
    """
    values, multiplicity, _, log_fact = counts
    n = len(values)
    dg = np.zeros(n if derivative else 0)
    if family == POISSON:
        return -log_fact, dg
    total = carry = 0.0
    lg_phi, dg_phi = math.lgamma(phi), _digamma(phi)
    for v in range(n):
        lg, d = _gamma_ratio(values[v], phi, lg_phi, dg_phi)
        if derivative:
            dg[v] = d
        total, carry = _add(total, carry, multiplicity[v] * lg)
    return total + carry - log_fact, dg


def row_layout(codes: np.ndarray, classes: np.ndarray | None = None) -> tuple:
    """``(cls, class_codes)`` of rows with columns ``codes`` (``n x k``) for the kernel.

    ``classes``: a partition of the rows whose members share their codes (the design's
    classes, :mod:`.rows`); by default the distinct rows of ``codes``. The passes over
    the rows then reach ``u`` once per class: at cell level, a few hundred classes for
    tens of thousands of non-zero counts.
    """
    if classes is None:
        _, first, classes = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    else:
        first = np.zeros(int(classes.max()) + 1 if len(classes) else 0, np.int64)
        first[classes] = np.arange(len(classes))
    cls = np.ascontiguousarray(np.ravel(classes), dtype=np.int64)
    return cls, np.ascontiguousarray(codes[first], dtype=np.int64)


def distinct_counts(y: np.ndarray, kind: np.ndarray) -> tuple:
    """The non-zero counts of the rows that are counts (not a class's zeros), by value.

    ``(values, multiplicity, index, log_fact)``: the distinct values, how many rows hold
    each, each row's value's position (``-1`` for a zero or a class's zeros), and
    ``sum log y_i!``, free of every parameter (:func:`_row_constants`).
    """
    tallied = _tally(y, kind)
    if tallied[0]:
        return tallied[1:]
    counted = (kind != ZEROS) & (y > 0)
    values, inverse, multiplicity = np.unique(y[counted], return_inverse=True, return_counts=True)
    index = np.full(len(y), -1, np.int64)
    index[counted] = inverse.ravel()
    log_fact = float(np.dot(multiplicity, special.gammaln(values + 1.0)))
    return values.astype(float), multiplicity.astype(float), index, log_fact


@nb.njit(cache=True, nogil=True)
def _tally(y, kind):
    """:func:`distinct_counts` by a tally of the values: ``(done, values, multiplicity, ...)``.

    Done only where the counts are whole and at most ``4 n + 64`` (``n`` of them): then
    three times faster than sorting them, and one compiled call.
    """
    n = top = 0
    for i in range(len(y)):
        if kind[i] != ZEROS and y[i] > 0:
            if y[i] != math.floor(y[i]) or y[i] > 1e15:
                top = -1
                break
            n += 1
            top = max(top, int(y[i]))
    none = (False, np.zeros(0), np.zeros(0), np.zeros(0, np.int64), 0.0)
    if top < 0 or top > 4 * n + 64:
        return none
    tally = np.zeros(top + 1, np.int64)
    for i in range(len(y)):
        if kind[i] != ZEROS and y[i] > 0:
            tally[int(y[i])] += 1
    position = np.full(top + 1, -1, np.int64)
    values, multiplicity = [], []
    log_fact = 0.0
    for v in range(1, top + 1):
        if tally[v] > 0:
            position[v] = len(values)
            values.append(float(v))
            multiplicity.append(float(tally[v]))
            log_fact += tally[v] * math.lgamma(v + 1.0)
    index = np.full(len(y), -1, np.int64)
    for i in range(len(y)):
        if kind[i] != ZEROS and y[i] > 0:
            index[i] = position[int(y[i])]
    return True, np.array(values), np.array(multiplicity), index, log_fact


@nb.njit(cache=True, nogil=True)
def _log_ratio(q, m):
    """``log((phi + mu) / phi) = -log q`` from ``q = phi / (phi + mu)`` and ``m = 1 - q``.

    Of whichever is the smaller, both being accurate to their last digits: ``-log q``
    where ``q < 1/2`` (a highly expressed gene's ``mu >> phi``: ``1 - m`` would lose
    ``m``'s digits, 5e-6 of a log-likelihood at ``mu = 1e6``), ``-log1p(-m)`` elsewhere
    (near the Poisson limit ``m`` is 1e-8 and ``log q`` would lose it).
    """
    return -math.log(q) if q < 0.5 else -math.log1p(-m)


@nb.njit(cache=True, nogil=True)
def _row_lgh(family, kind, y, eta, phi, log_phi):
    """An observation's ``log f`` (less its constant), ``g = dl/deta``, ``h = -d2l/deta2``.

    ``h`` is the observed information; ``log_phi`` is ``log(phi)``, taken once per pass.
    ``kind``: an observation, or a non-zero NB2 count less its zero (:data:`DIFFERENCE`).
    Scalars only: called once per row and pass.
    """
    mu = math.exp(eta)
    if family == POISSON:
        return y * eta - mu, y - mu, mu
    # q = phi / (phi + mu) and m = mu / (phi + mu), from one division; log(phi + mu) is
    # log phi + l1 (_log_ratio): the NB2 log-likelihood
    # phi log phi - (y + phi) log(phi + mu) + y eta without cancelling large terms
    inv = 1.0 / (phi + mu)
    q, m = phi * inv, mu * inv
    l1 = _log_ratio(q, m)
    if kind == DIFFERENCE:
        return y * (eta - log_phi - l1), q * y, y * q * m
    ll = -phi * l1
    if y > 0.0:
        ll += y * (eta - log_phi - l1)
    return ll, q * (y - mu), (y + phi) * q * m


@nb.njit(cache=True, nogil=True)
def _row_terms(family, kind, y, eta, phi, log_phi, dg):
    """An observation's ``log f`` and every derivative: ``(l, g, h, h1, l_p, g_p, h_p)``.

    :func:`_row_lgh`'s three, then ``h1 = dh/deta`` and the derivatives of ``l``, ``g``
    and ``h`` in ``log phi`` (0 for Poisson), from the same ``mu``, ``q`` and ``m``;
    ``dg`` is the row's digamma difference (:func:`_row_constants`).
    """
    mu = math.exp(eta)
    if family == POISSON:
        return y * eta - mu, y - mu, mu, mu, 0.0, 0.0, 0.0
    inv = 1.0 / (phi + mu)  # q and m as in _row_lgh
    q, m = phi * inv, mu * inv
    l1 = _log_ratio(q, m)
    if kind == DIFFERENCE:
        h = y * q * m  # (and g_p: the same)
        ll = y * (eta - log_phi - l1)
        return ll, q * y, h, h * (q - m), phi * dg - y * q, h, h * (m - q)
    ll = -phi * l1
    if y > 0.0:
        ll += y * (eta - log_phi - l1)
    h = (y + phi) * q * m
    l_p = phi * (dg - l1) + q * (mu - y)
    g_p = (y - mu) * q * m
    h_p = q * m * (2.0 * phi * m - y * q + y * m)
    return ll, q * (y - mu), h, h * (q - m), l_p, g_p, h_p


@nb.njit(cache=True, nogil=True)
def _zeros(eta, phi, r, aux):
    """A class's zeros (row ``r``): ``-phi F_c`` at ``eta - log phi`` and its derivatives.

    ``(l, g, h, h1, l_p, g_p, h_p)`` from the tables of :mod:`._zero_tables`. The rows
    are described by ``aux = (kind, cls, start, n_segments, coef, tails)``: each row's
    kind (:data:`OBSERVATION`, :data:`DIFFERENCE`, :data:`ZEROS`), its class, and the
    tables.
    """
    f0, f1, f2, f3 = zero_terms(eta - math.log(phi), aux[1][r], aux[2], aux[3], aux[4], aux[5])
    return (
        -phi * f0, -phi * f1, phi * f2, phi * f3, phi * (f1 - f0), phi * (f2 - f1),
        phi * (f2 - f3),
    )  # fmt: skip


@nb.njit(cache=True, nogil=True)
def _linear_predictor(base, theta, layout, u, out):
    """``out = base + Z Lambda u``: each class's random effects, then each row's."""
    cls, class_codes = layout
    m, k = class_codes.shape
    effect = np.zeros(m)
    for c in range(m):
        for t in range(k):
            effect[c] += theta[t] * u[class_codes[c, t]]
    for i in range(len(base)):
        out[i] = base[i] + effect[cls[i]]


@nb.njit(cache=True, nogil=True)
def _add(total, carry, value):
    """Neumaier's compensated sum: ``(total, carry)`` after adding ``value``.

    A plain sum of 100,000 terms drifts by about 1e-10 of a log-likelihood of 1e4, more
    than the changes the modes' Newton steps are judged by.
    """
    t = total + value
    if abs(total) >= abs(value):
        carry += (total - t) + value
    else:
        carry += (value - t) + total
    return t, carry


@nb.njit(cache=True, nogil=True)
def _penalty(u, prior):
    """``u' P u``: ``|u|^2`` but over the columns with a known covariance."""
    out = u @ u
    cols, precision = prior[1], prior[2]
    if len(cols):
        uk = u[cols]
        out += uk @ (precision @ uk) - uk @ uk
    return out


@nb.njit(cache=True, nogil=True)
def _prior_slope(u, prior, out):
    """``out = -P u``, the prior's part of the modes' gradient."""
    out[:] = -u
    cols, precision = prior[1], prior[2]
    if len(cols):
        out[cols] = -(precision @ u[cols])


@nb.njit(cache=True, nogil=True)
def _loglik(family, y, eta, phi, aux):
    """``sum log f(y | u)`` at ``eta``, less the constant."""
    kind = aux[0]  # (the rows' kinds read here: aux passed to a call per row is slow)
    log_phi = math.log(phi)
    total = carry = 0.0
    for i in range(len(y)):
        if kind[i] == ZEROS:
            ll = _zeros(eta[i], phi, i, aux)[0]
        else:
            ll = _row_lgh(family, kind[i], y[i], eta[i], phi, log_phi)[0]
        total, carry = _add(total, carry, ll)
    return total + carry


@nb.njit(cache=True, nogil=True)
def _system(family, y, eta, phi, u, theta, layout, prior, aux, factor, grad):
    """The blocks of ``H`` (:mod:`._blocked`, not yet factored) and ``grad = Lambda Z' g - Pu``.

    Both from the classes' sums of ``g`` and ``h`` (the rows of a class share their
    columns of ``u``): per row only its own terms and two additions. Returns
    ``sum log f(y | u)`` less its constant, from the same pass.
    """
    cls, class_codes = layout
    m, k = class_codes.shape
    kind = aux[0]
    log_phi = math.log(phi)
    g_sum = np.zeros(m)
    h_sum = np.zeros(m)
    total = carry = 0.0
    for i in range(len(y)):
        if kind[i] == ZEROS:
            ll, g, h = _zeros(eta[i], phi, i, aux)[:3]
        else:
            ll, g, h = _row_lgh(family, kind[i], y[i], eta[i], phi, log_phi)
        total, carry = _add(total, carry, ll)
        g_sum[cls[i]] += g
        h_sum[cls[i]] += h
    _prior_slope(u, prior, grad)
    for c in range(m):
        for s in range(k):
            grad[class_codes[c, s]] += theta[s] * g_sum[c]
    assemble(factor, class_codes, theta, h_sum, prior)
    return total + carry


@nb.njit(cache=True, nogil=True)
def _direction(factor, grad):
    """The Newton step ``H^-1 grad``."""
    return np.ascontiguousarray(solve(factor, grad.reshape((len(grad), 1)))[:, 0])


@nb.njit(cache=True, nogil=True, inline="always")
def _halve(family, y, base, phi, theta, layout, prior, aux, u, step, f, eta):
    """Halve ``step`` until ``u + t step`` is no worse than ``f``: ``(found, point)``."""
    t = 0.5
    trial = u.copy()
    while t >= 1e-10:
        trial[:] = u + t * step
        if (trial == u).all():  # the step is below u's rounding
            break
        _linear_predictor(base, theta, layout, trial, eta)
        if _loglik(family, y, eta, phi, aux) - 0.5 * _penalty(trial, prior) >= f:
            return True, trial
        t *= 0.5
    return False, trial


@nb.njit(cache=True, nogil=True)
def _newton(family, y, base, phi, theta, layout, prior, aux, u, tol, max_iter, const, factor, eta):
    """The modes' Newton steps, ``u`` updated in place: ``(finite, converged)``.

    Steps (halved where the whole step does not improve) until the Newton decrement
    ``grad' H^-1 grad`` is below ``tol (1 + |f| + |const|)``: ``f`` the penalised
    log-likelihood less ``const``, whose rounding grows with the magnitude of its terms,
    not with their sum (a highly expressed gene's ``f`` and ``const`` are both near 2e4
    and cancel to 1.5e3: a tolerance of the sum had the steps judged by rounding). A
    whole step is judged by the pass that also assembles ``H`` there: one pass over the
    rows per step. The last step is taken without a pass at its end: the caller's pass
    there (:func:`conditional_modes`, :func:`laplace`) gives ``H`` and ``log f``.
    """
    grad = np.empty(len(u))
    _linear_predictor(base, theta, layout, u, eta)
    f = _system(family, y, eta, phi, u, theta, layout, prior, aux, factor, grad)
    f -= 0.5 * _penalty(u, prior)
    if not math.isfinite(f) or not factorise(factor):
        return False, False
    for _ in range(max_iter):
        step = _direction(factor, grad)
        decrement = grad @ step
        if decrement < tol * (1.0 + abs(f) + abs(const)):  # below f's rounding: take it whole
            u += step
            return True, True
        trial = u + step
        _linear_predictor(base, theta, layout, trial, eta)
        f_new = _system(family, y, eta, phi, trial, theta, layout, prior, aux, factor, grad)
        f_new -= 0.5 * _penalty(trial, prior)
        if not f_new >= f:
            found, trial = _halve(family, y, base, phi, theta, layout, prior, aux, u, step, f, eta)
            if not found:  # no step improves f: rounding, or a flat direction
                return True, decrement < _STALL
            _linear_predictor(base, theta, layout, trial, eta)
            f_new = _system(family, y, eta, phi, trial, theta, layout, prior, aux, factor, grad)
            f_new -= 0.5 * _penalty(trial, prior)
        u[:] = trial
        f = f_new
        if not math.isfinite(f) or not factorise(factor):
            return False, False
    return True, False


@nb.njit(cache=True, nogil=True, inline="always")
def conditional_modes(
    family, y, base, phi, theta, layout, term, prior, aux, u, tol, max_iter, const
):
    """Maximise the penalised log-likelihood in ``u`` in place, from ``u``'s values.

    Newton steps (:func:`_newton`), then a pass at the modes. Returns ``(converged, eta,
    factor, loglik)``: the factor of ``H`` at the modes (:mod:`._blocked`) and the sum of
    ``log f(y | u)`` there less ``const`` (the part free of ``eta``,
    :func:`_row_constants`), ``NaN`` where there are no modes (``mu`` overflowed).
    """
    factor = empty_factor(term, prior[0])
    eta = np.empty(len(y))
    finite, converged = _newton(
        family, y, base, phi, theta, layout, prior, aux, u, tol, max_iter, const, factor, eta
    )
    if not finite:
        return False, eta, factor, np.nan
    _linear_predictor(base, theta, layout, u, eta)
    ll = _system(family, y, eta, phi, u, theta, layout, prior, aux, factor, np.empty(len(u)))
    if not math.isfinite(ll) or not factorise(factor):
        return False, eta, factor, np.nan
    return converged, eta, factor, ll


@nb.njit(cache=True, nogil=True)
def laplace(
    family, y, X, offset, layout, term, prior, aux, counts, theta, beta, log_phi, u, tol,
    max_iter, gradient,
):  # fmt: skip
    """The Laplace criterion ``D`` and, with ``gradient``, its exact gradient.

    Parameters are ``theta`` (one per term; column ``t`` of ``layout``'s codes is term
    ``t``'s), ``beta`` and, for NB2, ``log_phi``; the gradient is in that order
    (``log_phi`` last, only for NB2). ``layout`` is ``(cls, class_codes)``: each row's
    class and each class's column of ``u`` per term (rows of a class share them;
    :func:`row_layout`); ``term`` is each column's term, ``prior`` the modes' prior (see
    the module's documentation). ``aux`` describes the rows (:func:`_zeros`); ``counts``
    their :func:`distinct_counts`. ``u`` holds the starting modes and is overwritten with
    the modes found. Returns ``(D, grad, converged)``.
    """
    n_par = len(theta) + X.shape[1] + (1 if family == NB2 else 0)
    phi = math.exp(log_phi)
    base = offset + X @ beta
    const, dg = _row_constants(family, counts, phi, gradient)
    if not gradient:
        converged, eta, factor, ll = conditional_modes(
            family, y, base, phi, theta, layout, term, prior, aux, u, tol, max_iter, const
        )
        if not math.isfinite(ll):
            return np.inf, np.zeros(n_par), False
        D = _penalty(u, prior) - 2.0 * (ll + const) + logdet(factor) + prior[3]
        return D, np.zeros(n_par), converged
    factor = empty_factor(term, prior[0])
    eta = np.empty(len(y))
    finite, converged = _newton(
        family, y, base, phi, theta, layout, prior, aux, u, tol, max_iter, const, factor, eta
    )
    if not finite:
        return np.inf, np.zeros(n_par), False
    _linear_predictor(base, theta, layout, u, eta)
    # the pass at the modes gives H, log f and every sum the gradient needs at once
    ll, sums, hX, h1X, direct = _terms_pass(family, y, X, layout, aux, phi, dg, counts[2], eta)
    assemble(factor, layout[1], theta, sums[1], prior)
    if not math.isfinite(ll) or not factorise(factor):
        return np.inf, np.zeros(n_par), False
    D = _penalty(u, prior) - 2.0 * (ll + const) + logdet(factor) + prior[3]
    grad = _gradient(family, layout[1], theta, u, factor, sums, hX, h1X, direct)
    return D, grad, converged


@nb.njit(cache=True, nogil=True, inline="always")
def _terms_pass(family, y, X, layout, aux, phi, dg, index, eta):
    """``sum log f`` at ``eta`` and, per class, the sums of every row term.

    Returns ``(loglik, sums, hX, h1X, direct)``: ``sums`` (rows) per class of ``g``, ``h``,
    ``h1``, ``g_p``, ``h_p`` (:func:`_row_terms`); ``hX``, ``h1X`` per class the sums of
    ``h x_i`` and ``h1 x_i``; ``direct`` the sums of ``g x_i`` and of ``l_p``.
    ``dg[index[i]]``: row ``i``'s digamma difference. Nothing here needs ``H``: the
    leverages are applied per class afterwards (:func:`_gradient`).
    """
    cls, class_codes = layout
    m, p = class_codes.shape[0], X.shape[1]
    kind = aux[0]
    log_phi = math.log(phi)
    sums = np.zeros((5, m))
    hX = np.zeros((m, p))
    h1X = np.zeros((m, p))
    direct = np.zeros(p + 1)
    total = carry = 0.0
    for i in range(len(y)):
        if kind[i] == ZEROS:
            ll, g, h, h1, l_p, g_p, h_p = _zeros(eta[i], phi, i, aux)
        else:
            d = dg[index[i]] if index[i] >= 0 and dg.size else 0.0
            ll, g, h, h1, l_p, g_p, h_p = _row_terms(family, kind[i], y[i], eta[i], phi, log_phi, d)
        total, carry = _add(total, carry, ll)
        c = cls[i]
        for j in range(p):
            hX[c, j] += h * X[i, j]
            h1X[c, j] += h1 * X[i, j]
            direct[j] += g * X[i, j]
        direct[p] += l_p
        sums[0, c] += g
        sums[1, c] += h
        sums[2, c] += h1
        sums[3, c] += g_p
        sums[4, c] += h_p
    return total + carry, sums, hX, h1X, direct


@nb.njit(cache=True, nogil=True, inline="always")
def _gradient(family, class_codes, theta, u, factor, sums, hX, h1X, direct):
    """``dD/dpar`` by the implicit function theorem (see the module's documentation).

    For each parameter: its direct effect on ``-2 log f`` (the modes held), and on
    ``log det H`` through ``W`` and ``Lambda``, with ``eta`` moving with the modes
    (``du/dpar = H^-1 dF/dpar``, ``F = Lambda Z' g - u`` the modes' equation). The
    effect through ``W`` of parameter ``j`` is ``sum_i lev_i h1_i (d eta_i / d par_j)``,
    ``lev`` each class's leverage: from the classes' sums of :func:`_terms_pass`; the
    part through the modes is ``sum_c weight_c du_cj`` over the columns of ``u``.
    """
    k, p = len(theta), hX.shape[1]
    n_par = k + p + (1 if family == NB2 else 0)
    lev, r = leverages(factor, class_codes, theta)  # per class: its rows share a_i
    out = np.zeros(n_par)
    for j in range(p):  # the fixed effects and the dispersion, the modes held
        out[k + j] = -2.0 * direct[j] + (lev * h1X[:, j]).sum()
    if family == NB2:
        out[n_par - 1] = -2.0 * direct[p] + (lev * sums[4]).sum()
    dF, weight = _mode_equation(class_codes, theta, u, lev, r, sums, hX, n_par, family, out)
    du = solve(factor, dF)
    for c in range(len(u)):  # sum_i w_i (Z Lambda du)_i, by columns of u
        for j in range(n_par):
            out[j] += weight[c] * du[c, j]
    return out


@nb.njit(cache=True, nogil=True, inline="always")
def _mode_equation(class_codes, theta, u, lev, r, sums, hX, n_par, family, out):
    """``dF/dpar`` (columns of ``u`` x parameters) and the weights of ``du`` in the gradient.

    Adds the variances' effects with the modes held to ``out``: ``theta_t`` scales the
    modes of its term's columns. Per class, from its sums (:func:`_terms_pass`).
    """
    m, k = class_codes.shape
    p = hX.shape[1]
    last = n_par - 1 if family == NB2 else -1  # the dispersion's index
    dF = np.zeros((len(u), n_par))
    weight = np.zeros(len(u))
    for c in range(m):
        g, h, w, g_p = sums[0, c], sums[1, c], lev[c] * sums[2, c], sums[3, c]
        for t in range(k):
            col = class_codes[c, t]
            out[t] += 2.0 * h * r[c, t] + (w - 2.0 * g) * u[col]
            dF[col, t] += g
            weight[col] += w * theta[t]
        for s in range(k):  # d eta / d par with the modes held: u, then X, then 0
            col = class_codes[c, s]
            for t in range(k):
                dF[col, t] -= theta[s] * h * u[class_codes[c, t]]
            for j in range(p):
                dF[col, k + j] -= theta[s] * hX[c, j]
            if last >= 0:
                dF[col, last] += theta[s] * g_p
    return dF, weight
