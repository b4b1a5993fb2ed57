"""numpyro distributions whose densities are the Gaussian filters' marginal likelihoods.

* :class:`SDEFilterDistribution` — observations of a nonlinear SDE at given times
  (continuous–discrete filter, :func:`~probdyn.inference.gaussian_filters.filter`);
* :class:`DiscreteFilterDistribution` — observations of ``x_{k+1} = g(x_k, k) + N(0, Q)``
  (:func:`~probdyn.inference.gaussian_filters.discrete_filter`).

All share :class:`probdyn.inference.distribution_base.KalmanDistribution` (jit-compiled ``log_prob``,
``pointwise_log_prob``, ``sample``) with the linear-Gaussian distributions.
"""

from __future__ import annotations

import math
from typing import override

import jax
import jax.numpy as jnp

from probdyn.inference import kalman
from probdyn.inference.distribution_base import KalmanDistribution, RealOrNaN
from probdyn.inference.gaussian_filters.common import check_options, check_step_options
from probdyn.inference.gaussian_filters.continuous import filter
from probdyn.inference.gaussian_filters.discrete import discrete_filter
from probdyn.inference.gaussian_filters.iterated import linearised_log_likelihood
from probdyn.inference.gaussian_filters.observations import ObservationModel
from probdyn.linalg import psd_cholesky
from probdyn.sde import SDE, euler_maruyama
from probdyn.ssm import check_times

__all__ = ["SDEFilterDistribution", "DiscreteFilterDistribution", "IteratedSmootherDistribution"]


def _filter_value(value, event_shape):
    value = jnp.asarray(value)
    T, p = event_shape
    if value.ndim == 1 and p == 1 and value.shape[0] == T:
        value = value[:, None]
    if value.ndim < 2 or tuple(value.shape[-2:]) != (T, p):
        raise ValueError(f"value must end in the event shape {(T, p)} (time leading), got {value.shape}")
    return value


def _series_value(value, event_shape, p: int):
    """``value`` as (..., T, p) for a distribution with ``event_shape`` (T, p), or any T when
    ``event_shape`` is ``()`` (a (T,) value is one series when p = 1)."""
    value = jnp.asarray(value)
    if event_shape:
        return _filter_value(value, event_shape)
    if value.ndim == 1 and p == 1:
        value = value[:, None]
    return _filter_value(value, (value.shape[-2] if value.ndim >= 2 else -1, p))


def _chain_draws(key, sample_shape, m0, P0, transition, SQ, T: int, observe, dtype):
    """``sample_shape`` draws of ``observe(key, xs (T, d))`` for paths of the chain
    ``x_0 ~ N(m0, P0)``, ``x_{k+1} = transition(x_k, k) + SQ_k eps_k``."""
    d = m0.shape[0]

    def one(key):
        k0, k1, k2 = jax.random.split(key, 3)
        x0 = m0.astype(dtype) + psd_cholesky(P0.astype(dtype)) @ jax.random.normal(k0, (d,), dtype)
        eps = jax.vmap(lambda kk: jax.random.normal(kk, (d,), dtype))(jax.random.split(k1, T - 1))
        return observe(k2, kalman.simulate_chain(x0, transition, SQ, eps))

    out = jax.vmap(one)(jax.random.split(key, math.prod(sample_shape)))
    return out.reshape(tuple(sample_shape) + out.shape[1:])


def _over_leading(fn, value):
    """Apply ``fn`` to every (T, p) slice of ``value`` (extra leading axes by vmap)."""
    lead = value.shape[:-2]
    if not lead:
        return fn(value)
    out = jax.vmap(fn)(value.reshape((-1,) + value.shape[-2:]))
    return out.reshape(lead + out.shape[1:])


class SDEFilterDistribution(KalmanDistribution):
    """Observations of a nonlinear SDE at ``times``, with the Gaussian-filter marginal likelihood.

    ``log_prob(y)`` is the approximate log marginal likelihood of
    :func:`probdyn.inference.gaussian_filters.filter` (EKF / UKF / cubature / Gauss–Hermite);
    it is differentiable in every parameter of ``sde``, ``observation``, ``m0`` and ``P0``, so
    they may be numpyro sample sites (NUTS) or optax-trained. NaN entries of ``y`` are
    missing. ``sample`` simulates the SDE (Euler–Maruyama with ``num_substeps`` steps per
    interval, 10 when it is not given, ``x(times[0]) ~ N(m0, P0)``) and the observation model.

    Args: as :func:`~probdyn.inference.gaussian_filters.filter` (``method``, ``num_substeps``,
    ``propagation``, ``max_step``, ``solver``, ``ukf_params``, ``gh_order``). ``event_shape`` is ``(T, p)``; the
    parameters are not batched (``batch_shape == ()``); values with extra leading axes are
    vmapped.
    """

    arg_constraints = {}
    pytree_data_fields = ("sde", "observation", "times", "m0", "P0")
    pytree_aux_fields = ("method", "num_substeps", "propagation", "max_step", "solver", "ukf_params", "gh_order")

    def __init__(
        self,
        sde,
        observation,
        times,
        m0,
        P0,
        method: str = "ekf",
        num_substeps: int | None = None,
        propagation: str = "moments",
        *,
        max_step: float | None = None,
        solver=None,
        ukf_params: tuple = (1.0, 0.0, None),
        gh_order: int = 3,
        validate_args=None,
    ):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a probdyn.sde.SDE, got {type(sde).__name__}")
        if not isinstance(observation, ObservationModel):
            raise TypeError(
                "observation must be a probdyn.inference.gaussian_filters observation model, "
                f"got {type(observation).__name__}"
            )
        check_options(method, propagation, num_substeps)
        self.times = jnp.asarray(check_times(times))
        d = sde.state_dim
        self.m0, self.P0 = jnp.asarray(m0), jnp.asarray(P0)
        if self.m0.shape != (d,) or self.P0.shape != (d, d):
            raise ValueError(f"m0 and P0 must have shapes ({d},) and ({d}, {d}), got {self.m0.shape}, {self.P0.shape}")
        p = observation.obs_dim_for(d)
        self.sde, self.observation = sde, observation
        check_step_options(num_substeps, max_step)
        self.method, self.propagation = method, propagation
        self.num_substeps = None if num_substeps is None else int(num_substeps)
        self.max_step = None if max_step is None else float(max_step)
        self.solver = solver
        self.ukf_params, self.gh_order = tuple(ukf_params), int(gh_order)
        super().__init__(batch_shape=(), event_shape=(self.times.shape[0], p), validate_args=validate_args)

    @property
    @override
    def support(self):
        return RealOrNaN(2)

    def _filter(self, y):
        return filter(
            self.sde,
            self.observation,
            self.times,
            y,
            self.m0,
            self.P0,
            self.method,
            self.num_substeps,
            self.propagation,
            max_step=self.max_step,
            solver=self.solver,
            ukf_params=self.ukf_params,
            gh_order=self.gh_order,
        )

    def _log_prob(self, value):
        return _over_leading(lambda y: self._filter(y).log_likelihood, _filter_value(value, self.event_shape))

    def _pointwise_log_prob(self, value):
        return _over_leading(lambda y: self._filter(y).pointwise_log_likelihood, _filter_value(value, self.event_shape))

    def _sample(self, key, sample_shape: tuple = ()):
        T = self.times.shape[0]
        dtype = jnp.result_type(self.m0, self.P0, float)

        def one(key):
            k0, k1, k2 = jax.random.split(key, 3)
            x0 = self.m0.astype(dtype) + psd_cholesky(self.P0.astype(dtype)) @ jax.random.normal(
                k0, self.m0.shape, dtype
            )
            xs = euler_maruyama(self.sde, x0, self.times.astype(dtype), k1, self.num_substeps or 10)
            return jax.vmap(self.observation.sample)(jax.random.split(k2, T), xs)

        n = math.prod(sample_shape)
        out = jax.vmap(one)(jax.random.split(key, n))
        return out.reshape(tuple(sample_shape) + out.shape[1:])


class DiscreteFilterDistribution(KalmanDistribution):
    """Observations of ``x_{k+1} = g(x_k, k) + N(0, Q)``, ``x_0 ~ N(m0, P0)``, with the
    discrete-time Gaussian-filter marginal likelihood
    (:func:`probdyn.inference.gaussian_filters.discrete_filter`; ``"ekf" | "ukf" | "cubature" |
    "gauss_hermite"``). NaN = missing.

    ``num_timesteps`` (T) fixes ``event_shape = (T, p)`` and is needed by ``sample``; without
    it ``log_prob`` accepts any ``(T, p)`` value and ``event_shape`` is ``()``.
    """

    arg_constraints = {}
    pytree_data_fields = ("transition", "Q", "observation", "m0", "P0")
    pytree_aux_fields = ("method", "ukf_params", "gh_order")

    def __init__(
        self,
        transition,
        Q,
        observation,
        m0,
        P0,
        method: str = "ekf",
        *,
        num_timesteps: int | None = None,
        ukf_params: tuple = (1.0, 0.0, None),
        gh_order: int = 3,
        validate_args=None,
    ):
        if not callable(transition):
            raise TypeError("transition must be callable as g(x (d,), k) -> (d,)")
        if not isinstance(observation, ObservationModel):
            raise TypeError(
                "observation must be a probdyn.inference.gaussian_filters observation model, "
                f"got {type(observation).__name__}"
            )
        check_options(method, None, None)
        self.m0, self.P0, self.Q = jnp.asarray(m0), jnp.asarray(P0), jnp.asarray(Q)
        d = self.m0.shape[-1]
        if self.m0.shape != (d,) or self.P0.shape != (d, d):
            raise ValueError(f"m0 and P0 must have shapes (d,) and (d, d), got {self.m0.shape}, {self.P0.shape}")
        if self.Q.shape not in ((d, d), (d,)):
            raise ValueError(f"Q must have shape ({d}, {d}) or ({d},), got {self.Q.shape}")
        p = observation.obs_dim_for(d)
        self.transition, self.observation = transition, observation
        self.method, self.ukf_params, self.gh_order = method, tuple(ukf_params), int(gh_order)
        event = () if num_timesteps is None else (int(num_timesteps), p)
        super().__init__(batch_shape=(), event_shape=event, validate_args=validate_args)

    @property
    @override
    def support(self):
        return RealOrNaN(2)

    def _shape(self, value):
        return _series_value(value, self.event_shape, self.observation.obs_dim_for(self.m0.shape[0]))

    def _filter(self, y):
        return discrete_filter(
            self.transition,
            self.Q,
            self.observation,
            y,
            self.m0,
            self.P0,
            self.method,
            ukf_params=self.ukf_params,
            gh_order=self.gh_order,
        )

    def _log_prob(self, value):
        return _over_leading(lambda y: self._filter(y).log_likelihood, self._shape(value))

    def _pointwise_log_prob(self, value):
        return _over_leading(lambda y: self._filter(y).pointwise_log_likelihood, self._shape(value))

    def _sample(self, key, sample_shape: tuple = ()):
        if not self.event_shape:
            raise ValueError("DiscreteFilterDistribution.sample needs num_timesteps")
        T = self.event_shape[0]
        dtype = jnp.result_type(self.m0, self.P0, self.Q, float)
        Q = jnp.diag(self.Q) if self.Q.ndim == 1 else self.Q
        SQ = psd_cholesky(Q.astype(dtype))

        def observe(key, xs):
            return jax.vmap(self.observation.sample)(jax.random.split(key, T), xs)

        return _chain_draws(key, sample_shape, self.m0, self.P0, self.transition, SQ, T, observe, dtype)


class IteratedSmootherDistribution(KalmanDistribution):
    """Observations ``y_k = h(x_k, k) + N(0, R)`` of ``x_{k+1} = f(x_k, k) + N(0, Q)``,
    ``x_0 ~ N(m0, P0)``, with the marginal likelihood of the model linearised at the MAP path
    (:func:`probdyn.inference.gaussian_filters.linearised_log_likelihood`: the iterated extended
    Kalman smoother's fixed point, gradients by implicit differentiation). NaN = missing.

    Unlike the filters' likelihoods (each ``x_k`` linearised at its one-step prediction), the
    linearisation point uses all the data, so it stays accurate where a single pass does not
    (strong nonlinearity, precise observations). ``pointwise_log_prob`` gives the one-step
    predictive densities of the linearised model (T,), which sum to ``log_prob``.

    Args: ``transition`` ``f(x (d,), k) -> (d,)``, ``Q`` (d, d), (d,) or (T - 1, d, d),
    ``observation`` ``h(x (d,), k) -> (p,)``, ``R`` (p, p) or (p,), ``m0`` (d,), ``P0`` (d, d);
    ``num_timesteps`` (T) fixes ``event_shape = (T, p)`` and is needed by ``sample``;
    ``num_iters``, ``init`` (a warm-start path (T, d)), ``damping``, ``parallel`` as in
    :func:`linearised_log_likelihood`.
    """

    arg_constraints = {}
    pytree_data_fields = ("transition", "Q", "observation", "R", "m0", "P0", "init")
    pytree_aux_fields = ("num_iters", "damping", "parallel")

    def __init__(
        self,
        transition,
        Q,
        observation,
        R,
        m0,
        P0,
        *,
        num_timesteps: int | None = None,
        num_iters: int = 20,
        init=None,
        damping: float = 1e-2,
        parallel: bool | None = None,
        validate_args=None,
    ):
        if not callable(transition) or not callable(observation):
            raise TypeError("transition and observation must be callables f(x (d,), k) and h(x (d,), k)")
        self.transition, self.observation = transition, observation
        self.Q, self.R, self.m0, self.P0 = (jnp.asarray(a) for a in (Q, R, m0, P0))
        d = self.m0.shape[-1]
        if self.m0.shape != (d,) or self.P0.shape != (d, d):
            raise ValueError(f"m0 and P0 must have shapes (d,) and (d, d), got {self.m0.shape}, {self.P0.shape}")
        p = self.R.shape[-1]
        if self.R.shape not in ((p, p), (p,)):
            raise ValueError(f"R must have shape (p, p) or (p,), got {self.R.shape}")
        self.num_iters, self.damping, self.parallel = int(num_iters), float(damping), parallel
        self.init = None if init is None else jnp.asarray(init)
        event = () if num_timesteps is None else (int(num_timesteps), p)
        super().__init__(batch_shape=(), event_shape=event, validate_args=validate_args)

    @property
    @override
    def support(self):
        return RealOrNaN(2)

    def _shape(self, value):
        return _series_value(value, self.event_shape, self.R.shape[-1])

    def _ll(self, y, pointwise: bool = False):
        args = (self.transition, self.Q, self.observation, self.R, y, self.m0, self.P0)
        return linearised_log_likelihood(
            *args,
            num_iters=self.num_iters,
            init=self.init,
            damping=self.damping,
            parallel=self.parallel,
            pointwise=pointwise,
        )

    def _log_prob(self, value):
        return _over_leading(self._ll, self._shape(value))

    def _pointwise_log_prob(self, value):
        return _over_leading(lambda y: self._ll(y, True), self._shape(value))

    def _sample(self, key, sample_shape: tuple = ()):
        if not self.event_shape:
            raise ValueError("IteratedSmootherDistribution.sample needs num_timesteps")
        T, p = self.event_shape
        dtype = jnp.result_type(self.m0, self.P0, self.Q, self.R, float)
        cov = lambda A: jnp.diag(A) if A.ndim == 1 else A  # noqa: E731
        SQ, SR = psd_cholesky(cov(self.Q).astype(dtype)), psd_cholesky(cov(self.R).astype(dtype))

        def observe(key, xs):
            hx = jnp.asarray(jax.vmap(self.observation)(xs, jnp.arange(T)), dtype)
            return hx + jax.random.normal(key, (T, p), dtype) @ SR.T

        return _chain_draws(key, sample_shape, self.m0, self.P0, self.transition, SQ, T, observe, dtype)
