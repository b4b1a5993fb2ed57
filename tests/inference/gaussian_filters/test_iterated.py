"""Iterated smoothers (probdyn.inference.gaussian_filters.iterated): IEKS and IPLS.

Independent references: the Kalman (RTS) smoother of the core engine for a linear-Gaussian model
(one Gauss–Newton / posterior-linearisation step from any start equals it); the MAP trajectory
of a pendulum observed through ``sin`` found by ``scipy.optimize.minimize`` (BFGS on the same
objective, gradient by autodiff) from the truth; and a bootstrap particle filter with
forward-filtering backward-smoothing (FFBSm, written here; independent seeds give the Monte
Carlo error) for the pendulum and a bearings-only tracking model.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.optimize  # noqa: E402

from probdyn import LinearGaussianSSM  # noqa: E402
from probdyn.inference import kalman  # noqa: E402
from probdyn.inference.gaussian_filters import (  # noqa: E402
    iterated_posterior_linearisation_smoother,
    iterated_smoother,
)

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
    y[5:12] = np.nan  # missing observations: the engine skips them, J leaves them out
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
    with pytest.raises(ValueError, match="infinite values"):
        iterated_smoother(f, Q, h, R, np.full_like(y, np.inf), m0, P0)
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


def _bearings(T=60, seed=3):
    """Constant-velocity target (x = position (2), velocity (2)), bearings from two sensors."""
    dt, qc = 0.1, 0.5
    I2 = np.eye(2)
    Q = qc * np.block([[dt**3 / 3 * I2, dt**2 / 2 * I2], [dt**2 / 2 * I2, dt * I2]])
    F = np.block([[I2, dt * I2], [np.zeros((2, 2)), I2]])
    S = np.array([[-1.5, 0.5], [1.0, 1.0]])
    f = lambda x, k: jnp.asarray(F) @ x  # noqa: E731
    h = lambda x, k: jnp.arctan2(x[1] - S[:, 1], x[0] - S[:, 0])  # noqa: E731
    rng = np.random.default_rng(seed)
    x = np.zeros((T, 4))
    x[0] = [0.1, 0.2, 1.0, 0.0]
    for k in range(T - 1):
        x[k + 1] = F @ x[k] + np.linalg.cholesky(Q) @ rng.normal(size=4)
    y = np.stack([np.asarray(h(xk, 0)) for xk in x]) + 0.05 * rng.normal(size=(T, 2))
    return f, Q, h, 0.05**2 * np.eye(2), y, x[0].copy(), 0.1 * np.eye(4)


def _particle_smoother(key, f, Q, h, R, y, m0, P0, P):
    """Bootstrap particle filter (multinomial resampling every step) + FFBSm marginals: means
    (T, d) and covariances (T, d, d). O(T P^2)."""
    y, m0 = jnp.asarray(y), jnp.asarray(m0)
    T, d = y.shape[0], m0.shape[0]
    LQ, L0 = np.linalg.cholesky(Q), np.linalg.cholesky(P0)
    Qi, Ri = jnp.asarray(np.linalg.inv(Q)), jnp.asarray(np.linalg.inv(R))

    def loglik(x, k):
        r = y[k] - h(x, k)
        return -0.5 * r @ Ri @ r

    k0, key = jax.random.split(key)
    x = m0 + jax.random.normal(k0, (P, d)) @ L0.T
    lw = jax.vmap(loglik, (0, None))(x, 0)

    def step(c, k):
        x, lw, key = c
        key, ka, kn = jax.random.split(key, 3)
        idx = jax.random.choice(ka, P, (P,), p=jax.nn.softmax(lw))
        xn = jax.vmap(f, (0, None))(x[idx], k - 1) + jax.random.normal(kn, (P, d)) @ LQ.T
        lwn = jax.vmap(loglik, (0, None))(xn, k)
        return (xn, lwn, key), (xn, lwn)

    _, (xs, lws) = jax.lax.scan(step, (x, lw, key), jnp.arange(1, T))
    X = jnp.concatenate([x[None], xs])
    Wf = jax.nn.softmax(jnp.concatenate([lw[None], lws]), axis=1)

    def back(ws, k):
        diff = X[k + 1][None, :, :] - jax.vmap(f, (0, None))(X[k], k)[:, None, :]
        lt = -0.5 * jnp.einsum("ijd,de,ije->ij", diff, Qi, diff)
        lden = jax.scipy.special.logsumexp(jnp.log(Wf[k] + 1e-300)[:, None] + lt, axis=0)
        wk = Wf[k] * jnp.sum(jnp.exp(lt - lden[None, :]) * ws[None, :], axis=1)
        return wk, wk

    _, Ws = jax.lax.scan(back, Wf[-1], jnp.arange(T - 2, -1, -1))
    W = jnp.concatenate([Ws[::-1], Wf[-1][None]])
    m = jnp.einsum("kp,kpd->kd", W, X)
    dev = X - m[:, None]
    return m, jnp.einsum("kp,kpd,kpe->kde", W, dev, dev)


@pytest.mark.parametrize("parallel", [False, True])
def test_one_posterior_linearisation_step_on_a_linear_model_is_the_kalman_smoother(parallel):
    rng = np.random.default_rng(2)
    T = 30
    A = np.array([[0.9, 0.2], [-0.1, 0.95]])
    Q = np.array([[0.2, 0.05], [0.05, 0.1]])
    H = np.array([[1.0, -0.5], [0.3, 1.0]])
    R = np.diag([0.3, 0.5])
    m0, P0 = np.array([1.0, 0.0]), 0.5 * np.eye(2)
    y = rng.normal(size=(T, 2))
    y[3:8, 0] = np.nan  # partly missing rows
    ref = kalman.smoother(LinearGaussianSSM(m0, P0, A, Q, H, R), y, parallel=False)
    res = iterated_posterior_linearisation_smoother(
        lambda x, k: A @ x,
        Q,
        lambda x, k: H @ x,
        R,
        y,
        m0,
        P0,
        num_iters=1,
        init=rng.normal(size=(T, 2)),
        parallel=parallel,
    )  # SLR of a linear map is exact (no added noise) under any marginals
    np.testing.assert_allclose(res.mean, ref.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.cov, ref.cov, rtol=0, atol=1e-12)


def test_posterior_linearisation_schedules_agree_and_converge():
    f, Q, h, R, y, m0, P0 = _bearings()
    seq = iterated_posterior_linearisation_smoother(f, Q, h, R, y, m0, P0, parallel=False)
    par = iterated_posterior_linearisation_smoother(f, Q, h, R, y, m0, P0, parallel=True)
    assert seq.converged and par.converged and len(seq.change) == len(par.change)
    np.testing.assert_allclose(par.mean, seq.mean, rtol=0, atol=1e-8)
    np.testing.assert_allclose(par.cov, seq.cov, rtol=0, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["pendulum", "bearings"])
def test_iterated_smoothers_against_a_particle_smoother(case):
    """Means within a fraction of the posterior sd of a 4 x 2000-particle FFBSm smoother, median
    |z| (error over the particle Monte Carlo se) below 2; for bearings-only tracking the
    iterations matter: one posterior-linearisation pass from the prior path (m0 pushed through f,
    covariances P0) is 3 sd off somewhere, the fixed point 0.7 sd (measured)."""
    if case == "pendulum":
        f, Q, h, R, y, m0, P0, _ = _pendulum(T=60)
        bound = 0.35
    else:
        f, Q, h, R, y, m0, P0 = _bearings()
        bound = 1.0
    run = jax.jit(lambda k: _particle_smoother(k, f, Q, h, R, y, m0, P0, 2000))
    out = [run(jax.random.PRNGKey(r)) for r in range(4)]
    ms = np.stack([np.asarray(o[0]) for o in out])
    sd = np.sqrt(np.stack([np.einsum("kdd->kd", np.asarray(o[1])) for o in out]).mean(0))
    m_ref, se = ms.mean(0), ms.std(0, ddof=1) / 2.0
    ipls = iterated_posterior_linearisation_smoother(f, Q, h, R, y, m0, P0)
    prior_path = np.asarray(jax.lax.scan(lambda m, k: (f(m, k), m), jnp.asarray(m0), jnp.arange(len(y)))[1])
    one = iterated_posterior_linearisation_smoother(f, Q, h, R, y, m0, P0, num_iters=1, init=prior_path)
    ieks = iterated_smoother(f, Q, h, R, y, m0, P0, num_iters=100)
    assert ipls.converged and ieks.converged
    for res in (ipls, ieks):
        err = np.abs(np.asarray(res.mean) - m_ref)
        assert np.max(err / sd) < bound
        assert np.median(err / se) < 2.0
        ratio = np.sqrt(np.einsum("kdd->kd", np.asarray(res.cov))) / sd
        assert 0.9 < np.median(ratio) < 1.25  # Gaussian sds vs the particles' (pendulum: 1.18)
    if case == "bearings":
        assert np.max(np.abs(np.asarray(one.mean) - m_ref) / sd) > 3 * np.max(
            np.abs(np.asarray(ipls.mean) - m_ref) / sd
        )
