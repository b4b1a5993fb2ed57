"""probdyn.sde.solve_ode, the one ODE entry point: both backends against scipy's DOP853 and
against central differences; the options each backend refuses."""

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.integrate  # noqa: E402

from probdyn.sde import solve_ode  # noqa: E402

TH = np.array([0.55, 0.028, 0.8, 0.024])
Z0 = np.array([34.0, 6.0])
TS = np.array([0.5, 1.3, 2.0, 4.7, 5.0, 9.9, 12.0])


def lv(z, t, th):
    return jnp.stack([(th[0] - th[1] * z[1]) * z[0], (-th[2] + th[3] * z[0]) * z[1]])


def test_backends_match_scipy_and_central_differences():
    ref = scipy.integrate.solve_ivp(
        lambda t, z: np.asarray(lv(z, t, TH)), (TS[0], TS[-1]), Z0, t_eval=TS, rtol=1e-12, atol=1e-12, method="DOP853"
    ).y.T
    routes = {
        "fused_rk": dict(backend="fused_rk"),
        "diffrax forward": dict(backend="diffrax"),
        "diffrax reverse": dict(backend="diffrax", sensitivity="reverse"),
        "diffrax Kvaerno5 (implicit)": dict(backend="diffrax", solver=diffrax.Kvaerno5()),
    }

    def loss(th, kw):
        return jnp.sum(
            jnp.log(
                solve_ode(lv, jnp.asarray(Z0), jnp.asarray(TS), th, rtol=1e-10, atol=1e-10, max_steps=4096, **kw)[0]
            )
        )

    eps = 1e-6 * TH
    E = np.diag(eps)
    fd = np.array(
        [(loss(jnp.asarray(TH + E[i]), {}) - loss(jnp.asarray(TH - E[i]), {})) / (2 * eps[i]) for i in range(4)]
    )
    for name, kw in routes.items():
        z, ok = solve_ode(
            lv, jnp.asarray(Z0), jnp.asarray(TS), jnp.asarray(TH), rtol=1e-8, atol=1e-8, max_steps=4096, **kw
        )
        assert bool(ok), name
        np.testing.assert_allclose(np.asarray(z), ref, rtol=2e-6, err_msg=name)
        g = jax.grad(loss)(jnp.asarray(TH), kw)
        np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, err_msg=name)
    # theta=None: drift(x, t), the same solve
    z1, _ = solve_ode(lambda z, t: lv(z, t, jnp.asarray(TH)), jnp.asarray(Z0), jnp.asarray(TS))
    z2, _ = solve_ode(lv, jnp.asarray(Z0), jnp.asarray(TS), jnp.asarray(TH))
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(z2))


def test_backend_options_are_checked():
    args = (lv, jnp.asarray(Z0), jnp.asarray(TS), jnp.asarray(TH))
    with pytest.raises(ValueError, match="backend must be one of"):
        solve_ode(*args, backend="scipy")
    with pytest.raises(ValueError, match="explicit embedded Runge-Kutta pair.*Kvaerno5"):
        solve_ode(*args, solver=diffrax.Kvaerno5())
    with pytest.raises(ValueError, match="sensitivity='reverse' use backend='diffrax'"):
        solve_ode(*args, sensitivity="reverse")
    with pytest.raises(ValueError, match="sensitivity must be"):
        solve_ode(*args, backend="diffrax", sensitivity="adjoint")


def test_diffrax_forward_gradients_of_save_times_and_closed_over_values():
    """The diffrax backend's ForwardMode route: d/d(save times) and a traced value the drift
    closes over, inside jit, vs central differences (the fused backend's test in test_sysid)."""

    @jax.jit
    def run(th, z0, ts):
        def lt(tt):
            z = solve_ode(lv, z0, tt, th, backend="diffrax", rtol=1e-10, atol=1e-10, max_steps=4096)[0]
            return jnp.sum(jnp.log(z) * jnp.arange(14.0).reshape(7, 2))

        def la(a):
            dr = lambda z, t, p: lv(z, t, p.at[0].set(a))  # noqa: E731
            return jnp.sum(
                jnp.log(solve_ode(dr, z0, ts, th, backend="diffrax", rtol=1e-10, atol=1e-10, max_steps=4096)[0])
            )

        eps = 1e-6
        E = eps * jnp.eye(7)
        return (
            jax.grad(lt)(ts),
            (jax.vmap(lt)(ts + E) - jax.vmap(lt)(ts - E)) / (2 * eps),
            jax.grad(la)(th[0]),
            (la(th[0] + eps) - la(th[0] - eps)) / (2 * eps),
        )

    gt, fdt, ga, fda = run(jnp.asarray(TH), jnp.asarray(Z0), jnp.asarray(TS))
    np.testing.assert_allclose(gt, fdt, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ga, fda, rtol=1e-6)
