"""Compiled kernel of the Laplace approximation for Poisson and NB2 mixed models.

One gene, random intercepts (any number of crossed terms), log link. The model is

    eta = offset + X beta + Z Lambda u,    u ~ N(0, I),    y_i | u ~ f(mu_i = exp(eta_i))

with ``Lambda`` diagonal, ``theta_t`` on the levels of term ``t`` (lme4's
parameterisation). ``f`` is Poisson (``family = 0``) or the negative binomial with
size ``phi`` (``family = 1``; variance ``mu + mu^2 / phi``, glmmTMB's ``nbinom2``).

The conditional modes ``u_hat`` maximise ``sum log f(y | u) - |u|^2 / 2`` (penalised
iteratively reweighted least squares: Newton on ``u`` with step halving). With
``H = Lambda Z' W Z Lambda + I`` (``W`` the observed information of each ``eta_i``),
the Laplace approximation of ``-2 log p(y)`` is

    D = -2 sum log f(y | u_hat) + |u_hat|^2 + log det H,

lme4's ``glmer(nAGQ = 1)`` and glmmTMB's criterion. Its exact gradient in ``theta``,
``beta`` and ``log phi`` follows from the implicit function theorem: the first two
terms are stationary in ``u`` at ``u_hat``, and ``log det H`` moves with ``u_hat``
through ``W``, which needs the third derivative of ``log f`` in ``eta``.

Rows may be observations or classes of observations that share everything but the
response (:mod:`scvarpart.glmm.classes`): the kernel only sees rows.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ._zero_tables import zero_terms

__all__ = [
    "DIFFERENCE",
    "NB2",
    "OBSERVATION",
    "POISSON",
    "ZEROS",
    "conditional_modes",
    "laplace",
    "loglik_terms",
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
def _gamma_ratio(y, phi):
    """``lgamma(y + phi) - lgamma(phi)`` and its derivative in ``phi``, for a count ``y``.

    For ``phi >= 50``, Stirling's series of the difference, written so that nothing
    large cancels (``lgamma(phi)`` alone is ``~ phi log phi``: near the Poisson limit its
    rounding would swamp the difference); below, the functions themselves.
    """
    if y == 0.0:  # most counts of a cell
        return 0.0, 0.0
    if phi < _STIRLING_FROM:
        return math.lgamma(y + phi) - math.lgamma(phi), _digamma(y + phi) - _digamma(phi)
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
def loglik_terms(family, y, eta, phi):
    """One observation's ``log f``, its derivatives in ``eta`` and in ``log phi``.

    Returns ``(l, g, h, h1, l_p, g_p, h_p)``: the log density; ``g = dl/deta``;
    ``h = -d2l/deta2`` (the observed information); ``h1 = dh/deta``; and the
    derivatives of ``l``, ``g`` and ``h`` in ``log phi`` (0 for Poisson).
    """
    mu = math.exp(eta)
    if family == POISSON:
        return y * eta - mu - math.lgamma(y + 1.0), y - mu, mu, mu, 0.0, 0.0, 0.0
    s = phi + mu
    lg, dg = _gamma_ratio(y, phi)
    # phi log phi - (y + phi) log(phi + mu) + y eta, without cancelling large terms
    l_y = lg - math.lgamma(y + 1.0) - phi * math.log1p(mu / phi) + y * (eta - math.log(s))
    g = phi * (y - mu) / s
    h = (y + phi) * phi * mu / (s * s)
    h1 = h * (phi - mu) / s
    l_p = phi * (dg - math.log1p(mu / phi) + (mu - y) / s)
    g_p = phi * (y - mu) * mu / (s * s)
    h_p = phi * mu * (2.0 * phi * mu - y * phi + y * mu) / (s * s * s)
    return l_y, g, h, h1, l_p, g_p, h_p


@nb.njit(cache=True, nogil=True)
def _difference_terms(y, eta, phi):
    """``log f(y) - log f(0)`` of NB2 and its derivatives.

    A non-zero count whose zero is counted in its class's :mod:`._zero_tables` sum.
    """
    mu = math.exp(eta)
    s = phi + mu
    lg, dg = _gamma_ratio(y, phi)
    l_y = lg - math.lgamma(y + 1.0) + y * (eta - math.log(s))
    h = y * phi * mu / (s * s)
    g_p = phi * y * mu / (s * s)
    return l_y, phi * y / s, h, h * (phi - mu) / s, phi * (dg - y / s), g_p, g_p * (mu - phi) / s


@nb.njit(cache=True, nogil=True)
def _row_terms(family, y, eta, phi, r, aux):
    """Row ``r``'s ``loglik_terms``: an observation, a difference row, or a class's zeros.

    ``aux = (kind, cls, start, n_segments, coef, tails)``: each row's kind
    (:data:`OBSERVATION`, :data:`DIFFERENCE`, :data:`ZEROS`), its class, and the zero
    tables of :mod:`._zero_tables`.
    """
    kind = aux[0][r]
    if kind == OBSERVATION:
        return loglik_terms(family, y, eta, phi)
    if kind == DIFFERENCE:
        return _difference_terms(y, eta, phi)
    f0, f1, f2, f3 = zero_terms(eta - math.log(phi), aux[1][r], aux[2], aux[3], aux[4], aux[5])
    return (
        -phi * f0, -phi * f1, phi * f2, phi * f3, phi * (f1 - f0), phi * (f2 - f1),
        phi * (f2 - f3),
    )  # fmt: skip


@nb.njit(cache=True, nogil=True)
def _row_loglik(family, y, eta, phi, r, aux):
    """Row ``r``'s ``log f`` alone (cheaper than :func:`_row_terms` for the criterion)."""
    kind = aux[0][r]
    if kind == ZEROS:
        x = eta - math.log(phi)
        return -phi * zero_terms(x, aux[1][r], aux[2], aux[3], aux[4], aux[5])[0]
    mu = math.exp(eta)
    if family == POISSON:
        return y * eta - mu - math.lgamma(y + 1.0)
    zero = -phi * math.log1p(mu / phi)
    if y == 0.0:
        return zero
    lg = _gamma_ratio(y, phi)[0] - math.lgamma(y + 1.0) + y * (eta - math.log(phi + mu))
    return lg if kind == DIFFERENCE else lg + zero


@nb.njit(cache=True, nogil=True)
def _row_lgh(family, y, eta, phi, r, aux):
    """Row ``r``'s ``log f``, ``g`` and ``h`` (for the Newton steps of the modes)."""
    kind = aux[0][r]
    if kind == ZEROS:
        f = zero_terms(eta - math.log(phi), aux[1][r], aux[2], aux[3], aux[4], aux[5])
        return -phi * f[0], -phi * f[1], phi * f[2]
    mu = math.exp(eta)
    if family == POISSON:
        return y * eta - mu - math.lgamma(y + 1.0), y - mu, mu
    s = phi + mu
    ll = _row_loglik(family, y, eta, phi, r, aux)
    if kind == DIFFERENCE:
        return ll, phi * y / s, y * phi * mu / (s * s)
    return ll, phi * (y - mu) / s, (y + phi) * phi * mu / (s * s)


@nb.njit(cache=True, nogil=True)
def _linear_predictor(base, theta, codes, term, u, out):
    """``out = base + Z Lambda u`` (``codes``: each row's column of ``u`` per term)."""
    n, k = codes.shape
    for i in range(n):
        e = base[i]
        for t in range(k):
            c = codes[i, t]
            e += theta[term[c]] * u[c]
        out[i] = e


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
def _loglik(family, y, eta, phi, aux):
    """``sum log f(y | u)`` at ``eta``."""
    total = carry = 0.0
    for i in range(len(y)):
        total, carry = _add(total, carry, _row_loglik(family, y[i], eta[i], phi, i, aux))
    return total + carry


@nb.njit(cache=True, nogil=True)
def _system(family, y, eta, phi, u, theta, codes, term, aux, H, grad):
    """``H = Lambda Z'WZ Lambda + I`` and ``grad = Lambda Z' g - u`` at ``eta``.

    Returns ``sum log f(y | u)``, from the same pass.
    """
    n, k = codes.shape
    H[:] = 0.0
    for c in range(len(u)):
        H[c, c] = 1.0
        grad[c] = -u[c]
    total = carry = 0.0
    for i in range(n):
        ll, g, h = _row_lgh(family, y[i], eta[i], phi, i, aux)
        total, carry = _add(total, carry, ll)
        for s in range(k):
            cs = codes[i, s]
            ts = theta[term[cs]]
            grad[cs] += ts * g
            hs = h * ts
            for t in range(k):
                ct = codes[i, t]
                H[cs, ct] += hs * theta[term[ct]]
    return total + carry


@nb.njit(cache=True, nogil=True)
def _cholesky(H, L):
    """Lower Cholesky factor of ``H`` into ``L``.

    ``False`` where ``H`` is not numerically positive definite (``mu`` so large that
    ``I`` is lost in rounding).
    """
    m = H.shape[0]
    for j in range(m):
        s = H[j, j]
        for t in range(j):
            s -= L[j, t] * L[j, t]
        if not s > 0.0:
            return False
        d = math.sqrt(s)
        L[j, j] = d
        for i in range(j + 1, m):
            v = H[i, j]
            for t in range(j):
                v -= L[i, t] * L[j, t]
            L[i, j] = v / d
        for i in range(j):
            L[i, j] = 0.0
    return True


@nb.njit(cache=True, nogil=True)
def _cholesky_solve(L, b):
    """``x`` with ``L L' x = b`` (``L`` lower triangular)."""
    m = len(b)
    x = b.copy()
    for i in range(m):
        s = x[i]
        for j in range(i):
            s -= L[i, j] * x[j]
        x[i] = s / L[i, i]
    for i in range(m - 1, -1, -1):
        s = x[i]
        for j in range(i + 1, m):
            s -= L[j, i] * x[j]
        x[i] = s / L[i, i]
    return x


@nb.njit(cache=True, nogil=True)
def conditional_modes(family, y, base, phi, theta, codes, term, aux, u, tol, max_iter):
    """Maximise the penalised log-likelihood in ``u`` in place, from ``u``'s values.

    Newton steps with halving, until the Newton decrement ``grad' H^-1 grad`` is below
    ``tol (1 + |f|)``, ``f`` the penalised log-likelihood (its rounding grows with it).
    Returns ``(converged, eta, L, loglik)``: ``L`` the Cholesky factor of ``H`` at the
    modes, ``loglik`` the sum of ``log f(y | u)`` there.
    """
    q = len(u)
    eta = np.empty(len(y))
    H = np.empty((q, q))
    L = np.empty((q, q))
    grad = np.empty(q)
    trial = np.empty(q)
    _linear_predictor(base, theta, codes, term, u, eta)
    converged = False
    failed = np.full((q, q), np.nan)
    for _ in range(max_iter):
        f = _system(family, y, eta, phi, u, theta, codes, term, aux, H, grad) - 0.5 * (u @ u)
        if not math.isfinite(f) or not _cholesky(H, L):  # mu overflowed: no modes here
            return False, eta, failed, np.nan
        step = _cholesky_solve(L, grad)
        decrement = grad @ step
        if decrement < tol * (1.0 + abs(f)):  # the step is below f's rounding: take it whole
            u += step
            converged = True
            break
        t = 1.0
        while True:
            trial[:] = u + t * step
            _linear_predictor(base, theta, codes, term, trial, eta)
            f_new = _loglik(family, y, eta, phi, aux) - 0.5 * (trial @ trial)
            if f_new >= f or t < 1e-10:
                break
            t *= 0.5
        if f_new < f:  # no step improves f: rounding, or a flat direction
            converged = decrement < _STALL
            break
        u[:] = trial
    _linear_predictor(base, theta, codes, term, u, eta)
    ll = _system(family, y, eta, phi, u, theta, codes, term, aux, H, grad)
    if not math.isfinite(ll) or not _cholesky(H, L):
        return False, eta, failed, np.nan
    return converged, eta, L, ll


@nb.njit(cache=True, nogil=True)
def laplace(
    family, y, X, offset, codes, term, aux, theta, beta, log_phi, u, tol, max_iter, gradient
):
    """The Laplace criterion ``D`` and, with ``gradient``, its exact gradient.

    Parameters are ``theta`` (one per term), ``beta`` and, for NB2, ``log_phi``; the
    gradient is in that order (``log_phi`` last, only for NB2). ``aux`` describes the
    rows (:func:`_row_terms`). ``u`` holds the starting modes and is overwritten with the
    modes found. Returns ``(D, grad, converged)``.
    """
    n_par = len(theta) + X.shape[1] + (1 if family == NB2 else 0)
    phi = math.exp(log_phi)
    base = offset + X @ beta
    converged, eta, L, ll = conditional_modes(
        family, y, base, phi, theta, codes, term, aux, u, tol, max_iter
    )
    if not np.isfinite(L[0, 0]):
        return np.inf, np.zeros(n_par), False
    D = u @ u - 2.0 * ll
    for c in range(len(u)):
        D += 2.0 * math.log(L[c, c])
    if not gradient:
        return D, np.zeros(n_par), converged
    Linv = np.linalg.inv(L)
    Hinv = Linv.T @ Linv
    return D, _gradient(family, y, X, codes, term, aux, theta, phi, u, eta, Hinv), converged


@nb.njit(cache=True, nogil=True)
def _row_derivatives(family, y, eta, phi, aux, theta, codes, term, Hinv):
    """Per row: ``g``, ``h``, ``h1``, ``g_p``, ``h_p``, ``l_p``, and two products with ``H^-1``.

    With ``a_i`` the row of ``Z Lambda``: the leverage ``a_i' H^-1 a_i``, and
    ``(H^-1 a_i)`` at the row's columns.
    """
    n, k = codes.shape
    out = np.empty((6, n))
    lev = np.empty(n)
    r = np.empty((n, k))
    for i in range(n):
        _, g, h, h1, l_p, g_p, h_p = _row_terms(family, y[i], eta[i], phi, i, aux)
        out[0, i], out[1, i], out[2, i], out[3, i], out[4, i], out[5, i] = g, h, h1, g_p, h_p, l_p
        c_i = 0.0
        for s in range(k):
            cs = codes[i, s]
            acc = 0.0
            for t in range(k):
                ct = codes[i, t]
                acc += theta[term[ct]] * Hinv[cs, ct]
            r[i, s] = acc
            c_i += theta[term[cs]] * acc
        lev[i] = c_i
    return out, lev, r


@nb.njit(cache=True, nogil=True)
def _gradient(family, y, X, codes, term, aux, theta, phi, u, eta, Hinv):
    """``dD/dpar`` by the implicit function theorem (see the module's documentation).

    For each parameter: its direct effect on ``-2 log f`` (the modes held), and on
    ``log det H`` through ``W`` and ``Lambda``, with ``eta`` moving with the modes
    (``du/dpar = H^-1 dF/dpar``, ``F = Lambda Z' g - u`` the modes' equation).
    """
    n, k = codes.shape
    nt, p = len(theta), X.shape[1]
    n_par = nt + p + (1 if family == NB2 else 0)
    d, lev, r = _row_derivatives(family, y, eta, phi, aux, theta, codes, term, Hinv)
    g, h, h1, g_p, h_p = d[0], d[1], d[2], d[3], d[4]
    out = np.zeros(n_par)
    deta = np.empty(n)  # d eta_i / d par with u held
    dF = np.empty(len(u))
    for j in range(n_par):
        dispersion = j == nt + p
        dF[:] = 0.0
        total = -2.0 * d[5].sum() if dispersion else 0.0
        for i in range(n):
            e = 0.0
            if j < nt:  # theta_j scales the modes of its term's columns
                for s in range(k):
                    cs = codes[i, s]
                    if term[cs] == j:
                        e += u[cs]
                        dF[cs] += g[i]
                        total += 2.0 * h[i] * r[i, s]
            elif not dispersion:
                e = X[i, j - nt]
            deta[i] = e
            v = -h[i] * e + (g_p[i] if dispersion else 0.0)
            for s in range(k):
                cs = codes[i, s]
                dF[cs] += theta[term[cs]] * v
            total -= 2.0 * g[i] * e
        du = Hinv @ dF
        for i in range(n):
            e = deta[i]
            for s in range(k):
                cs = codes[i, s]
                e += theta[term[cs]] * du[cs]
            total += lev[i] * (h1[i] * e + (h_p[i] if dispersion else 0.0))
        out[j] = total
    return out
