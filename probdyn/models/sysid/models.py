"""The three model classes of the comparison: ODE, SDE and discrete-time (see the package
docstring), each with a simulator and a filter log-likelihood, plus :func:`check_data`
(the data validation every fit and forecast uses) and :func:`simulate_observations`."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probdyn._checks import check_observations, is_concrete
from probdyn.inference import gaussian_filters as gf
from probdyn.sde import SDE, euler_maruyama, euler_maruyama_interval, simulate_diffrax, solve_ode
from probdyn.ssm import check_times

__all__ = ["ODEModel", "SDEModel", "DiscreteModel", "DISCRETE_KINDS", "check_data", "simulate_observations"]

DISCRETE_KINDS = ("direct", "euler", "time_aware")


def _check_state_drift(drift, d: int, dtype=jnp.float32):
    from probdyn.sde import check_drift

    check_drift(drift, d, dtype)


def check_data(times, y, p: int | None = None):
    """Validated ``(times (T,), y (T, p))``: sorted finite times, ``y`` 1-d or 2-d with
    ``p`` columns if given, NaN = missing, no infinities (clear ``ValueError`` otherwise)."""
    times = check_times(times)
    y = jnp.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != jnp.shape(times)[0]:
        raise ValueError(f"y must have shape (T, p) with T = len(times) = {jnp.shape(times)[0]}, got {y.shape}")
    if p is not None and y.shape[1] != p:
        raise ValueError(f"y must have {p} columns (the observation dimension), got {y.shape[1]}")
    y = check_observations(y)
    return jnp.asarray(times), y


class ODEModel(eqx.Module):
    """``dx/dt = drift(x, t)``, ``x(times[0]) = x0`` (learnable), observed through ``observation``.

    ``log_likelihood`` is ``sum_t log p(y_t | x(t_t))`` (NaN entries missing) — ``-inf`` when
    the adaptive solve fails (rejected, counted in :data:`solver_failures`).
    """

    drift: Callable
    x0: Float[Array, " d"]
    state_dim: int = eqx.field(static=True)
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-6)
    max_steps: int = eqx.field(static=True, default=4096)

    def __check_init__(self):
        if jnp.shape(self.x0) != (self.state_dim,):
            raise ValueError(f"x0 must have shape ({self.state_dim},), got {jnp.shape(self.x0)}")
        _check_state_drift(self.drift, self.state_dim)

    def solve(self, times) -> tuple[Array, Array]:
        """``(xs (T, d), ok)`` at ``times`` (adaptive Tsit5, forward-mode sensitivities)."""
        times = jnp.asarray(check_times(times))
        params, static = eqx.partition(self.drift, eqx.is_inexact_array)
        return solve_ode(
            lambda x, t, p: eqx.combine(p, static)(x, t),
            self.x0,
            times,
            params,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
        )

    def log_likelihood(self, observation, times, y) -> Array:
        """``sum_t log p(y_t | x(t_t))`` of ``y`` (T, p) at ``times`` (T,); ``-inf`` when the solve fails."""
        times, y = check_data(times, y, observation.obs_dim_for(self.state_dim))
        xs, ok = self.solve(times)
        ll = jnp.sum(jax.vmap(observation.log_prob)(y.astype(xs.dtype), xs))
        return jnp.where(ok, ll, -jnp.inf)


class SDEModel(eqx.Module):
    """``dx = drift(x, t) dt + diag(exp(log_diffusion)) dW`` (diffusion learnable).

    ``log_likelihood`` is the continuous–discrete Gaussian filter's (``gf.filter``).
    """

    drift: Callable
    log_diffusion: Float[Array, " d"]
    state_dim: int = eqx.field(static=True)

    def __init__(self, drift: Callable, diffusion, state_dim: int):
        d = int(state_dim)
        diffusion = jnp.broadcast_to(jnp.asarray(diffusion, float), (d,))
        if is_concrete(diffusion) and np.any(np.asarray(diffusion) <= 0):
            raise ValueError("diffusion must be positive")
        _check_state_drift(drift, d)
        self.drift, self.log_diffusion, self.state_dim = drift, jnp.log(diffusion), d

    @property
    def sde(self) -> SDE:
        """The model as a :class:`probdyn.sde.SDE` (drift and diffusion)."""
        return SDE(self.drift, jnp.exp(self.log_diffusion), self.state_dim)

    def filter(
        self,
        observation,
        times,
        y,
        m0,
        P0,
        method="ekf",
        num_substeps=None,
        propagation="moments",
        max_step=None,
        solver=None,
    ):
        """The CD Gaussian filter of this SDE (step options as :func:`probdyn.inference.gaussian_filters.filter`;
        by default its step plan)."""
        return gf.filter(
            self.sde,
            observation,
            times,
            y,
            m0,
            P0,
            method=method,
            num_substeps=num_substeps,
            propagation=propagation,
            max_step=max_step,
            solver=solver,
        )

    def log_likelihood(self, observation, times, y, m0, P0, **kw) -> Array:
        """The continuous–discrete filter's log-likelihood of ``y`` (T, p) at ``times``."""
        return self.filter(observation, times, y, m0, P0, **kw).log_likelihood

    def simulate(self, x0, times, key, method: str = "euler_maruyama", num_substeps: int = 10, **kw):
        """Latent path (T, d): ``"euler_maruyama"`` (scan) or ``"diffrax"`` (see ``simulate_diffrax``)."""
        if method == "euler_maruyama":
            return euler_maruyama(self.sde, x0, times, key, num_substeps)
        if method == "diffrax":
            return simulate_diffrax(self.sde, x0, times, key, **kw)
        raise ValueError(f"method must be 'euler_maruyama' or 'diffrax', got {method!r}")


class DiscreteModel(eqx.Module):
    """``x_{k+1} = g(x_k) + q_k`` — the discrete-time counterpart (module docstring).

    Args:
        fn: for ``kind="direct"`` the map ``g(x) -> (d,)``; otherwise a drift ``f(x, t)``.
        noise_sd: (d,) process-noise sd per step (``"direct"``/``"euler"``) or per unit
            time (``"time_aware"``: noise ``diag(sd^2) h`` on every sub-step ``h = dt_k / n``,
            so ``Q_k ~ diag(sd^2) dt_k``).
        kind: ``"direct" | "euler" | "time_aware"``.
        dt_train: the training spacing (the Euler step of ``kind="euler"``).
        num_substeps: sub-steps between observations (``"time_aware"``).
    """

    fn: Callable
    log_noise: Float[Array, " d"]
    state_dim: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    dt_train: float = eqx.field(static=True)
    num_substeps: int = eqx.field(static=True)

    def __init__(
        self, fn: Callable, noise_sd, state_dim: int, kind: str = "euler", dt_train: float = 1.0, num_substeps: int = 1
    ):
        if kind not in DISCRETE_KINDS:
            raise ValueError(f"kind must be one of {DISCRETE_KINDS}, got {kind!r}")
        d = int(state_dim)
        if kind == "direct":
            x = jax.ShapeDtypeStruct((d,), jnp.float32)
            out = jax.eval_shape(fn, x)
            if tuple(out.shape) != (d,):
                raise ValueError(f"g(x) must return shape ({d},), got {tuple(out.shape)}")
        else:
            _check_state_drift(fn, d)
        if not float(dt_train) > 0 or int(num_substeps) < 1:
            raise ValueError("dt_train must be > 0 and num_substeps >= 1")
        noise_sd = jnp.broadcast_to(jnp.asarray(noise_sd, float), (d,))
        self.fn, self.log_noise, self.state_dim, self.kind = fn, jnp.log(noise_sd), d, kind
        self.dt_train, self.num_substeps = float(dt_train), int(num_substeps)

    def step(self, x, dt):
        """Mean map over one observation interval of length ``dt``."""
        if self.kind == "direct":
            return self.fn(x)
        if self.kind == "euler":
            return x + self.dt_train * self.fn(x, 0.0)
        h = dt / self.num_substeps

        def sub(x, _):
            return x + h * self.fn(x, 0.0), None

        return jax.lax.scan(sub, x, None, length=self.num_substeps)[0]

    def noise_var(self, dt):
        """Process-noise variances (d,) of a step ``dt`` (scaled with ``dt`` for ``time_aware``)."""
        v = jnp.exp(2 * self.log_noise)
        return v * dt if self.kind == "time_aware" else v

    def filter(self, observation, times, y, m0, P0, method="ekf"):
        """Discrete-time Gaussian filter over the observation steps (``times`` give ``dt_k``)."""
        times, y = check_data(times, y)
        dts = jnp.diff(times).astype(m0.dtype if hasattr(m0, "dtype") else float)
        if self.kind != "time_aware":
            trans = lambda x, k: self.step(x, dts[k])  # noqa: E731
            return gf.discrete_filter(trans, jnp.diag(self.noise_var(1.0)), observation, y, m0, P0, method=method)
        # n Euler sub-steps of h_k = dt_k / n per interval, process noise diag(sd^2) h_k on each
        h = dts / self.num_substeps
        sub = lambda x, k: x + h[k] * self.fn(x, 0.0)  # noqa: E731
        Q = jax.vmap(lambda hk: jnp.diag(self.noise_var(hk)))(h)
        return gf.discrete_filter(sub, Q, observation, y, m0, P0, method=method, num_substeps=self.num_substeps)

    def log_likelihood(self, observation, times, y, m0, P0, **kw) -> Array:
        """The discrete-time filter's log-likelihood of ``y`` (T, p) at ``times``."""
        return self.filter(observation, times, y, m0, P0, **kw).log_likelihood

    def simulate(self, x0, times, key):
        """Latent path (T, d) at ``times`` (one model step per interval)."""
        times = jnp.asarray(check_times(times))
        x0 = jnp.asarray(x0)
        if x0.shape != (self.state_dim,):
            raise ValueError(f"x0 must have shape ({self.state_dim},), got {x0.shape}")
        dts = jnp.diff(times).astype(x0.dtype)
        keys = jax.random.split(key, dts.shape[0])
        em_sde = SDE(lambda x, t: self.fn(x, 0.0), jnp.exp(self.log_noise), self.state_dim)

        def body(x, inp):
            dt, k = inp
            if self.kind != "time_aware":
                x = self.step(x, dt) + jnp.sqrt(self.noise_var(dt)) * jax.random.normal(k, x.shape, x.dtype)
                return x, x
            # Euler-Maruyama sub-steps of dx = fn(x) dt + diag(sd) dW: noise enters on every sub-step
            h = dt / self.num_substeps
            dW = jax.random.normal(k, (self.num_substeps,) + x.shape, x.dtype) * jnp.sqrt(h)
            x = euler_maruyama_interval(em_sde, x, 0.0, dt, dW)
            return x, x

        _, xs = jax.lax.scan(body, x0, (dts, keys))
        return jnp.concatenate([x0[None], xs])


def simulate_observations(observation, xs, key, missing: float = 0.0):
    """``y_t ~ p(y | x_t)`` for a latent path (T, d); a fraction ``missing`` of entries -> NaN."""
    T = xs.shape[0]
    k1, k2 = jax.random.split(key)
    ys = jax.vmap(observation.sample)(jax.random.split(k1, T), xs)
    if missing > 0:
        ys = jnp.where(jax.random.uniform(k2, ys.shape) < missing, jnp.nan, ys)
    return ys
