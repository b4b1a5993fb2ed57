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


# ----------------------------------------------------------------------------------
# psd_cholesky above UNROLL_MAX: the same pivot rule as the unrolled branch
# ----------------------------------------------------------------------------------
def _rand_psd(rng, d, rank):
    B = rng.normal(size=(d, rank))
    return B @ B.T


@pytest.mark.parametrize("d", [pytest.param(linalg.UNROLL_MAX, marks=pytest.mark.slow), linalg.UNROLL_MAX + 1, 40])
def test_psd_cholesky_every_branch_semidefinite(d):
    """Every dimension: positive definite -> LAPACK's factor; rank deficient -> a factor of
    the same matrix with zero pivots (no NaN); all-zero -> zero; rounding-level indefinite
    (``Pinf - A Pinf A^T`` of a tiny step) -> finite, ``L L^T`` within the rounding."""
    rng = np.random.default_rng(d)
    f = jax.jit(linalg.psd_cholesky)
    P = _rand_psd(rng, d, d + 3)
    np.testing.assert_allclose(f(jnp.asarray(P)), np.linalg.cholesky(P), rtol=1e-9, atol=1e-12)
    for rank in (d - 1, d // 2, 1):
        P = _rand_psd(rng, d, rank)
        L = np.asarray(f(jnp.asarray(P)))
        assert np.all(np.isfinite(L)) and np.all(np.triu(L, 1) == 0) and np.all(np.diag(L) >= 0)
        assert np.sum(np.diag(L) > 1e-6 * np.sqrt(np.max(np.diag(P)))) == rank
        np.testing.assert_allclose(L @ L.T, P, atol=1e-10 * np.max(np.abs(P)))
    np.testing.assert_array_equal(f(jnp.zeros((d, d))), np.zeros((d, d)))
    # a step of 1e-13 of an SDE with a random stable drift: P - A P A^T, cancellation-level
    F = rng.normal(size=(d, d)) - 2 * np.sqrt(d) * np.eye(d)
    import scipy.linalg as sla

    Pinf = sla.solve_continuous_lyapunov(F, -np.eye(d))
    A = sla.expm(F * 1e-13)
    Q0 = Pinf - A @ Pinf @ A.T
    lam, V = np.linalg.eigh(0.5 * (Q0 + Q0.T))
    shift = lam[0] + 1e-15 * np.max(np.abs(Pinf))  # smallest eigenvalue -> -1e-15 max|Pinf| (~5 eps)
    for Q in (Q0, Q0 - shift * np.outer(V[:, 0], V[:, 0])):
        Q = 0.5 * (Q + Q.T)
        L = np.asarray(f(jnp.asarray(Q)))
        assert np.all(np.isfinite(L))
        # Q itself carries errors of ~d eps max|Pinf| (cancellation); a pivot left at that
        # level (kept when above 16 eps of its own diagonal) amplifies them: measured
        # max|L L^T - Q| / max|Pinf| = 9e-13 (d = 24, 25), 2e-11 (d = 40) in float64: far below
        # what a covariance of scale Pinf notices, and finite (the bug was NaN)
        np.testing.assert_allclose(L @ L.T, Q, atol=1e-10 * np.max(np.abs(Pinf)))
    assert np.linalg.eigvalsh(Q)[0] < 0
    # batched, float32
    Pb = np.stack([_rand_psd(rng, d, d + 2), _rand_psd(rng, d, d // 2), np.zeros((d, d))])
    Lb = np.asarray(jax.jit(linalg.psd_cholesky)(jnp.asarray(Pb, jnp.float32)))
    assert Lb.dtype == np.float32 and np.all(np.isfinite(Lb))
    np.testing.assert_allclose(np.einsum("bij,bkj->bik", Lb, Lb), Pb, atol=2e-5 * np.max(np.abs(Pb)))


@pytest.mark.parametrize("rank", [40, 31])
def test_psd_cholesky_derivative_large_d(rank):
    """Tangent of the loop branch (custom JVP) along a direction that keeps the rank
    (``P(s) = B(s) B(s)^T``, ``B`` (40, rank)) against central differences of an independent
    smooth formula for the canonical factor: the first ``rank`` pivots are nonzero,
    ``L[:r, :r] = chol(P[:r, :r])``, ``L[r:, :r] = P[r:, :r] L[:r, :r]^{-T}``, zero columns
    after (finite differences of the factor itself are round-off at zero pivots)."""
    d = 40
    rng = np.random.default_rng(rank)
    B, dB = rng.normal(size=(d, rank)), rng.normal(size=(d, rank))
    P = lambda s: (B + s * dB) @ (B + s * dB).T  # noqa: E731

    def ref(s):
        Ps, L = P(s), np.zeros((d, d))
        L[:rank, :rank] = np.linalg.cholesky(Ps[:rank, :rank])
        L[rank:, :rank] = np.linalg.solve(L[:rank, :rank], Ps[:rank, rank:]).T
        return L

    f = jax.jit(linalg.psd_cholesky)
    dP = jnp.asarray(dB @ B.T + B @ dB.T)
    L0, dL = jax.jvp(f, (jnp.asarray(P(0.0)),), (dP,))
    np.testing.assert_allclose(L0, ref(0.0), rtol=1e-8, atol=1e-10)
    h = 1e-5
    fd = (ref(h) - ref(-h)) / (2 * h)
    np.testing.assert_allclose(dL, fd, rtol=1e-6, atol=1e-7 * np.max(np.abs(fd)))
    # reverse mode agrees with forward mode
    w = jnp.asarray(rng.normal(size=(d, d)))
    g = jax.grad(lambda p: jnp.sum(w * f(p)))(jnp.asarray(P(0.0)))
    np.testing.assert_allclose(jnp.sum(g * dP), jnp.sum(w * dL), rtol=1e-8)


def test_large_solves_skip_zero_pivots():
    """Above UNROLL_MAX the LAPACK solves give zero components at zero pivots, as the
    unrolled ones (a factor of a singular covariance)."""
    d = 30
    rng = np.random.default_rng(3)
    L = np.tril(rng.normal(size=(d, d))) + 3 * np.eye(d)
    L[:, [4, 17]] = 0.0  # two zero pivots (zero columns, as psd_cholesky's)
    b = rng.normal(size=(d, 2))
    keep = np.ones(d, bool)
    keep[[4, 17]] = False
    Lk = L[np.ix_(keep, keep)]
    x = np.asarray(linalg.solve_lower(jnp.asarray(L), jnp.asarray(b)))
    np.testing.assert_array_equal(x[~keep], 0.0)
    np.testing.assert_allclose(x[keep], np.linalg.solve(Lk, b[keep]), rtol=1e-10)
    x = np.asarray(linalg.solve_upper_t(jnp.asarray(L), jnp.asarray(b)))
    np.testing.assert_array_equal(x[~keep], 0.0)
    np.testing.assert_allclose(x[keep], np.linalg.solve(Lk.T, b[keep]), rtol=1e-10)


def test_tria_batched_pivot_rule_gives_canonical_factor():
    """``rtol``: a row that depends on the rows above up to a residual below ``sqrt(rtol)``
    of its norm gets a zero pivot and a zero column, the rows below keep their component
    along that residual (so ``L L^T`` is the Gram matrix of ``M`` less that residual), and a
    per-row 0 leaves a row as without the rule. Reference: NumPy Cholesky of the Gram
    matrix of the remaining rows."""
    rng = np.random.default_rng(0)
    r0, r2, noise = rng.normal(size=6), rng.normal(size=6), rng.normal(size=6)
    M = np.stack([r0, 2 * r0 + 1e-10 * noise, r2])
    eps16 = 16 * np.finfo(float).eps
    L = np.asarray(linalg.tria_batched(jnp.asarray(M), rtol=eps16))
    assert L[1, 1] == 0.0 and L[2, 1] == 0.0
    Mp = M.copy()
    Mp[1] = (M[1] @ r0) / (r0 @ r0) * r0  # M less the residual of row 1 (its projection on row 0)
    np.testing.assert_allclose(L @ L.T, Mp @ Mp.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(L[[0, 2]][:, [0, 2]], np.linalg.cholesky(Mp[[0, 2]] @ Mp[[0, 2]].T), rtol=1e-12)
    # rule off for row 1 (per-row tolerances): the tiny pivot is kept, as without rtol
    Lk = np.asarray(linalg.tria_batched(jnp.asarray(M), rtol=jnp.array([eps16, 0.0, eps16])))
    np.testing.assert_allclose(Lk, np.asarray(linalg.tria_batched(jnp.asarray(M))), rtol=1e-12, atol=1e-15)
    assert Lk[1, 1] > 0
    np.testing.assert_allclose(Lk @ Lk.T, M @ M.T, rtol=1e-12, atol=1e-12)


def test_tree_sum_and_small_helpers_against_numpy():
    from probdyn.linalg import small_cholesky, small_inv, small_logdet, small_solve, small_solve_lower, tree_sum

    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.normal(size=(2, 3))) for _ in range(7)]
    np.testing.assert_allclose(np.asarray(tree_sum(xs + [None])), np.sum(np.stack(xs), 0), rtol=1e-12)
    assert tree_sum([None]) is None
    for d in (1, 3):
        A = rng.normal(size=(d, d))
        P = A @ A.T + d * np.eye(d)
        B = rng.normal(size=(d, 2))
        L = np.linalg.cholesky(P)
        np.testing.assert_allclose(np.asarray(small_inv(jnp.asarray(P))), np.linalg.inv(P), rtol=1e-10)
        np.testing.assert_allclose(
            np.asarray(small_solve(jnp.asarray(P), jnp.asarray(B))), np.linalg.solve(P, B), rtol=1e-10
        )
        np.testing.assert_allclose(np.asarray(small_cholesky(jnp.asarray(P))), L, rtol=1e-10)
        np.testing.assert_allclose(
            np.asarray(small_solve_lower(jnp.asarray(L), jnp.asarray(B))), np.linalg.solve(L, B), rtol=1e-10
        )
        np.testing.assert_allclose(float(small_logdet(jnp.asarray(P))), np.linalg.slogdet(P)[1], rtol=1e-12)


@pytest.mark.parametrize("rhs_cols", [None, 3])
def test_block_tridiag_solve_matches_dense_solve(rhs_cols):
    from probdyn.linalg import block_tridiag_solve

    rng = np.random.default_rng(3)
    T, d = 7, 3
    # a random SPD block-tridiagonal matrix: A^T A with A block lower-bidiagonal
    A = np.zeros((T * d, T * d))
    for k in range(T):
        A[k * d : (k + 1) * d, k * d : (k + 1) * d] = rng.normal(size=(d, d)) + 3 * np.eye(d)
        if k:
            A[k * d : (k + 1) * d, (k - 1) * d : k * d] = rng.normal(size=(d, d))
    M = A.T @ A
    D = np.stack([M[k * d : (k + 1) * d, k * d : (k + 1) * d] for k in range(T)])
    U = np.stack([M[k * d : (k + 1) * d, (k + 1) * d : (k + 2) * d] for k in range(T - 1)])
    b = rng.normal(size=(T * d,) if rhs_cols is None else (T * d, rhs_cols))
    ref = np.linalg.solve(M, b)
    bb = b.reshape((T, d) + b.shape[1:])
    x = np.asarray(block_tridiag_solve(jnp.asarray(D), jnp.asarray(U), jnp.asarray(bb)))
    np.testing.assert_allclose(x.reshape(ref.shape), ref, rtol=1e-10, atol=1e-12)
