"""Small-matrix factorisations of probdyn.linalg against NumPy references."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from probdyn import linalg  # noqa: E402
from probdyn.inference import fused  # noqa: E402


def _spd(rng, n):
    B = rng.normal(size=(n, n))
    return B @ B.T + 0.1 * np.eye(n)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_psd_ldl_matches_numpy_cholesky(d):
    rng = np.random.default_rng(d)
    P = np.stack([_spd(rng, d) for _ in range(4)])  # a batch
    L, D = linalg.psd_ldl(jnp.asarray(P))
    C = np.linalg.cholesky(P)
    np.testing.assert_allclose(np.asarray(L) * np.sqrt(np.asarray(D))[:, None, :], C, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.diagonal(np.asarray(L), axis1=1, axis2=2), 1.0)
    np.testing.assert_allclose(np.triu(np.asarray(L), 1), 0.0)
    L2, D2 = linalg.ldl_from_cholesky(jnp.asarray(C))
    np.testing.assert_allclose(L2, L, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(D2, D, rtol=1e-12)


def test_psd_ldl_singular_gives_zero_pivot_not_nan():
    v = np.array([1.0, 2.0, -1.0])
    P = np.outer(v, v)  # rank one: pivots 1 and 2 vanish
    L, D = linalg.psd_ldl(jnp.asarray(P))
    assert np.all(np.isfinite(np.asarray(L))) and np.all(np.isfinite(np.asarray(D)))
    np.testing.assert_allclose(np.asarray(L) @ np.diag(np.asarray(D)) @ np.asarray(L).T, P, atol=1e-12)
    np.testing.assert_allclose(D[1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(L)[2, 1], 0.0)
    S = linalg.psd_cholesky(jnp.asarray(P))
    np.testing.assert_allclose(np.asarray(L) * np.sqrt(np.asarray(D))[None, :], S, atol=1e-12)


@pytest.mark.parametrize("n,k", [(1, 3), (3, 5), (4, 4), (3, 7)])
def test_mwgs_lower_factorises_weighted_gram(n, k):
    """``W diag(w) W^T = Lu diag(Dd) Lu^T`` with the reference from NumPy's Cholesky."""
    rng = np.random.default_rng(10 * n + k)
    W = rng.normal(size=(n, k))
    w = rng.uniform(0.1, 2.0, size=k)
    Lu, Dd, inv = fused.mwgs_lower([list(jnp.asarray(r)) for r in W], list(jnp.asarray(w)))
    Lm = np.eye(n)
    for i in range(n):
        for j in range(i):
            Lm[i, j] = 0.0 if Lu[i][j] is None else float(Lu[i][j])
    C = np.linalg.cholesky(W @ np.diag(w) @ W.T)
    np.testing.assert_allclose(Lm * np.sqrt(np.array([float(v) for v in Dd]))[None, :], C, rtol=1e-11, atol=1e-12)
    for i in range(n - 1):
        np.testing.assert_allclose(float(inv[i]) * float(Dd[i]), 1.0, rtol=1e-14)


def test_mgs_lower_matches_householder_qr():
    rng = np.random.default_rng(3)
    M = rng.normal(size=(3, 6))
    L, ss = linalg.mgs_lower([list(jnp.asarray(r)) for r in M])
    Lm = np.array([[0.0 if L[i][j] is None else float(L[i][j]) for j in range(3)] for i in range(3)])
    R = np.linalg.qr(M.T, mode="r")
    ref = R.T * np.sign(np.diag(R))[None, :]
    np.testing.assert_allclose(Lm, ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(linalg.tria(jnp.asarray(M)), ref, rtol=1e-12, atol=1e-13)
