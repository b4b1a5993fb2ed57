"""Iterated extended Kalman smoother (probdyn.inference.gaussian_filters.iterated).

Independent references: the Kalman (RTS) smoother of the core engine for a linear-Gaussian model
(one Gauss–Newton step from any start equals it), and the MAP trajectory of a pendulum observed
through ``sin`` found by ``scipy.optimize.minimize`` (BFGS on the same objective written out in
NumPy-free JAX, gradient by autodiff) from the truth.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.optimize  # noqa: E402

from probdyn import LinearGaussianSSM  # noqa: E402
from probdyn.inference import kalman  # noqa: E402
from probdyn.inference.gaussian_filters import iterated_smoother  # noqa: E402

DT, G = 0.0125, 9.81


def _pendulum(T=100, q=0.3, r=0.1, seed=0):
    """Särkkä's pendulum: x = (angle, rate), Euler step, y = sin(angle) + noise."""
    Q = q * np.array([[DT**3 / 3, DT**2 / 2], [DT**2 / 2, DT]])
    f = lambda x, k: jnp.stack([x[0] + DT * x[1], x[1] - G * jnp.sin(x[0]) * DT])  # noqa: E731
    h = lambda x, k: jnp.sin(x[:1])  # noqa: E731
    rng = np.random.default_rng(seed)
    x = np.zeros((T, 2))
    x[0] = [1.5, 0.0]
    L = np.linalg.cholesky(Q)
    for k in range(T - 1):
        x[k + 1] = np.asarray(f(x[k], k)) + L @ rng.normal(size=2)
    y = np.sin(x[:, :1]) + np.sqrt(r) * rng.normal(size=(T, 1))
    return f, Q, h, np.array([[r]]), y, np.array([1.5, 0.0]), 0.1 * np.eye(2), x


def _map_objective(f, Q, h, R, y, m0, P0):
    Qi, Ri, P0i = (jnp.asarray(np.linalg.inv(A)) for A in (Q, R, P0))

    def J(flat):
        x = flat.reshape(-1, 2)
        k = jnp.arange(x.shape[0])
        rf = x[1:] - jax.vmap(f)(x[:-1], k[:-1])
        rh = y - jax.vmap(h)(x, k)
        e0 = x[0] - m0
        return 0.5 * (e0 @ P0i @ e0 + jnp.einsum("ki,ij,kj->", rf, Qi, rf) + jnp.einsum("ki,ij,kj->", rh, Ri, rh))

    return jax.jit(jax.value_and_grad(J))


@pytest.mark.parametrize("parallel", [False, True])
def test_one_gauss_newton_step_on_a_linear_model_is_the_kalman_smoother(parallel):
    rng = np.random.default_rng(1)
    T, d = 40, 2
    A = np.array([[0.95, 0.1], [-0.2, 0.9]])
    Q = np.array([[0.1, 0.02], [0.02, 0.05]])
    H = np.array([[1.0, 0.5]])
    R = np.array([[0.3]])
    m0, P0 = np.array([0.5, -0.3]), np.eye(2)
    y = rng.normal(size=(T, 1))
    ref = kalman.smoother(LinearGaussianSSM(m0, P0, A, Q, H, R), y, parallel=False)
    res = iterated_smoother(
        lambda x, k: A @ x,
        Q,
        lambda x, k: H @ x,
        R,
        y,
        m0,
        P0,
        num_iters=1,
        damping=0.0,
        init=rng.normal(size=(T, d)),  # any start: the linearisation is exact
        parallel=parallel,
    )
    np.testing.assert_allclose(res.mean, ref.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.cov, ref.cov, rtol=0, atol=1e-12)
    assert len(res.objective) == 2 and res.objective[1] < res.objective[0]


def test_pendulum_map_equals_scipy_and_both_schedules_agree():
    f, Q, h, R, y, m0, P0, x_true = _pendulum()
    vg = _map_objective(f, Q, h, R, jnp.asarray(y), jnp.asarray(m0), P0)
    ref = scipy.optimize.minimize(
        lambda v: tuple(np.asarray(a, float) for a in vg(jnp.asarray(v))),
        x_true.reshape(-1),
        jac=True,
        method="BFGS",
        options=dict(gtol=1e-9, maxiter=20000),
    )
    x_ref = ref.x.reshape(-1, 2)
    seq = iterated_smoother(f, Q, h, R, y, m0, P0, num_iters=100, parallel=False)
    par = iterated_smoother(f, Q, h, R, y, m0, P0, num_iters=100, parallel=True)
    assert seq.converged and par.converged
    np.testing.assert_allclose(seq.mean, x_ref, rtol=0, atol=1e-5)
    assert seq.objective[-1] == pytest.approx(ref.fun, rel=1e-10)
    np.testing.assert_allclose(par.mean, seq.mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(par.cov, seq.cov, rtol=0, atol=1e-9)
    assert np.all(np.diff(seq.objective) <= 1e-12)  # LM never accepts an increase


def test_levenberg_marquardt_from_a_poor_start_reaches_the_map_monotonically():
    """From the zero trajectory (J = 3.4e5 against 62.9 at the MAP; precise data, r = 1e-4)
    the damped iteration reaches the MAP found from the true path, and J never increases."""
    f, Q, h, R, y, m0, P0, x_true = _pendulum(q=0.01, r=1e-4)
    best = iterated_smoother(f, Q, h, R, y, m0, P0, num_iters=300, init=x_true)
    lm = iterated_smoother(f, Q, h, R, y, m0, P0, num_iters=300, init=np.zeros_like(x_true))
    assert lm.objective[0] > 1e5 and lm.converged
    assert lm.objective[-1] == pytest.approx(best.objective[-1], rel=1e-10)
    np.testing.assert_allclose(lm.mean, best.mean, rtol=0, atol=1e-6)
    assert np.all(np.diff(lm.objective) <= 1e-12)


def test_bad_inputs_are_clear_errors():
    f, Q, h, R, y, m0, P0, _ = _pendulum(T=10)
    with pytest.raises(ValueError, match="Q must be a finite, symmetric positive-definite"):
        iterated_smoother(f, np.zeros((2, 2)), h, R, y, m0, P0)
    with pytest.raises(ValueError, match="y must be finite"):
        iterated_smoother(f, Q, h, R, np.full_like(y, np.nan), m0, P0)
    with pytest.raises(ValueError, match="observation"):
        iterated_smoother(f, Q, lambda x, k: x, R, y, m0, P0)


def test_float32_reaches_the_float64_map():
    f, Q, h, R, y, m0, P0, _ = _pendulum()
    r64 = iterated_smoother(f, Q, h, R, y, m0, P0, parallel=False)
    c = lambda a: np.asarray(a, np.float32)  # noqa: E731
    r32 = iterated_smoother(f, c(Q), h, c(R), c(y), c(m0), c(P0), parallel=False)
    assert r32.mean.dtype == np.float32 and r32.converged
    np.testing.assert_allclose(r32.mean, r64.mean, rtol=0, atol=2e-3)
    assert r32.objective[-1] == pytest.approx(r64.objective[-1], rel=1e-5)
