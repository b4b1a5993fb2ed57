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
