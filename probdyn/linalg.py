"""Small dense linear-algebra primitives for the square-root Kalman engine.

The engine works with tiny matrices (state dimension d is typically 1-20) inside long
scans. LAPACK calls (QR, Cholesky, triangular solves) carry a fixed per-call overhead on
CPU that dominates at these sizes, so up to ``UNROLL_MAX`` the Cholesky factorisation and
triangular solves here are unrolled into plain array arithmetic that XLA fuses. The
triangularisation :func:`tria` uses LAPACK's QR; :func:`mgs_lower` is its unrolled
counterpart on lists of scalars (or of equally shaped arrays, for vectorised use), used by
the fused Kalman step (:mod:`probdyn.inference.fused`).

All routines are differentiable, including at rank-deficient inputs (zero process noise,
fully missing observations): square roots and divisions are guarded with the
"double-where" trick so that gradients stay finite.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = [
    "tria",
    "tria_batched",
    "mgs_lower",
    "list_dot",
    "psd_cholesky",
    "cholesky_tangent",
    "solve_lower",
    "solve_upper_t",
    "block_diag",
    "kron",
    "symmetrize",
    "safe_sqrt",
    "safe_rsqrt",
    "safe_inv",
    "neg_half_log",
    "psd_ldl",
    "ldl_lists",
    "ldl_from_cholesky",
    "tree_sum",
    "small_inv",
    "small_solve",
    "small_cholesky",
    "small_solve_lower",
    "small_logdet",
    "block_tridiag_solve",
]

UNROLL_MAX = 24


def _safe_div(num, den, ok):
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


@jax.custom_jvp
def safe_rsqrt(x):
    """``1/sqrt(x)`` for ``x > 0``, else 0 (derivative ``-r^3/2``, 0 where ``x <= 0``)."""
    pos = x > 0
    return jnp.where(pos, jax.lax.rsqrt(jnp.where(pos, x, 1.0)), 0.0)


@safe_rsqrt.defjvp
def _safe_rsqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    r = safe_rsqrt(x)
    return r, -0.5 * r * r * r * dx


def safe_inv(x):
    """``1/x`` for ``x > 0``, else 0 (gradient-safe: the division never sees ``x <= 0``)."""
    return _safe_div(jnp.ones_like(x), x, x > 0)


@jax.custom_jvp
def safe_sqrt(x):
    """``sqrt(x)`` for ``x > 0``, else 0 (derivative ``1/(2 sqrt x)``, 0 where ``x <= 0``)."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    r = safe_rsqrt(x)
    return x * r, 0.5 * r * dx


@jax.custom_jvp
def neg_half_log(x):
    """``-log(x)/2`` (the log of ``1/sqrt(x)``); derivative written without a division."""
    return -0.5 * jnp.log(x)


@neg_half_log.defjvp
def _neg_half_log_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    r = safe_rsqrt(x)
    return neg_half_log(x), -0.5 * r * r * dx


def tria(M: Float[Array, "n k"]) -> Float[Array, "n n"]:
    """Lower-triangular square root ``L`` with ``L L^T = M M^T`` (a "triangularisation").

    Computed by Householder QR of ``M^T`` (an LQ decomposition of ``M``, LAPACK), never by
    forming ``M M^T``, so it keeps the precision of a square-root filter. The diagonal of
    ``L`` is non-negative. ``M`` may be rank deficient or have k < n.
    """
    n, k = M.shape
    if n == 1:  # a norm: no QR call (saves a LAPACK kernel and its compile time)
        return safe_sqrt(jnp.sum(M * M)).reshape(1, 1)
    if k < n:
        M = jnp.concatenate([M, jnp.zeros((n, n - k), M.dtype)], axis=1)
    r = jnp.linalg.qr(M.T, mode="r")
    L = r[:n, :n].T
    return L * jnp.where(jnp.diag(L) < 0, -1.0, 1.0)[None, :]


def tree_sum(xs):
    """Sum of a list of equally shaped arrays (``None`` entries skipped; ``None`` if empty),
    added pairwise so the dependency chain is ``log2(n)`` deep instead of ``n``."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    while len(xs) > 1:  # pairwise: halves the dependency chain of a linear sum
        xs = [xs[i] + xs[i + 1] if i + 1 < len(xs) else xs[i] for i in range(0, len(xs), 2)]
    return xs[0]


def _minus(a, b):
    return a if b is None else a - b


def _mul(a, b):
    return None if a is None or b is None else a * b


def list_dot(a: list, b: list):
    """Dot product of two lists of scalars with ``None`` as a structural zero."""
    return tree_sum([_mul(x, y) for x, y in zip(a, b)])


def mgs_lower(rows: list[list]) -> tuple[list[list], list]:
    """Unrolled :func:`tria` of ``M`` given as a list of rows (lists of scalars).

    Row-wise modified Gram–Schmidt: ``L_ii = |r_i|``, ``q_i = r_i / L_ii``,
    ``L_ji = r_j . q_i``, ``r_j <- r_j - L_ji q_i``; in exact arithmetic the same factor as
    Householder QR, and numerically equivalent to it for the triangular factor (Björck &
    Paige, SIAM J. Matrix Anal. Appl. 13, 1992). Entries are scalars, equally shaped arrays
    (vectorised use: one factorisation per element) or ``None`` for structural zeros; a
    zero row gives a zero column. Returns ``(L, ss)``: ``L[i][j]`` (``None`` above the
    diagonal or for structural zeros) and ``ss[i] = L_ii^2``.
    """
    n = len(rows)
    rows = [list(r) for r in rows]
    L: list[list[Any]] = [[None] * n for _ in range(n)]
    ss = []
    for i in range(n):
        s = list_dot(rows[i], rows[i])
        ss.append(s)
        if s is None:
            continue
        if i == n - 1:
            L[i][i] = safe_sqrt(s)
            break
        inv = safe_rsqrt(s)
        L[i][i] = s * inv
        q = [_mul(v, inv) for v in rows[i]]
        for j in range(i + 1, n):
            c = list_dot(rows[j], q)
            L[j][i] = c
            if c is not None:
                rows[j] = [
                    yi if _mul(c, qi) is None else (-(c * qi) if yi is None else yi - c * qi)
                    for qi, yi in zip(q, rows[j])
                ]
    return L, ss


def tria_batched(M: Float[Array, "... n k"], rtol: float | Float[Array, " n"] | None = None) -> Float[Array, "... n n"]:
    """:func:`tria` of a batch of matrices (leading axes), vectorised over the batch.

    Row-wise modified Gram–Schmidt (as :func:`mgs_lower`) on arrays: each of the ``n``
    stages is a few array operations over the whole batch (one norm, one matrix-vector
    product, one rank-one update), so a long batch of small factorisations costs a few
    SIMD passes instead of one LAPACK call per matrix.

    ``rtol`` (a scalar or one per row): a row whose squared residual is at most ``rtol``
    times its own squared norm gets a zero pivot and a zero column, and the rows below keep
    their component along it (the canonical factor of ``M' M'^T``, ``M'`` = ``M`` less
    that residual). With ``rtol = 16 eps`` this is :func:`psd_cholesky`'s pivot rule for
    ``M M^T``; 0 for a row leaves it as without ``rtol``.
    """
    n, k = M.shape[-2:]
    rows = jnp.arange(n)
    L = jnp.zeros(M.shape[:-1] + (n,), M.dtype)
    norm2 = None if rtol is None else rtol * jnp.sum(M * M, axis=-1)  # (..., n)
    for i in range(n):
        r = M[..., i, :]
        ss = jnp.sum(r * r, axis=-1)
        if norm2 is not None:
            ss = jnp.where(ss <= norm2[..., i], 0.0, ss)  # NaN stays NaN
        inv = safe_rsqrt(ss)
        q = r * inv[..., None]
        c = jnp.einsum("...jk,...k->...j", M, q) * (rows > i)
        diag = safe_sqrt(ss) if i == n - 1 else ss * inv
        L = L.at[..., :, i].set(jnp.where(rows == i, diag[..., None], c))
        M = M - c[..., :, None] * q[..., None, :]
    return L


def cholesky_tangent(
    L: Float[Array, "... n n"], dP: Float[Array, "... n n"], rtol: float | None = None
) -> Float[Array, "... n n"]:
    r"""Tangent ``dL`` of a lower factor ``L L^T = P`` for a symmetric tangent ``dP`` (batched),
    valid when ``L`` has zero pivots.

    With ``L^+`` the triangular solve that skips zero pivots (``L_jj^2 <= 16 eps |L_j|^2``,
    the :func:`psd_cholesky` rule; those components are 0): ``Y = dP L^{+T}``,
    ``G = L^+ Y``, ``dL = L Phi(G) + Z (Y - L G)``, where ``Phi`` takes the lower triangle
    with the diagonal halved and ``Z`` keeps the rows of zero pivots. For invertible ``L``
    this is the usual ``L Phi(L^{-1} dP L^{-T})``; the second term is the derivative of a
    zero-pivot row, ``dP_{ZN} L_{NN}^{-T} - L_{ZN} Phi^T`` (that row is ``P_{ZN}
    L_{NN}^{-T}``), so ranks that stay fixed under the perturbation (exact observations,
    singular process noise) get the exact derivative instead of NaN.
    """
    mT = lambda x: jnp.swapaxes(x, -1, -2)  # noqa: E731
    n = L.shape[-1]
    dg = jnp.diagonal(L, axis1=-2, axis2=-1)
    tol = 16 * jnp.finfo(L.dtype).eps if rtol is None else rtol
    zero = dg * dg <= tol * jnp.sum(L * L, axis=-1)
    keep = (~zero).astype(L.dtype)[..., :, None]
    Lu = jnp.where(zero[..., :, None], jnp.eye(n, dtype=L.dtype), L)
    solve = lambda b: jax.scipy.linalg.solve_triangular(Lu, b * keep, lower=True)  # noqa: E731
    Y = mT(solve(dP))
    G = solve(Y)
    Phi = jnp.tril(G) - 0.5 * G * jnp.eye(n, dtype=L.dtype)
    dL = L @ Phi + jnp.tril((1.0 - keep) * (Y - L @ G))
    # The rule assumes the canonical factor (a zero pivot's column is zero, as psd_cholesky's
    # and tria_batched's). Householder QR (tria) can leave entries below a zero pivot when a
    # row depends on the rows above it; for such a factor no tangent of this form exists,
    # so it is NaN (a visible failure, never a wrong derivative).
    below = jnp.sum(jnp.tril(L, -1) ** 2, axis=-2)  # column norms below the diagonal
    bad = jnp.any(zero & (below > tol * jnp.max(jnp.sum(L * L, axis=-1), axis=-1, keepdims=True)), axis=-1)
    return dL * jnp.where(bad, jnp.nan, 1.0).astype(L.dtype)[..., None, None]  # NaN in reverse mode too


def psd_cholesky(P: Float[Array, "... d d"]) -> Float[Array, "... d d"]:
    """Lower Cholesky factor of a symmetric positive *semi*-definite matrix.

    A pivot that is zero, or that round-off has left at most ``16 eps`` of its diagonal
    entry (or negative), gives a zero column instead of a NaN, so singular covariances such
    as the zero process noise of a periodic kernel or ``dt = 0`` steps (an all-zero matrix)
    and the slightly indefinite ``Pinf - A Pinf A^T`` of very short steps are handled. The
    tolerance is relative to the pivot's own diagonal entry, not to the largest one: badly
    scaled but positive definite matrices (the process noise of a smooth kernel over a short
    step, where ``Q_00 / Q_dd ~ dt^2``) keep their small pivots in float32.

    The same rule for every ``d``: unrolled over scalar entries up to ``UNROLL_MAX``; above,
    a blocked loop (``lax.fori_loop``; compiles in constant time in ``d``) with a
    custom derivative (:func:`cholesky_tangent`, exact for zero pivots), which keeps reverse
    mode at the memory of ``L``. No LAPACK Cholesky: it has no zero-pivot rule and returns
    NaN for such matrices. Leading axes are a batch.
    """
    if P.ndim > 2:
        return jnp.vectorize(psd_cholesky, signature="(d,d)->(d,d)")(P)
    d = P.shape[-1]
    P = symmetrize(P)
    if d > UNROLL_MAX:
        return _clamped_cholesky_loop(P)
    eps16 = 16 * jnp.finfo(P.dtype).eps
    zero = jnp.zeros((), P.dtype)
    L = [[zero] * d for _ in range(d)]
    for j in range(d):  # entries as scalars: elementwise (and vectorised under vmap)
        s = P[j, j] - sum((L[j][k] ** 2 for k in range(j)), zero)
        ok = s > eps16 * jnp.abs(P[j, j])
        ljj = jnp.where(ok, jnp.sqrt(jnp.where(ok, s, 1.0)), 0.0)
        L[j][j] = ljj
        for i in range(j + 1, d):
            col = P[i, j] - sum((L[i][k] * L[j][k] for k in range(j)), zero)
            L[i][j] = _safe_div(col, ljj, ok)
    return jnp.stack([jnp.stack(row) for row in L])


CHOL_BLOCK = 8
"""Columns per iteration of :func:`psd_cholesky`'s loop above ``UNROLL_MAX``."""


@jax.custom_jvp
def _clamped_cholesky_loop(P):
    """:func:`psd_cholesky`'s pivot rule for one (d, d) symmetric matrix: a right-looking
    blocked factorisation in a ``fori_loop`` (per iteration, ``CHOL_BLOCK`` columns by
    rank-one updates of their panel, then one matrix product for the trailing Schur
    complement); ``d`` is padded with zero rows (zero columns of the factor)."""
    d, b = P.shape[-1], CHOL_BLOCK
    n = -(-d // b) * b
    S0 = jnp.pad(P, ((0, n - d), (0, n - d)))
    tol = 16 * jnp.finfo(P.dtype).eps * jnp.abs(jnp.diagonal(S0))
    idx = jnp.arange(n)

    def body(k, carry):
        S, L = carry
        j0 = k * b
        panel = jax.lax.dynamic_slice_in_dim(S, j0, b, axis=1)  # (n, b)
        tolb = jax.lax.dynamic_slice_in_dim(tol, j0, b)
        below, cols = [], []
        for c in range(b):
            j = j0 + c
            col = panel[:, c]
            s = jax.lax.dynamic_index_in_dim(col, j, keepdims=False)
            ok = s > tolb[c]
            ljj = jnp.where(ok, jnp.sqrt(jnp.where(ok, s, 1.0)), 0.0)
            lc = jnp.where((idx > j) & ok, col / jnp.where(ok, ljj, 1.0), 0.0)
            below.append(lc)
            cols.append(jnp.where(idx == j, ljj, lc))
            if c + 1 < b:
                panel = panel - lc[:, None] * jax.lax.dynamic_slice_in_dim(lc, j0, b)[None, :]
        Lb = jnp.stack(below, axis=1)
        L = jax.lax.dynamic_update_slice_in_dim(L, jnp.stack(cols, axis=1), j0, axis=1)
        return S - Lb @ Lb.T, L

    return jax.lax.fori_loop(0, n // b, body, (S0, jnp.zeros_like(S0)))[1][:d, :d]


@_clamped_cholesky_loop.defjvp
def _clamped_cholesky_loop_jvp(primals, tangents):
    (P,), (dP,) = primals, tangents
    L = _clamped_cholesky_loop(P)
    return L, cholesky_tangent(L, symmetrize(dP))


def psd_ldl(P: Float[Array, "... d d"]) -> tuple[Float[Array, "... d d"], Float[Array, "... d"]]:
    """``P = L diag(D) L^T`` with ``L`` unit lower triangular, ``D >= 0`` (the square-root
    free Cholesky factorisation; ``L diag(sqrt D)`` is :func:`psd_cholesky`'s factor).

    Same pivot rule as :func:`psd_cholesky`: a pivot at most ``16 eps`` of its diagonal
    entry (or negative) is set to zero and its column of ``L`` below the diagonal to zero.
    Leading axes are a batch; unrolled for small ``d`` (elementwise over the batch).
    """
    d = P.shape[-1]
    if d > UNROLL_MAX:
        return ldl_from_cholesky(psd_cholesky(P))
    P = symmetrize(P)
    L, D = ldl_lists([[P[..., i, j] for j in range(i + 1)] for i in range(d)])
    zero, one = jnp.zeros(P.shape[:-2], P.dtype), jnp.ones(P.shape[:-2], P.dtype)
    rows = [[one if i == j else (L[i][j] if j < i else zero) for j in range(d)] for i in range(d)]
    return jnp.stack([jnp.stack(row, -1) for row in rows], -2), jnp.stack(D, -1)


def ldl_lists(P: list[list]) -> tuple[list[list], list]:
    """:func:`psd_ldl` on a lower triangle given as lists of equally shaped arrays (or
    scalars), ``P[i][j]`` for ``j <= i``: returns the strict lower part of ``L`` as
    ``L[i][j]`` (``j < i``) and ``D`` as a list. Same pivot rule as :func:`psd_ldl` (used by
    it and by the fused Kalman step, which factorises each step's process noise in-step)."""
    d = len(P)
    eps16 = 16 * jnp.finfo(jnp.result_type(P[0][0])).eps
    L: list[list[Any]] = [[None] * i for i in range(d)]
    D = []
    for j in range(d):
        s = _minus(P[j][j], tree_sum([L[j][k] * L[j][k] * D[k] for k in range(j)]))
        ok = s > eps16 * jnp.abs(P[j][j])
        D.append(jnp.where(ok, s, 0.0))
        for i in range(j + 1, d):
            col = _minus(P[i][j], tree_sum([L[i][k] * L[j][k] * D[k] for k in range(j)]))
            L[i][j] = _safe_div(col, s, ok)
    return L, D


def ldl_from_cholesky(S: Float[Array, "... d d"]) -> tuple[Float[Array, "... d d"], Float[Array, "... d"]]:
    """``(L, D)`` with ``L diag(D) L^T = S S^T`` from a lower Cholesky factor ``S`` (a zero
    pivot gives a zero column below the unit diagonal)."""
    dg = jnp.diagonal(S, axis1=-2, axis2=-1)
    ok = (dg > 0)[..., None, :]
    L = jnp.tril(_safe_div(S, jnp.broadcast_to(dg[..., None, :], S.shape), ok), -1)
    return L + jnp.eye(S.shape[-1], dtype=S.dtype), dg * dg


def _unit_zero_pivots(L, b, rows: bool):
    """For the LAPACK solves: replace the row (``rows``, for ``L x = b``) or column (for
    ``L^T x = b``) of each zero pivot of ``L`` by a unit vector and zero that entry of
    ``b`` (a mask product: linear in ``b``), so that component is 0 and drops out of the
    others, as in the unrolled solves."""
    n = L.shape[0]
    z = jnp.diagonal(L) == 0
    L = jnp.where(z[:, None] if rows else z[None, :], jnp.eye(n, dtype=L.dtype), L)
    return L, b * (~z).astype(b.dtype).reshape((n,) + (1,) * (jnp.ndim(b) - 1))


def solve_lower(L: Float[Array, "n n"], b: Float[Array, "n ..."]) -> Float[Array, "n ..."]:
    """Solve ``L x = b`` for lower-triangular ``L`` (zero pivots give zero components)."""
    n = L.shape[0]
    if n > UNROLL_MAX:
        L, b = _unit_zero_pivots(L, b, rows=True)
        return jax.scipy.linalg.solve_triangular(L, b, lower=True)
    rows = []
    for i in range(n):
        acc = b[i]
        for j in range(i):
            acc = acc - L[i, j] * rows[j]
        piv = L[i, i]
        rows.append(_safe_div(acc, piv, piv != 0))
    return jnp.stack(rows, axis=0)


def solve_upper_t(L: Float[Array, "n n"], b: Float[Array, "n ..."]) -> Float[Array, "n ..."]:
    """Solve ``L^T x = b`` for lower-triangular ``L`` (zero pivots give zero components)."""
    n = L.shape[0]
    if n > UNROLL_MAX:
        L, b = _unit_zero_pivots(L, b, rows=False)
        return jax.scipy.linalg.solve_triangular(L, b, lower=True, trans=1)
    rows: list[Any] = [None] * n
    for i in reversed(range(n)):
        acc = b[i]
        for j in range(i + 1, n):
            acc = acc - L[j, i] * rows[j]
        piv = L[i, i]
        rows[i] = _safe_div(acc, piv, piv != 0)
    return jnp.stack(rows, axis=0)


def block_diag(*mats: Float[Array, ...]) -> Float[Array, ...]:
    """Block-diagonal matrix from square blocks (batched over leading axes)."""
    batch = jnp.broadcast_shapes(*[m.shape[:-2] for m in mats])
    n = sum(m.shape[-1] for m in mats)
    dtype = jnp.result_type(*mats)
    out = jnp.zeros(batch + (n, n), dtype)
    i = 0
    for m in mats:
        k = m.shape[-1]
        out = out.at[..., i : i + k, i : i + k].set(m)
        i += k
    return out


def kron(a: Float[Array, "... m n"], b: Float[Array, "... p q"]) -> Float[Array, ...]:
    """Kronecker product over the last two axes (batched)."""
    m, n = a.shape[-2:]
    p, q = b.shape[-2:]
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    return out.reshape(out.shape[:-4] + (m * p, n * q))


def symmetrize(P):
    """``(P + P^T) / 2`` over the last two axes."""
    return 0.5 * (P + jnp.swapaxes(P, -1, -2))


# ----------------------------------------------------------------------------------
# small dense helpers with scalar fast paths (1x1 LAPACK calls dominate compile time)
# ----------------------------------------------------------------------------------
def small_inv(M: Float[Array, "d d"]) -> Float[Array, "d d"]:
    """``M^{-1}`` (elementwise reciprocal for 1x1 ``M``)."""
    return 1.0 / M if M.shape[-1] == 1 else jnp.linalg.inv(M)


def small_solve(A: Float[Array, "d d"], B: Float[Array, "d ..."]) -> Float[Array, "d ..."]:
    """``A^{-1} B`` (scalar fast path for 1x1 ``A``)."""
    if A.shape[-1] == 1:
        return B / A[0, 0]
    return jnp.linalg.solve(A, B)


def small_cholesky(M: Float[Array, "d d"]) -> Float[Array, "d d"]:
    """Lower Cholesky factor of the symmetrised PD ``M`` (``sqrt`` for 1x1)."""
    return jnp.sqrt(M) if M.shape[-1] == 1 else jnp.linalg.cholesky(symmetrize(M))


def small_solve_lower(L: Float[Array, "d d"], B: Float[Array, "d ..."]) -> Float[Array, "d ..."]:
    """``L^{-1} B`` for lower-triangular ``L`` (scalar fast path for 1x1)."""
    if L.shape[-1] == 1:
        return B / L[0, 0]
    return jax.scipy.linalg.solve_triangular(L, B, lower=True)


def small_logdet(P: Float[Array, "d d"]) -> Float[Array, ""]:
    """``log det P`` of a PD ``P`` through its Cholesky factor."""
    return 2.0 * jnp.sum(jnp.log(jnp.diag(small_cholesky(P))))


def block_tridiag_solve(
    D: Float[Array, "T d d"], U: Float[Array, "Tm1 d d"], b: Float[Array, "T d ..."]
) -> Float[Array, "T d ..."]:
    """Solve ``M x = b`` for a symmetric positive-definite block-tridiagonal ``M`` (T d, T d):
    diagonal blocks ``D`` (T, d, d), blocks above the diagonal ``U`` (``M[k, k+1] = U[k]``,
    ``M[k+1, k] = U[k]^T``). Block Cholesky (Thomas) elimination in ``O(T d^3)``: a forward
    scan of Schur complements, then back substitution. ``b`` is (T, d) or (T, d, m)."""
    chol = lambda S: jnp.linalg.cholesky(symmetrize(S))  # noqa: E731
    sol = lambda L, r: jax.scipy.linalg.cho_solve((L, True), r)  # noqa: E731

    def fwd(carry, inp):
        Lp, cp = carry  # the previous block's Schur-complement factor and right-hand side
        Dk, Uk, bk = inp  # Uk couples the previous block to this one
        L, c = chol(Dk - Uk.T @ sol(Lp, Uk)), bk - Uk.T @ sol(Lp, cp)
        return (L, c), (L, c)

    L0 = chol(D[0])
    _, (Ls, cs) = jax.lax.scan(fwd, (L0, b[0]), (D[1:], U, b[1:]))
    Ls, cs = jnp.concatenate([L0[None], Ls]), jnp.concatenate([b[:1], cs])

    def bwd(x_next, inp):
        L, c, Uk = inp
        x = sol(L, c - Uk @ x_next)
        return x, x

    x_last = sol(Ls[-1], cs[-1])
    _, xs = jax.lax.scan(bwd, x_last, (Ls[:-1], cs[:-1], U), reverse=True)
    return jnp.concatenate([xs, x_last[None]])
