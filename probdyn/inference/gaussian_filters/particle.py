"""Particle references for the Gaussian filters: a bootstrap particle filter of the log
marginal likelihood (SDE or discrete model) and a forward-filtering backward-smoothing
particle smoother for scalar SDEs."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from probdyn._typing import ArrayInput, Key
from probdyn.inference.gaussian_filters.common import (
    check_inputs,
    check_options,
    check_sde_inputs,
    check_transition,
)
from probdyn.inference.gaussian_filters.observations import ObservationModel
from probdyn.linalg import psd_cholesky
from probdyn.sde import euler_maruyama_interval

__all__ = ["particle_filter", "particle_smoother_scalar"]


def _systematic(key, logw, n):
    w = jax.nn.softmax(logw)
    u = (jax.random.uniform(key, (), logw.dtype) + jnp.arange(n, dtype=logw.dtype)) / n
    idx = jnp.searchsorted(jnp.cumsum(w), u)
    return jnp.clip(idx, 0, n - 1)


def particle_filter(
    model,
    observation: ObservationModel,
    times,
    y: ArrayInput,
    m0: ArrayInput,
    P0: ArrayInput,
    key: Key,
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
    SQ = None
    if discrete:
        transition, Q = model
        d = jnp.asarray(m0).shape[0]
        m0, P0, y, dtype = check_inputs(observation, y, m0, P0, d)
        Q = jnp.asarray(Q, dtype)
        Q = jnp.diag(Q) if Q.ndim == 1 else Q
        check_transition(transition, d, dtype)
        SQ = psd_cholesky(Q)
        model = (transition, None)
        times = jnp.arange(y.shape[0], dtype=dtype)
        nsub = 1
    else:
        check_options("ekf", None, num_substeps)
        times, y, m0, P0, dtype = check_sde_inputs(model, observation, times, y, m0, P0)
        nsub = int(num_substeps)
    return _pf_core(model, observation, times, y, m0, P0, key, n, nsub, SQ)


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
        if transition is not None:
            g = transition
            eps = jax.random.normal(key, x.shape, dtype)
            return jax.vmap(lambda xi: g(xi, k).astype(dtype))(x) + eps @ SQ.T
        h = (t1 - t0) / nsub
        m = model.noise_dim
        dW = jax.vmap(lambda kk: jax.random.normal(kk, (n, m), dtype))(jax.random.split(key, nsub)) * jnp.sqrt(h)
        return euler_maruyama_interval(model, x, t0, t1, jnp.swapaxes(dW, 0, 1))

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


def particle_smoother_scalar(
    key: Key, drift, q: float, obs_sd: float, grid, obs_idx, y, m0: float, v0: float, num_particles: int
):
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
