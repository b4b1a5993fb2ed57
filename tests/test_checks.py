"""probdyn._checks: the shared argument checks and the jit call helper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probdyn._checks import as_key, check_int, check_observations, concrete, is_concrete, jit_method


def test_is_concrete_and_concrete_under_transformations():
    x = jnp.arange(3.0)
    assert is_concrete(x) and is_concrete(np.ones(2)) and is_concrete(1.0)
    np.testing.assert_array_equal(concrete(x), [0.0, 1.0, 2.0])
    seen = []
    jax.jit(lambda v: seen.append((is_concrete(v), concrete(v))) or v)(x)
    jax.vmap(lambda v: seen.append((is_concrete(v), concrete(v))) or v)(x)
    jax.grad(lambda v: seen.append((is_concrete(v), concrete(v))) or v)(1.0)
    assert seen == [(False, None)] * 3


def test_check_int_and_as_key():
    assert check_int(np.int64(3), "n", 1) == 3
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            check_int(bad, "n", 1)
    raw = jax.random.PRNGKey(4)
    np.testing.assert_array_equal(as_key(raw), raw)
    np.testing.assert_array_equal(as_key(jax.random.key(4)), raw)
    with pytest.raises(TypeError, match="PRNG key"):
        as_key(jnp.zeros(3))


def test_jit_method_compiles_once_per_structure():
    import equinox as eqx

    traces = []

    class M(eqx.Module):
        a: jax.Array

        def f(self, x):
            traces.append(1)
            return self.a * x

    for a in (1.0, 2.0, 3.0):
        assert float(jit_method("f", M(jnp.asarray(a)), jnp.asarray(2.0))) == 2 * a
    assert len(traces) == 1


def test_check_observations_concrete_and_traced(monkeypatch):
    """NaN (missing) passes; an infinity raises eagerly for concrete data; traced data is
    returned unchecked by default and checked at run time (equinox.error_if) with
    PROBDYN_CHECK_TRACED=1, with the name in the message."""
    y = jnp.array([0.5, jnp.nan, -1.0])
    np.testing.assert_array_equal(check_observations(y), y)
    with pytest.raises(ValueError, match="frames contains infinite values"):
        check_observations(y.at[0].set(jnp.inf), "frames")
    inf = y.at[2].set(-jnp.inf)
    np.testing.assert_array_equal(jax.jit(lambda v: check_observations(v, "frames") * 2.0)(inf), 2.0 * inf)
    monkeypatch.setenv("PROBDYN_CHECK_TRACED", "1")
    jax.clear_caches()  # programs compiled without the check are cached
    f = jax.jit(lambda v: check_observations(v, "frames") * 2.0)
    np.testing.assert_array_equal(f(y), 2.0 * y)
    with pytest.raises((ValueError, RuntimeError), match="frames contains infinite values"):
        f(inf).block_until_ready()
