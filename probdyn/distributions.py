r"""numpyro distributions whose densities are Kalman-marginalised state-space models.

* :class:`MarkovGPDistribution` — ``y ~ N(mean, K + diag(noise))`` for a Markov kernel on a
  sorted time grid; event shape ``(N,)``.
* :class:`LinearGaussianSSMDistribution` — the marginal of the observations of a
  :class:`~probdyn.ssm.LinearGaussianSSM`; event shape ``(T, m)``.

``log_prob`` is the exact log marginal likelihood from :mod:`probdyn.inference.kalman`
(O(N d^3), differentiable in every parameter, so parameters may be numpyro sample sites);
NaN entries of the value are missing observations. ``sample`` draws latent paths with the
engine's forward-filter backward-sampler (no observations) and adds observation noise.

Batching: values with extra leading axes are handled by ``vmap``; both classes also accept
*batched parameters* (e.g. a kernel whose lengthscale was sampled inside a ``numpyro.plate``),
which define ``batch_shape`` — see each class. ``pointwise_log_prob`` returns the one-step
predictive densities ``log p(y_t | y_{<t})`` (they sum to ``log_prob``); :mod:`probdyn.inference.mcmc`
uses it for ArviZ's pointwise ``log_likelihood`` group.
"""

from __future__ import annotations

import math
from typing import override

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn.inference import kalman
from probdyn.inference.distribution_base import KalmanDistribution, RealOrNaN
from probdyn.kernels import Kernel
from probdyn.linalg import psd_cholesky
from probdyn.ssm import LinearGaussianSSM, check_noise_variance, check_times

__all__ = ["MarkovGPDistribution", "LinearGaussianSSMDistribution", "pointwise_log_likelihood"]


pointwise_log_likelihood = kalman.pointwise_log_likelihood  # re-exported for users of this module


def _flat_map(fn, shape: tuple, batched, shared, *, key=None):
    """Apply ``fn(*batched, *shared[, key])`` over ``shape``: each leaf of ``batched`` is
    already broadcast to ``shape + base``; results get ``shape`` as leading axes."""
    n = math.prod(shape)
    if n == 1 and not shape:
        args = batched + shared + ((key,) if key is not None else ())
        return fn(*args)
    flat = jax.tree.map(lambda x: x.reshape((n,) + x.shape[len(shape) :]), batched)
    extra = () if key is None else (jax.random.split(key, n),)
    in_axes = (0,) * len(batched) + (None,) * len(shared) + (0,) * len(extra)
    out = jax.vmap(fn, in_axes=in_axes)(*flat, *shared, *extra)
    return jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), out)


# ----------------------------------------------------------------------------------
# Markov GP
# ----------------------------------------------------------------------------------
def _per_point(x, n: int, name: str) -> Array:
    """Parameter given per element (shape ``b``) or per point (``b + (n,)``) -> ``b + (1|n,)``.

    A trailing axis of length ``n`` is read as the time axis; to batch a scalar over a batch
    of size ``n`` pass it with a trailing unit axis, ``x[..., None]``.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim >= 1 and x.shape[-1] == n:
        return x
    return x[..., None]


class MarkovGPDistribution(KalmanDistribution):
    """``y ~ N(mean(t), K(t, t) + diag(noise))`` for a Markov kernel, via the Kalman engine.

    Args:
        kernel: a :class:`probdyn.kernels.Kernel`. Its parameters may be batched: every array
            leaf of a kernel is a per-element scalar, so a leaf of shape ``b`` batches it.
        times: (N,) strictly increasing times, shared by the whole batch.
        noise: observation-noise variance; shape ``b`` (one per element) or ``b + (N,)``.
        mean: constant mean, shape ``b`` or ``b + (N,)``, or a callable ``mean(times)``.
        parallel: Kalman schedule (``None``: backend default).

    ``batch_shape`` is the broadcast of the kernel-leaf, noise and mean batch shapes;
    ``event_shape`` is ``(N,)``. NaN in the value = missing.
    """

    arg_constraints = {}
    pytree_data_fields = ("kernel", "times", "noise", "loc")
    pytree_aux_fields = ("mean_fn", "parallel")

    def __init__(self, kernel: Kernel, times, noise=0.0, mean=0.0, *, parallel: bool | None = None, validate_args=None):
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a probdyn.kernels.Kernel, got {type(kernel).__name__}")
        self.times = jnp.asarray(check_times(times))
        n = self.times.shape[0]
        self.kernel = kernel
        self.noise = _per_point(noise, n, "noise")
        check_noise_variance(self.noise)
        if callable(mean):
            self.mean_fn, self.loc = mean, jnp.zeros((1,), self.noise.dtype)
        else:
            self.mean_fn, self.loc = None, _per_point(mean, n, "mean")
        self.parallel = parallel
        leaves = [jnp.shape(x) for x in jax.tree.leaves(eqx.filter(kernel, eqx.is_array))]
        try:
            batch = jnp.broadcast_shapes(*leaves, self.noise.shape[:-1], self.loc.shape[:-1])
        except ValueError as e:
            raise ValueError(f"kernel parameter, noise and mean batch shapes do not broadcast: {e}") from None
        super().__init__(batch_shape=tuple(batch), event_shape=(n,), validate_args=validate_args)

    @classmethod
    def from_gp(cls, gp, parallel: bool | None = None) -> MarkovGPDistribution:
        """The distribution of ``gp``'s observations (a :class:`probdyn.MarkovGP`)."""
        return cls(gp.kernel, gp.times, gp.noise, gp.mean, parallel=parallel)

    @property
    @override
    def support(self):
        return RealOrNaN(1)

    # -- helpers --------------------------------------------------------------------
    def _mean_vec(self, loc):
        if self.mean_fn is not None:
            return jnp.broadcast_to(jnp.asarray(self.mean_fn(self.times)), self.times.shape)
        return jnp.broadcast_to(loc, self.times.shape)

    def _ssm(self, kernel, noise):
        nz = noise[0] if noise.shape[-1] == 1 else noise
        return kernel.to_ssm(self.times, nz, transition_basis=True)

    def _batched(self, shape):
        k = jax.tree.map(lambda x: jnp.broadcast_to(x, shape) if eqx.is_array(x) else x, self.kernel)
        nz = jnp.broadcast_to(self.noise, shape + self.noise.shape[-1:])
        lc = jnp.broadcast_to(self.loc, shape + self.loc.shape[-1:])
        return k, nz, lc

    def _value_shape(self, value):
        value = jnp.asarray(value)
        if value.ndim < 1 or value.shape[-1] != self.times.shape[0]:
            raise ValueError(f"value must end in the time axis ({self.times.shape[0]},), got {value.shape}")
        shape = tuple(jnp.broadcast_shapes(self.batch_shape, value.shape[:-1]))
        return jnp.broadcast_to(value, shape + value.shape[-1:]), shape

    # -- distribution API -----------------------------------------------------------
    def _log_prob(self, value: Float[Array, "... N"]) -> Float[Array, ...]:
        value, shape = self._value_shape(value)

        def one(k, nz, lc, y):
            return kalman.log_likelihood(self._ssm(k, nz), (y - self._mean_vec(lc))[:, None], parallel=self.parallel)

        return _flat_map(one, shape, (*self._batched(shape), value), ())

    def _pointwise_log_prob(self, value: Float[Array, "... N"]) -> Float[Array, "... N"]:
        """``log p(y_t | y_{<t})`` for every t, shape ``batch + (N,)`` (sums to ``log_prob``)."""
        value, shape = self._value_shape(value)

        def one(k, nz, lc, y):
            return pointwise_log_likelihood(self._ssm(k, nz), (y - self._mean_vec(lc))[:, None], self.parallel)

        return _flat_map(one, shape, (*self._batched(shape), value), ())

    def _sample(self, key: PRNGKeyArray, sample_shape: tuple = ()) -> Float[Array, "... N"]:
        shape = tuple(sample_shape) + self.batch_shape
        n = self.times.shape[0]

        def one(k, nz, lc, key):
            ssm = self._ssm(k, nz)
            k1, k2 = jax.random.split(key)
            ynan = jnp.full((n, 1), jnp.nan, nz.dtype)
            x = kalman.sample(k1, ssm, ynan, 1, parallel=self.parallel)[0]
            f = x @ ssm.emission_matrix[0]
            eps = jax.random.normal(k2, (n,), f.dtype)
            return f + jnp.sqrt(jnp.broadcast_to(nz, (n,))) * eps + self._mean_vec(lc)

        return _flat_map(one, shape, self._batched(shape), (), key=key)

    @property
    @override
    def mean(self) -> Float[Array, "... N"]:
        if self.mean_fn is not None:
            return jnp.broadcast_to(self._mean_vec(self.loc), self.batch_shape + self.event_shape)
        return jnp.broadcast_to(self.loc, self.batch_shape + self.event_shape)

    @property
    @override
    def variance(self) -> Float[Array, "... N"]:
        shape = self.batch_shape
        k, nz, _ = self._batched(shape)
        kv = _flat_map(lambda k: k(jnp.zeros(())), shape, (k,), ())
        return jnp.asarray(kv)[..., None] + jnp.broadcast_to(nz, shape + self.event_shape)


# ----------------------------------------------------------------------------------
# General linear-Gaussian SSM
# ----------------------------------------------------------------------------------
_BASE_NDIM = {
    "initial_mean": 1,
    "initial_cov": 2,
    "transition_matrix": 2,
    "transition_cov": 2,
    "emission_matrix": 2,
    "emission_cov": 2,
}


class LinearGaussianSSMDistribution(KalmanDistribution):
    """Marginal distribution of the observations ``y_{0:T-1}`` of a linear-Gaussian SSM.

    Args:
        ssm: a :class:`probdyn.LinearGaussianSSM` (time-invariant or time-varying arrays).
        num_timesteps: T; inferred from time-varying arrays when omitted.
        batch_shape: leading batch axes of the *parameters* (default none). With a batch
            shape, an array with its time-invariant rank (``initial_mean`` 1-D, the others
            2-D) is shared by the batch; every other array must carry ``batch_shape`` (or
            broadcastable 1s) as its leading axes.
        parallel: Kalman schedule (``None``: backend default).

    ``event_shape`` is ``(T, m)``. NaN entries of the value are missing observations.
    """

    arg_constraints = {}
    pytree_data_fields = ("ssm",)
    pytree_aux_fields = ("parallel", "_shared")

    def __init__(
        self,
        ssm: LinearGaussianSSM,
        num_timesteps: int | None = None,
        *,
        batch_shape: tuple = (),
        parallel: bool | None = None,
        validate_args=None,
    ):
        if not isinstance(ssm, LinearGaussianSSM):
            raise TypeError(f"ssm must be a probdyn.LinearGaussianSSM, got {type(ssm).__name__}")
        batch_shape = tuple(int(b) for b in batch_shape)
        k = len(batch_shape)
        shared = {}
        for name, base in _BASE_NDIM.items():
            shp = jnp.shape(getattr(ssm, name))
            shared[name] = len(shp) == base
            if not shared[name]:
                if k == 0:
                    continue  # time-varying, unbatched
                if len(shp) < k + base:
                    raise ValueError(
                        f"{name} has shape {shp}: with batch_shape {batch_shape} it must be time-invariant "
                        f"and shared ({base}-D) or carry the batch axes in front"
                    )
                try:
                    jnp.broadcast_shapes(shp[:k], batch_shape)
                except ValueError:
                    raise ValueError(
                        f"{name} has shape {shp}; its leading axes must broadcast to batch_shape {batch_shape}"
                    ) from None
        T = num_timesteps
        for name in ("transition_matrix", "transition_cov"):
            shp = jnp.shape(getattr(ssm, name))
            if len(shp) - (0 if shared[name] else k) == 3 and T is None:
                T = shp[-3] + 1
        for name in ("emission_matrix", "emission_cov"):
            shp = jnp.shape(getattr(ssm, name))
            if len(shp) - (0 if shared[name] else k) == 3 and T is None:
                T = shp[-3]
        if T is None:
            raise ValueError("num_timesteps is required when all SSM arrays are time-invariant")
        T = int(T)
        if T < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {T}")
        self.ssm = ssm
        self.parallel = parallel
        self._shared = tuple(sorted(n for n, s in shared.items() if s or k == 0))
        super().__init__(batch_shape=batch_shape, event_shape=(T, ssm.obs_dim), validate_args=validate_args)

    @property
    @override
    def support(self):
        return RealOrNaN(2)

    @property
    def num_timesteps(self) -> int:
        """Number of time steps T of the event."""
        return self.event_shape[0]

    def _split(self, shape):
        """(batched arrays dict broadcast to ``shape + rest``, shared arrays dict)."""
        k = len(self.batch_shape)
        batched, shared = {}, {}
        for name in _BASE_NDIM:
            x = jnp.asarray(getattr(self.ssm, name))
            if name in self._shared:
                shared[name] = x
            else:
                batched[name] = jnp.broadcast_to(x, shape + x.shape[k:])
        return batched, shared

    def _elem(self, batched, shared):
        return LinearGaussianSSM(**{**shared, **batched})

    def _value_shape(self, value):
        value = jnp.asarray(value)
        ev = self.event_shape
        if value.ndim == 1 and ev[1] == 1 and value.shape[0] == ev[0] and not self.batch_shape:
            value = value[:, None]
        if value.ndim < 2 or tuple(value.shape[-2:]) != ev:
            raise ValueError(f"value must end in the event shape {ev} (time leading), got {value.shape}")
        shape = tuple(jnp.broadcast_shapes(self.batch_shape, value.shape[:-2]))
        return jnp.broadcast_to(value, shape + ev), shape

    def _log_prob(self, value: Float[Array, "... T m"]) -> Float[Array, ...]:
        value, shape = self._value_shape(value)
        b, s = self._split(shape)

        def one(bb, y, ss):
            return kalman.log_likelihood(self._elem(bb, ss), y, parallel=self.parallel)

        return _flat_map(one, shape, (b, value), (s,))

    def _pointwise_log_prob(self, value: Float[Array, "... T m"]) -> Float[Array, "... T"]:
        """``log p(y_t | y_{<t})`` for every t, shape ``batch + (T,)`` (sums to ``log_prob``)."""
        value, shape = self._value_shape(value)
        b, s = self._split(shape)

        def one(bb, y, ss):
            return pointwise_log_likelihood(self._elem(bb, ss), y, self.parallel)

        return _flat_map(one, shape, (b, value), (s,))

    def _sample(self, key: PRNGKeyArray, sample_shape: tuple = ()) -> Float[Array, "... T m"]:
        shape = tuple(sample_shape) + self.batch_shape
        b, s = self._split(shape)
        T, m = self.event_shape

        def one(bb, ss, key):
            ssm = self._elem(bb, ss)
            dtype = jnp.result_type(ssm.initial_mean, ssm.transition_matrix, ssm.emission_matrix, float)
            k1, k2 = jax.random.split(key)
            x = kalman.sample(k1, ssm, jnp.full((T, m), jnp.nan, dtype), 1, parallel=self.parallel)[0]
            full = ssm.broadcast(T)
            SR = jax.vmap(psd_cholesky)(jnp.asarray(full.emission_cov, dtype))
            eps = jax.random.normal(k2, (T, m), dtype)
            return jnp.einsum("tmd,td->tm", full.emission_matrix, x) + jnp.einsum("tij,tj->ti", SR, eps)

        return _flat_map(one, shape, (b,), (s,), key=key)


def __getattr__(name):
    if name in ("SDEFilterDistribution", "DiscreteFilterDistribution"):
        import warnings

        from probdyn.inference.gaussian_filters import distributions as _gfd

        warnings.warn(
            f"probdyn.distributions.{name} is deprecated and will be removed in the next release; "
            f"import probdyn.inference.gaussian_filters.{name} instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_gfd, name)
    raise AttributeError(f"module 'probdyn.distributions' has no attribute {name!r}")
