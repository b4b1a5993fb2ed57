"""Fitting and forecasting for every system-identification model: :func:`fit_map` (maximum
likelihood of the filter log-likelihood with :func:`probdyn.inference.optimize.fit`),
:func:`forecast` (multi-step predictive moments from several origins), :func:`initial_prior`
and :func:`fitted_params`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from probdyn.inference.gaussian_filters import observations as obs_lib
from probdyn.models.sysid.drifts import AR1Map, MechanisticDrift
from probdyn.models.sysid.models import check_data

__all__ = ["initial_prior", "FitInfo", "fit_map", "forecast", "fitted_params"]


def initial_prior(observation, y0, d: int, scale: float = 1.0) -> tuple[Array, Array]:
    """Broad Gaussian prior ``N(m0, scale^2 I)`` for the state at the first time: ``m0`` (d,) is
    the least-squares fill of the observed coordinates of ``y0`` (p,) (log scale for
    log-normal observations); returns ``(m0 (d,), P0 (d, d))``. Used by every fit here."""
    H = getattr(observation, "H", None)
    y0 = jnp.asarray(y0)
    if isinstance(observation, obs_lib.LogNormal):  # the state is on the log scale
        y0 = jnp.log(y0)
    if H is None:
        H = jnp.eye(d)
    ok = ~jnp.isnan(y0)
    Hm = jnp.where(ok[:, None], H, 0.0)
    m0 = jnp.linalg.pinv(Hm) @ jnp.where(ok, y0, 0.0)
    return m0, (scale**2) * jnp.eye(d, dtype=m0.dtype)


class FitInfo(NamedTuple):
    """Result of :func:`fit_map`: the fitted ``model``, the ``losses`` per step, ``time_s``
    and the final filter ``log_likelihood``."""

    model: Any
    losses: np.ndarray
    time_s: float
    log_likelihood: float


def fit_map(
    model,
    observation,
    times,
    y,
    key,
    num_steps: int = 300,
    learning_rate: float = 0.05,
    P0_scale: float = 1.0,
    filter_kwargs: dict | None = None,
    progress_bar: bool = False,
) -> FitInfo:
    """Maximum-likelihood fit of any model here by its filter log-likelihood (Adam through
    :func:`probdyn.inference.optimize.fit`); the loss is ``-loglik / T``."""
    from probdyn.inference.optimize import fit

    times, y = check_data(times, y, observation.obs_dim_for(model.state_dim))
    d = model.state_dim
    m0, P0 = initial_prior(observation, y[0], d, P0_scale)
    kw = dict(filter_kwargs or {})
    T = y.shape[0]

    def loss(m, k, b):
        return -m.log_likelihood(observation, times, y, m0, P0, **kw) / T

    res = fit(
        loss,
        model,
        key,
        num_steps,
        optimizer=learning_rate,
        clip_norm=10.0,
        progress_bar=progress_bar,
        desc=type(model).__name__,
    )
    # log-likelihood at the last optimisation step (saves a separate compilation)
    ll = float(-res.losses[-1] * T) if len(res.losses) else float("nan")
    return FitInfo(res.params, res.losses, res.time_s, ll)


def forecast(
    model,
    observation,
    times,
    y,
    origins,
    horizon: int,
    context: int,
    P0_scale: float = 1.0,
    filter_kwargs: dict | None = None,
):
    """Multi-step predictive distributions of ``y`` from several forecast origins.

    For origin ``c`` the model filters ``y[c - context + 1 : c + 1]`` and predicts
    ``y[c + 1 : c + horizon + 1]`` (those rows are hidden from the filter).

    Returns:
        ``mean (n, horizon, p)``, ``cov (n, horizon, p, p)`` predictive moments of the
        observations (linear-Gaussian observation models) and the truth ``(n, horizon, p)``.
    """
    if not isinstance(observation, obs_lib.LinearGaussian):
        raise ValueError("forecast scores need a LinearGaussian observation model")
    times, y = check_data(times, y)
    origins = np.asarray(origins, int)
    L = context + horizon
    if origins.min() < context - 1 or origins.max() + horizon >= y.shape[0]:
        raise ValueError("forecast origins leave no room for the context or the horizon")
    starts = origins - context + 1
    idx = starts[:, None] + np.arange(L)[None]
    tw, yw = times[idx], y[idx]
    hide = np.arange(L) >= context
    yin = jnp.where(hide[None, :, None], jnp.nan, yw)
    kw = dict(filter_kwargs or {})
    H, R = observation.H, observation.R

    def one(tt, yy):
        m0, P0 = initial_prior(observation, yy[0], model.state_dim, P0_scale)
        f = model.filter(observation, tt - tt[0], yy, m0, P0, **kw)
        m, P = f.mean[context:], f.cov[context:]
        return m @ H.T, jnp.einsum("ij,hjk,lk->hil", H, P, H) + R

    mean, cov = jax.jit(jax.vmap(one))(tw, yin)
    return mean, cov, yw[:, context:]


def fitted_params(model) -> dict:
    """Positive mechanistic parameters of a model's drift / map as floats (``{}`` for neural)."""
    fn = getattr(model, "drift", None) or getattr(model, "fn", None)
    if isinstance(fn, MechanisticDrift):
        return {k: float(v) for k, v in fn.params.items()}
    if isinstance(fn, AR1Map):
        return {"a": float(fn.a)}
    return {}
