"""Base of probdyn's engine-backed numpyro distributions (linear-Gaussian in
:mod:`probdyn.distributions`, filter-marginalised in :mod:`probdyn.inference.gaussian_filters`):
the jit-compiled public methods and the support of values with missing (NaN) entries."""

from __future__ import annotations

from typing import override

import jax.numpy as jnp
from numpyro.distributions import Distribution, constraints

from probdyn._checks import fix_lazy_numpyro, jit_method

fix_lazy_numpyro()

__all__ = ["KalmanDistribution", "RealOrNaN"]


class RealOrNaN(constraints.Constraint):
    """Real vectors/matrices where NaN (missing) is allowed; infinities are not."""

    def __init__(self, event_dim: int):
        self.event_dim = event_dim

    @override
    def __call__(self, x):
        ok = ~jnp.isinf(x)
        return jnp.all(ok, axis=tuple(range(-self.event_dim, 0))) if self.event_dim else ok

    @override
    def feasible_like(self, prototype):
        return jnp.zeros_like(prototype)

    @override
    def tree_flatten(self):
        return (), ((), {"event_dim": self.event_dim})


class KalmanDistribution(Distribution):
    """Base of the engine-backed distributions: ``log_prob``, ``pointwise_log_prob`` and
    ``sample`` call the subclass's ``_log_prob``, ``_pointwise_log_prob`` and ``_sample``
    through one ``eqx.filter_jit`` (compiled once per distribution structure)."""

    @override
    def log_prob(self, value, intermediates=None):
        return jit_method("_log_prob", self, jnp.asarray(value))

    def pointwise_log_prob(self, value):
        """``log p(y_t | y_{<t})`` for every t, shape ``batch + (T,)`` (sums to ``log_prob``)."""
        return jit_method("_pointwise_log_prob", self, jnp.asarray(value))

    @override
    def sample(self, key, sample_shape=()):
        return jit_method("_sample", self, key, tuple(sample_shape))
