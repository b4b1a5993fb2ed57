r"""Observed-SDE problems shared by the Gauss–Markov variational posteriors.

:mod:`probdyn.models.sde_posteriors.sparse_gp` (CVI natural gradients) and :mod:`probdyn.models.sde_posteriors.vgpa`
(Archambeau et al. 2007) fit the same model

.. math::
    dx = f(x, t)\,dt + L\,dW,\quad x(t_0) \sim N(\mu_0, P_0),\quad y_i \sim p(y_i \mid H x(t_i)),

on a time grid that contains the observation times. This module holds what does not depend
on the variational family: input validation (:func:`check_observed_sde`, clear errors for bad
times, shapes, noise, diffusion, initial prior), and the observation terms evaluated from
Gaussian marginals ``q(x(t_i)) = N(m_i, C_i)`` — the expected log-likelihood
``sum_i E_q[log p(y_i | H x_i)]`` (:func:`expected_log_likelihood`) and the predictive density
``log int p(y | H x) q(x) dx`` (:func:`predictive_log_density`): closed form for Gaussian noise,
Gauss–Hermite quadrature for a user ``log_likelihood(y (p,), z = H x (p,)) -> ()``.

:class:`ObservedSDEModel` is the base of both models: the validated fields (SDE, grid,
observations, noise, initial prior), the properties built from them and the predictive
density at any times in the grid span.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, Float

from probdyn._checks import concrete, jit_method
from probdyn._typing import ArrayInput
from probdyn.inference.natgrad import gauss_hermite, gaussian_expectation
from probdyn.linalg import psd_cholesky, small_logdet, small_solve, symmetrize
from probdyn.models.sde_posteriors.drifts import make_grid
from probdyn.sde.base import SDE
from probdyn.ssm import check_times

__all__ = ["ObservedSDE", "ObservedSDEModel", "check_observed_sde", "expected_log_likelihood", "predictive_log_density"]

_LOG2PI = math.log(2 * math.pi)


class ObservedSDE(NamedTuple):
    """Validated inputs (NumPy): grid (N,), obs_idx (n,) grid index of each observation,
    y (n, p), obs_matrix H (p, d), obs_noise (p,) variances, initial_mean (d,),
    initial_cov (d, d), and the floating dtype of the model."""

    grid: np.ndarray
    obs_idx: np.ndarray
    y: np.ndarray
    obs_matrix: np.ndarray
    obs_noise: np.ndarray
    initial_mean: np.ndarray
    initial_cov: np.ndarray
    dtype: DTypeLike


def check_observed_sde(
    sde: SDE,
    obs_times,
    y,
    obs_noise: ArrayInput = 1.0,
    obs_matrix=None,
    log_likelihood=None,
    dt: float | None = None,
    t_span=None,
    grid=None,
    initial_mean=None,
    initial_cov=None,
) -> ObservedSDE:
    """Validate an observed-SDE problem (raises ``TypeError``/``ValueError`` with a clear message).

    Args:
        sde: a :class:`probdyn.sde.SDE` with a constant ``diffusion`` (d, m), ``L L^T`` PD.
        obs_times: (n,) strictly increasing; y: (n, p) or (n,), finite.
        obs_noise: Gaussian noise variance, scalar or (p,) (positive unless ``log_likelihood``).
        obs_matrix: H (p, d), default the first p state coordinates.
        log_likelihood: optional non-Gaussian ``log p(y, z)``.
        dt, t_span, grid: the grid: explicit ``grid`` (must contain the observation times), or
            :func:`probdyn.models.sde_posteriors.drifts.make_grid` with step ``dt`` over ``t_span``
            (default: first to last observation time).
        initial_mean (d,), initial_cov (d, d) PD: prior of ``x(t0)``; default 0 and I.
    Returns:
        :class:`ObservedSDE`.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a probdyn.sde.SDE, got {type(sde).__name__}")
    if callable(sde.diffusion):
        raise ValueError("the variational SDE posteriors need a constant (additive) diffusion matrix")
    sde.check()
    d = sde.state_dim
    Lm = np.asarray(sde.diffusion)
    if np.linalg.matrix_rank(Lm @ Lm.T) < d:
        raise ValueError("diffusion L must have L L^T positive definite (every state driven by noise)")
    t_obs = np.asarray(check_times(obs_times), float)
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != t_obs.shape[0]:
        raise ValueError(f"y must have shape ({t_obs.shape[0]}, p), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y must be finite")
    p = y.shape[1]
    dtype = jnp.result_type(jnp.asarray(y).dtype, float)
    if grid is None:
        if dt is None:
            raise ValueError("give dt (grid step) or an explicit grid")
        t0, t1 = (t_obs[0], t_obs[-1]) if t_span is None else (float(t_span[0]), float(t_span[1]))
        if t_obs[0] < t0 - 1e-12 or t_obs[-1] > t1 + 1e-12:
            raise ValueError("observation times must lie inside t_span")
        grid = make_grid(t0, t1, float(dt), include=t_obs)
    grid = np.asarray(check_times(grid), float)
    if grid.size < 2:
        raise ValueError("the grid needs at least 2 points")
    idx = np.searchsorted(grid, t_obs)
    if np.any(idx >= grid.size) or not np.allclose(grid[np.minimum(idx, grid.size - 1)], t_obs, atol=1e-9):
        raise ValueError("every observation time must be a grid point (use make_grid(include=obs_times))")
    H = np.eye(d)[:p] if obs_matrix is None else np.asarray(obs_matrix, float)
    if H.shape != (p, d):
        raise ValueError(f"obs_matrix must have shape ({p}, {d}), got {H.shape}")
    noise = np.broadcast_to(np.asarray(obs_noise, float), (p,))
    if log_likelihood is None and (np.any(noise <= 0) or not np.all(np.isfinite(noise))):
        raise ValueError("obs_noise (variance) must be positive and finite")
    if log_likelihood is not None and not callable(log_likelihood):
        raise TypeError("log_likelihood must be callable as log_likelihood(y (p,), z (p,)) -> ()")
    m0 = np.zeros(d) if initial_mean is None else np.asarray(initial_mean, float).reshape(d)
    P0 = np.eye(d) if initial_cov is None else np.asarray(initial_cov, float).reshape(d, d)
    if not np.all(np.linalg.eigvalsh(0.5 * (P0 + P0.T)) > 0):
        raise ValueError("initial_cov must be positive definite")
    return ObservedSDE(grid, idx, y, H, noise, m0, P0, dtype)


def _obs_moments(H, mean, cov):
    return mean @ H.T, jnp.einsum("pd,nde,qe->npq", H, cov, H)


def expected_log_likelihood(
    y: Float[Array, "n p"],
    mean: Float[Array, "n d"],
    cov: Float[Array, "n d d"],
    H: Float[Array, "p d"],
    obs_var: Float[Array, " p"],
    log_likelihood: Callable | None = None,
    gh_order: int = 10,
) -> Float[Array, ""]:
    """``sum_i E_{N(mean_i, cov_i)}[log p(y_i | H x)]``.

    Gaussian noise (``log_likelihood=None``, variances ``obs_var``): closed form
    ``-1/2 sum (log 2 pi v + ((y - H m)^2 + diag(H C H^T)) / v)``; otherwise Gauss–Hermite with
    ``gh_order`` points per observation dimension in ``z = H x`` (differentiable in mean, cov).
    """
    mz, Cz = _obs_moments(H, mean, cov)
    if log_likelihood is None:
        r = y - mz
        diag = jnp.diagonal(Cz, axis1=1, axis2=2)
        return jnp.sum(-0.5 * (_LOG2PI + jnp.log(obs_var) + (r**2 + diag) / obs_var))
    rule = gauss_hermite(H.shape[0], gh_order)
    one = lambda yi, mi, Ci: gaussian_expectation(lambda z: log_likelihood(yi, z), mi, Ci, rule)  # noqa: E731
    return jnp.sum(jax.vmap(one)(y, mz, Cz))


def predictive_log_density(
    y: Float[Array, "T p"],
    mean: Float[Array, "T d"],
    cov: Float[Array, "T d d"],
    H: Float[Array, "p d"],
    obs_var: Float[Array, " p"],
    log_likelihood: Callable | None = None,
    gh_order: int = 20,
) -> Float[Array, " T"]:
    """``log int p(y_t | H x) N(x | mean_t, cov_t) dx`` per point: Gaussian noise in closed form,
    otherwise log-mean-exp of the likelihood over a Gauss–Hermite rule (``max(gh_order, 20)``
    points per dimension)."""
    mz, Cz = _obs_moments(H, mean, cov)
    if log_likelihood is None:
        S = Cz + jnp.diag(obs_var)[None]

        def lp(yi, mi, Si):
            r = yi - mi
            return -0.5 * (r.shape[0] * _LOG2PI + small_logdet(Si) + r @ small_solve(Si, r))

        return jax.vmap(lp)(y, mz, S)
    rule = gauss_hermite(H.shape[0], max(int(gh_order), 20))
    w = jnp.log(jnp.asarray(rule.weights, mean.dtype))
    pts = jnp.asarray(rule.points, mean.dtype)

    def lp2(yi, mi, Ci):
        zs = mi[None] + pts @ psd_cholesky(Ci).T
        return jax.scipy.special.logsumexp(w + jax.vmap(lambda z: log_likelihood(yi, z))(zs))

    return jax.vmap(lp2)(y, mz, Cz)


class ObservedSDEModel(eqx.Module):
    """Base of the variational posteriors of an observed SDE: the validated problem as fields.

    Args:
        sde: the :class:`probdyn.sde.SDE`.
        problem: its validated inputs, :func:`check_observed_sde` (grid, observation indices,
            ``y``, ``H``, noise variances (stored as log-sd), initial prior, dtype).
        log_likelihood: optional non-Gaussian ``log p(y (p,), z = H x (p,)) -> ()`` (Gauss–Hermite).
        gh_order: Gauss–Hermite points per dimension.

    Subclasses validate in their own ``__init__`` (user-facing arguments), add their
    variational family and implement ``marginals(state, times)``.
    """

    sde: SDE
    grid: Float[Array, " N"]
    obs_idx: Array
    y: Float[Array, "n p"]
    obs_matrix: Float[Array, "p d"]
    obs_log_std: Float[Array, " p"]
    initial_mean: Float[Array, " d"]
    initial_cov: Float[Array, "d d"]
    log_likelihood_fn: Callable | None = eqx.field(static=True)
    gh_order: int = eqx.field(static=True)

    def __init__(self, sde: SDE, problem: ObservedSDE, log_likelihood: Callable | None, gh_order: int):
        grid, idx, y, H, noise, m0, P0, dtype = problem
        self.sde = sde
        self.grid = jnp.asarray(grid, dtype)
        self.obs_idx = jnp.asarray(idx, jnp.int32)
        self.y = jnp.asarray(y, dtype)
        self.obs_matrix = jnp.asarray(H, dtype)
        self.obs_log_std = jnp.asarray(0.5 * np.log(np.maximum(noise, 1e-300)), dtype)
        self.initial_mean = jnp.asarray(m0, dtype)
        self.initial_cov = jnp.asarray(P0, dtype)
        self.log_likelihood_fn = log_likelihood
        self.gh_order = int(gh_order)

    @property
    def state_dim(self) -> int:
        """State dimension d."""
        return self.sde.state_dim

    @property
    def dtype(self):
        """Floating dtype of the model's arrays."""
        return self.grid.dtype

    @property
    def obs_var(self) -> Float[Array, " p"]:
        """Observation-noise variances (p,)."""
        return jnp.exp(2.0 * self.obs_log_std)

    def _L(self):
        return jnp.asarray(self.sde.diffusion, self.dtype)

    def _sigma(self):
        Lm = self._L()
        return symmetrize(Lm @ Lm.T)

    def _rule(self):
        return gauss_hermite(self.state_dim, self.gh_order)

    def _jit_call(self, name: str, *args):
        """``self.name(*args)`` compiled once per model structure (``eqx.filter_jit``)."""
        return jit_method(name, self, *args)

    def _check_span(self, times):
        tc = concrete(times)
        g = np.asarray(self.grid)
        if tc is not None and (np.any(tc < g[0] - 1e-9) or np.any(tc > g[-1] + 1e-9) or not np.all(np.isfinite(tc))):
            raise ValueError(f"times must lie in the grid span [{g[0]}, {g[-1]}]")

    def marginal_log_density(
        self, mean: Float[Array, "T d"], cov: Float[Array, "T d d"], y: Float[Array, "T p"]
    ) -> Float[Array, " T"]:
        """``log int p(y_t | H x) N(x | mean_t, cov_t) dx`` per row (:func:`predictive_log_density`
        with this model's observation model)."""
        return predictive_log_density(
            y, mean, cov, self.obs_matrix, self.obs_var, self.log_likelihood_fn, self.gh_order
        )

    def marginals(self, state, times) -> tuple[Float[Array, "T d"], Float[Array, "T d d"]]:
        """Marginal means (T, d) and covariances (T, d, d) of ``q`` at ``times`` (T,) (subclasses)."""
        raise NotImplementedError

    def predictive_log_density(self, state, times, y) -> Float[Array, " T"]:
        """``log int p(y_t | H x(t)) q(x(t)) dx`` per test point (T,) at ``times`` (T,) in the grid
        span, ``y`` (T, p) or (T,) (Gaussian noise: closed form; else Gauss–Hermite of the
        likelihood, log-mean-exp)."""
        y = jnp.asarray(y, self.dtype)
        y = y[:, None] if y.ndim == 1 else y
        mu, cov = self.marginals(state, times)
        return self.marginal_log_density(mu, cov, y)
