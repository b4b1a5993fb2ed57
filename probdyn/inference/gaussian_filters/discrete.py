"""Discrete-time Gaussian filter (EKF / UKF / cubature / Gauss–Hermite) for
``x_{k+1} = g(x_k, k) + N(0, Q_k)`` observed through a :mod:`~probdyn.inference.gaussian_filters.observations`
model, in square-root form."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from probdyn._typing import ArrayInput
from probdyn.inference import kalman
from probdyn.inference.gaussian_filters.common import (
    GaussianFilterResult,
    check_inputs,
    check_options,
    check_transition,
    filter_scan,
    sigma_point_rule,
)
from probdyn.inference.gaussian_filters.observations import ObservationModel
from probdyn.linalg import psd_cholesky, tria

__all__ = ["discrete_filter"]


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
    Q: ArrayInput,
    observation: ObservationModel,
    y: ArrayInput,
    m0: ArrayInput,
    P0: ArrayInput,
    method: str = "ekf",
    *,
    num_substeps: int = 1,
    ukf_params: tuple = (1.0, 0.0, None),
    gh_order: int = 3,
) -> GaussianFilterResult:
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
    check_options(method, None, None)
    m0 = jnp.asarray(m0)
    if m0.ndim != 1:
        raise ValueError(f"m0 must be a vector (d,), got shape {m0.shape}")
    d = m0.shape[0]
    m0, P0, y, dtype = check_inputs(observation, y, m0, P0, d)
    Q = jnp.asarray(Q)
    if Q.ndim == 1 and Q.shape[0] == d:
        Q = jnp.diag(Q)
    T = y.shape[0]
    if Q.shape[-2:] != (d, d) or Q.ndim not in (2, 3) or (Q.ndim == 3 and Q.shape[0] != T - 1):
        raise ValueError(f"Q must have shape ({d}, {d}), ({d},) or ({T - 1}, {d}, {d}) (one per step), got {Q.shape}")
    if int(num_substeps) < 1:
        raise ValueError(f"num_substeps must be >= 1, got {num_substeps}")
    check_transition(transition, d, dtype)
    return _discrete_core(
        transition, Q.astype(dtype), observation, y, m0, P0, method, int(num_substeps), tuple(ukf_params), int(gh_order)
    )


@eqx.filter_jit
def _discrete_core(transition, Q, observation, y, m0, P0, method, num_substeps, ukf_params, gh_order):
    SQ = jax.vmap(psd_cholesky)(Q) if Q.ndim == 3 else psd_cholesky(Q)
    rule = sigma_point_rule(method, m0.shape[0], m0.dtype, ukf_params, gh_order)
    S0 = psd_cholesky(P0)

    def predict(m, S, k):
        SQk = SQ[k] if SQ.ndim == 3 else SQ
        if num_substeps == 1:
            return _discrete_predict(transition, rule, m, S, SQk, k)
        sub = lambda c, _: (_discrete_predict(transition, rule, c[0], c[1], SQk, k), None)  # noqa: E731
        return jax.lax.scan(sub, (m, S), None, length=num_substeps)[0]

    def predict_k(m, S, k):  # the transition from step k - 1 to step k
        mp, Sp = predict(m, S, jnp.maximum(k - 1, 0))
        return mp, Sp, None

    return filter_scan(predict_k, observation, y, m0, S0, method)[0]
