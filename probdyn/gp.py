r"""Markov-GP regression front end: ``y_i = f(t_i) + mean(t_i) + eps_i``, ``f ~ GP(0, k)``.

All work goes through the Kalman engine in O(N d^3): the kernel's LTI SDE is discretised
exactly on the (irregular) time grid and filtered/smoothed. Predictions at arbitrary test
times are obtained by merging them into the grid as missing observations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import SupportsInt

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from probdyn._checks import check_observations, concrete
from probdyn._typing import ArrayInput, Key
from probdyn.inference import kalman
from probdyn.kernels import Kernel
from probdyn.ssm import LinearGaussianSSM, check_noise_variance, check_positive_int, check_times


def _check_test_times(tt):
    """``test_times`` must be a scalar or 1-D and, when concrete, finite (any order)."""
    if jnp.ndim(tt) > 1:
        raise ValueError(f"test_times must be a scalar or one-dimensional, got shape {jnp.shape(tt)}")
    tc = concrete(tt)
    if tc is not None:
        bad = ~np.isfinite(np.atleast_1d(tc))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"test_times must be finite, got test_times[{i}] = {np.atleast_1d(tc)[i]}")
    return tt


class MarkovGP(eqx.Module):
    """A Gaussian process with a Markov kernel on a sorted time grid.

    Args:
        kernel: a :class:`probdyn.kernels.Kernel`.
        times: (N,) strictly increasing observation times.
        noise: observation-noise *variance*, scalar or (N,).
        mean: constant or callable ``mean(t)`` of times (vectorised), default 0.
    """

    kernel: Kernel
    times: Float[Array, " N"]
    noise: Float[Array, ...]
    mean: Float[Array, ""] | Callable

    def __init__(self, kernel: Kernel, times, noise: ArrayLike = 0.0, mean: ArrayLike | Callable = 0.0):
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a probdyn.kernels.Kernel, got {type(kernel).__name__}")
        self.kernel = kernel
        self.times = jnp.asarray(check_times(times))
        noise = jnp.asarray(noise, dtype=jnp.result_type(self.times, float))
        if noise.ndim not in (0, 1) or (noise.ndim == 1 and noise.shape[0] != self.times.shape[0]):
            raise ValueError(f"noise must be a scalar or have shape ({self.times.shape[0]},), got {noise.shape}")
        check_noise_variance(noise)
        self.noise = noise
        self.mean = mean if callable(mean) else jnp.asarray(mean)

    def mean_at(self, t: Float[Array, " n"]) -> Float[Array, " n"]:
        """The prior mean at times ``t`` (n,), shape (n,)."""
        if callable(self.mean):
            return jnp.broadcast_to(jnp.asarray(self.mean(t)), jnp.shape(t))
        return jnp.broadcast_to(self.mean, jnp.shape(t))

    def _ssm(self, times, noise, transition_basis: bool = True) -> LinearGaussianSSM:
        return self.kernel.to_ssm(times, noise, transition_basis)

    def numpyro_dist(self, parallel: bool | None = None):
        """This GP's observation model as a numpyro distribution
        (:class:`probdyn.distributions.MarkovGPDistribution`, event shape (N,))."""
        from probdyn.distributions import MarkovGPDistribution

        return MarkovGPDistribution.from_gp(self, parallel=parallel)

    def to_ssm(self, transition_basis: bool = False) -> LinearGaussianSSM:
        """The exact state-space model on ``times`` (state dim = ``kernel.state_dim``).

        ``transition_basis=True`` also attaches the kernel's coefficient form of the
        transitions (:class:`probdyn.ssm.TransitionBasis`, Matérn kernels), which the
        sequential filter reads instead of the dense arrays; leave it off for a model whose
        arrays you will change."""
        return self._ssm(self.times, self.noise, transition_basis)

    def _check_y(self, y):
        y = jnp.asarray(y)
        if y.shape != self.times.shape:
            raise ValueError(f"y must have shape {self.times.shape} like times, got {y.shape}")
        return check_observations(y)

    # Public methods validate eagerly, then run one compiled program (eqx.filter_jit) per
    # call signature, so eager use does not compile every primitive separately.
    def log_likelihood(self, y: ArrayInput, parallel: bool | None = None) -> Float[Array, ""]:
        """Log marginal likelihood ``log N(y | mean, K + diag(noise))``; NaN = missing."""
        return self._log_likelihood(self._check_y(y), kalman.use_parallel(parallel))

    @eqx.filter_jit
    def _log_likelihood(self, y, parallel: bool):
        return kalman.log_likelihood(
            self._ssm(self.times, self.noise), (y - self.mean_at(self.times))[:, None], parallel=parallel
        )

    def _merged(self, y, test_times):
        """Data and test times on one sorted grid (test points are missing values)."""
        test_times = jnp.atleast_1d(jnp.asarray(test_times, self.times.dtype))
        n = self.times.shape[0]
        t_all = jnp.concatenate([self.times, test_times])
        order = jnp.argsort(t_all, stable=True)
        inv = jnp.argsort(order)
        yc = y - self.mean_at(self.times)
        y_all = jnp.concatenate([yc, jnp.full(test_times.shape, jnp.nan, yc.dtype)])[order]
        noise = jnp.broadcast_to(self.noise, self.times.shape)
        noise_all = jnp.concatenate([noise, jnp.ones(test_times.shape, noise.dtype)])[order]
        return self._ssm(t_all[order], noise_all), y_all[:, None], inv[n:], test_times

    def predict(
        self, y: ArrayInput, test_times: ArrayInput, parallel: bool | None = None
    ) -> tuple[Float[Array, " M"], Float[Array, " M"]]:
        """Posterior mean and variance of the latent ``f + mean`` at ``test_times`` (any order,
        repeats and data times allowed), each (M,). NaN/inf test times: ``ValueError``."""
        return self._predict(self._check_y(y), _check_test_times(test_times), kalman.use_parallel(parallel))

    @eqx.filter_jit
    def _predict(self, y, test_times, parallel: bool):
        ssm, y_all, idx, tt = self._merged(y, test_times)
        s = kalman.smoother(ssm, y_all, parallel=parallel)
        H = ssm.emission_matrix
        mu = (s.mean[idx] @ H.T)[:, 0] + self.mean_at(tt)
        var = jnp.einsum("id,tde,ie->t", H, s.cov[idx], H)
        return mu, var

    def sample(
        self,
        key: Key,
        num_samples: SupportsInt = 1,
        y: ArrayInput | None = None,
        test_times: ArrayInput | None = None,
        parallel: bool | None = None,
    ) -> Float[Array, "num_samples M"]:
        """Joint samples of the latent ``f + mean``: prior (``y=None``) or posterior.

        Returned at ``test_times`` (default: the data times), shape (num_samples, M);
        ``num_samples`` a positive integer.
        """
        k = check_positive_int(num_samples, "num_samples")
        y = jnp.full(self.times.shape, jnp.nan, self.times.dtype) if y is None else self._check_y(y)
        tt = self.times if test_times is None else _check_test_times(test_times)
        return self._sample(key, k, y, tt, kalman.use_parallel(parallel))

    @eqx.filter_jit
    def _sample(self, key, num_samples: int, y, tt, parallel: bool):
        ssm, y_all, idx, tt = self._merged(y, tt)
        xs = kalman.sample(key, ssm, y_all, num_samples, parallel=parallel)
        f = jnp.einsum("std,d->st", xs[:, idx], ssm.emission_matrix[0])
        return f + self.mean_at(tt)[None]
