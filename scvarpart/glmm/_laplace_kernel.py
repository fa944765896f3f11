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

__all__ = ["NB2", "POISSON", "conditional_modes", "laplace", "loglik_terms"]

POISSON = 0
NB2 = 1
# Below this count, lgamma(y + phi) - lgamma(phi) is summed as log(phi + j), j < y: exact
# where the difference of two large lgamma values loses digits (phi large, near Poisson).
_SUM_BELOW = 64
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
    """``lgamma(y + phi) - lgamma(phi)`` and its derivative in ``phi``, for a count ``y``."""
    if y < _SUM_BELOW:
        lg, dg = 0.0, 0.0
        for j in range(int(y)):
            lg += math.log(phi + j)
            dg += 1.0 / (phi + j)
        return lg, dg
    return math.lgamma(y + phi) - math.lgamma(phi), _digamma(y + phi) - _digamma(phi)


@nb.njit(cache=True, nogil=True)
def loglik_terms(family, y, eta, phi):
    """One row's ``log f``, its derivatives in ``eta`` and in ``log phi``.

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
    l = lg - math.lgamma(y + 1.0) - phi * math.log1p(mu / phi) + y * (eta - math.log(s))
    g = phi * (y - mu) / s
    h = (y + phi) * phi * mu / (s * s)
    h1 = h * (phi - mu) / s
    l_p = phi * (dg - math.log1p(mu / phi) + (mu - y) / s)
    g_p = phi * (y - mu) * mu / (s * s)
    h_p = phi * mu * (2.0 * phi * mu - y * phi + y * mu) / (s * s * s)
    return l, g, h, h1, l_p, g_p, h_p


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
def _penalised(family, y, eta, phi, u):
    """``sum log f(y | u) - |u|^2 / 2`` at ``eta``."""
    total = 0.0
    for i in range(len(y)):
        total += loglik_terms(family, y[i], eta[i], phi)[0]
    return total - 0.5 * (u @ u)


@nb.njit(cache=True, nogil=True)
def _system(family, y, eta, phi, u, theta, codes, term, H, grad):
    """``H = Lambda Z'WZ Lambda + I`` and ``grad = Lambda Z' g - u`` at ``eta``."""
    n, k = codes.shape
    H[:] = 0.0
    for c in range(len(u)):
        H[c, c] = 1.0
        grad[c] = -u[c]
    for i in range(n):
        _, g, h, _, _, _, _ = loglik_terms(family, y[i], eta[i], phi)
        for s in range(k):
            cs = codes[i, s]
            ts = theta[term[cs]]
            grad[cs] += ts * g
            hs = h * ts
            for t in range(k):
                ct = codes[i, t]
                H[cs, ct] += hs * theta[term[ct]]


@nb.njit(cache=True, nogil=True)
def _cholesky(H, L):
    """Lower Cholesky factor of ``H`` into ``L``; ``False`` where ``H`` is not numerically
    positive definite (mu so large that ``I`` is lost in rounding).
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
def conditional_modes(family, y, base, phi, theta, codes, term, u, tol, max_iter):
    """Maximise the penalised log-likelihood in ``u`` in place, from ``u``'s values.

    Newton steps with halving, until the Newton decrement ``grad' H^-1 grad`` is below
    ``tol``. Returns ``(converged, eta, L)``: ``L`` the Cholesky factor of ``H`` at
    the modes.
    """
    q = len(u)
    eta = np.empty(len(y))
    H = np.empty((q, q))
    L = np.empty((q, q))
    grad = np.empty(q)
    trial = np.empty(q)
    _linear_predictor(base, theta, codes, term, u, eta)
    f = _penalised(family, y, eta, phi, u)
    converged = False
    failed = np.full((q, q), np.nan)
    if not math.isfinite(f):
        return False, eta, failed
    for _ in range(max_iter):
        _system(family, y, eta, phi, u, theta, codes, term, H, grad)
        if not _cholesky(H, L):  # mu overflowed: no modes at these parameters
            return False, eta, failed
        step = _cholesky_solve(L, grad)
        decrement = grad @ step
        if decrement < tol:  # the last step is below rounding in f: take it whole
            u += step
            converged = True
            break
        t = 1.0
        while True:
            trial[:] = u + t * step
            _linear_predictor(base, theta, codes, term, trial, eta)
            f_new = _penalised(family, y, eta, phi, trial)
            if f_new >= f or t < 1e-10:
                break
            t *= 0.5
        if f_new < f:  # no step improves f: rounding, or a flat direction
            converged = decrement < _STALL
            break
        u[:] = trial
        f = f_new
    _linear_predictor(base, theta, codes, term, u, eta)
    _system(family, y, eta, phi, u, theta, codes, term, H, grad)
    if not _cholesky(H, L):
        return False, eta, failed
    return converged, eta, L


@nb.njit(cache=True, nogil=True)
def laplace(family, y, X, offset, codes, term, theta, beta, log_phi, u, tol, max_iter, gradient):
    """The Laplace criterion ``D`` and, with ``gradient``, its exact gradient.

    Parameters are ``theta`` (one per term), ``beta`` and, for NB2, ``log_phi``; the
    gradient is in that order (``log_phi`` last, only for NB2). ``u`` holds the starting
    modes and is overwritten with the modes found. Returns ``(D, grad, converged)``.
    """
    n, k = codes.shape
    q, p, nt = len(u), X.shape[1], len(theta)
    phi = math.exp(log_phi)
    base = offset + X @ beta
    converged, eta, L = conditional_modes(family, y, base, phi, theta, codes, term, u, tol, max_iter)
    n_par = nt + p + (1 if family == NB2 else 0)
    out = np.zeros(n_par)
    if not np.isfinite(L[0, 0]):
        return np.inf, out, False
    D = u @ u
    for c in range(q):
        D += 2.0 * math.log(L[c, c])
    for i in range(n):
        D -= 2.0 * loglik_terms(family, y[i], eta[i], phi)[0]
    if not gradient:
        return D, out, converged
    Linv = np.linalg.inv(L)
    Hinv = Linv.T @ Linv
    g = np.empty(n)
    h = np.empty(n)
    h1 = np.empty(n)
    g_p = np.empty(n)
    h_p = np.empty(n)
    lev = np.empty(n)  # a_i' H^-1 a_i
    r = np.empty((n, k))  # (H^-1 a_i) at row i's column of each term
    explicit = np.zeros(n_par)
    for i in range(n):
        _, g[i], h[i], h1[i], l_p, g_p[i], h_p[i] = loglik_terms(family, y[i], eta[i], phi)
        if family == NB2:
            explicit[n_par - 1] -= 2.0 * l_p
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
    deta = np.empty(n)  # d eta_i / d par with u held
    dF = np.empty(q)
    for j in range(n_par):
        dF[:] = 0.0
        extra = 0.0
        for i in range(n):
            if j < nt:
                d = 0.0
                for s in range(k):
                    cs = codes[i, s]
                    if term[cs] == j:
                        d += u[cs]
                        dF[cs] += g[i]
                        extra += 2.0 * h[i] * r[i, s]
            elif j < nt + p:
                d = X[i, j - nt]
            else:
                d = 0.0
            deta[i] = d
            v = -h[i] * d + (g_p[i] if j == nt + p else 0.0)
            for s in range(k):
                cs = codes[i, s]
                dF[cs] += theta[term[cs]] * v
            explicit[j] -= 2.0 * g[i] * d
        du = Hinv @ dF
        total = explicit[j] + extra
        for i in range(n):
            d = deta[i]
            for s in range(k):
                cs = codes[i, s]
                d += theta[term[cs]] * du[cs]
            total += lev[i] * (h1[i] * d + (h_p[i] if j == nt + p else 0.0))
        out[j] = total
    return D, out, converged
