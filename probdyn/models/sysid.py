r"""Bayesian system identification: continuous- vs discrete-time models of the same system.

Following Cheema & Rasmussen (2022), the same dynamical system can be learnt as

* a **continuous-time** model — an ODE ``dx/dt = f_theta(x, t)`` with unknown initial state
  (:class:`ODEModel`, adaptive embedded Runge–Kutta solve with fused forward sensitivities,
  :func:`ode_solve`; failures rejected)
  or an SDE ``dx = f_theta(x, t) dt + L_theta dW`` (:class:`SDEModel`, marginal likelihood
  by the continuous–discrete Gaussian filters of :mod:`probdyn.inference.gaussian_filters`);
* a **discrete-time** model ``x_{k+1} = g_theta(x_k) + q_k`` (:class:`DiscreteModel`):
  ``kind="direct"`` (``g`` learnt directly: an MLP or a mechanistic map, e.g. AR(1)),
  ``kind="euler"`` (``g(x) = x + dt_train f_theta(x)``: an Euler step at the *training*
  spacing, applied once per observation whatever the actual spacing — the naive model), and
  ``kind="time_aware"`` (the modification that makes the discrete model aware of time:
  ``num_substeps`` Euler sub-steps of ``dt_k / n`` between observations and process noise
  ``Q dt_k`` scaled with the step).

Drifts are mechanistic (:class:`MechanisticDrift`, a user function with positive parameters),
neural (:class:`NeuralDrift`, an equinox MLP) or a sum (:class:`SumDrift`). Every model has a
simulator (Euler–Maruyama ``lax.scan``; diffrax for adaptive/high-order solves) and a filter
log-likelihood, so the *same* engine fits all of them: maximum likelihood / MAP with
:func:`probdyn.inference.optimize.fit` (default) or NUTS through numpyro programs whose
likelihoods are :class:`probdyn.distributions.SDEFilterDistribution` /
:class:`~probdyn.distributions.DiscreteFilterDistribution`.

:func:`compare` is the comparison harness (see its docstring); :func:`lotka_volterra` the
posteriordb Lotka–Volterra program (:mod:`probdyn.models.sysid_ode`); :func:`ou_ar1_check`
the exact OU / AR(1) equivalence check.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn import observations as obs_lib
from probdyn.inference import gaussian_filters as gf
from probdyn.inference import kalman
from probdyn.models.sysid_ode import (REFERENCE_POSTERIOR_LV, SolverFailureCounter, lotka_volterra,  # noqa: F401
                                      lotka_volterra_drift, lotka_volterra_log_drift, ode_solve, solver_failures)
from probdyn.models.sysid_systems import SYSTEMS, System, get_system
from probdyn.sde import SDE, euler_maruyama, simulate_diffrax
from probdyn.ssm import check_times

__all__ = [
    "MechanisticDrift", "NeuralDrift", "SumDrift", "ODEModel", "SDEModel", "DiscreteModel",
    "simulate_observations", "initial_prior", "fit_map", "fitted_params", "FitInfo", "forecast", "compare",
    "CompareResult", "ou_ar1_check",
    "lotka_volterra", "lotka_volterra_drift", "lotka_volterra_log_drift", "ode_solve", "solver_failures",
    "SolverFailureCounter",
    "REFERENCE_POSTERIOR_LV",
    "SYSTEMS", "System", "get_system", "DISCRETE_KINDS",
]

DISCRETE_KINDS = ("direct", "euler", "time_aware")


# ----------------------------------------------------------------------------------
# Drifts
# ----------------------------------------------------------------------------------
class MechanisticDrift(eqx.Module):
    """``f(x, t) = fn(x, t, params)`` with positive parameters held on the log scale.

    Args:
        fn: ``(x (d,), t (), params dict) -> (d,)``.
        params: dict of positive initial values (floats or arrays).
    """

    fn: Callable = eqx.field(static=True)
    log_params: dict

    def __init__(self, fn: Callable, params: dict):
        if not callable(fn):
            raise TypeError("fn must be callable as fn(x, t, params)")
        vals = {k: np.asarray(v, float) for k, v in params.items()}
        for k, v in vals.items():
            if not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(f"mechanistic parameter {k!r} must be positive and finite, got {v}")
        self.fn = fn
        self.log_params = {k: jnp.log(jnp.asarray(v)) for k, v in vals.items()}

    @property
    def params(self) -> dict:
        return {k: jnp.exp(v) for k, v in self.log_params.items()}

    def __call__(self, x, t):
        return self.fn(x, t, self.params)


class NeuralDrift(eqx.Module):
    """``f(x, t) = MLP(x)`` (or ``MLP([x, t])`` with ``time_input=True``), an equinox MLP."""

    mlp: eqx.nn.MLP
    time_input: bool = eqx.field(static=True)

    def __init__(self, state_dim: int, key: PRNGKeyArray, width: int = 32, depth: int = 2,
                 time_input: bool = False, activation: Callable = jax.nn.tanh, scale: float = 0.1):
        d = int(state_dim)
        mlp = eqx.nn.MLP(d + int(time_input), d, width, depth, activation=activation, key=key)
        # small last layer: the initial drift is close to zero (a random walk)
        mlp = eqx.tree_at(lambda m: m.layers[-1].weight, mlp, mlp.layers[-1].weight * scale)
        self.mlp, self.time_input = mlp, bool(time_input)

    def __call__(self, x, t):
        inp = jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)]) if self.time_input else x
        return self.mlp(inp).astype(x.dtype)


class SumDrift(eqx.Module):
    """``f = f_1 + f_2 + ...`` (e.g. mechanistic + neural correction)."""

    parts: tuple

    def __init__(self, *parts: Callable):
        if not parts or not all(callable(p) for p in parts):
            raise TypeError("SumDrift needs one or more drift callables")
        self.parts = tuple(parts)

    def __call__(self, x, t):
        return sum(p(x, t) for p in self.parts)


def _check_state_drift(drift, d: int, dtype=jnp.float32):
    from probdyn.sde import check_drift

    check_drift(drift, d, dtype)


def _check_data(times, y, p: int | None = None):
    """Sorted finite times (T,), y (T, p) with NaN = missing and no infinities."""
    times = check_times(times)
    y = jnp.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != jnp.shape(times)[0]:
        raise ValueError(f"y must have shape (T, p) with T = len(times) = {jnp.shape(times)[0]}, got {y.shape}")
    if p is not None and y.shape[1] != p:
        raise ValueError(f"y must have {p} columns (the observation dimension), got {y.shape[1]}")
    if not isinstance(y, jax.core.Tracer) and np.any(np.isinf(np.asarray(y))):
        raise ValueError("y contains infinite values (use NaN for missing observations)")
    return jnp.asarray(times), y


# ----------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------
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
        return ode_solve(lambda x, t, p: eqx.combine(p, static)(x, t), params, self.x0, times, rtol=self.rtol,
                         atol=self.atol, max_steps=self.max_steps)

    def log_likelihood(self, observation, times, y) -> Array:
        times, y = _check_data(times, y, observation.obs_dim_for(self.state_dim))
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
        if not isinstance(diffusion, jax.core.Tracer) and np.any(np.asarray(diffusion) <= 0):
            raise ValueError("diffusion must be positive")
        _check_state_drift(drift, d)
        self.drift, self.log_diffusion, self.state_dim = drift, jnp.log(diffusion), d

    @property
    def sde(self) -> SDE:
        return SDE(self.drift, jnp.exp(self.log_diffusion), self.state_dim)

    def filter(self, observation, times, y, m0, P0, method="ekf", num_substeps=10, propagation="moments"):
        return gf.filter(self.sde, observation, times, y, m0, P0, method=method, num_substeps=num_substeps,
                         propagation=propagation)

    def log_likelihood(self, observation, times, y, m0, P0, **kw) -> Array:
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

    def __init__(self, fn: Callable, noise_sd, state_dim: int, kind: str = "euler", dt_train: float = 1.0,
                 num_substeps: int = 1):
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
        v = jnp.exp(2 * self.log_noise)
        return v * dt if self.kind == "time_aware" else v

    def filter(self, observation, times, y, m0, P0, method="ekf"):
        """Discrete-time Gaussian filter over the observation steps (``times`` give ``dt_k``)."""
        times, y = _check_data(times, y)
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
        return self.filter(observation, times, y, m0, P0, **kw).log_likelihood

    def simulate(self, x0, times, key):
        """Latent path (T, d) at ``times`` (one model step per interval)."""
        times = jnp.asarray(check_times(times))
        x0 = jnp.asarray(x0)
        if x0.shape != (self.state_dim,):
            raise ValueError(f"x0 must have shape ({self.state_dim},), got {x0.shape}")
        dts = jnp.diff(times).astype(x0.dtype)
        keys = jax.random.split(key, dts.shape[0])

        def body(x, inp):
            dt, k = inp
            if self.kind != "time_aware":
                x = self.step(x, dt) + jnp.sqrt(self.noise_var(dt)) * jax.random.normal(k, x.shape, x.dtype)
                return x, x
            h = dt / self.num_substeps
            eps = jax.random.normal(k, (self.num_substeps,) + x.shape, x.dtype)

            def sub(x, e):  # Euler-Maruyama sub-step: noise enters on every sub-step
                return x + h * self.fn(x, 0.0) + jnp.sqrt(self.noise_var(h)) * e, None

            x = jax.lax.scan(sub, x, eps)[0]
            return x, x

        _, xs = jax.lax.scan(body, x0, (dts, keys))
        return jnp.concatenate([x0[None], xs])


# ----------------------------------------------------------------------------------
# Data, fitting, forecasting
# ----------------------------------------------------------------------------------
def simulate_observations(observation, xs, key, missing: float = 0.0):
    """``y_t ~ p(y | x_t)`` for a latent path (T, d); a fraction ``missing`` of entries -> NaN."""
    T = xs.shape[0]
    k1, k2 = jax.random.split(key)
    ys = jax.vmap(observation.sample)(jax.random.split(k1, T), xs)
    if missing > 0:
        ys = jnp.where(jax.random.uniform(k2, ys.shape) < missing, jnp.nan, ys)
    return ys


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
    model: Any
    losses: np.ndarray
    time_s: float
    log_likelihood: float


def fit_map(model, observation, times, y, key, num_steps: int = 300, learning_rate: float = 0.05,
            P0_scale: float = 1.0, filter_kwargs: dict | None = None, progress_bar: bool = False) -> FitInfo:
    """Maximum-likelihood fit of any model here by its filter log-likelihood (Adam through
    :func:`probdyn.inference.optimize.fit`); the loss is ``-loglik / T``."""
    from probdyn.inference.optimize import fit

    times, y = _check_data(times, y, observation.obs_dim_for(model.state_dim))
    d = model.state_dim
    m0, P0 = initial_prior(observation, y[0], d, P0_scale)
    kw = dict(filter_kwargs or {})
    T = y.shape[0]

    def loss(m, k, b):
        return -m.log_likelihood(observation, times, y, m0, P0, **kw) / T

    res = fit(loss, model, key, num_steps, optimizer=learning_rate, clip_norm=10.0, progress_bar=progress_bar,
              desc=type(model).__name__)
    # log-likelihood at the last optimisation step (saves a separate compilation)
    ll = float(-res.losses[-1] * T) if len(res.losses) else float("nan")
    return FitInfo(res.params, res.losses, res.time_s, ll)


def forecast(model, observation, times, y, origins, horizon: int, context: int, P0_scale: float = 1.0,
             filter_kwargs: dict | None = None):
    """Multi-step predictive distributions of ``y`` from several forecast origins.

    For origin ``c`` the model filters ``y[c - context + 1 : c + 1]`` and predicts
    ``y[c + 1 : c + horizon + 1]`` (those rows are hidden from the filter).

    Returns:
        ``mean (n, horizon, p)``, ``cov (n, horizon, p, p)`` predictive moments of the
        observations (linear-Gaussian observation models) and the truth ``(n, horizon, p)``.
    """
    if not isinstance(observation, obs_lib.LinearGaussian):
        raise ValueError("forecast scores need a LinearGaussian observation model")
    times, y = _check_data(times, y)
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


def _scores(mean, cov, truth):
    """RMSE and NLPD (per observation vector; missing truth skipped) by horizon."""
    err = truth - mean
    ok = ~jnp.isnan(truth)
    rmse = jnp.sqrt(jnp.nanmean(jnp.where(ok, err, jnp.nan) ** 2, axis=(0, 2)))

    def nlpd1(e, C):
        L = jnp.linalg.cholesky(C)
        z = jax.scipy.linalg.solve_triangular(L, e, lower=True)
        return 0.5 * jnp.sum(z**2) + jnp.sum(jnp.log(jnp.diag(L))) + 0.5 * e.shape[0] * jnp.log(2 * jnp.pi)

    nl = jax.vmap(jax.vmap(nlpd1))(jnp.where(ok, err, 0.0), cov)
    return np.asarray(rmse), np.asarray(jnp.mean(nl, axis=0))


# ----------------------------------------------------------------------------------
# OU / AR(1) equivalence
# ----------------------------------------------------------------------------------
def ou_ar1_check(y, dt: float, lam, s, noise_var) -> dict:
    """Log-likelihoods of an OU process and of its exact AR(1) counterpart on the same data.

    OU ``dx = -lam x dt + s sqrt(2 lam) dW`` (stationary variance ``s^2``) observed at spacing
    ``dt`` with noise variance ``noise_var`` is exactly the AR(1) ``x_{k+1} = a x_k + q_k`` with
    ``a = exp(-lam dt)``, ``q ~ N(0, s^2 (1 - a^2))``, ``x_0 ~ N(0, s^2)``. Computed three ways:
    the Kalman engine on the *continuous* model (Matern-1/2 kernel -> exact discretisation), the
    engine on the AR(1) ``LinearGaussianSSM``, and the continuous–discrete filter
    ``gf.filter`` (``propagation="linearised"``, exact for linear SDEs) vs ``gf.discrete_filter``.

    Returns dict of the log-likelihoods (arrays over the broadcast parameter grid) and
    ``max_abs_diff`` (largest |OU - AR(1)| of all pairs).
    """
    from probdyn import kernels
    from probdyn.ssm import LinearGaussianSSM, discretise

    y = jnp.asarray(y)
    y = y[:, None] if y.ndim == 1 else y
    T = y.shape[0]
    times = jnp.arange(T, dtype=y.dtype) * dt
    lam, s, noise_var = (jnp.atleast_1d(jnp.asarray(v, y.dtype)) for v in (lam, s, noise_var))
    lam, s, noise_var = jnp.broadcast_arrays(lam, s, noise_var)

    def one(lam, s, r):
        ou = discretise(kernels.Matern12(1.0 / lam, s**2).sde(), times, emission_cov=r * jnp.eye(1, dtype=y.dtype))
        ll_ou = kalman.log_likelihood(ou, y)
        a = jnp.exp(-lam * dt)
        ar = LinearGaussianSSM(jnp.zeros(1, y.dtype), s**2 * jnp.eye(1, dtype=y.dtype), a * jnp.eye(1, dtype=y.dtype),
                               s**2 * (1 - a**2) * jnp.eye(1, dtype=y.dtype), jnp.eye(1, dtype=y.dtype),
                               r * jnp.eye(1, dtype=y.dtype))
        ll_ar = kalman.log_likelihood(ar, y)
        sde = SDE(lambda x, t: -lam * x, s * jnp.sqrt(2 * lam) * jnp.ones(1, y.dtype), 1)
        ob = obs_lib.LinearGaussian(jnp.eye(1, dtype=y.dtype), r * jnp.eye(1, dtype=y.dtype))
        m0, P0 = jnp.zeros(1, y.dtype), s**2 * jnp.eye(1, dtype=y.dtype)
        ll_cd = gf.filter(sde, ob, times, y, m0, P0, num_substeps=1, propagation="linearised").log_likelihood
        ll_df = gf.discrete_filter(lambda x, k: a * x, s**2 * (1 - a**2) * jnp.eye(1, dtype=y.dtype), ob, y, m0,
                                   P0).log_likelihood
        return ll_ou, ll_ar, ll_cd, ll_df

    ll_ou, ll_ar, ll_cd, ll_df = jax.jit(jax.vmap(one))(lam, s, noise_var)
    diffs = [jnp.abs(a - b) for a, b in ((ll_ou, ll_ar), (ll_cd, ll_df), (ll_cd, ll_ar))]
    return dict(ou_kalman=np.asarray(ll_ou), ar1_kalman=np.asarray(ll_ar), ou_filter=np.asarray(ll_cd),
                ar1_filter=np.asarray(ll_df), max_abs_diff=float(max(jnp.max(d) for d in diffs)))


# ----------------------------------------------------------------------------------
# Comparison harness
# ----------------------------------------------------------------------------------
class CompareResult(NamedTuple):
    """Output of :func:`compare`.

    ``table``: pandas DataFrame in long format — one row per (model, test spacing, horizon)
    with columns ``system, model, kind ("continuous"/"discrete"), spacing ("train"/"test"),
    dt, horizon_time, horizon_steps, rmse, nlpd, param_rel_error, fit_time_s, train_loglik``.
    ``params``: fitted mechanistic parameters per model (and ``"truth"``); ``extras``: e.g.
    ``ou_ar1_max_abs_diff`` and the AR(1)/OU parameter match; ``forecasts``: per model and
    spacing ``(mean, cov, truth, times)`` of the first origins for plotting; ``data``.
    """

    table: Any
    params: dict
    extras: dict
    forecasts: dict
    data: dict
    models: dict

    def summary(self):
        """NLPD/RMSE pivot: rows model x spacing, columns horizon_time."""
        return self.table.pivot_table(index=["model", "kind", "spacing"], columns="horizon_time",
                                      values=["nlpd", "rmse"])

    def to_markdown(self, floatfmt: str = ".3f") -> str:
        """The table as GitHub markdown (no ``tabulate`` needed)."""
        df = self.table
        cols = list(df.columns)
        fmt = lambda v: (f"{v:{floatfmt}}" if isinstance(v, (float, np.floating)) else str(v))  # noqa: E731
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
        extra = [f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in self.extras.items()]
        return "\n".join(lines + ([""] + extra if extra else []))


def _simulate_series(system: System, key, t_end, dt, x0, irregular: bool, num_substeps: int = 20):
    kt, kx = jax.random.split(key)
    n = int(round(t_end / dt))
    if irregular:
        gaps = dt * np.asarray(jax.random.uniform(kt, (n,), minval=0.4, maxval=1.6))
        times = np.concatenate([[0.0], np.cumsum(gaps)])
    else:
        times = dt * np.arange(n + 1)
    sde = SDE(lambda x, t: system.drift(x, t, {k: jnp.asarray(v) for k, v in system.params.items()}),
              jnp.asarray(system.diffusion), system.state_dim)
    xs = euler_maruyama(sde, jnp.asarray(x0), jnp.asarray(times), kx, num_substeps)
    return jnp.asarray(times), xs


def _models_for(system_like, dt_train, key, init_params: dict, diffusion0, neural: bool):
    d, f = system_like.state_dim, system_like.drift
    models = {
        "continuous (SDE)": SDEModel(MechanisticDrift(f, init_params), diffusion0, d),
        "discrete naive Euler": DiscreteModel(MechanisticDrift(f, init_params), diffusion0 * np.sqrt(dt_train), d,
                                              "euler", dt_train),
        "discrete time-aware": DiscreteModel(MechanisticDrift(f, init_params), diffusion0, d, "time_aware", dt_train,
                                             num_substeps=4),
    }
    if system_like.linear and d == 1:  # the AR(1): g(x) = a x learnt directly
        a0 = float(np.exp(-list(init_params.values())[0] * dt_train))
        models["discrete AR(1)"] = DiscreteModel(_AR1Map(a0), diffusion0 * np.sqrt(dt_train), d, "direct", dt_train)
    if neural:
        models["discrete neural (direct MLP)"] = DiscreteModel(_ResidualMLP(d, key), diffusion0 * np.sqrt(dt_train),
                                                               d, "direct", dt_train)
    return models


class _AR1Map(eqx.Module):
    """``g(x) = a x`` with unconstrained ``a`` (the AR(1) of the OU sanity check)."""

    a: Array

    def __init__(self, a0: float):
        self.a = jnp.asarray(a0)

    def __call__(self, x):
        return self.a * x


class _ResidualMLP(eqx.Module):
    """``g(x) = x + MLP(x)``: a discrete map learnt directly."""

    net: NeuralDrift

    def __init__(self, d, key):
        self.net = NeuralDrift(d, key, width=32, depth=2)

    def __call__(self, x):
        return x + self.net(x, 0.0)


def fitted_params(model) -> dict:
    """Positive mechanistic parameters of a model's drift / map as floats (``{}`` for neural)."""
    fn = getattr(model, "drift", None) or getattr(model, "fn", None)
    if isinstance(fn, MechanisticDrift):
        return {k: float(v) for k, v in fn.params.items()}
    if isinstance(fn, _AR1Map):
        return {"a": float(fn.a)}
    return {}


def compare(
    system: str | System = "van_der_pol",
    *,
    times=None,
    y=None,
    quick: bool = False,
    key: PRNGKeyArray | int = 0,
    dt_train: float | None = None,
    dt_test: float | None = None,
    irregular: bool = False,
    missing: float = 0.1,
    horizons: tuple | None = None,
    num_steps: int | None = None,
    neural: bool = False,
    engine: str = "map",
    verbose: bool = False,
) -> CompareResult:
    """Fit continuous- and discrete-time models of one system with the same engine and compare.

    With a built-in ``system`` (:data:`SYSTEMS` key or a :class:`System`), data are simulated
    from the ground-truth SDE (Euler–Maruyama, 20 sub-steps per interval): a training series
    at spacing ``dt_train`` (``irregular=True``: gaps uniform in [0.4, 1.6] x dt_train; a
    fraction ``missing`` of entries NaN) and two test series continuing the process, observed
    at ``dt_train`` ("train" spacing) and at ``dt_test`` ("test" spacing). With user data
    (``times``, ``y``; ``system`` must then be a :class:`System` giving the drift family and
    initial parameters), the first 70 % is training data and the rest test data, observed as
    given ("train") and with every other point dropped ("test", twice the spacing).

    Models (all fitted by maximum likelihood of their Gaussian-filter likelihoods with
    :func:`fit_map`, the same engine and optimiser for all): the continuous SDE, the naive
    Euler discrete model, the time-aware discrete model (both with the same mechanistic
    drift family), for the OU the AR(1) learnt directly, and with ``neural=True`` a directly
    learnt residual-MLP map. Forecasts: from 12 (quick 8) origins per test series, filter a
    context window and predict the next horizon; horizons are physical times (multiples of
    ``dt_train``), so both spacings are scored at the same lead times.

    ``engine``: ``"map"`` (default). ``quick=True`` uses shorter series and fewer steps.

    Returns:
        :class:`CompareResult` (``.table`` DataFrame, ``.to_markdown()``, ``.summary()``).
    """
    import pandas as pd

    if engine != "map":
        raise ValueError("engine must be 'map' (fit by the filters' likelihoods with optimize.fit); "
                         "for NUTS build the numpyro program with SDEFilterDistribution / "
                         "DiscreteFilterDistribution and call mcmc.sample")
    key = jax.random.PRNGKey(key) if isinstance(key, int) else key
    user = times is not None or y is not None
    if isinstance(system, str):
        if user:
            raise ValueError("with user data pass system=System(...) giving the drift family and initial params")
        system = get_system(system)
    if not isinstance(system, System):
        raise TypeError(f"system must be a name in {sorted(SYSTEMS)} or a System, got {type(system).__name__}")
    d = system.state_dim
    H = jnp.asarray(system.H, float)
    if H.ndim != 2 or H.shape[1] != d:
        raise ValueError(f"system.H must have shape (p, {d}), got {H.shape}")
    ob = obs_lib.LinearGaussian(H, system.obs_sd**2 * jnp.ones(H.shape[0]))
    kdata, kfit, kinit = jax.random.split(key, 3)
    steps = num_steps if num_steps is not None else (150 if quick else 300)

    if user:
        times, y = _check_data(times, y, H.shape[0])
        if times.shape[0] < 30:
            raise ValueError("need at least 30 observations to split into training and test data")
        n_tr = int(0.7 * times.shape[0])
        tr_t, tr_y = times[:n_tr], y[:n_tr]
        dt_train = float(np.median(np.diff(np.asarray(tr_t))))
        te_t, te_y = times[n_tr:], y[n_tr:]
        tests = {"train": (te_t, te_y), "test": (te_t[::2], te_y[::2])}
        dt_test = 2 * dt_train
        truth = None
    else:
        dt_train = float(dt_train or system.dt_train)
        dt_test = float(dt_test or system.dt_test)
        t_train = system.T_train * (0.5 if quick else 1.0)
        t_test = 20 * dt_train * (3 if quick else 5)
        k1, k2, k3, k4, k5, k6 = jax.random.split(kdata, 6)
        burn_t, burn = _simulate_series(system, k1, 10 * dt_train, dt_train, system.x0, False)
        tr_t, tr_x = _simulate_series(system, k2, t_train, dt_train, burn[-1], irregular)
        tr_y = simulate_observations(ob, tr_x, k3, missing)
        tests = {}
        for name, dt, kk in (("train", dt_train, k4), ("test", dt_test, k5)):
            tt, tx = _simulate_series(system, kk, t_test, dt, tr_x[-1], False)
            tests[name] = (tt, simulate_observations(ob, tx, jax.random.fold_in(k6, int(dt * 1e6))))
        truth = dict(system.params)
    if horizons is None:
        horizons = (1, 2, 5) if quick else (1, 2, 5, 10)
    horizons = tuple(int(h) for h in horizons)

    # initial parameters: the truth perturbed by a factor exp(+-0.4) (built-ins), else as given
    rng = np.random.default_rng(int(jax.random.randint(kinit, (), 0, 2**31 - 1)))
    init = {k: float(v) * (float(np.exp(rng.choice([-0.4, 0.4]))) if truth is not None else 1.0)
            for k, v in system.params.items()}
    diff0 = float(np.mean(system.diffusion))
    models = _models_for(system, dt_train, kinit, init, diff0, neural)
    P0s = 1.0
    rows, fitted, forecasts, fits = [], {"truth": truth}, {}, {}
    for name, model in models.items():
        kind = "continuous" if isinstance(model, (SDEModel, ODEModel)) else "discrete"
        fkw = dict(num_substeps=5, propagation="linearised" if system.linear else "moments") if kind == "continuous" else {}
        info = fit_map(model, ob, tr_t, tr_y, kfit, num_steps=steps, P0_scale=P0s, filter_kwargs=fkw)
        fits[name] = info
        fitted[name] = fitted_params(info.model)
        perr = np.nan
        if truth is not None and set(fitted[name]) == set(truth):
            perr = float(np.mean([abs(fitted[name][k] - truth[k]) / abs(truth[k]) for k in truth]))
        for spacing, (tt, ty) in tests.items():
            dt = dt_train if spacing == "train" else dt_test
            hsteps = [max(1, int(round(h * dt_train / dt))) for h in horizons]
            H_max, ctx = max(hsteps), max(10, int(round(10 * dt_train / dt)))
            n_orig = 8 if quick else 12
            last = ty.shape[0] - H_max - 1
            origins = np.unique(np.linspace(ctx - 1, last, n_orig).astype(int))
            mean, cov, tru = forecast(info.model, ob, tt, ty, origins, H_max, ctx, P0s, fkw)
            rmse, nlpd = _scores(mean, cov, tru)
            forecasts[(name, spacing)] = dict(mean=np.asarray(mean[0]), cov=np.asarray(cov[0]),
                                              truth=np.asarray(tru[0]),
                                              times=np.asarray(tt[origins[0] + 1: origins[0] + 1 + H_max]),
                                              ctx_times=np.asarray(tt[origins[0] - ctx + 1: origins[0] + 1]),
                                              ctx_y=np.asarray(ty[origins[0] - ctx + 1: origins[0] + 1]))
            for hs in sorted(set(hsteps)):  # lead time actually scored: hs steps of this spacing
                rows.append(dict(system=system.name, model=name, kind=kind, spacing=spacing, dt=dt,
                                 horizon_time=round(hs * dt, 10), horizon_steps=hs, rmse=float(rmse[hs - 1]),
                                 nlpd=float(nlpd[hs - 1]), param_rel_error=perr, fit_time_s=info.time_s,
                                 train_loglik=info.log_likelihood))
        if verbose:
            print(f"{name}: fit {info.time_s:.1f} s, loglik {info.log_likelihood:.2f}, params {fitted[name]}")
    extras = {}
    if system.linear and d == 1 and "discrete AR(1)" in fitted and not irregular:
        lam = fitted["continuous (SDE)"]["lam"]
        extras["ar1_a_fitted"] = fitted["discrete AR(1)"]["a"]
        extras["ou_exp_minus_lam_dt"] = float(np.exp(-lam * dt_train))
        extras["ou_vs_ar1_fitted_loglik_diff"] = abs(fits["continuous (SDE)"].log_likelihood
                                                     - fits["discrete AR(1)"].log_likelihood)
        sd = float(jnp.exp(fits["continuous (SDE)"].model.log_diffusion[0])) / np.sqrt(2 * lam)
        # exact equivalence on a regular, complete series (the test series at the training spacing)
        chk = ou_ar1_check(tests["train"][1], dt_train, [lam, 0.3, 1.0], [sd, 1.0, 0.5], system.obs_sd**2)
        extras["ou_ar1_max_abs_diff"] = chk["max_abs_diff"]
    table = pd.DataFrame(rows)
    return CompareResult(table, fitted, extras, forecasts,
                         dict(fit=(np.asarray(tr_t), np.asarray(tr_y)),
                              **{f"test_{k}": (np.asarray(a), np.asarray(b)) for k, (a, b) in tests.items()}),
                         {k: v.model for k, v in fits.items()})
