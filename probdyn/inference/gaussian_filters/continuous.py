r"""Continuous–discrete Gaussian filter and smoother for nonlinear SDEs.

Model (continuous–discrete): an Itô SDE (:class:`probdyn.sde.SDE`) observed at sorted times,

.. math:: dx = f(x, t)\,dt + L(x, t)\,dW,\quad x(t_0) \sim N(m_0, P_0),\quad
          y_k \sim p(y_k \mid x(t_k))\ (\text{a :mod:`~probdyn.inference.gaussian_filters.observations` model}).

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
  matrix exponential, :func:`probdyn.ssm.discretise_affine`). The substeps of an interval compose into
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
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from probdyn.inference import kalman
from probdyn.inference.gaussian_filters.common import (
    GaussianFilterResult,
    GaussianSmootherResult,
    check_options,
    check_sde_inputs,
    filter_scan,
    diffusion_at,
    drift_at,
    sigma_point_rule,
)
from probdyn.inference.gaussian_filters.observations import ObservationModel
from probdyn.linalg import psd_cholesky, symmetrize
from probdyn.sde import SDE
from probdyn.ssm import discretise_affine

__all__ = ["filter", "smoother"]


def _jac(sde: SDE, x, t):
    return jax.jacfwd(lambda z: drift_at(sde, z, t))(x)


def _moment_rhs(sde: SDE, rule, m, P, Phi, t, need_trans):
    """Right-hand side of the moment ODEs (and of ``dPhi/dt = J Phi``)."""
    if rule is None:
        f = drift_at(sde, m, t)
        J = _jac(sde, m, t)
        L = diffusion_at(sde, m, t)
        dP = J @ P + P @ J.T + L @ L.T
        dPhi = J @ Phi if need_trans else Phi
        return f, dP, dPhi
    S = psd_cholesky(P)
    X = m + rule.xi @ S.T
    F = jax.vmap(lambda x: drift_at(sde, x, t))(X)
    dm = rule.wm @ F
    cross = (X - m).T @ (rule.wc[:, None] * (F - dm))
    if callable(sde.diffusion):
        Ls = jax.vmap(lambda x: diffusion_at(sde, x, t))(X)
        LL = jnp.einsum("n,nij,nkj->ik", rule.wm, Ls, Ls)
    else:
        L = diffusion_at(sde, m, t)
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
        return jax.jvp(lambda tt: drift_at(sde, x, tt), (t,), (jnp.ones_like(t),))

    if rule is None:
        f0, ft = f_and_ft(m)
        J = _jac(sde, m, t)
        L = diffusion_at(sde, m, t)
        return J, f0, ft, L @ L.T
    X = m + rule.xi @ S.T
    F, Ft = jax.vmap(f_and_ft)(X)
    J = jnp.einsum("n,nij->ij", rule.wm, jax.vmap(lambda x: _jac(sde, x, t))(X))
    if callable(sde.diffusion):
        Ls = jax.vmap(lambda x: diffusion_at(sde, x, t))(X)
        LL = jnp.einsum("n,nij,nkj->ik", rule.wm, Ls, Ls)
    else:
        L = diffusion_at(sde, m, t)
        LL = L @ L.T
    return J, rule.wm @ F, rule.wm @ Ft, LL


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
        A, e, Q = discretise_affine(J, f0, LL, h, b_t=ft)
        return (mj + e, A @ A_acc, symmetrize(A @ Q_acc @ A.T + Q)), None

    (m1, A, Q), _ = jax.lax.scan(step, (m, eye, jnp.zeros((d, d), dtype)), jnp.arange(n, dtype=dtype))
    SQ = psd_cholesky(Q)
    mp, Sp = kalman.predict(m, S, A, SQ, m1 - A @ m)
    return mp, Sp, (A if need_trans else None), (SQ if need_trans else None)


def _run_filter(sde, observation, times, y, m0, P0, method, propagation, num_substeps, need_trans,
                ukf_params, gh_order):
    check_options(method, propagation, num_substeps)
    times, y, m0, P0, dtype = check_sde_inputs(sde, observation, times, y, m0, P0)
    return _filter_core(sde, observation, times, y, m0, P0, method, propagation, int(num_substeps), need_trans,
                        tuple(ukf_params), int(gh_order)) + (dtype,)


@eqx.filter_jit
def _filter_core(sde, observation, times, y, m0, P0, method, propagation, num_substeps, need_trans,
                 ukf_params, gh_order):
    dtype = m0.dtype
    d = m0.shape[0]
    rule = sigma_point_rule(method, d, dtype, ukf_params, gh_order)
    prop = _propagate_moments if propagation == "moments" else _propagate_linearised
    n = int(num_substeps)
    S0 = psd_cholesky(P0)
    t_prev = jnp.concatenate([times[:1], times[:-1]])

    def predict(m, S, k):
        mp, Sp, A, SQ = prop(sde, rule, m, S, t_prev[k], times[k], n, need_trans)
        return mp, Sp, ((A, SQ) if need_trans else None)

    return filter_scan(predict, observation, y, m0, S0, method)


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
) -> GaussianFilterResult:
    """Continuous–discrete Gaussian filter (module docstring); ``x(times[0]) ~ N(m0, P0)``.

    Args:
        sde: the state SDE. observation: a :mod:`~probdyn.inference.gaussian_filters.observations` model.
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
def _rts(f: GaussianFilterResult, A, SQ):
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
) -> GaussianSmootherResult:
    """Gaussian RTS smoother over :func:`filter` (same arguments); see module docstring."""
    f, trans, _ = _run_filter(sde, observation, times, y, m0, P0, method, propagation, num_substeps, True,
                              ukf_params, gh_order)
    if f.mean.shape[0] == 1:
        return GaussianSmootherResult(f.mean, f.cov, f.log_likelihood, f)
    ms, Ps = _rts(f, *trans)
    return GaussianSmootherResult(ms, Ps, f.log_likelihood, f)
