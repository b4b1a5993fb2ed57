"""The suite runs with the jaxtyping import hook over probdyn (pyproject addopts): annotated
shapes and types are checked on every call, so an annotation that disagrees with a call fails
the test that makes it. These tests check that the hook is on and what the aliases accept."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jaxtyping  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from probdyn import kernels, linalg  # noqa: E402
from probdyn.inference import kalman  # noqa: E402
from probdyn.ssm import discretise_affine  # noqa: E402


def test_hook_checks_shared_dimensions():
    """``solve_lower(L: (n, n), b: (n, ...))``: a ``b`` of another length is a TypeCheckError
    from the hook before any linear algebra runs (without the hook it would be a JAX shape error)."""
    L = jnp.eye(3)
    np.testing.assert_allclose(linalg.solve_lower(L, jnp.arange(3.0)), np.arange(3.0))
    with pytest.raises(jaxtyping.TypeCheckError, match="b"):
        linalg.solve_lower(L, jnp.ones(4))


def test_inputs_accept_numpy_and_python_scalars():
    """Public inputs are array-like: NumPy arrays and Python floats pass the hook, with the
    same numbers as JAX arrays (dense reference: expm of the Van Loan block for dt = 0.3)."""
    F = np.array([[-1.0, 0.5], [0.0, -2.0]])
    A, _, Q = discretise_affine(F, None, np.eye(2), 0.3)
    A2, _, Q2 = discretise_affine(jnp.asarray(F), None, jnp.eye(2), jnp.asarray(0.3))
    np.testing.assert_allclose(A, A2, rtol=1e-14)
    np.testing.assert_allclose(Q, Q2, rtol=1e-14)
    import scipy.linalg

    np.testing.assert_allclose(A, scipy.linalg.expm(0.3 * F), rtol=1e-12)
    k = kernels.Matern32(1.3, 0.7)
    t = np.linspace(0.0, 2.0, 5)
    K = k.covariance(t)
    np.testing.assert_allclose(np.diag(K), 0.7 * np.ones(5), rtol=1e-12)


def test_validated_inputs_keep_their_clear_errors():
    """Inputs probdyn checks itself are annotated loosely, so its own ValueError (naming the
    problem) is what a wrong shape gives, with or without the hook."""
    ssm = kernels.Matern12(1.0, 1.0).to_ssm(jnp.linspace(0.0, 1.0, 4), 0.1)
    with pytest.raises(ValueError, match="y"):
        kalman.filter(ssm, jnp.ones((5, 1)))
