"""Learning with the iterated smoother: the marginal likelihood linearised at the MAP path
(gaussian_filters.linearised_log_likelihood) and its numpyro distribution.

Independent references: the dense multivariate-normal density of all observations of a
linear-Gaussian model (scipy); the Laplace approximation with the Gauss–Newton Hessian built
from dense Jacobians of the whitened residuals at a MAP path polished by dense Newton steps;
central finite differences of the re-converged likelihood; dense prior moments for samples.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import pytest  # noqa: E402
from numpyro.infer.util import log_density  # noqa: E402
from scipy import stats  # noqa: E402

from probdyn.inference.gaussian_filters import (  # noqa: E402
    IteratedSmootherDistribution,
    iterated_smoother,
    linearised_log_likelihood,
)

DT = 0.0125
QB = np.array([[DT**3 / 3, DT**2 / 2], [DT**2 / 2, DT]])
THETA = np.array([9.81, np.log(0.3), np.log(0.1)])  # gravity, log q, log r


def _pendulum_model(theta):
    """Särkkä's pendulum with parameters (gravity, log q, log r): f, Q, h, R."""
    g, lq, lr = theta[0], theta[1], theta[2]
    f = lambda x, k: jnp.stack([x[0] + DT * x[1], x[1] - g * jnp.sin(x[0]) * DT])  # noqa: E731
    return f, jnp.exp(lq) * QB, lambda x, k: jnp.sin(x[:1]), jnp.exp(lr) * jnp.eye(1)


def _pendulum_data(T=100, seed=0):
    f, Q, h, R = _pendulum_model(THETA)
    rng = np.random.default_rng(seed)
    x = np.zeros((T, 2))
    x[0] = [1.5, 0.0]
    L = np.linalg.cholesky(np.asarray(Q))
    for k in range(T - 1):
        x[k + 1] = np.asarray(f(x[k], k)) + L @ rng.normal(size=2)
    return np.sin(x[:, :1]) + np.sqrt(float(R[0, 0])) * rng.normal(size=(T, 1))


M0, P0 = np.array([1.5, 0.0]), 0.1 * np.eye(2)


def _pendulum_ll(theta, y, **kw):
    f, Q, h, R = _pendulum_model(theta)
    return linearised_log_likelihood(f, Q, h, R, y, M0, P0, **kw)


def _linear_dense(A, Q, H, R, m0, P0, T):
    """Mean (T p,) and covariance (T p, T p) of all observations of a linear-Gaussian model."""
    d = m0.shape[0]
    mean, cov = [m0], [P0]
    for _ in range(T - 1):
        mean.append(A @ mean[-1])
    # Cov(x_i, x_j) = A^{j-i} Cov(x_i) for j >= i
    for _ in range(T - 1):
        cov.append(A @ cov[-1] @ A.T + Q)
    C = np.zeros((T * d, T * d))
    for i in range(T):
        Ak = np.eye(d)
        for j in range(i, T):
            C[j * d : (j + 1) * d, i * d : (i + 1) * d] = Ak @ cov[i]
            C[i * d : (i + 1) * d, j * d : (j + 1) * d] = (Ak @ cov[i]).T
            Ak = A @ Ak
    Hb = np.kron(np.eye(T), H)
    return Hb @ np.concatenate(mean), Hb @ C @ Hb.T + np.kron(np.eye(T), R)


def test_linear_model_gives_the_exact_marginal_likelihood():
    """For a linear model the linearisation is exact: log p(y) of the dense Gaussian, with gaps."""
    rng = np.random.default_rng(2)
    T = 25
    A = np.array([[0.95, 0.1], [-0.2, 0.9]])
    Q = np.array([[0.1, 0.02], [0.02, 0.05]])
    H = np.array([[1.0, 0.5], [0.0, 1.0]])
    R = np.array([[0.3, 0.1], [0.1, 0.2]])
    m0, P0 = np.array([0.5, -0.3]), np.eye(2)
    y = rng.normal(size=(T, 2))
    y[4:9, 0] = np.nan  # partly missing rows (R correlated: the observed block's marginal)
    y[15] = np.nan
    mean, cov = _linear_dense(A, Q, H, R, m0, P0, T)
    obs = ~np.isnan(y.reshape(-1))
    ref = stats.multivariate_normal(mean[obs], cov[np.ix_(obs, obs)]).logpdf(y.reshape(-1)[obs])
    for parallel in (False, True):
        ll = linearised_log_likelihood(lambda x, k: A @ x, Q, lambda x, k: H @ x, R, y, m0, P0, parallel=parallel)
        assert float(ll) == pytest.approx(ref, abs=1e-9)


def test_pendulum_equals_the_dense_gauss_newton_laplace_approximation():
    """-J(x*) - 1/2 log det(J_r^T J_r) - 1/2 log det P0 - sum 1/2 log det Q - sum 1/2 log det 2 pi R,
    with J_r the dense Jacobian of the whitened residuals at x*: x* from the IEKS, polished by
    dense Newton steps on J."""
    y = _pendulum_data()
    f, Q, h, R = _pendulum_model(THETA)
    T = y.shape[0]
    LQ, LR, LP = (np.linalg.cholesky(np.asarray(C)) for C in (Q, R, P0))

    def resid(flat):
        x = flat.reshape(T, 2)
        k = jnp.arange(T)
        solve = lambda L, r: jax.scipy.linalg.solve_triangular(L, r.T, lower=True).T  # noqa: E731
        rf = solve(LQ, x[1:] - jax.vmap(f)(x[:-1], k[:-1]))
        return jnp.concatenate([solve(LP, x[0] - M0), rf.ravel(), solve(LR, y - jax.vmap(h)(x, k)).ravel()])

    J = lambda v: 0.5 * jnp.sum(resid(v) ** 2)  # noqa: E731
    x = jnp.asarray(iterated_smoother(f, Q, h, R, y, M0, P0).mean).ravel()
    newton = jax.jit(lambda x: x - jnp.linalg.solve(jax.hessian(J)(x), jax.grad(J)(x)))
    for _ in range(3):
        x = newton(x)
    assert float(jnp.max(jnp.abs(jax.grad(J)(x)))) < 1e-7  # rounding: Q^{-1} entries reach 1e7
    Jr = np.asarray(jax.jacfwd(resid)(x))
    logdet = lambda L: np.sum(np.log(np.diag(L)))  # noqa: E731  (1/2 log det of L L^T)
    ref = (
        -float(J(x))
        - np.sum(np.log(np.abs(np.diag(np.linalg.qr(Jr, mode="r")))))  # 1/2 log det J_r^T J_r
        - logdet(LP)
        - (T - 1) * logdet(LQ)
        - T * (logdet(LR) + 0.5 * np.log(2 * np.pi))
    )
    assert float(_pendulum_ll(jnp.asarray(THETA), y, parallel=False)) == pytest.approx(ref, abs=1e-9)
    # a warm start at the MAP path itself (init=) gives the same value
    warm = _pendulum_ll(jnp.asarray(THETA), y, parallel=False, init=np.asarray(x).reshape(T, 2))
    assert float(warm) == pytest.approx(ref, abs=1e-9)


def test_gradient_matches_finite_differences_of_the_reconverged_likelihood():
    """d/dθ of the linearised log-likelihood (implicit differentiation at the MAP path) vs
    central differences, each side re-running the smoother; θ = (gravity, log q, log r)."""
    y = _pendulum_data()
    th = jnp.asarray(THETA)
    ll = jax.jit(lambda t: _pendulum_ll(t, y))  # one compilation for every evaluation
    grad = np.asarray(jax.grad(ll)(th))
    eps = 1e-5
    fd = np.array([(ll(th + eps * e) - ll(th - eps * e)) / (2 * eps) for e in np.eye(3)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_float32_and_a_non_finite_result_is_minus_inf():
    y = _pendulum_data(T=60)
    ll64 = float(_pendulum_ll(jnp.asarray(THETA), y))
    th32 = jnp.asarray(THETA, jnp.float32)
    f, Q, h, R = _pendulum_model(th32)
    ll32 = linearised_log_likelihood(f, Q, h, R, y.astype(np.float32), M0.astype(np.float32), P0.astype(np.float32))
    assert ll32.dtype == jnp.float32
    assert float(ll32) == pytest.approx(ll64, abs=2e-3)
    g32 = jax.grad(lambda t: _pendulum_ll(t, y.astype(np.float32)))(th32)
    g64 = jax.grad(lambda t: _pendulum_ll(t, y))(jnp.asarray(THETA))
    np.testing.assert_allclose(g32, g64, rtol=2e-2, atol=2e-2)
    # a traced NaN variance cannot raise: the result says it failed (-inf), not NaN
    bad = jax.jit(lambda lr: _pendulum_ll(jnp.stack([9.81, np.log(0.3), lr]), y))(jnp.nan)
    assert float(bad) == -np.inf


def test_numpyro_distribution_log_prob_pointwise_gradient_and_samples():
    y = _pendulum_data(T=60)

    def model(y):
        g = numpyro.sample("g", numpyro.distributions.Normal(9.0, 2.0))
        f, Q, h, R = _pendulum_model(jnp.stack([g, jnp.log(0.3), jnp.log(0.1)]))
        numpyro.sample("y", IteratedSmootherDistribution(f, Q, h, R, M0, P0, num_timesteps=60), obs=y)

    lj = jax.jit(jax.value_and_grad(lambda g: log_density(model, (y,), {}, {"g": g})[0]))
    val, grad = lj(9.5)
    ll = jax.jit(lambda g: _pendulum_ll(jnp.stack([g, np.log(0.3), np.log(0.1)]), y))
    ref = float(ll(9.5)) + stats.norm(9.0, 2.0).logpdf(9.5)
    assert float(val) == pytest.approx(ref, abs=1e-9)
    eps = 1e-5
    fd = (ll(9.5 + eps) - ll(9.5 - eps)) / (2 * eps) - 0.5 / 4.0
    assert float(grad) == pytest.approx(float(fd), rel=1e-6)
    f, Q, h, R = _pendulum_model(jnp.asarray(THETA))
    dist = IteratedSmootherDistribution(f, Q, h, R, M0, P0, num_timesteps=60)
    pw = dist.pointwise_log_prob(y)
    assert pw.shape == (60,) and float(pw.sum()) == pytest.approx(float(dist.log_prob(y)), abs=1e-9)
    # samples of a linear model have the dense prior mean and variances of y
    A, H = np.array([[0.9, 0.2], [-0.1, 0.8]]), np.array([[1.0, -0.5]])
    Ql, Rl, T = np.array([[0.2, 0.05], [0.05, 0.1]]), np.array([[0.3]]), 8
    lin = IteratedSmootherDistribution(lambda x, k: A @ x, Ql, lambda x, k: H @ x, Rl, M0, P0, num_timesteps=T)
    ys = np.asarray(lin.sample(jax.random.PRNGKey(3), (4000,)))[..., 0]
    mean, cov = _linear_dense(A, Ql, H, Rl, M0, P0, T)
    z = (ys.mean(0) - mean) / np.sqrt(np.diag(cov) / 4000)
    assert np.max(np.abs(z)) < 4.0
    var_ratio = ys.var(0) / np.diag(cov)
    assert np.all(np.abs(var_ratio - 1) < 4 * np.sqrt(2 / 4000))


def test_bad_inputs_are_clear_errors():
    y = _pendulum_data(T=10)
    f, Q, h, R = _pendulum_model(jnp.asarray(THETA))
    with pytest.raises(ValueError, match="R must be a finite, symmetric positive-definite"):
        linearised_log_likelihood(f, Q, h, -R, y, M0, P0)
    with pytest.raises(ValueError, match="num_iters"):
        linearised_log_likelihood(f, Q, h, R, y, M0, P0, num_iters=-1)
    with pytest.raises(TypeError, match="callables"):
        IteratedSmootherDistribution(f, Q, None, R, M0, P0)
    with pytest.raises(ValueError, match="needs num_timesteps"):
        IteratedSmootherDistribution(f, Q, h, R, M0, P0).sample(jax.random.PRNGKey(0))
