r"""Iterated smoothers for SDEs observed at discrete times (continuous–discrete models).

``dx = f(x, t) dt + L dW`` with a constant (additive) diffusion ``L`` (d, m), ``x(t_0) ~ N(m0, P0)``
(``t_0``: the first observation time, or an earlier ``t0``), ``y_i = h(x(t_i), t_i) + N(0, R)``. Every interval between
observation times is cut into ``num_substeps`` equal Euler–Maruyama steps (the filters'
sub-step grid), ``x_{k+1} = x_k + f(x_k, s_k) Delta_k + N(0, L L^T Delta_k)``, and the
discrete-time iterated smoothers of :mod:`~probdyn.inference.gaussian_filters.iterated` run on
that grid, with the sub-step nodes unobserved (``max_step`` instead sets the largest step).
The result is the smoothing posterior of the
Euler model at every grid node (``O(Delta)`` from the continuous-time model, as for the
particle smoother on the same grid).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probdyn._typing import ArrayInput
from probdyn.inference.gaussian_filters.iterated import (
    IteratedSmootherResult,
    PosteriorLinearisationResult,
    iterated_posterior_linearisation_smoother,
    iterated_smoother,
)
from probdyn.sde.base import SDE

__all__ = ["SDESmootherResult", "substep_grid", "iterated_sde_smoother"]


class SDESmootherResult(NamedTuple):
    """The sub-step ``grid`` (N,), smoothed ``mean`` (N, d) and ``cov`` (N, d, d) on it, the
    grid index of each observation ``obs_index`` (n,), and the discrete smoother's result."""

    grid: np.ndarray
    mean: Float[Array, "N d"]
    cov: Float[Array, "N d d"]
    obs_index: np.ndarray
    result: IteratedSmootherResult | PosteriorLinearisationResult


def substep_grid(
    times: ArrayInput, num_substeps: int | None = None, max_step: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Equal Euler steps between consecutive ``times`` (n,), strictly increasing: ``num_substeps``
    per interval, or (``max_step``) the fewest steps of at most ``max_step``. Returns the grid
    (N,) and the grid index of each time (n,)."""
    t = np.asarray(times, float).reshape(-1)
    if t.size < 2 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValueError("times must be at least two finite, strictly increasing values")
    if (num_substeps is None) == (max_step is None):
        raise ValueError("give num_substeps (steps per interval) or max_step (step size), not both")
    dt = np.diff(t)
    if max_step is not None:
        if not np.isfinite(max_step) or max_step <= 0:
            raise ValueError(f"max_step must be a positive finite number, got {max_step}")
        steps = np.maximum(1, np.ceil(dt / float(max_step) - 1e-9)).astype(int)
    else:
        n = int(num_substeps)  # pyright: ignore[reportArgumentType]  (not None: checked above)
        if n < 1 or n != num_substeps:
            raise ValueError(f"num_substeps must be an integer >= 1, got {num_substeps}")
        steps = np.full(dt.size, n)
    pieces = [t[i] + np.arange(s) * dt[i] / s for i, s in enumerate(steps)]
    return np.concatenate(pieces + [t[-1:]]), np.concatenate([[0], np.cumsum(steps)])


def iterated_sde_smoother(
    sde: SDE,
    times: ArrayInput,
    y: ArrayInput,
    observation: Callable,
    R: ArrayInput,
    m0: ArrayInput,
    P0: ArrayInput,
    *,
    num_substeps: int | None = None,
    max_step: float | None = None,
    method: str = "ieks",
    t0: float | None = None,
    **kwargs,
) -> SDESmootherResult:
    """Iterated smoother of an SDE on its Euler sub-step grid (see the module doc).

    Args:
        sde: :class:`probdyn.sde.SDE` with a constant diffusion (d, m), ``L L^T`` positive definite.
        times: (n,) strictly increasing observation times; y: (n, p) (NaN = missing).
        observation: ``h(x (d,), t) -> (p,)``; R: (p, p) or (p,) observation-noise covariance.
        m0, P0: prior of ``x(t0)``.
        num_substeps: Euler steps per observation interval, or ``max_step``: the largest Euler
            step (the fewest equal steps per interval); default 10 steps per interval.
        method: ``"ieks"`` (:func:`~probdyn.inference.gaussian_filters.iterated_smoother`, the MAP
            path of the Euler model) or a sigma-point rule (``"cubature"``, ``"ukf"``,
            ``"gauss_hermite"``) for
            :func:`~probdyn.inference.gaussian_filters.iterated_posterior_linearisation_smoother`.
        t0: the time of the prior, at most ``times[0]`` (default ``times[0]``); an earlier ``t0``
            adds an unobserved interval (``num_substeps`` steps) before the first observation.
        kwargs: passed to that smoother (``num_iters``, ``parallel``, ``damping``, ``tol``, ...).
    """
    if callable(sde.diffusion):
        raise ValueError("the iterated SDE smoothers need a constant (additive) diffusion matrix")
    m0 = jnp.asarray(m0)
    dtype = m0.dtype if jnp.issubdtype(m0.dtype, jnp.floating) else jnp.result_type(float)
    L = np.asarray(sde.diffusion, float)
    Sigma = L @ L.T
    if np.linalg.eigvalsh(Sigma).min() <= 0:
        raise ValueError("diffusion L must have L L^T positive definite (every state driven by noise)")
    tv = np.asarray(times, float).reshape(-1)
    yv = np.asarray(y, float)
    yv = yv[:, None] if yv.ndim == 1 else yv
    if yv.shape[0] != tv.size:
        raise ValueError(f"y has {yv.shape[0]} rows for {tv.size} observation times")
    start = tv[0] if t0 is None else float(t0)
    if start > tv[0]:
        raise ValueError(f"t0 must be at most the first observation time {tv[0]}, got {t0}")
    early = start < tv[0]
    if num_substeps is None and max_step is None:
        num_substeps = 10
    grid, idx = substep_grid(np.concatenate([[start], tv]) if early else tv, num_substeps, max_step)
    idx = idx[1:] if early else idx
    yg = np.full((grid.size, yv.shape[1]), np.nan)
    yg[idx] = yv
    dts = np.diff(grid)
    g, dt = jnp.asarray(grid, dtype), jnp.asarray(dts, dtype)

    def transition(x, k):
        return x + sde.drift_fn(x, g[k]).astype(x.dtype) * dt[k]

    def obs(x, k):
        return observation(x, g[k])

    Q = jnp.asarray(dts[:, None, None] * Sigma[None], dtype)
    if method == "ieks":
        res = iterated_smoother(transition, Q, obs, R, yg, m0, P0, **kwargs)
    else:
        res = iterated_posterior_linearisation_smoother(transition, Q, obs, R, yg, m0, P0, method=method, **kwargs)
    return SDESmootherResult(grid, res.mean, res.cov, idx, res)
