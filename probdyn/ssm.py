r"""Linear state-space models: continuous-time LTI SDEs and discrete linear-Gaussian SSMs.

An LTI SDE (Särkkä & Solin 2019, ch. 6)

.. math:: dx = F x\,dt + L\,d\beta, \qquad E[d\beta\,d\beta^T] = Q_c\,dt, \qquad f(t) = H x(t)

discretises *exactly* between times :math:`t_{k-1} < t_k` (:math:`\Delta_k = t_k - t_{k-1}`) to

.. math:: x_k = A_k x_{k-1} + q_k,\quad A_k = e^{F\Delta_k},\quad
          q_k \sim N(0, Q_k),\quad Q_k = \int_0^{\Delta_k} e^{Fs} L Q_c L^T e^{F^Ts} ds.

For a stationary SDE :math:`Q_k = P_\infty - A_k P_\infty A_k^T`; in general :math:`Q_k` comes
from Van Loan's block-matrix exponential (:func:`discretise_affine`, the one routine for affine
SDEs in probdyn).
"""

from __future__ import annotations

import functools
import math
import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from probdyn._checks import is_concrete
from probdyn._typing import Cov, ScalarLike
from probdyn.linalg import symmetrize

_THETA, _TAYLOR, _MAX_DOUBLE = 0.25, 10, 16


def _phi1(z):
    """``expm1(z) / z`` (1 at 0), safe for autodiff."""
    small = jnp.abs(z) < 1e-3
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, 1.0 + z / 2 + z * z / 6 + z**3 / 24, jnp.expm1(zs) / zs)


def discretise_affine(
    F: Float[ArrayLike, "d d"],
    b: Float[ArrayLike, " d"] | None,
    LQL: Float[ArrayLike, "d d"],
    dt: ScalarLike,
    b_t: Float[ArrayLike, " d"] | None = None,
) -> tuple[Float[Array, "d d"], Float[Array, " d"], Float[Array, "d d"]]:
    """Exact discretisation of the affine SDE ``dx = (F x + b + b_t s) ds + dbeta`` over ``[0, dt]``.

    ``E[dbeta dbeta^T] = LQL ds`` (``LQL = L Qc L^T``, PSD); ``b``/``b_t`` default to zero.
    Returns ``(A = e^{F dt} (d, d), c (d,), Q (d, d))`` with ``x(dt) = A x(0) + c + q``,
    ``q ~ N(0, Q)``. The one copy of this computation in probdyn: the LTI SDEs of the kernels
    (:meth:`LTISDE.process_cov`), the local linearisation of the Gaussian filters and the
    linearised priors of the SDE posteriors all call it.

    Method: for ``d = 1`` without ``b_t`` the closed form ``A = e^z``, ``c = b dt phi1(z)``,
    ``Q = LQL dt phi1(2 z)`` (``z = F dt``, ``phi1(z) = (e^z - 1) / z``; stable as ``z -> 0``).
    Otherwise Van Loan's block matrix augmented with ``[s, 1]``,
    ``M = [[F, LQL, b_t, b], [0, -F^T, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]] dt``, is exponentiated
    by scaling and squaring: a degree-10 Taylor polynomial of ``M / 2^k`` (``|M / 2^k|_1 <= 1/4``,
    truncation error < 1e-14) and ``k`` doublings of the affine part with
    ``Q <- Q + A Q A^T`` (PSD terms only, so long and stiff steps keep their precision;
    ``e^{-F^T dt}`` is never formed). ``k`` is chosen at run time, at most 16, so ``|M|_1``
    should stay below ~1.6e4 (split longer or stiffer steps). Differentiable; jit/vmap-safe.
    """
    F = jnp.asarray(F)
    d = F.shape[-1]
    dtype = jnp.result_type(F, LQL, dt)
    F, LQL, dt = F.astype(dtype), jnp.asarray(LQL, dtype), jnp.asarray(dt, dtype)
    b = jnp.zeros(d, dtype) if b is None else jnp.asarray(b, dtype)
    if d == 1 and b_t is None:
        z = F[0, 0] * dt
        return jnp.exp(z).reshape(1, 1), b * dt * _phi1(z), LQL * dt * _phi1(2.0 * z)
    b_t = jnp.zeros(d, dtype) if b_t is None else jnp.asarray(b_t, dtype)
    n = 2 * d + 2
    M = jnp.zeros((n, n), dtype)
    M = (
        M.at[:d, :d]
        .set(F)
        .at[:d, d : 2 * d]
        .set(LQL)
        .at[d : 2 * d, d : 2 * d]
        .set(-F.T)
        .at[:d, 2 * d]
        .set(b_t)
        .at[:d, 2 * d + 1]
        .set(b)
        .at[2 * d, 2 * d + 1]
        .set(1.0)
    ) * dt
    norm = jnp.max(jnp.sum(jnp.abs(M), axis=0))
    k = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-30) / _THETA)), 0, _MAX_DOUBLE)
    X = M / 2.0**k
    eye = jnp.eye(n, dtype=dtype)
    E = eye
    for j in range(_TAYLOR, 0, -1):  # Horner: I + X (I + X/2 (I + X/3 ...))
        E = eye + (X @ E) / j
    A = E[:d, :d]
    Q = symmetrize(E[:d, d : 2 * d] @ A.T)
    idx = jnp.array(list(range(d)) + [2 * d, 2 * d + 1])
    Aff = E[idx][:, idx]

    def double(i, carry):
        Aff, Q = carry
        Ad = Aff[:d, :d]
        on = i < k
        return jnp.where(on, Aff @ Aff, Aff), jnp.where(on, symmetrize(Q + Ad @ Q @ Ad.T), Q)

    Aff, Q = jax.lax.fori_loop(0, _MAX_DOUBLE, double, (Aff, Q))
    return Aff[:d, :d], Aff[:d, d + 1], Q


class LTISDE(eqx.Module):
    """Linear time-invariant SDE ``dx = F x dt + L dbeta``, output ``f = H x``.

    Attributes:
        F: drift matrix, (d, d).
        L: noise effect matrix, (d, s).
        Qc: spectral density of ``beta``, (s, s).
        H: output matrix, (m, d).
        Pinf: stationary covariance, (d, d), or ``None`` for a non-stationary SDE.
    """

    F: Float[Array, "d d"]
    L: Float[Array, "d s"]
    Qc: Float[Array, "s s"]
    H: Float[Array | np.ndarray, "m d"]  # NumPy when constant (a kernel's H)
    Pinf: Float[Array, "d d"] | None = None

    @property
    def state_dim(self) -> int:
        """The state dimension d."""
        return self.F.shape[-1]

    def transition(self, dt: ScalarLike) -> Float[Array, "d d"]:
        """``A = expm(F dt)``."""
        return jax.scipy.linalg.expm(self.F * dt)

    def process_cov(self, dt: ScalarLike) -> Cov:
        """``Q(dt)``: ``Pinf - A Pinf A^T`` when stationary, else :func:`discretise_affine`."""
        if self.Pinf is not None:
            A = self.transition(dt)
            return symmetrize(self.Pinf - A @ self.Pinf @ A.T)
        return discretise_affine(self.F, None, self.L @ self.Qc @ self.L.T, dt)[2]

    def discretise(self, dts: Float[Array, " n"]) -> tuple[Float[Array, "n d d"], Float[Array, "n d d"]]:
        """Exact ``(A_k, Q_k)`` for a vector of step sizes."""
        return jax.vmap(self.transition)(dts), jax.vmap(self.process_cov)(dts)

    def stationary_cov(self) -> Cov:
        """Solve ``F P + P F^T + L Qc L^T = 0`` (dense Kronecker solve; small d)."""
        if self.Pinf is not None:
            return self.Pinf
        d = self.state_dim
        eye = jnp.eye(d, dtype=self.F.dtype)
        K = jnp.kron(eye, self.F) + jnp.kron(self.F, eye)
        LQL = self.L @ self.Qc @ self.L.T
        P = jnp.linalg.solve(K, -LQL.reshape(-1)).reshape(d, d)
        return symmetrize(P)


class TransitionBasis(eqx.Module):
    r"""Time-varying transitions as constant matrices times scalar coefficients:

    .. math:: A_t = \sum_k a_k[t]\,A^{(k)}, \qquad Q_t = \sum_n q_n[t]\,Q^{(n)}.

    Exact for kernels whose discretisation has this closed form (the Matérn family:
    :meth:`probdyn.kernels.Matern32.transition_basis`). The fused sequential Kalman filter
    reads the (T-1,) coefficient columns and assembles ``A_t``, ``Q_t`` and the
    factorisation of ``Q_t`` inside its step, instead of reading (T-1, d, d) arrays and
    factorising them beforehand (a third of the inputs; much less work in the gradient).

    Attributes:
        a: tuple of (n,) coefficient columns, one per matrix of ``basis_a``.
        q: tuple of (n,) coefficient columns, one per matrix of ``basis_q``.
        basis_a, basis_q: the constant (d, d) matrices, as nested tuples of floats (static;
            each ``basis_q`` matrix symmetric).
    """

    a: tuple
    q: tuple
    basis_a: tuple = eqx.field(static=True)
    basis_q: tuple = eqx.field(static=True)

    def __check_init__(self):
        if len(self.a) != len(self.basis_a) or len(self.q) != len(self.basis_q):
            raise ValueError("TransitionBasis needs one coefficient column per basis matrix")
        n = {jnp.shape(c) for c in self.a + self.q}
        if len(n) != 1 or len(next(iter(n))) != 1:
            raise ValueError(f"TransitionBasis coefficients must be equally long vectors, got shapes {sorted(n)}")

    @property
    def state_dim(self) -> int:
        """The state dimension d."""
        return len(self.basis_a[0])

    @property
    def num_steps(self) -> int:
        """The number of transitions (time steps - 1)."""
        return jnp.shape(self.a[0])[0]

    def dense(self) -> tuple[Float[Array, "n d d"], Float[Array, "n d d"]]:
        """The (n, d, d) arrays ``(A_t, Q_t)``."""
        return _combine(self.a, self.basis_a), _combine(self.q, self.basis_q)


def _combine(cs, basis) -> Array:
    dtype = jnp.result_type(*cs)
    terms = [c[:, None, None] * jnp.asarray(np.asarray(b), dtype) for c, b in zip(cs, basis, strict=True)]
    return functools.reduce(operator.add, terms)


class LinearGaussianSSM(eqx.Module):
    r"""Linear-Gaussian state-space model.

    .. math::
        x_0 \sim N(\mu_0, P_0),\quad x_t = A_t x_{t-1} + q_t,\ q_t\sim N(0, Q_t)\ (t\ge1),
        \quad y_t = H_t x_t + r_t,\ r_t \sim N(0, R_t)\ (t = 0..T-1).

    ``x_0`` is the state at the *first observation*. Transition arrays are either
    time-invariant, ``(d, d)``, or time-varying with a leading axis of length ``T - 1``
    where ``transition_matrix[t - 1]`` maps ``x_{t-1}`` to ``x_t``. Emission arrays are
    ``(m, d)``/``(m, m)`` or time-varying with a leading axis of length ``T``.

    ``transition_basis`` (optional, a :class:`TransitionBasis`) is the same time-varying
    ``(A_t, Q_t)`` in coefficient form, which the sequential fused filter reads instead of
    the dense arrays (faster). It must describe exactly ``transition_matrix`` and
    ``transition_cov``: drop it (``transition_basis=None``) when changing those.

    Construction checks concrete (non-traced) arrays once, with NumPy, and raises a
    ``ValueError`` naming the field: every array (and basis coefficient) finite;
    ``initial_cov``, ``transition_cov`` and ``emission_cov`` (each matrix of a stack)
    symmetric to ``sqrt(eps) max|C|`` and positive semi-definite to a tolerance, smallest
    eigenvalue ``>= -(sqrt(eps) max|eig(C)| + 64 eps s)`` with ``s`` the scale of the
    state covariances (largest entry of ``initial_cov`` and of any ``transition_cov``;
    for ``emission_cov``, of any ``emission_cov`` and ``H initial_cov H^T``), ``eps`` of
    the array's dtype: singular covariances (zero process noise, exact observations) and
    rounding-level indefiniteness (e.g. ``Pinf - A Pinf A^T`` of a short step) pass. Traced
    arrays (inside ``jit``, ``vmap``, ``grad``) are not checked here; see
    :func:`probdyn.inference.kalman.filter` for what the engine returns then. Models changed
    with ``eqx.tree_at`` are not re-checked.
    """

    # NumPy or JAX arrays as given (constants stay NumPy so the engine can read their structure).
    # "_d", "_m": the shapes, whose agreement __check_init__ checks (with a message naming them)
    initial_mean: Float[Array | np.ndarray, " _d"]
    initial_cov: Float[Array | np.ndarray, "_d _d"]
    transition_matrix: Float[Array | np.ndarray, "... _d _d"]
    transition_cov: Float[Array | np.ndarray, "... _d _d"]
    emission_matrix: Float[Array | np.ndarray, "... _m _d"]
    emission_cov: Float[Array | np.ndarray, "... _m _m"]
    transition_basis: TransitionBasis | None = None

    def __check_init__(self):
        d = self.initial_mean.shape[-1]
        b = self.transition_basis
        if b is not None:
            A = jnp.shape(self.transition_matrix)
            if b.state_dim != d or len(A) != 3 or A[0] != b.num_steps:
                raise ValueError(
                    f"transition_basis (state dim {b.state_dim}, {b.num_steps} steps) does not match "
                    f"transition_matrix of shape {A}"
                )
        for name, arr, tail in [
            ("initial_cov", self.initial_cov, (d, d)),
            ("transition_matrix", self.transition_matrix, (d, d)),
            ("transition_cov", self.transition_cov, (d, d)),
        ]:
            if tuple(jnp.shape(arr)[-2:]) != tail:
                raise ValueError(f"{name} must end in shape {tail}, got {jnp.shape(arr)}")
        H = jnp.shape(self.emission_matrix)
        R = jnp.shape(self.emission_cov)
        if len(H) < 2 or H[-1] != d:
            raise ValueError(f"emission_matrix must end in shape (m, {d}), got {H}")
        if R[-2:] != (H[-2], H[-2]):
            raise ValueError(f"emission_cov must end in shape ({H[-2]}, {H[-2]}), got {R}")
        _check_values(self)

    @property
    def state_dim(self) -> int:
        """The state dimension d."""
        return self.initial_mean.shape[-1]

    @property
    def obs_dim(self) -> int:
        """The observation dimension p."""
        return self.emission_matrix.shape[-2]

    def broadcast(self, num_timesteps: int) -> LinearGaussianSSM:
        """Expand time-invariant arrays to their time-varying shapes (checks lengths)."""

        def expand(x, n, name):
            x = jnp.asarray(x)
            if x.ndim == 2:
                return jnp.broadcast_to(x, (n,) + x.shape)
            if x.shape[0] != n:
                raise ValueError(f"{name} has leading axis {x.shape[0]}, expected {n}")
            return x

        T = num_timesteps
        return LinearGaussianSSM(
            self.initial_mean,
            self.initial_cov,
            expand(self.transition_matrix, max(T - 1, 0), "transition_matrix"),
            expand(self.transition_cov, max(T - 1, 0), "transition_cov"),
            expand(self.emission_matrix, T, "emission_matrix"),
            expand(self.emission_cov, T, "emission_cov"),
        )


def _concrete(x) -> np.ndarray | None:
    """``x`` as a NumPy array if it is concrete (not a tracer, fully addressable), else ``None``."""
    if x is None or not is_concrete(x) or not getattr(x, "is_fully_addressable", True):
        return None
    return np.asarray(x)


def _eps(x: np.ndarray) -> float:
    return float(np.finfo(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64).eps)


def _check_finite(name: str, x: np.ndarray):
    bad = ~np.isfinite(x) if np.issubdtype(x.dtype, np.inexact) else None
    if bad is not None and bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} contains NaN or inf ({name}{list(idx)} = {x[idx]})")


def _abs_max(C: np.ndarray | None) -> float:
    return 0.0 if C is None or C.size == 0 else float(np.max(np.abs(C)))


def _check_cov(name: str, C: np.ndarray, scale: float):
    """Symmetry and positive semi-definiteness of each matrix of a (n, k, k) stack (see
    :class:`LinearGaussianSSM` for the tolerances); ``scale`` is the group's scale ``s``."""
    if C.size == 0:
        return
    C = C.astype(np.float64) if not np.issubdtype(C.dtype, np.floating) else C
    eps = _eps(C)
    rtol = math.sqrt(eps)
    at = (lambda t: f"[{t}]") if C.shape[0] > 1 else (lambda t: "")
    absmax = np.max(np.abs(C), axis=(-2, -1))
    asym = np.max(np.abs(C - np.swapaxes(C, -1, -2)), axis=(-2, -1))
    bad = asym > rtol * absmax
    if bad.any():
        t = int(np.argmax(bad))
        raise ValueError(
            f"{name}{at(t)} is not symmetric: max |C - C^T| = {asym[t]:.3g} against max |C| = "
            f"{absmax[t]:.3g} (relative tolerance {rtol:.1g})"
        )
    S = 0.5 * (C + np.swapaxes(C, -1, -2))
    floor = 64 * eps * scale
    # fast path: a Cholesky factorisation of C + tol I (max|C_ij| <= max|eig|: a stricter
    # shift) proves semi-definiteness to the tolerance; the eigenvalues decide otherwise
    shift = (rtol * absmax + floor)[:, None, None] * np.eye(C.shape[-1])
    try:
        np.linalg.cholesky(S + shift)
        return
    except np.linalg.LinAlgError:
        pass
    ev = np.linalg.eigvalsh(S)
    lo, hi = ev[:, 0], np.max(np.abs(ev), axis=-1)
    tol = rtol * hi + floor
    bad = lo < -tol
    if bad.any():
        t = int(np.argmax(bad))
        raise ValueError(
            f"{name}{at(t)} is not positive semi-definite: smallest eigenvalue {lo[t]:.3g}, "
            f"largest |eigenvalue| {hi[t]:.3g} (tolerance {tol[t]:.2g})"
        )


def _check_values(ssm: LinearGaussianSSM):
    """Finiteness, symmetry and semi-definiteness of the concrete arrays of ``ssm`` (once per
    construction; traced arrays are skipped)."""
    names = ["initial_mean", "initial_cov", "transition_matrix", "transition_cov", "emission_matrix", "emission_cov"]
    vals = {n: _concrete(getattr(ssm, n)) for n in names}
    for n, v in vals.items():
        if v is not None:
            _check_finite(n, v)
    b = ssm.transition_basis
    if b is not None:
        for kind, cols in (("a", b.a), ("q", b.q)):
            for k, c in enumerate(cols):
                v = _concrete(c)
                if v is not None:
                    _check_finite(f"transition_basis.{kind}[{k}]", v)
    stack = lambda C: C.reshape((-1,) + C.shape[-2:])  # noqa: E731
    P0, Q, H, R = (
        None if vals[n] is None else stack(vals[n])
        for n in ("initial_cov", "transition_cov", "emission_matrix", "emission_cov")
    )
    scale_x = max(_abs_max(P0), _abs_max(Q))
    if P0 is not None:
        _check_cov("initial_cov", P0, scale_x)
    if Q is not None:
        _check_cov("transition_cov", Q, scale_x)
    if R is not None:
        HPH = None if H is None or P0 is None else np.einsum("tij,jk,tlk->til", H, P0[0], H)
        _check_cov("emission_cov", R, max(_abs_max(R), _abs_max(HPH)))


def check_positive_int(n, name: str = "num_samples") -> int:
    """``n`` as a positive Python int (a concrete integer, not a bool), else ``ValueError``."""
    try:
        k = None if isinstance(n, (bool, np.bool_)) else operator.index(n)
    except TypeError:
        k = None
    if k is None or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return k


def check_noise_variance(noise, name: str = "noise") -> None:
    """Observation-noise variances must be finite and non-negative (checked when concrete)."""
    if not is_concrete(noise):
        return
    nc = np.asarray(noise)
    if np.any(nc < 0) or not np.all(np.isfinite(nc)):
        raise ValueError(f"{name} variances must be finite and non-negative")


def check_times(times, name: str = "times") -> np.ndarray | Array:
    """Validate a 1-D, strictly increasing time grid (concrete values only)."""
    t = times
    if jnp.ndim(t) != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {jnp.shape(t)}")
    if not is_concrete(t):
        return t
    tn = np.asarray(t)
    if not np.all(np.isfinite(tn)):
        raise ValueError(f"{name} must be finite")
    if tn.size > 1 and np.any(np.diff(tn) <= 0):
        bad = int(np.argmax(np.diff(tn) <= 0))
        raise ValueError(
            f"{name} must be strictly increasing (sorted, no duplicates); "
            f"{name}[{bad}]={tn[bad]} >= {name}[{bad + 1}]={tn[bad + 1]}"
        )
    return t


def discretise(sde: LTISDE, times, initial_mean=None, initial_cov=None, emission_cov=None):
    """Exact discretisation of an LTI SDE on a sorted grid -> :class:`LinearGaussianSSM`.

    ``initial_mean``/``initial_cov`` default to 0 and the stationary covariance;
    ``emission_cov`` is (m, m) or (T, m, m), default a zero matrix.
    """
    times = jnp.asarray(check_times(times))
    d, m = sde.state_dim, sde.H.shape[0]
    dtype = jnp.result_type(sde.F, times)
    m0 = jnp.zeros(d, dtype) if initial_mean is None else jnp.asarray(initial_mean, dtype)
    P0 = sde.stationary_cov() if initial_cov is None else jnp.asarray(initial_cov, dtype)
    A, Q = sde.discretise(jnp.diff(times))
    R = jnp.zeros((m, m), dtype) if emission_cov is None else jnp.asarray(emission_cov, dtype)
    return LinearGaussianSSM(m0, P0, A, Q, sde.H, R)
