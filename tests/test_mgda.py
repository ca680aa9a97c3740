"""MGDA / regularized weights against a QP solved by scipy; FedCMOO's FindWeights; drift metrics by hand."""
import numpy as np
import pytest
from scipy.optimize import minimize

from fedalign_lite.errors import ConfigError
from fedalign_lite.objectives.metrics import cosine_disagreement, lambda_dispersion, total_variation, update_dispersion
from fedalign_lite.objectives.mgda import fedcmoo_find_weights, mgda_weights, project_simplex


def _scipy_qp(gram, beta, p):
    M = len(gram)
    def obj(x):
        return 0.5 * x @ gram @ x + 0.5 * beta * ((x - p) ** 2).sum()

    res = minimize(obj, np.full(M, 1 / M), jac=lambda x: gram @ x + beta * (x - p), method="SLSQP",
                   bounds=[(0, 1)] * M, constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
                   options={"ftol": 1e-14, "maxiter": 500})
    return res.x, obj(res.x), obj


@pytest.mark.parametrize("M", [2, 3, 5])
@pytest.mark.parametrize("beta", [0.0, 0.05, 1.0])
def test_weights_solve_the_qp(M, beta):
    rng = np.random.default_rng(M * 10 + int(beta * 100))
    for _ in range(20):
        g = rng.normal(size=(M, 7)) * rng.uniform(0.1, 3, size=(M, 1))
        gram = g @ g.T
        p = rng.dirichlet(np.ones(M))
        lam = mgda_weights(gram, beta, p)
        ref, best, obj = _scipy_qp(gram, beta, p)
        assert lam.min() >= 0 and lam.sum() == pytest.approx(1)
        assert obj(lam) <= best + 1e-7 * max(1, abs(best))
        if beta > 0:                                 # strongly convex: the minimiser is unique
            assert lam == pytest.approx(ref, abs=1e-4)


def test_beta_zero_is_the_min_norm_element_and_large_beta_is_p():
    g1, g2 = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    gram = np.array([[g1 @ g1, g1 @ g2], [g1 @ g2, g2 @ g2]])
    a = mgda_weights(gram, 0.0)[0]
    d = a * g1 + (1 - a) * g2
    assert a == pytest.approx(0.8)                    # argmin a^2 + 4(1-a)^2
    assert d @ g1 == pytest.approx(d @ g2)            # equal directional derivative on both objectives
    assert mgda_weights(gram, 1e6, [0.3, 0.7]) == pytest.approx([0.3, 0.7], abs=1e-5)
    assert mgda_weights(np.ones((2, 2)), 0.0, [0.25, 0.75]) == pytest.approx([0.25, 0.75])   # g1 = g2


def test_project_simplex_by_hand():
    assert project_simplex([0.5, 0.5]) == pytest.approx([0.5, 0.5])
    assert project_simplex([2.0, 0.0]) == pytest.approx([1.0, 0.0])
    assert project_simplex([1.0, 1.0, -1.0]) == pytest.approx([0.5, 0.5, 0.0])


def test_fedcmoo_find_weights_moves_towards_the_min_norm_weights():
    gram = np.array([[1.0, 0.0], [0.0, 4.0]])
    w = fedcmoo_find_weights(gram, iters=20000, lr=1e-2)
    assert w == pytest.approx(mgda_weights(gram), abs=1e-3)
    # one step by hand: normaliser = mean(sqrt([1.0001, 4.0001]))^2
    s = np.mean(np.sqrt([1.0001, 4.0001])) ** 2
    one = fedcmoo_find_weights(gram, iters=1, lr=0.1)
    expected = project_simplex(np.array([0.5, 0.5]) - 0.1 * (gram / s) @ np.array([0.5, 0.5]))
    assert one == pytest.approx(expected)


def test_bad_preference_names_the_field():
    with pytest.raises(ConfigError, match="pref must sum to 1"):
        mgda_weights(np.eye(2), 0.1, [0.5, 0.6])
    with pytest.raises(ConfigError, match="beta must be"):
        mgda_weights(np.eye(2), -1.0)


def test_drift_metrics_by_hand():
    assert lambda_dispersion([[0.2, 0.8], [0.6, 0.4]]) == pytest.approx(0.08)   # each is 0.2 away per coordinate
    assert lambda_dispersion([[0.5, 0.5]] * 3) == 0
    assert update_dispersion([[1.0, 0.0], [3.0, 0.0]]) == pytest.approx(1.0 / 4.0)
    assert cosine_disagreement([[1.0, 0.0], [0.0, 1.0]]) == pytest.approx(1.0)
    assert cosine_disagreement([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]]) == pytest.approx(1 - (1 - 1 - 1) / 3)
    assert total_variation([0.1, 0.3, 0.2]) == pytest.approx(0.3)


def _exact_qp(gram, beta, p):
    """The QP's minimiser by enumerating active sets: on each support S solve the KKT system of
    min 1/2 x'(G + beta I)x - beta p'x s.t. sum x = 1, keep the feasible solutions, take the best."""
    M = len(gram)
    Q = gram + beta * np.eye(M)
    best, best_x = np.inf, None
    for mask in range(1, 2 ** M):
        S = [i for i in range(M) if mask >> i & 1]
        kkt = np.block([[Q[np.ix_(S, S)], np.ones((len(S), 1))], [np.ones((1, len(S))), np.zeros((1, 1))]])
        sol = np.linalg.lstsq(kkt, np.concatenate([beta * p[S], [1.0]]), rcond=None)[0]
        x = np.zeros(M)
        x[S] = sol[:-1]
        if x.min() < -1e-12 or abs(x.sum() - 1) > 1e-9:
            continue
        value = 0.5 * x @ Q @ x - beta * p @ x
        if value < best - 1e-15:
            best, best_x = value, x
    return best_x


def test_ill_conditioned_eight_objectives_match_an_exact_qp():
    """Eight gradients whose scales span 4.5 decades, with small beta (condition number ~1e7): a
    fixed budget of 3,000 accelerated steps stopped 1e-2 away from the minimiser here; the support
    check must land on it. With beta = 0 the minimiser is not unique: the objective must match."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(8, 5)) * np.array([30.0, 1, 0.1, 0.01, 0.001])
    gram = g @ g.T
    p = rng.dirichlet(np.ones(8))
    for beta in (1e-3, 0.05):
        np.testing.assert_allclose(mgda_weights(gram, beta, p), _exact_qp(gram, beta, p), atol=1e-9)
    lam, best = mgda_weights(gram, 0.0, p), _exact_qp(gram, 0.0, p)
    assert lam @ gram @ lam <= best @ gram @ best + 1e-9 * np.linalg.eigvalsh(gram).max()
