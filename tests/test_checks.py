"""probdyn._checks: the shared argument checks and the jit call helper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probdyn._checks import as_key, check_int, concrete, is_concrete, jit_method


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
