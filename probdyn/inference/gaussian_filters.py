r"""Continuous–discrete and discrete-time Gaussian filters for nonlinear state-space models.

Model (continuous–discrete): an Itô SDE (:class:`probdyn.sde.SDE`) observed at sorted times,

.. math:: dx = f(x, t)\,dt + L(x, t)\,dW,\quad x(t_0) \sim N(m_0, P_0),\quad
          y_k \sim p(y_k \mid x(t_k))\ (\text{a :mod:`probdyn.observations` model}).

Between observations the Gaussian approximation ``N(m, P)`` is propagated with
``num_substeps`` fixed steps per interval, in one of two ways (``propagation=``):

* ``"moments"`` — the moment ODEs (Särkkä & Solin 2019, ch. 9; Särkkä 2007, IEEE TAC)

  .. math:: \dot m = E[f],\quad \dot P = E[f\,(x-m)^T] + E[(x-m)\,f^T] + E[L L^T],

  integrated with classical RK4. ``method="ekf"`` uses the Taylor form
  ``\dot m = f(m)``, ``\dot P = J P + P J^T + L(m) L(m)^T``; ``"ukf"``, ``"cubature"`` and
  ``"gauss_hermite"`` evaluate the expectations with sigma points ``m + \sqrt{P}\,\xi_i``.
  ``P`` is symmetrised after every step and factorised with a PSD-safe Cholesky.
* ``"linearised"`` — local linearisation (Ozaki 1992; Jimenez et al.): on every substep the
  drift is replaced by ``f(m, t) + \hat J (x - m) + \partial_t f\,(s - t)`` (``\hat J`` the
  Jacobian at ``m`` for the EKF, the sigma-point average of Jacobians otherwise — statistical
  linearisation) and the resulting linear SDE is discretised *exactly*
  (``A = e^{\hat J h}``, the forced mean and Van Loan's process noise from one augmented
  matrix exponential, :func:`_exact_affine_step`). The substeps of an interval compose into
  one affine-Gaussian map applied with the engine's square-root
  :func:`probdyn.inference.kalman.predict`; for a linear SDE (also with forcing affine in
  ``t``) this is the exact discretisation (to rounding).

Measurement updates are the observation model's ``update`` (exact Kalman for linear-Gaussian
and log-normal data, Laplace for Poisson / user log-densities). The log marginal likelihood
is the sum of the (approximate) one-step predictive densities.

The smoother is the Gaussian RTS smoother over the filter output, using the interval's
linearised transition ``x_{k+1} \approx A_k x_k + b_k + q_k`` (for ``"moments"``: ``A_k`` is
the integrated ``\dot \Phi = \hat J \Phi``, ``Q_k = P^-_{k+1} - A_k P_k A_k^T``); it runs the
engine's square-root backward kernels. For linear SDEs it equals
:func:`probdyn.inference.kalman.smoother`.

:func:`discrete_filter` is the discrete-time EKF/UKF/cubature filter for
``x_{k+1} = g(x_k, k) + N(0, Q)``; :func:`particle_filter` a bootstrap particle filter
(Euler–Maruyama substeps) used as a reference.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn.inference import kalman
from probdyn.linalg import psd_cholesky, symmetrize, tria
from probdyn.observations import ObservationModel
from probdyn.sde import SDE
from probdyn.ssm import check_times

__all__ = [
    "FilterResult",
    "SmootherResult",
    "filter",
    "smoother",
    "discrete_filter",
    "particle_filter",
    "particle_smoother_scalar",
    "sigma_points",
    "METHODS",
    "PROPAGATIONS",
]

METHODS = ("ekf", "ukf", "cubature", "gauss_hermite")
PROPAGATIONS = ("moments", "linearised")


class FilterResult(NamedTuple):
    """Filtered ``N(mean[k], cov[k])`` (T, d)/(T, d, d) and predicted (before the update at
    ``times[k]``; index 0 is the prior) marginals, the approximate log marginal likelihood and
    its per-time terms ``log p(y_k | y_{<k})`` (T,); ``chol``/``pred_chol`` are square roots."""

    mean: Float[Array, "T d"]
    cov: Float[Array, "T d d"]
    log_likelihood: Float[Array, ""]
    pred_mean: Float[Array, "T d"]
    pred_cov: Float[Array, "T d d"]
    pointwise_log_likelihood: Float[Array, " T"]
    chol: Float[Array, "T d d"]
    pred_chol: Float[Array, "T d d"]


class SmootherResult(NamedTuple):
    """Smoothed marginals ``p(x(t_k) | y_{0:T-1})``: mean (T, d), cov (T, d, d)."""

    mean: Float[Array, "T d"]
    cov: Float[Array, "T d d"]
    log_likelihood: Float[Array, ""]
    filtered: FilterResult


# ----------------------------------------------------------------------------------
# Quadrature rules
# ----------------------------------------------------------------------------------
def sigma_points(method: str, d: int, ukf_params=(1.0, 0.0, None), gh_order: int = 3):
    """Unit sigma points ``xi`` (n, d) and mean/covariance weights ``wm, wc`` (n,) (numpy).

    ``E[h(x)] ≈ sum_i wm_i h(m + S xi_i)`` for ``x ~ N(m, S S^T)``.

    * ``"ukf"``: ``0, ±sqrt(d + lam) e_i`` with ``lam = alpha^2 (d + kappa) - d``;
      ``ukf_params=(alpha, beta, kappa)``, default ``(1, 0, max(3 - d, 0))`` (keeps the
      weights non-negative, so covariances stay PSD).
    * ``"cubature"``: third-degree spherical-radial rule ``±sqrt(d) e_i``, weights ``1/(2d)``.
    * ``"gauss_hermite"``: tensor product of ``gh_order``-point Gauss–Hermite rules (``order^d``
      points; exact for polynomials of degree ``2 order - 1`` in each coordinate).
    """
    if method == "cubature":
        xi = np.concatenate([np.eye(d), -np.eye(d)]) * np.sqrt(d)
        w = np.full(2 * d, 1.0 / (2 * d))
        return xi, w, w
    if method == "ukf":
        alpha, beta, kappa = ukf_params
        kappa = max(3.0 - d, 0.0) if kappa is None else float(kappa)
        lam = alpha**2 * (d + kappa) - d
        c = d + lam
        if c <= 0:
            raise ValueError(f"UKF parameters give d + lambda = {c} <= 0")
        xi = np.concatenate([np.zeros((1, d)), np.eye(d) * np.sqrt(c), -np.eye(d) * np.sqrt(c)])
        wm = np.concatenate([[lam / c], np.full(2 * d, 0.5 / c)])
        wc = wm.copy()
        wc[0] += 1.0 - alpha**2 + beta
        return xi, wm, wc
    if method == "gauss_hermite":
        order = int(gh_order)
        if order < 1:
            raise ValueError(f"gh_order must be >= 1, got {gh_order}")
        x1, w1 = np.polynomial.hermite_e.hermegauss(order)
        w1 = w1 / w1.sum()
        grids = np.meshgrid(*([x1] * d), indexing="ij")
        xi = np.stack([g.ravel() for g in grids], axis=1)
        wg = np.meshgrid(*([w1] * d), indexing="ij")
        w = np.prod(np.stack([g.ravel() for g in wg], axis=1), axis=1)
        return xi, w, w
    raise ValueError(f"no sigma-point rule for method {method!r}")


class _Rule(NamedTuple):
    xi: Array
    wm: Array
    wc: Array
    sqrt_ok: bool  # all covariance weights >= 0


def _rule(method, d, dtype, ukf_params, gh_order):
    if method == "ekf":
        return None
    xi, wm, wc = sigma_points(method, d, ukf_params, gh_order)
    return _Rule(jnp.asarray(xi, dtype), jnp.asarray(wm, dtype), jnp.asarray(wc, dtype), bool(np.all(wc >= 0)))


# ----------------------------------------------------------------------------------
# Continuous-time propagation
# ----------------------------------------------------------------------------------
def _drift(sde: SDE, x, t):
    return sde.drift_fn(x, t).astype(x.dtype)  # parameters may be float64 with a float32 state


def _diff(sde: SDE, x, t):
    return jnp.asarray(sde.diffusion_fn(x, t)).astype(x.dtype)


def _jac(sde: SDE, x, t):
    return jax.jacfwd(lambda z: _drift(sde, z, t))(x)


def _moment_rhs(sde: SDE, rule, m, P, Phi, t, need_trans):
    """Right-hand side of the moment ODEs (and of ``dPhi/dt = J Phi``)."""
    if rule is None:
        f = _drift(sde, m, t)
        J = _jac(sde, m, t)
        L = _diff(sde, m, t)
        dP = J @ P + P @ J.T + L @ L.T
        dPhi = J @ Phi if need_trans else Phi
        return f, dP, dPhi
    S = psd_cholesky(P)
    X = m + rule.xi @ S.T
    F = jax.vmap(lambda x: _drift(sde, x, t))(X)
    dm = rule.wm @ F
    cross = (X - m).T @ (rule.wc[:, None] * (F - dm))
    if callable(sde.diffusion):
        Ls = jax.vmap(lambda x: _diff(sde, x, t))(X)
        LL = jnp.einsum("n,nij,nkj->ik", rule.wm, Ls, Ls)
    else:
        L = _diff(sde, m, t)
        LL = L @ L.T
    dP = cross + cross.T + LL
    if need_trans:
        Jbar = jnp.einsum("n,nij->ij", rule.wm, jax.vmap(lambda x: _jac(sde, x, t))(X))
        dPhi = Jbar @ Phi
    else:
        dPhi = Phi
    return dm, dP, dPhi


def _propagate_moments(sde, rule, m, S, t0, t1, n, need_trans):
    """RK4 on the moment ODEs over [t0, t1] in n steps -> (m, S, A, SQ)."""
    d = m.shape[0]
    h = (t1 - t0) / n
    P = S @ S.T
    Phi = jnp.eye(d, dtype=m.dtype)

    def rhs(m, P, Phi, t):
        return _moment_rhs(sde, rule, m, symmetrize(P), Phi, t, need_trans)

    def step(carry, j):
        m, P, Phi = carry
        t = t0 + j * h
        k1 = rhs(m, P, Phi, t)
        k2 = rhs(*(a + 0.5 * h * b for a, b in zip((m, P, Phi), k1)), t + 0.5 * h)
        k3 = rhs(*(a + 0.5 * h * b for a, b in zip((m, P, Phi), k2)), t + 0.5 * h)
        k4 = rhs(*(a + h * b for a, b in zip((m, P, Phi), k3)), t + h)
        new = tuple(a + h / 6.0 * (b1 + 2 * b2 + 2 * b3 + b4) for a, b1, b2, b3, b4 in zip((m, P, Phi), k1, k2, k3, k4))
        mn, Pn, Phin = new
        return (mn, symmetrize(Pn), Phin if need_trans else Phi), None

    (m1, P1, Phi1), _ = jax.lax.scan(step, (m, P, Phi), jnp.arange(n, dtype=m.dtype))
    S1 = psd_cholesky(P1)
    if not need_trans:
        return m1, S1, None, None
    Q = symmetrize(P1 - Phi1 @ P @ Phi1.T)
    return m1, S1, Phi1, psd_cholesky(Q)


def _local_linear(sde, rule, m, S, t):
    """(J, E f, d_t E f, E[L L^T]) for the local linearisation at (m, S S^T, t)."""
    def f_and_ft(x):
        return jax.jvp(lambda tt: _drift(sde, x, tt), (t,), (jnp.ones_like(t),))

    if rule is None:
        f0, ft = f_and_ft(m)
        J = _jac(sde, m, t)
        L = _diff(sde, m, t)
        return J, f0, ft, L @ L.T
    X = m + rule.xi @ S.T
    F, Ft = jax.vmap(f_and_ft)(X)
    J = jnp.einsum("n,nij->ij", rule.wm, jax.vmap(lambda x: _jac(sde, x, t))(X))
    if callable(sde.diffusion):
        Ls = jax.vmap(lambda x: _diff(sde, x, t))(X)
        LL = jnp.einsum("n,nij,nkj->ik", rule.wm, Ls, Ls)
    else:
        L = _diff(sde, m, t)
        LL = L @ L.T
    return J, rule.wm @ F, rule.wm @ Ft, LL


_THETA, _TAYLOR, _MAX_DOUBLE = 0.25, 10, 16


def _exact_affine_step(J, f0, ft, LL, h):
    """Exact discretisation over ``[0, h]`` of ``de = (f0 + J e + ft s) ds + dbeta``,
    ``E[dbeta dbeta^T] = LL ds``: returns ``(A = e^{J h}, e(h) from e(0) = 0, sqrt(Q))``.

    Van Loan's block matrix augmented with ``[s, 1]``,
    ``M = [[J, LL, ft, f0], [0, -J^T, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]``, is exponentiated by
    scaling and squaring: a degree-10 Taylor polynomial of ``M h / 2^k`` (``|M h / 2^k|_1 <= 1/4``,
    truncation error < 1e-14) followed by ``k`` doublings that square the affine part
    ``[[A, g, e], [0, 1, s], [0, 0, 1]]`` and update ``Q <- Q + A Q A^T`` (PSD terms only, as in
    :meth:`probdyn.LTISDE.process_cov`, so long steps keep their precision). ``k`` is chosen
    at run time, at most 16 (so ``|M h|_1`` should stay below ~1.6e4: use more substeps for
    stiffer drifts).
    """
    d = J.shape[0]
    dtype = J.dtype
    n = 2 * d + 2
    M = jnp.zeros((n, n), dtype)
    M = (M.at[:d, :d].set(J).at[:d, d:2 * d].set(LL).at[d:2 * d, d:2 * d].set(-J.T)
         .at[:d, 2 * d].set(ft).at[:d, 2 * d + 1].set(f0).at[2 * d, 2 * d + 1].set(1.0)) * h
    norm = jnp.max(jnp.sum(jnp.abs(M), axis=0))
    k = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-30) / _THETA)), 0, _MAX_DOUBLE)
    X = M / 2.0**k
    eye = jnp.eye(n, dtype=dtype)
    E = eye
    for j in range(_TAYLOR, 0, -1):  # Horner: I + X (I + X/2 (I + X/3 ...))
        E = eye + (X @ E) / j
    A = E[:d, :d]
    Q = symmetrize(E[:d, d:2 * d] @ A.T)
    idx = jnp.array(list(range(d)) + [2 * d, 2 * d + 1])
    Aff = E[idx][:, idx]

    def double(i, carry):
        Aff, Q = carry
        Ad = Aff[:d, :d]
        on = i < k
        return jnp.where(on, Aff @ Aff, Aff), jnp.where(on, symmetrize(Q + Ad @ Q @ Ad.T), Q)

    Aff, Q = jax.lax.fori_loop(0, _MAX_DOUBLE, double, (Aff, Q))
    return Aff[:d, :d], Aff[:d, d + 1], Q


def _propagate_linearised(sde, rule, m, S, t0, t1, n, need_trans):
    """Local-linearisation substeps composed into one affine-Gaussian map over [t0, t1]
    (``x(t1) = A x(t0) + b + q``, ``q ~ N(0, Q)``), applied with ``kalman.predict``."""
    d = m.shape[0]
    dtype = m.dtype
    h = (t1 - t0) / n
    eye = jnp.eye(d, dtype=dtype)
    P0 = S @ S.T

    def step(carry, j):
        mj, A_acc, Q_acc = carry
        t = t0 + j * h
        Sj = None if rule is None else psd_cholesky(symmetrize(A_acc @ P0 @ A_acc.T + Q_acc))
        J, f0, ft, LL = _local_linear(sde, rule, mj, Sj, t)
        A, e, Q = _exact_affine_step(J, f0, ft, LL, h)
        return (mj + e, A @ A_acc, symmetrize(A @ Q_acc @ A.T + Q)), None

    (m1, A, Q), _ = jax.lax.scan(step, (m, eye, jnp.zeros((d, d), dtype)), jnp.arange(n, dtype=dtype))
    SQ = psd_cholesky(Q)
    mp, Sp = kalman.predict(m, S, A, SQ, m1 - A @ m)
    return mp, Sp, (A if need_trans else None), (SQ if need_trans else None)


# ----------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------
def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_options(method, propagation, num_substeps, allowed=METHODS):
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")
    if propagation is not None and propagation not in PROPAGATIONS:
        raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {propagation!r}")
    if num_substeps is not None and (int(num_substeps) != num_substeps or int(num_substeps) < 1):
        raise ValueError(f"num_substeps must be an integer >= 1, got {num_substeps}")


def _check_common(observation, y, m0, P0, d):
    if not isinstance(observation, ObservationModel):
        raise TypeError(f"observation must be a probdyn.observations model, got {type(observation).__name__}")
    p = observation.obs_dim_for(d)
    m0, P0, y = jnp.asarray(m0), jnp.asarray(P0), jnp.asarray(y)
    if m0.shape != (d,):
        raise ValueError(f"m0 must have shape ({d},) (the state dimension), got {m0.shape}")
    if P0.shape != (d, d):
        raise ValueError(f"P0 must have shape ({d}, {d}), got {P0.shape}")
    if y.ndim == 1 and p == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != p:
        raise ValueError(f"y must have shape (T, {p}) (time leading, {p} observed columns), got {y.shape}")
    if y.shape[0] < 1:
        raise ValueError("y must contain at least one time step")
    for name, a in (("m0", m0), ("P0", P0)):
        if _is_concrete(a) and not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"{name} must be finite")
    if _is_concrete(P0):
        Pn = np.asarray(P0, dtype=float)
        if not np.allclose(Pn, Pn.T, rtol=1e-6, atol=1e-12 * max(1.0, np.abs(Pn).max())):
            raise ValueError("P0 must be symmetric")
        if np.linalg.eigvalsh(0.5 * (Pn + Pn.T)).min() < -1e-8 * max(1.0, np.abs(Pn).max()):
            raise ValueError("P0 must be positive semi-definite")
    if _is_concrete(y) and np.any(np.isinf(np.asarray(y))):
        raise ValueError("y contains infinite values (use NaN for missing observations)")
    observation.check_data(y)
    dtype = jnp.result_type(m0, P0, y if jnp.issubdtype(y.dtype, jnp.floating) else m0)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return m0.astype(dtype), P0.astype(dtype), y.astype(dtype), dtype


def _prepare(sde, observation, times, y, m0, P0):
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a probdyn.sde.SDE, got {type(sde).__name__}")
    d = sde.state_dim
    m0, P0, y, dtype = _check_common(observation, y, m0, P0, d)
    sde.check(dtype)
    times = jnp.asarray(check_times(times))
    if times.shape[0] != y.shape[0]:
        raise ValueError(f"times has {times.shape[0]} entries but y has {y.shape[0]} rows")
    return times.astype(dtype), y, m0, P0, dtype


# ----------------------------------------------------------------------------------
# Continuous-discrete filter and smoother
# ----------------------------------------------------------------------------------
def _run_filter(sde, observation, times, y, m0, P0, method, propagation, num_substeps, need_trans,
                ukf_params, gh_order):
    _check_options(method, propagation, num_substeps)
    times, y, m0, P0, dtype = _prepare(sde, observation, times, y, m0, P0)
    return _filter_core(sde, observation, times, y, m0, P0, method, propagation, int(num_substeps), need_trans,
                        tuple(ukf_params), int(gh_order)) + (dtype,)


@eqx.filter_jit
def _filter_core(sde, observation, times, y, m0, P0, method, propagation, num_substeps, need_trans,
                 ukf_params, gh_order):
    dtype = m0.dtype
    d = m0.shape[0]
    rule = _rule(method, d, dtype, ukf_params, gh_order)
    prop = _propagate_moments if propagation == "moments" else _propagate_linearised
    n = int(num_substeps)
    S0 = psd_cholesky(P0)
    t_prev = jnp.concatenate([times[:1], times[:-1]])  # a zero-length first interval: identity

    def step(carry, k):
        m, S = carry
        mp, Sp, A, SQ = prop(sde, rule, m, S, t_prev[k], times[k], n, need_trans)
        mf, Sf, l = observation.update(mp, Sp, y[k], method)
        out = (mf, Sf, mp, Sp, l) + ((A, SQ) if need_trans else ())
        return (mf, Sf), out

    _, outs = jax.lax.scan(step, (m0, S0), jnp.arange(y.shape[0]))
    ms, Ss, mps, Sps, ls = outs[:5]
    mps, Sps = mps.at[0].set(m0), Sps.at[0].set(S0)  # the prior itself (not a re-factorisation)
    cov = lambda R: R @ jnp.swapaxes(R, -1, -2)  # noqa: E731
    res = FilterResult(ms, cov(Ss), jnp.sum(ls), mps, cov(Sps), ls, Ss, Sps)
    if need_trans:
        return res, tuple(a[1:] for a in outs[5:])
    return res, None


def filter(
    sde: SDE,
    observation: ObservationModel,
    times: Float[Array, " T"],
    y: Float[Array, "T p"],
    m0: Float[Array, " d"],
    P0: Float[Array, "d d"],
    method: str = "ekf",
    num_substeps: int = 10,
    propagation: str = "moments",
    *,
    ukf_params: tuple = (1.0, 0.0, None),
    gh_order: int = 3,
) -> FilterResult:
    """Continuous–discrete Gaussian filter (module docstring); ``x(times[0]) ~ N(m0, P0)``.

    Args:
        sde: the state SDE. observation: a :mod:`probdyn.observations` model.
        times: (T,) strictly increasing observation times (irregular grids are fine).
        y: (T, p) observations (or (T,) when p = 1); NaN entries/rows are missing.
        method: ``"ekf" | "ukf" | "cubature" | "gauss_hermite"``.
        num_substeps: fixed propagation steps per interval.
        propagation: ``"moments"`` (RK4 moment ODEs) or ``"linearised"`` (exact
            discretisation of the local linearisation).
        ukf_params: ``(alpha, beta, kappa)`` for ``"ukf"``; gh_order: points per dimension.

    Jit-, grad- and vmap-compatible (options are static Python values).
    """
    return _run_filter(sde, observation, times, y, m0, P0, method, propagation, num_substeps, False,
                       ukf_params, gh_order)[0]


@jax.jit
def _rts(f: FilterResult, A, SQ):
    """Gaussian RTS smoother over filter output with transitions ``x_{k+1} ≈ A x_k + b + q``."""
    b = f.pred_mean[1:] - jnp.einsum("kij,kj->ki", A, f.mean[:-1])
    ms, Ss = kalman.rts_smooth(f.mean, f.chol, A, SQ, b, parallel=False)
    return ms, Ss @ jnp.swapaxes(Ss, -1, -2)


def smoother(
    sde: SDE,
    observation: ObservationModel,
    times: Float[Array, " T"],
    y: Float[Array, "T p"],
    m0: Float[Array, " d"],
    P0: Float[Array, "d d"],
    method: str = "ekf",
    num_substeps: int = 10,
    propagation: str = "moments",
    *,
    ukf_params: tuple = (1.0, 0.0, None),
    gh_order: int = 3,
) -> SmootherResult:
    """Gaussian RTS smoother over :func:`filter` (same arguments); see module docstring."""
    f, trans, _ = _run_filter(sde, observation, times, y, m0, P0, method, propagation, num_substeps, True,
                              ukf_params, gh_order)
    if f.mean.shape[0] == 1:
        return SmootherResult(f.mean, f.cov, f.log_likelihood, f)
    ms, Ps = _rts(f, *trans)
    return SmootherResult(ms, Ps, f.log_likelihood, f)


# ----------------------------------------------------------------------------------
# Discrete-time filter
# ----------------------------------------------------------------------------------
def _check_transition(transition, d, dtype):
    if not callable(transition):
        raise TypeError("transition must be callable as g(x (d,), k) -> (d,)")
    try:
        out = jax.eval_shape(transition, jax.ShapeDtypeStruct((d,), dtype), jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as e:  # noqa: BLE001 - re-raise with context
        raise ValueError(f"transition(x, k) failed for x of shape ({d},): {e}") from e
    if tuple(out.shape) != (d,):
        raise ValueError(f"transition(x, k) must return shape ({d},), got {tuple(out.shape)}")


def _discrete_predict(transition, rule, m, S, SQ, k):
    if rule is None:
        g = lambda x: transition(x, k).astype(m.dtype)  # noqa: E731
        J = jax.jacfwd(g)(m)
        return kalman.predict(m, S, J, SQ, g(m) - J @ m)
    X = m + rule.xi @ S.T
    Y = jax.vmap(lambda x: transition(x, k).astype(m.dtype))(X)
    mp = rule.wm @ Y
    dev = Y - mp
    if rule.sqrt_ok:
        return mp, tria(jnp.concatenate([(jnp.sqrt(rule.wc)[:, None] * dev).T, SQ], axis=1))
    P = dev.T @ (rule.wc[:, None] * dev) + SQ @ SQ.T
    return mp, psd_cholesky(P)


def discrete_filter(
    transition: Callable,
    Q: Float[Array, "d d"],
    observation: ObservationModel,
    y: Float[Array, "T p"],
    m0: Float[Array, " d"],
    P0: Float[Array, "d d"],
    method: str = "ekf",
    *,
    num_substeps: int = 1,
    ukf_params: tuple = (1.0, 0.0, None),
    gh_order: int = 3,
) -> FilterResult:
    """Discrete-time Gaussian filter for ``x_{k+1} = g(x_k, k) + N(0, Q_k)``, ``x_0 ~ N(m0, P0)``
    observed by ``y[0]`` (``k`` = 0..T-2 is the step index).

    ``Q`` is ``(d, d)`` (or ``(d,)`` variances), or ``(T-1, d, d)`` for one covariance per
    step. With ``num_substeps = n > 1`` every observation interval is ``n`` applications of
    ``x -> g(x, k) + N(0, Q_k)`` (noise enters on each sub-step), e.g. the Euler sub-steps of
    a time-aware discretisation.

    ``"ekf"``: first-order Taylor prediction (``kalman.predict`` with the Jacobian);
    ``"ukf" | "cubature" | "gauss_hermite"``: sigma-point prediction in square-root form.
    Updates as in :func:`filter`.
    """
    _check_options(method, None, None)
    m0 = jnp.asarray(m0)
    if m0.ndim != 1:
        raise ValueError(f"m0 must be a vector (d,), got shape {m0.shape}")
    d = m0.shape[0]
    m0, P0, y, dtype = _check_common(observation, y, m0, P0, d)
    Q = jnp.asarray(Q)
    if Q.ndim == 1 and Q.shape[0] == d:
        Q = jnp.diag(Q)
    T = y.shape[0]
    if Q.shape[-2:] != (d, d) or Q.ndim not in (2, 3) or (Q.ndim == 3 and Q.shape[0] != T - 1):
        raise ValueError(f"Q must have shape ({d}, {d}), ({d},) or ({T - 1}, {d}, {d}) (one per step), got {Q.shape}")
    if int(num_substeps) < 1:
        raise ValueError(f"num_substeps must be >= 1, got {num_substeps}")
    _check_transition(transition, d, dtype)
    return _discrete_core(transition, Q.astype(dtype), observation, y, m0, P0, method, int(num_substeps),
                          tuple(ukf_params), int(gh_order))


@eqx.filter_jit
def _discrete_core(transition, Q, observation, y, m0, P0, method, num_substeps, ukf_params, gh_order):
    SQ = jax.vmap(psd_cholesky)(Q) if Q.ndim == 3 else psd_cholesky(Q)
    rule = _rule(method, m0.shape[0], m0.dtype, ukf_params, gh_order)
    S0 = psd_cholesky(P0)

    def predict(m, S, k):
        SQk = SQ[k] if SQ.ndim == 3 else SQ
        if num_substeps == 1:
            return _discrete_predict(transition, rule, m, S, SQk, k)
        sub = lambda c, _: (_discrete_predict(transition, rule, *c, SQk, k), None)  # noqa: E731
        return jax.lax.scan(sub, (m, S), None, length=num_substeps)[0]

    def step(carry, k):
        m, S = carry
        mp, Sp = predict(m, S, jnp.maximum(k - 1, 0))
        first = k == 0  # x_0 ~ N(m0, P0) is observed by y[0] without a prediction
        mp, Sp = jnp.where(first, m, mp), jnp.where(first, S, Sp)
        mf, Sf, l = observation.update(mp, Sp, y[k], method)
        return (mf, Sf), (mf, Sf, mp, Sp, l)

    _, (ms, Ss, mps, Sps, ls) = jax.lax.scan(step, (m0, S0), jnp.arange(y.shape[0]))
    cov = lambda R: R @ jnp.swapaxes(R, -1, -2)  # noqa: E731
    return FilterResult(ms, cov(Ss), jnp.sum(ls), mps, cov(Sps), ls, Ss, Sps)


# ----------------------------------------------------------------------------------
# Bootstrap particle filter (reference)
# ----------------------------------------------------------------------------------
def _systematic(key, logw, n):
    w = jax.nn.softmax(logw)
    u = (jax.random.uniform(key, (), logw.dtype) + jnp.arange(n, dtype=logw.dtype)) / n
    idx = jnp.searchsorted(jnp.cumsum(w), u)
    return jnp.clip(idx, 0, n - 1)


def particle_filter(
    model,
    observation: ObservationModel,
    times,
    y: Float[Array, "T p"],
    m0: Float[Array, " d"],
    P0: Float[Array, "d d"],
    key: PRNGKeyArray,
    num_particles: int = 1000,
    num_substeps: int = 10,
) -> Float[Array, ""]:
    """Bootstrap particle filter estimate of ``log p(y_{0:T-1})`` (unbiased in ``p``).

    ``model`` is an :class:`~probdyn.sde.SDE` (propagated by ``num_substeps`` Itô
    Euler–Maruyama steps per interval; ``times`` required) or a discrete model given as a
    tuple ``(transition g(x, k), Q)`` (``times`` ignored). Systematic resampling every step.
    """
    n = int(num_particles)
    if n < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    discrete = isinstance(model, tuple)
    if discrete:
        transition, Q = model
        d = jnp.asarray(m0).shape[0]
        m0, P0, y, dtype = _check_common(observation, y, m0, P0, d)
        Q = jnp.asarray(Q, dtype)
        Q = jnp.diag(Q) if Q.ndim == 1 else Q
        _check_transition(transition, d, dtype)
        SQ = psd_cholesky(Q)
        model = (transition, None)
        times = jnp.arange(y.shape[0], dtype=dtype)
        nsub = 1
    else:
        _check_options("ekf", None, num_substeps)
        times, y, m0, P0, dtype = _prepare(model, observation, times, y, m0, P0)
        nsub = int(num_substeps)
    return _pf_core(model, observation, times, y, m0, P0, key, n, nsub, SQ if discrete else None)


@eqx.filter_jit
def _pf_core(model, observation, times, y, m0, P0, key, n, nsub, SQ):
    discrete = SQ is not None
    transition = model[0] if discrete else None
    dtype, d = m0.dtype, m0.shape[0]
    k0, key = jax.random.split(key)
    x = m0 + jax.random.normal(k0, (n, d), dtype) @ psd_cholesky(P0).T
    logn = math.log(n)

    def weigh(x, yk):
        logw = jax.vmap(lambda xi: observation.log_prob(yk, xi))(x)
        return logw, jax.nn.logsumexp(logw) - logn

    def move(x, k, t0, t1, key):
        if discrete:
            eps = jax.random.normal(key, x.shape, dtype)
            return jax.vmap(lambda xi: transition(xi, k).astype(dtype))(x) + eps @ SQ.T
        h = (t1 - t0) / nsub
        m = model.noise_dim

        def em(x, inp):
            j, kk = inp
            t = t0 + j * h
            dW = jax.random.normal(kk, (n, m), dtype) * jnp.sqrt(h)
            f = jax.vmap(lambda xi: _drift(model, xi, t))(x)
            if callable(model.diffusion):
                Ls = jax.vmap(lambda xi: _diff(model, xi, t))(x)
                return x + f * h + jnp.einsum("nij,nj->ni", Ls, dW), None
            return x + f * h + dW @ _diff(model, x[0], t).T, None

        x, _ = jax.lax.scan(em, x, (jnp.arange(nsub, dtype=dtype), jax.random.split(key, nsub)))
        return x

    logw, ll0 = weigh(x, y[0])

    def step(carry, inp):
        x, logw, ll = carry
        k, key = inp
        kr, km = jax.random.split(key)
        x = x[_systematic(kr, logw, n)]
        x = move(x, k - 1, times[k - 1], times[k], km)
        logw, l = weigh(x, y[k])
        return (x, logw, ll + l), None

    T = y.shape[0]
    (_, _, ll), _ = jax.lax.scan(step, (x, logw, ll0), (jnp.arange(1, T), jax.random.split(key, T - 1)))
    return ll


def particle_smoother_scalar(key: PRNGKeyArray, drift, q: float, obs_sd: float, grid, obs_idx, y, m0: float,
                             v0: float, num_particles: int):
    """Reference smoother for a scalar SDE ``dx = drift(x) dt + sqrt(q) dW`` on an Euler grid.

    Bootstrap particle filter (adaptive multinomial resampling at ESS < P/2) on ``grid`` (N,)
    with Gaussian observations ``y`` (M,) of ``x(grid[obs_idx])`` (sd ``obs_sd``), followed by
    forward-filtering backward-smoothing (FFBSm) of the marginals. ``drift`` acts elementwise
    on particle arrays. Returns particles ``X`` (N, P) and smoothing weights ``W`` (N, P).
    Cost O(N P^2); used as the independent reference for variational SDE posteriors.
    """
    P = int(num_particles)
    grid = jnp.asarray(grid)
    N = grid.shape[0]
    dts = jnp.diff(grid)
    mask = jnp.zeros(N, bool).at[obs_idx].set(True)
    yf = jnp.zeros(N, grid.dtype).at[obs_idx].set(jnp.asarray(y, grid.dtype))
    k0, key = jax.random.split(key)
    xi = m0 + jnp.sqrt(v0) * jax.random.normal(k0, (P,), grid.dtype)

    def logw(x, k):
        return jnp.where(mask[k], -0.5 * (yf[k] - x) ** 2 / obs_sd**2, 0.0)

    def step(carry, inp):
        x, lw, key = carry
        k, dt = inp
        key, ka, kn = jax.random.split(key, 3)
        w = jax.nn.softmax(lw)
        res = 1.0 / jnp.sum(w**2) < P / 2
        idx = jax.random.choice(ka, P, (P,), p=w)
        x = jnp.where(res, x[idx], x)
        lw = jnp.where(res, jnp.zeros(P, x.dtype), lw - jax.scipy.special.logsumexp(lw))
        xn = x + drift(x) * dt + jnp.sqrt(q * dt) * jax.random.normal(kn, (P,), x.dtype)
        return (xn, lw + logw(xn, k + 1), key), (xn, lw + logw(xn, k + 1))

    _, (xs, lws) = jax.lax.scan(step, (xi, logw(xi, 0), key), (jnp.arange(N - 1), dts))
    X = jnp.concatenate([xi[None], xs])
    Wf = jax.nn.softmax(jnp.concatenate([logw(xi, 0)[None], lws]), axis=1)

    def back(wn, k):
        lt = -0.5 * (X[k + 1][None] - X[k][:, None] - drift(X[k])[:, None] * dts[k]) ** 2 / (q * dts[k])
        lden = jax.scipy.special.logsumexp(jnp.log(Wf[k] + 1e-300)[:, None] + lt, axis=0)
        ws = Wf[k] * jnp.sum(wn[None] * jnp.exp(lt - lden[None]), axis=1)
        return ws / ws.sum(), ws / ws.sum()

    _, Ws = jax.lax.scan(back, Wf[-1], jnp.arange(N - 1), reverse=True)
    return X, jnp.concatenate([Ws, Wf[-1][None]])
