"""probdyn.sde.euler_maruyama_interval, the one Euler-Maruyama step, on an OU process: sample
moments of many paths against the exact Euler-Maruyama recursion (z-scores) and against the
exact OU transition (z-scores plus the O(h) discretisation bias); particle-batch form."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from probdyn.sde import SDE, euler_maruyama, euler_maruyama_interval  # noqa: E402

LAM, SIG, X0, T0, T1 = 1.3, 0.7, 2.0, 0.4, 1.4


def _paths(n_steps, n_paths, seed=0, batch=True):
    sde = SDE(lambda x, t: -LAM * x, SIG * jnp.ones(1), 1)
    h = (T1 - T0) / n_steps
    dW = jax.random.normal(jax.random.PRNGKey(seed), (n_paths, n_steps, 1)) * np.sqrt(h)
    x = jnp.full((n_paths, 1), X0)
    if batch:
        return np.asarray(jax.jit(lambda x, dW: euler_maruyama_interval(sde, x, T0, T1, dW))(x, dW))[:, 0]
    return np.asarray(jax.vmap(lambda xi, dwi: euler_maruyama_interval(sde, xi, T0, T1, dwi))(x, dW))[:, 0]


def test_ou_moments_against_em_recursion_and_exact_transition():
    n_paths = 200_000
    for n_steps in (1, 5, 100):
        xs = _paths(n_steps, n_paths)
        h = (T1 - T0) / n_steps
        a = 1.0 - LAM * h
        m_em = X0 * a**n_steps
        v_em = SIG**2 * h * np.sum(a ** (2 * np.arange(n_steps)))
        z_m = (xs.mean() - m_em) / np.sqrt(v_em / n_paths)
        z_v = (xs.var() - v_em) / (v_em * np.sqrt(2.0 / n_paths))
        assert abs(z_m) < 4.5 and abs(z_v) < 4.5, (n_steps, z_m, z_v)
        # exact OU transition: the same within 4.5 standard errors plus the O(h) bias of EM
        dt = T1 - T0
        m_ex = X0 * np.exp(-LAM * dt)
        v_ex = SIG**2 * (1 - np.exp(-2 * LAM * dt)) / (2 * LAM)
        assert abs(xs.mean() - m_ex) < 4.5 * np.sqrt(v_em / n_paths) + abs(m_em - m_ex)
        assert abs(xs.var() - v_ex) < 4.5 * v_em * np.sqrt(2.0 / n_paths) + abs(v_em - v_ex)
        if n_steps == 100:  # bias O(h): small at 100 steps
            assert abs(m_em - m_ex) < 0.01 * abs(m_ex) and abs(v_em - v_ex) < 0.01 * v_ex


def test_batch_form_equals_single_paths_and_euler_maruyama_path():
    np.testing.assert_array_equal(_paths(7, 64, batch=True), _paths(7, 64, batch=False))
    sde = SDE(lambda x, t: -LAM * x + jnp.sin(t), SIG * jnp.ones(1), 1)
    times = jnp.array([0.0, 0.3, 1.0])
    key = jax.random.PRNGKey(3)
    path = euler_maruyama(sde, jnp.array([X0]), times, key, num_substeps=4)
    k1, k2 = jax.random.split(key, 2)
    x = jnp.array([X0])
    for (t0, t1), k in zip(((0.0, 0.3), (0.3, 1.0)), (k1, k2)):
        x = euler_maruyama_interval(sde, x, t0, t1, jax.random.normal(k, (4, 1)) * np.sqrt((t1 - t0) / 4))
    np.testing.assert_allclose(np.asarray(path[-1]), np.asarray(x), rtol=1e-13)
