"""probdyn.inference.optimize.backoff_ascent, the one damped-ascent loop with back-off."""

import numpy as np
import pytest

from probdyn.inference.optimize import backoff_ascent


def _problem():
    # maximise f(x) = -(x - 3)^2 by gradient steps x + r f'(x); r > 1 overshoots (f decreases)
    f = lambda x: -((x - 3.0) ** 2)  # noqa: E731
    return f, (lambda x, r: (x + r * (-2.0 * (x - 3.0)), f(x + r * (-2.0 * (x - 3.0)))))


def test_backoff_retries_until_accepted_and_reaches_the_optimum():
    f, propose = _problem()

    def adapt(ok, r, cur, new):
        return (min(2 * r, 0.9), new - cur < 1e-14) if ok else (r / 4, r / 4 < 1e-6)

    x, val, tr = backoff_ascent(propose, 0.0, f(0.0), 100, 1.6, lambda c, n: n >= c, adapt)
    assert abs(x - 3.0) < 1e-6 and val == pytest.approx(0.0, abs=1e-12)
    assert tr.num_rejected == 1 and tr.dampings[0] == pytest.approx(0.4)  # 1.6 overshoots: retried at 0.4
    assert np.all(np.diff(tr.values) >= 0) and tr.values[0] == f(0.0)
    assert tr.num_attempts == len(tr.dampings) + tr.num_rejected


def test_one_attempt_per_iteration_and_convergence_check():
    f, propose = _problem()
    adapt = lambda ok, r, cur, new: (r / 2, False) if ok else (r / 2, False)  # noqa: E731
    x, _, tr = backoff_ascent(propose, 0.0, f(0.0), 3, 3.0, lambda c, n: n >= c, adapt, retry=False)
    # r = 3 rejected (f(12) < f(0)), r = 1.5 rejected (f(9) < f(0)), r = 0.75 accepted: 3 iterations
    assert tr.num_attempts == 3 and tr.num_rejected == 2 and x == pytest.approx(4.5)
    _, _, tr = backoff_ascent(
        propose, 3.0, 0.0, 10, 0.5, lambda c, n: n >= c, adapt, converged=lambda x: abs(x - 3.0) < 1e-9
    )
    assert tr.num_attempts == 0
    with pytest.raises(FloatingPointError, match="initial objective"):
        backoff_ascent(propose, 0.0, float("nan"), 3, 0.5, lambda c, n: n >= c, adapt)


def test_checkpoint_resume_continues_the_same_run(tmp_path):
    import jax.numpy as jnp

    f = lambda x: -jnp.sum((x - 3.0) ** 2)  # noqa: E731
    propose = lambda x, r: (x + r * (-2.0 * (x - 3.0)), f(x + r * (-2.0 * (x - 3.0))))  # noqa: E731
    adapt = lambda ok, r, cur, new: (min(1.2 * r, 0.6), False) if ok else (r / 3, r / 3 < 1e-9)  # noqa: E731
    args = (jnp.zeros(2), float(f(jnp.zeros(2))))
    ref_x, _, ref = backoff_ascent(propose, *args, 9, 1.5, lambda c, n: n >= c, adapt)
    ck = tmp_path / "ascent.eqx"
    backoff_ascent(propose, *args, 4, 1.5, lambda c, n: n >= c, adapt, checkpoint=ck, checkpoint_every=2)
    x, _, tr = backoff_ascent(propose, *args, 9, 1.5, lambda c, n: n >= c, adapt, checkpoint=ck)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(ref_x))
    np.testing.assert_array_equal(tr.values, ref.values)
    np.testing.assert_array_equal(tr.dampings, ref.dampings)
    assert (tr.num_rejected, tr.num_attempts) == (ref.num_rejected, ref.num_attempts)


def test_lbfgs_minimize_reaches_the_least_squares_solution_of_a_pytree():
    """Reference: numpy's least-squares solution of an ill-conditioned linear system."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from probdyn.inference.optimize import lbfgs_minimize

    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 8)) @ np.diag(np.logspace(0, 2, 8))
    y = rng.normal(size=30)
    x_ref = np.linalg.lstsq(A, y, rcond=None)[0]

    def loss(p):
        x = jnp.concatenate([p["a"], p["b"]])
        return 0.5 * jnp.sum((A @ x - y) ** 2)

    vg = jax.jit(jax.value_and_grad(loss))
    res = lbfgs_minimize(vg, {"a": jnp.zeros(3), "b": jnp.zeros(5)}, gtol=1e-10)
    x = np.concatenate([res.x["a"], res.x["b"]])
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-8)
    assert res.value == pytest.approx(float(loss({"a": x_ref[:3], "b": x_ref[3:]})), abs=1e-12)
    assert res.converged and res.max_abs_grad < 1e-6  # stopped at gtol or at a rounding-level decrease
    with pytest.raises(ValueError, match="not finite at the start"):
        lbfgs_minimize(vg, {"a": jnp.full(3, jnp.nan), "b": jnp.zeros(5)})
