"""probdyn.ssm.discretise_affine, the one exact discretisation of affine SDEs, against
independent references: scipy's expm of the Van Loan block matrix (float64), and for stiff
or long steps of stable drifts the Lyapunov identity Q = P - A P A^T and c = F^{-1}(A - I) b."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg as sla  # noqa: E402

from probdyn.ssm import LTISDE, discretise_affine  # noqa: E402


def _problem(d, seed, stiffness=1.0):
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(d, d))
    lam = -stiffness * rng.uniform(0.2, 2.0, d)
    F = V @ np.diag(lam) @ np.linalg.inv(V)
    L = rng.normal(size=(d, d))
    return F, rng.normal(size=d), L @ L.T / d, rng.normal(size=d)


def _van_loan(F, b, LQL, dt, b_t):
    d = F.shape[0]
    M = np.zeros((2 * d + 2, 2 * d + 2))
    M[:d, :d], M[:d, d : 2 * d], M[d : 2 * d, d : 2 * d] = F, LQL, -F.T
    M[:d, 2 * d], M[:d, 2 * d + 1], M[2 * d, 2 * d + 1] = b_t, b, 1.0
    E = sla.expm(M * dt)
    A = E[:d, :d]
    return A, E[:d, 2 * d + 1], E[:d, d : 2 * d] @ A.T


@pytest.mark.parametrize("d", [1, 2, 4])
@pytest.mark.parametrize("dt", [1e-9, 1e-3, 0.37, 2.5])
def test_matches_scipy_van_loan(d, dt):
    F, b, LQL, b_t = _problem(d, 10 * d)
    for bt in (None, b_t):
        A, c, Q = discretise_affine(
            jnp.asarray(F), jnp.asarray(b), jnp.asarray(LQL), dt, None if bt is None else jnp.asarray(bt)
        )
        Ar, cr, Qr = _van_loan(F, b, LQL, dt, np.zeros(d) if bt is None else bt)
        np.testing.assert_allclose(np.asarray(A), Ar, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(c), cr, rtol=1e-11, atol=1e-14 * max(dt, 1e-3))
        np.testing.assert_allclose(np.asarray(Q), Qr, rtol=1e-11, atol=1e-13 * np.abs(Qr).max())


@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("stiffness, dt", [(1.0, 50.0), (1e3, 1.0), (1e3, 1e-4)])
def test_stiff_and_long_steps_against_lyapunov(d, stiffness, dt):
    """Stable F: P solves F P + P F^T + LQL = 0, Q(dt) = P - A P A^T exactly, c = F^{-1}(A - I) b;
    the direct Van Loan product (e^{F^T dt} entries ~ e^{|lambda| dt}) cannot resolve these."""
    F, b, LQL, _ = _problem(d, 3 + d, stiffness)
    P = sla.solve_continuous_lyapunov(F, -LQL)
    Ar = sla.expm(F * dt)
    Qr = P - Ar @ P @ Ar.T
    cr = np.linalg.solve(F, (Ar - np.eye(d)) @ b)
    A, c, Q = discretise_affine(jnp.asarray(F), jnp.asarray(b), jnp.asarray(LQL), dt)
    np.testing.assert_allclose(np.asarray(A), Ar, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(c), cr, rtol=1e-8, atol=1e-12 * np.abs(cr).max())
    np.testing.assert_allclose(np.asarray(Q), Qr, rtol=1e-8, atol=1e-10 * np.abs(Qr).max())
    assert np.all(np.linalg.eigvalsh(np.asarray(Q)) > -1e-12 * np.abs(Qr).max())


@pytest.mark.parametrize("d", [1, 3])
def test_float32_and_gradients(d):
    F, b, LQL, b_t = _problem(d, 7)
    dt = 0.8
    Ar, cr, Qr = _van_loan(F, b, LQL, dt, b_t if d > 1 else np.zeros(d))
    bt = jnp.asarray(b_t, jnp.float32) if d > 1 else None
    A, c, Q = discretise_affine(
        jnp.asarray(F, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(LQL, jnp.float32), jnp.float32(dt), bt
    )
    assert A.dtype == c.dtype == Q.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(A), Ar, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(c), cr, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(Q), Qr, rtol=2e-5, atol=2e-6 * np.abs(Qr).max())
    # d/d dt of sum(Q) against central differences (float64)
    g = jax.grad(lambda t: jnp.sum(discretise_affine(jnp.asarray(F), jnp.asarray(b), jnp.asarray(LQL), t)[2]))(dt)
    eps = 1e-6
    fd = _van_loan(F, b, LQL, dt + eps, np.zeros(d))[2].sum() - _van_loan(F, b, LQL, dt - eps, np.zeros(d))[2].sum()
    np.testing.assert_allclose(float(g), fd / (2 * eps), rtol=1e-6)


def test_ltisde_process_cov_uses_it():
    F, _, LQL, _ = _problem(3, 1)
    sde = LTISDE(jnp.asarray(F), jnp.eye(3), jnp.asarray(LQL), jnp.eye(3)[:1])
    np.testing.assert_allclose(
        np.asarray(sde.process_cov(0.9)), _van_loan(F, np.zeros(3), LQL, 0.9, np.zeros(3))[2], rtol=1e-11
    )
