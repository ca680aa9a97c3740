"""Multi-objective weight solvers on the probability simplex (docs/foundations.md §1-3).

All take the Gram matrix ``gram[m, n] = g_m . g_n`` (M x M) of the per-objective gradients, so the
d-dimensional gradients never need to be stacked twice.
"""
from __future__ import annotations

import numpy as np

from fedalign_lite.errors import ConfigError, check_positive, check_probability_vector


def project_simplex(v) -> np.ndarray:
    """Euclidean projection onto {x >= 0, sum x = 1} (Duchi et al. 2008, sort-based)."""
    v = np.asarray(v, dtype=np.float64)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1.0), 0.0)


def mgda_weights(gram, beta: float = 0.0, pref=None, tol: float = 1e-10, max_iters: int = 200_000) -> np.ndarray:
    """lambda = argmin over the simplex of 1/2 ||sum_m lambda_m g_m||^2 + beta/2 ||lambda - p||^2.

    beta = 0 is MGDA's min-norm element (Desideri 2012); beta -> inf gives ``pref`` (FIRM's in-client
    regularized weights, docs/firm.md §3 [PROPOSAL]). ``pref`` defaults to uniform 1/M. Two objectives
    use the closed form a* = clip((v22 - v12 + 2 beta p1) / (v11 + v22 - 2 v12 + 2 beta), 0, 1); more use
    accelerated projected gradient (FISTA with step 1/L, L = largest eigenvalue of gram + beta, and
    adaptive restart) until its support passes an exact KKT check (:func:`_solve_on_support`, ``tol``
    relative to L), which returns the minimiser to machine precision whatever the conditioning, or
    with beta = 0, until the Frank-Wolfe gap (a bound on the objective's excess) is below ``tol`` * L,
    which is how a degenerate problem (fewer gradient dimensions than objectives: many minimisers) ends.
    A fixed iteration count was 1.7e-4 off on an ill-conditioned 8-objective problem. ``max_iters``
    bounds the search.
    """
    gram = np.asarray(gram, dtype=np.float64)
    M = gram.shape[0]
    if gram.shape != (M, M):
        raise ConfigError(f"gram must be square (M x M), got shape {gram.shape}")
    check_positive("beta", beta, allow_zero=True)
    p = np.full(M, 1.0 / M) if pref is None else np.asarray(pref, dtype=np.float64)
    check_probability_vector("pref", p, length=M)
    if M == 2:
        (v11, v12), (_, v22) = gram
        denom = v11 + v22 - 2 * v12 + 2 * beta   # (beta/2)||lambda - p||^2 = beta (a - p1)^2 for M = 2
        if denom <= 1e-30:                   # identical gradients and beta = 0: every lambda is optimal
            return p.copy()
        a = float(np.clip((v22 - v12 + 2 * beta * p[0]) / denom, 0.0, 1.0))
        return np.array([a, 1.0 - a])
    lipschitz = np.linalg.eigvalsh(gram).max() + beta + 1e-12
    step = 1.0 / lipschitz
    lam = y = p.copy()
    t = 1.0
    for k in range(1, max_iters + 1):
        new = project_simplex(y - step * (gram @ y + beta * (y - p)))
        if (y - new) @ (new - lam) > 0:      # momentum points uphill: restart it (O'Donoghue & Candes 2015)
            t, y = 1.0, lam
            continue
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = new + (t - 1) / t_next * (new - lam)
        lam, t = new, t_next
        if k % 50 == 0:
            if (exact := _solve_on_support(gram, beta, p, lam, tol * lipschitz)) is not None:
                return exact
            grad = gram @ lam
            if beta == 0 and grad @ lam - grad.min() <= tol * lipschitz:   # Frank-Wolfe gap >= f(lam) - f*
                return lam
    return lam


def _solve_on_support(gram, beta: float, p, lam, tol: float) -> np.ndarray | None:
    """The exact minimiser if ``lam``'s support is the optimal one, else None.

    On the support S the KKT conditions are linear: (G + beta I)_SS x_S + nu 1 = beta p_S, sum x_S = 1.
    The solution is optimal iff x_S >= 0 and every coordinate off S has gradient >= -nu (within ``tol``).
    Projected gradient finds the support long before it converges on ill-conditioned problems;
    this solve then gives the minimiser to machine precision.
    """
    support = np.flatnonzero(lam > 1e-12)
    Q = gram + beta * np.eye(len(lam))
    n = len(support)
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n], kkt[:n, n], kkt[n, :n] = Q[np.ix_(support, support)], 1.0, 1.0
    solution = np.linalg.lstsq(kkt, np.concatenate([beta * p[support], [1.0]]), rcond=None)[0]
    x = np.zeros(len(lam))
    x[support] = solution[:n]
    grad = Q @ x - beta * p
    nu = solution[n]
    if x.min() < 0 or abs(x.sum() - 1) > 1e-9 or (grad + nu).min() < -tol:
        return None
    return x


def fedcmoo_find_weights(gram, weights=None, lr: float = 1e-3, iters: int = 1000) -> np.ndarray:
    """FedCMOO's server FindWeights (``fedcmoo_update_scales``, docs/foundations.md §3), as its code does it:
    normalise GG by mean(sqrt(diag + 1e-4))^2, then ``iters`` steps of w <- proj(w - lr GG w)."""
    gram = np.asarray(gram, dtype=np.float64)
    M = gram.shape[0]
    w = np.full(M, 1.0 / M) if weights is None else np.asarray(weights, dtype=np.float64)
    gg = gram / np.mean(np.sqrt(np.diag(gram) + 1e-4)) ** 2
    for _ in range(iters):
        w = project_simplex(w - lr * gg @ w)
    return w
