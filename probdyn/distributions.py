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
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray
from numpyro.distributions import Distribution, constraints

from probdyn.inference import kalman
from probdyn.kernels import Kernel
from probdyn.linalg import psd_cholesky
from probdyn.ssm import LinearGaussianSSM, check_noise_variance, check_times

__all__ = ["MarkovGPDistribution", "LinearGaussianSSMDistribution", "pointwise_log_likelihood"]


class _RealOrNaN(constraints.Constraint):
    """Real vectors/matrices where NaN (missing) is allowed; infinities are not."""

    def __init__(self, event_dim: int):
        self.event_dim = event_dim

    def __call__(self, x):
        ok = ~jnp.isinf(x)
        return jnp.all(ok, axis=tuple(range(-self.event_dim, 0))) if self.event_dim else ok

    def feasible_like(self, prototype):
        return jnp.zeros_like(prototype)

    def tree_flatten(self):
        return (), ((), {"event_dim": self.event_dim})


pointwise_log_likelihood = kalman.pointwise_log_likelihood  # re-exported for users of this module


def _flat_map(fn, shape: tuple, batched, shared, *, key=None):
    """Apply ``fn(*batched, *shared[, key])`` over ``shape``: each leaf of ``batched`` is
    already broadcast to ``shape + base``; results get ``shape`` as leading axes."""
    n = math.prod(shape)
    if n == 1 and not shape:
        args = batched + shared + ((key,) if key is not None else ())
        return fn(*args)
    flat = jax.tree.map(lambda x: x.reshape((n,) + x.shape[len(shape):]), batched)
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


@eqx.filter_jit
def _jit_call(method: str, d, *args):
    return getattr(d, method)(*args)


class _KalmanDistribution(Distribution):
    """Shared public API: jit-compiled (cached on the distribution's structure) wrappers."""

    def log_prob(self, value):
        return _jit_call("_log_prob", self, jnp.asarray(value))

    def pointwise_log_prob(self, value):
        """``log p(y_t | y_{<t})`` for every t, shape ``batch + (T,)`` (sums to ``log_prob``)."""
        return _jit_call("_pointwise_log_prob", self, jnp.asarray(value))

    def sample(self, key, sample_shape=()):
        return _jit_call("_sample", self, key, tuple(sample_shape))


class MarkovGPDistribution(_KalmanDistribution):
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

    def __init__(self, kernel: Kernel, times, noise=0.0, mean=0.0, *, parallel: bool | None = None,
                 validate_args=None):
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
    def from_gp(cls, gp, parallel: bool | None = None) -> "MarkovGPDistribution":
        """The distribution of ``gp``'s observations (a :class:`probdyn.MarkovGP`)."""
        return cls(gp.kernel, gp.times, gp.noise, gp.mean, parallel=parallel)

    @property
    def support(self):
        return _RealOrNaN(1)

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
    def _log_prob(self, value: Float[Array, "... N"]) -> Float[Array, "..."]:
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
    def mean(self) -> Float[Array, "... N"]:
        if self.mean_fn is not None:
            return jnp.broadcast_to(self._mean_vec(self.loc), self.batch_shape + self.event_shape)
        return jnp.broadcast_to(self.loc, self.batch_shape + self.event_shape)

    @property
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


class LinearGaussianSSMDistribution(_KalmanDistribution):
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

    def __init__(self, ssm: LinearGaussianSSM, num_timesteps: int | None = None, *, batch_shape: tuple = (),
                 parallel: bool | None = None, validate_args=None):
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
    def support(self):
        return _RealOrNaN(2)

    @property
    def num_timesteps(self) -> int:
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

    def _log_prob(self, value: Float[Array, "... T m"]) -> Float[Array, "..."]:
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


# ----------------------------------------------------------------------------------
# Nonlinear state-space models: Gaussian-filter (EKF/UKF/...) marginal likelihoods
# ----------------------------------------------------------------------------------
def _filter_value(value, event_shape):
    value = jnp.asarray(value)
    T, p = event_shape
    if value.ndim == 1 and p == 1 and value.shape[0] == T:
        value = value[:, None]
    if value.ndim < 2 or tuple(value.shape[-2:]) != (T, p):
        raise ValueError(f"value must end in the event shape {(T, p)} (time leading), got {value.shape}")
    return value


def _over_leading(fn, value):
    """Apply ``fn`` to every (T, p) slice of ``value`` (extra leading axes by vmap)."""
    lead = value.shape[:-2]
    if not lead:
        return fn(value)
    out = jax.vmap(fn)(value.reshape((-1,) + value.shape[-2:]))
    return out.reshape(lead + out.shape[1:])


class SDEFilterDistribution(_KalmanDistribution):
    """Observations of a nonlinear SDE at ``times``, with the Gaussian-filter marginal likelihood.

    ``log_prob(y)`` is the approximate log marginal likelihood of
    :func:`probdyn.inference.gaussian_filters.filter` (EKF / UKF / cubature / Gauss–Hermite);
    it is differentiable in every parameter of ``sde``, ``observation``, ``m0`` and ``P0``, so
    they may be numpyro sample sites (NUTS) or optax-trained. NaN entries of ``y`` are
    missing. ``sample`` simulates the SDE (Euler–Maruyama with ``num_substeps`` steps per
    interval, ``x(times[0]) ~ N(m0, P0)``) and the observation model.

    Args: as :func:`~probdyn.inference.gaussian_filters.filter` (``method``, ``num_substeps``,
    ``propagation``, ``ukf_params``, ``gh_order``). ``event_shape`` is ``(T, p)``; the
    parameters are not batched (``batch_shape == ()``); values with extra leading axes are
    vmapped.
    """

    arg_constraints = {}
    pytree_data_fields = ("sde", "observation", "times", "m0", "P0")
    pytree_aux_fields = ("method", "num_substeps", "propagation", "ukf_params", "gh_order")

    def __init__(self, sde, observation, times, m0, P0, method: str = "ekf", num_substeps: int = 10,
                 propagation: str = "moments", *, ukf_params: tuple = (1.0, 0.0, None), gh_order: int = 3,
                 validate_args=None):
        from probdyn.inference import gaussian_filters as gf
        from probdyn.observations import ObservationModel
        from probdyn.sde import SDE

        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a probdyn.sde.SDE, got {type(sde).__name__}")
        if not isinstance(observation, ObservationModel):
            raise TypeError(f"observation must be a probdyn.observations model, got {type(observation).__name__}")
        gf._check_options(method, propagation, num_substeps)
        self.times = jnp.asarray(check_times(times))
        d = sde.state_dim
        self.m0, self.P0 = jnp.asarray(m0), jnp.asarray(P0)
        if self.m0.shape != (d,) or self.P0.shape != (d, d):
            raise ValueError(f"m0 and P0 must have shapes ({d},) and ({d}, {d}), got {self.m0.shape}, {self.P0.shape}")
        p = observation.obs_dim_for(d)
        self.sde, self.observation = sde, observation
        self.method, self.num_substeps, self.propagation = method, int(num_substeps), propagation
        self.ukf_params, self.gh_order = tuple(ukf_params), int(gh_order)
        super().__init__(batch_shape=(), event_shape=(self.times.shape[0], p), validate_args=validate_args)

    @property
    def support(self):
        return _RealOrNaN(2)

    def _filter(self, y):
        from probdyn.inference import gaussian_filters as gf

        return gf.filter(self.sde, self.observation, self.times, y, self.m0, self.P0, self.method,
                         self.num_substeps, self.propagation, ukf_params=self.ukf_params, gh_order=self.gh_order)

    def _log_prob(self, value):
        return _over_leading(lambda y: self._filter(y).log_likelihood, _filter_value(value, self.event_shape))

    def _pointwise_log_prob(self, value):
        return _over_leading(lambda y: self._filter(y).pointwise_log_likelihood, _filter_value(value, self.event_shape))

    def _sample(self, key, sample_shape: tuple = ()):
        from probdyn.sde import euler_maruyama

        T = self.times.shape[0]
        dtype = jnp.result_type(self.m0, self.P0, float)

        def one(key):
            k0, k1, k2 = jax.random.split(key, 3)
            x0 = self.m0.astype(dtype) + psd_cholesky(self.P0.astype(dtype)) @ jax.random.normal(k0, self.m0.shape, dtype)
            xs = euler_maruyama(self.sde, x0, self.times.astype(dtype), k1, self.num_substeps)
            return jax.vmap(self.observation.sample)(jax.random.split(k2, T), xs)

        n = math.prod(sample_shape)
        out = jax.vmap(one)(jax.random.split(key, n))
        return out.reshape(tuple(sample_shape) + out.shape[1:])


class DiscreteFilterDistribution(_KalmanDistribution):
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

    def __init__(self, transition, Q, observation, m0, P0, method: str = "ekf", *, num_timesteps: int | None = None,
                 ukf_params: tuple = (1.0, 0.0, None), gh_order: int = 3, validate_args=None):
        from probdyn.inference import gaussian_filters as gf
        from probdyn.observations import ObservationModel

        if not callable(transition):
            raise TypeError("transition must be callable as g(x (d,), k) -> (d,)")
        if not isinstance(observation, ObservationModel):
            raise TypeError(f"observation must be a probdyn.observations model, got {type(observation).__name__}")
        gf._check_options(method, None, None)
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
    def support(self):
        return _RealOrNaN(2)

    def _shape(self, value):
        value = jnp.asarray(value)
        if self.event_shape:
            return _filter_value(value, self.event_shape)
        p = self.observation.obs_dim_for(self.m0.shape[0])
        if value.ndim == 1 and p == 1:
            value = value[:, None]
        return _filter_value(value, (value.shape[-2] if value.ndim >= 2 else -1, p))

    def _filter(self, y):
        from probdyn.inference import gaussian_filters as gf

        return gf.discrete_filter(self.transition, self.Q, self.observation, y, self.m0, self.P0, self.method,
                                  ukf_params=self.ukf_params, gh_order=self.gh_order)

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
        d = self.m0.shape[0]

        def one(key):
            k0, k1, k2 = jax.random.split(key, 3)
            x0 = self.m0.astype(dtype) + psd_cholesky(self.P0.astype(dtype)) @ jax.random.normal(k0, (d,), dtype)

            def step(x, inp):
                k, kk = inp
                xn = self.transition(x, k) + SQ @ jax.random.normal(kk, (d,), dtype)
                return xn, xn

            _, xs = jax.lax.scan(step, x0, (jnp.arange(T - 1), jax.random.split(k1, T - 1)))
            xs = jnp.concatenate([x0[None], xs])
            return jax.vmap(self.observation.sample)(jax.random.split(k2, T), xs)

        n = math.prod(sample_shape)
        out = jax.vmap(one)(jax.random.split(key, n))
        return out.reshape(tuple(sample_shape) + out.shape[1:])


__all__ += ["SDEFilterDistribution", "DiscreteFilterDistribution"]
