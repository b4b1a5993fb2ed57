r"""Exact likelihoods of linear SDEs driven by MA-fBM (the fractional OU process).

Linear drifts with additive noise are linear SDEs in ``(X, Y)``:
:func:`probdyn.sde.fractional.ma_fbm_linear_sde` exposes them as an ``LTISDE``, and
:func:`fou_log_likelihood` / :func:`fou_numpyro_model` give the exact MA-fBM marginal
likelihood through the Kalman engine (ML via :func:`fou_mle`, NUTS via
:func:`probdyn.inference.mcmc.sample`); choose the OU speeds from the data's time scales with
:func:`probdyn.sde.fractional.gamma_grid_for`.

Note (jax 0.10, CPU): value-and-gradient of Kalman likelihoods ``vmap``-ed over many paths
and evaluation points has left XLA's CPU Eigen thread pool waiting forever (all threads idle,
reproducible); :func:`fou_mle` and :func:`fou_numpyro_model` therefore loop over paths with
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probdyn._checks import is_concrete
from probdyn.inference import kalman
from probdyn.inference.optimize import backoff_ascent
from probdyn.sde.fractional import (
    check_fbm_params,
    gamma_grid_for,
    ma_fbm_initial_cov,
    ma_fbm_linear_sde,
)
from probdyn.ssm import LinearGaussianSSM, check_times

__all__ = [
    "fou_ltisde",
    "fou_log_likelihood",
    "fou_mle",
    "FOUFit",
    "fou_numpyro_model",
    "fou_posterior_marginals",
]

# ------------------------------------------------ exact likelihoods of linear models


def fou_ltisde(theta, sigma, hurst, gammas, horizon, kind: str = "type1"):
    """Fractional OU ``dX = -theta X dt + sigma dB^H`` (scalar) as an augmented ``LTISDE``;
    ``hurst`` in (0, 1), ``theta >= 0`` (0: scaled fBM), ``sigma >= 0``."""
    check_fbm_params(hurst, theta=theta, sigma=sigma)
    theta = jnp.asarray(theta)
    return ma_fbm_linear_sde(jnp.reshape(-theta, (1, 1)), sigma, hurst, gammas, horizon, kind)


def _fou_ssm(theta, sigma, hurst, times, gammas, horizon, kind, x0_std, noise_std):
    """Exact discretisation of the augmented fOU at ``times`` (regular grids: one (A, Q)).

    The process noise of ``(X, Y_1..K)`` over one step is driven by **one** Brownian
    motion per coordinate, so ``Q`` is numerically singular (eigenvalues down to ~1e-18 of
    the largest); which of its Cholesky pivots the square-root filter then treats as zero
    flips with ``H``, which made the log-likelihood jump by ~1e-4 (K = 9 speeds on
    [0.005, 500]) and broke finite-difference curvature. A jitter of ``1e-12`` (float64;
    ``2e-5`` in float32) times the largest per-step variance on ``Q`` keeps every pivot
    regular (measured change of the log-likelihood: 7e-9 on 4 x 101 observations).
    """
    check_fbm_params(x0_std=x0_std, noise_std=noise_std)
    sde = fou_ltisde(theta, sigma, hurst, gammas, horizon, kind)
    dtype = sde.F.dtype
    rel = 1e-12 if dtype == jnp.float64 else 2e-5

    def jitter(M):
        scale = jnp.max(jnp.diagonal(M, axis1=-2, axis2=-1), axis=-1)[..., None, None]
        return M + rel * scale * jnp.eye(M.shape[-1], dtype=dtype)

    P0 = ma_fbm_initial_cov(jnp.reshape(jnp.asarray(x0_std, dtype) ** 2, (1, 1)), gammas, kind)
    P0 = P0 + jnp.diag(jnp.full(P0.shape[0], 1e-12 if dtype == jnp.float64 else 1e-7, dtype))
    R = jnp.reshape(jnp.asarray(noise_std, dtype) ** 2, (1, 1))
    m0 = jnp.zeros(P0.shape[0], dtype)
    dts = np.diff(np.asarray(times, float)) if is_concrete(times) else None
    if dts is not None and dts.size and np.allclose(dts, dts[0], rtol=1e-9, atol=0.0):
        dt = jnp.asarray(dts[0], dtype)  # regular grid: one exact discretisation for all steps
        A, Q = sde.transition(dt), sde.process_cov(dt)
    else:
        A, Q = sde.discretise(jnp.diff(jnp.asarray(times, dtype)))
    return LinearGaussianSSM(m0, P0, A, jitter(Q), sde.H, R)


def fou_log_likelihood(
    theta, sigma, hurst, times, y, gammas, horizon=None, kind: str = "type1", x0_std=0.0, noise_std=1e-3
) -> Float[Array, ""]:
    """Exact log p(y) under the MA-fBM fractional OU observed with Gaussian noise (Kalman).

    ``times`` (T,) start the process (``X(times[0]) ~ N(0, x0_std^2)``); ``y`` (T,) (NaN
    missing); ``theta = 0`` gives scaled fBM. ``horizon`` defaults to ``times[-1] - times[0]``.
    """
    times = jnp.asarray(check_times(times))
    y = jnp.asarray(y)
    if y.shape != times.shape:
        raise ValueError(f"y must have shape {times.shape}, got {y.shape}")
    if horizon is None:
        horizon = float(np.asarray(times[-1] - times[0]))
    ssm = _fou_ssm(theta, sigma, hurst, times - times[0], gammas, horizon, kind, x0_std, noise_std)
    return kalman.log_likelihood(ssm, y[:, None])


def _fou_paths_log_likelihood(theta, sigma, hurst, times, y, gammas, horizon, kind, x0_std, noise_std):
    """:func:`fou_log_likelihood` of each path of ``y`` (P, T), (P,): one discretisation for
    all paths (its gradient costs about ten times one path's filter), then the paths one after
    another with ``lax.map``, not ``vmap`` (see the note in the module docstring)."""
    ssm = _fou_ssm(theta, sigma, hurst, times - times[0], gammas, horizon, kind, x0_std, noise_std)
    return jax.lax.map(lambda yy: kalman.log_likelihood(ssm, yy[:, None]), y)


class FOUFit(NamedTuple):
    """Output of :func:`fou_mle` (all scalars).

    ``hurst_sd`` is the Laplace standard error of ``H`` (inverse observed information in the
    optimisation coordinates, ``sigma`` and ``theta`` profiled out); ``grad_norm`` the norm of
    the gradient of the negative log-likelihood at the returned point (small = converged);
    ``num_iterations`` the Newton iterations used (``num_iters`` = the cap was reached).
    """

    hurst: Array
    sigma: Array
    theta: Array
    log_likelihood: Array
    hurst_sd: Array
    grad_norm: Array
    num_iterations: int


def fou_mle(
    times,
    y,
    gammas=None,
    horizon=None,
    kind: str = "type1",
    noise_std=1e-3,
    x0_std=0.0,
    estimate_theta: bool = False,
    hurst_init: float = 0.5,
    num_iters: int = 50,
) -> FOUFit:
    r"""Maximum-likelihood ``(H, sigma[, theta])`` of the MA-fBM fractional OU (exact Kalman likelihood).

    Maximises :math:`\sum_p` :func:`fou_log_likelihood` over independent paths ``y`` (T,) or
    (P, T) observed at ``times`` (T,) by damped (saddle-free) Newton steps in the coordinates
    ``u = (logit H, log s[, log theta])`` with the scale **at the sampling interval**
    :math:`s = \sigma\,\Delta^H` (:math:`\Delta` the mean spacing of ``times``), which is
    what the data pin down: :math:`\mathrm{Var}(X_{t+\Delta} - X_t) \approx \sigma^2\Delta^{2H}`.
    In ``(H, log sigma)`` the likelihood has a narrow curved ridge (``log sigma`` and ``H``
    trade off through :math:`2H\log\Delta`), along which first-order optimisers such as Adam
    stall: 150 decaying-rate Adam steps from ``H = 0.5`` stopped at ``H = 0.32`` on data whose
    maximum is at ``H = 0.20``.

    ``gammas`` defaults to :func:`probdyn.sde.fractional.gamma_grid_for` ``(Delta, T)``, which
    covers the time scales of the data; ``horizon`` (the weights' interval) to
    ``T = times[-1] - times[0]``. ``theta = 0`` (scaled fBM) unless ``estimate_theta``.
    Each iteration is one compiled call (value, gradient and a central-difference Hessian
    of the gradient), cached per ``(times, shapes, options)``, run by
    :func:`probdyn.inference.optimize.backoff_ascent` (a step that raises the negative
    log-likelihood is rejected and the damping raised); iterations stop early once the
    Newton decrement is negligible.

    Args:
        times: (T,) increasing observation times.
        y: (T,) or (P, T) observations (NaN = missing).
        gammas, horizon, kind, noise_std, x0_std: as in :func:`fou_log_likelihood`.
        estimate_theta: also estimate the mean-reversion rate ``theta > 0``.
        hurst_init: starting value of ``H``; ``s`` starts at the RMS one-step increment.
        num_iters: maximal number of Newton iterations.

    Returns:
        :class:`FOUFit`.
    """
    t = np.asarray(check_times(times), float)
    if t.size < 3:
        raise ValueError("fou_mle needs at least three observation times")
    yy = jnp.atleast_2d(jnp.asarray(y))
    if yy.ndim != 2 or yy.shape[1] != t.size:
        raise ValueError(f"y must have shape ({t.size},) or (P, {t.size}), got {jnp.shape(y)}")
    if not 0.0 < float(hurst_init) < 1.0:
        raise ValueError(f"hurst_init must lie in (0, 1), got {hurst_init}")
    if int(num_iters) < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    if kind not in ("type1", "type2"):
        raise ValueError(f"kind must be 'type1' or 'type2', got {kind!r}")
    T = float(t[-1] - t[0])
    delta = T / (t.size - 1)
    horizon = T if horizon is None else float(horizon)
    if gammas is None:
        gammas = gamma_grid_for(delta, T)
    dtype = jnp.result_type(yy.dtype, float)
    yy = yy.astype(dtype)
    g = jnp.asarray(gammas, dtype)
    inc = np.diff(np.asarray(yy, float), axis=1)
    s0 = float(np.sqrt(np.nanmean(inc**2))) if np.any(np.isfinite(inc)) else 1.0
    h0 = float(hurst_init)
    u0 = [np.log(h0 / (1 - h0)), np.log(max(s0, 1e-12))]
    if estimate_theta:
        u0.append(-np.log(T))
    grid = tuple(float(v) for v in t - t[0])
    args = (
        yy,
        g,
        jnp.asarray(horizon, dtype),
        jnp.asarray(noise_std, dtype),
        jnp.asarray(x0_std, dtype),
        grid,
        kind,
        bool(estimate_theta),
    )
    u = jnp.asarray(u0, dtype)
    f, gr, Hs = _fou_value_grad_hess(u, *args)
    if not np.isfinite(float(f)):
        raise FloatingPointError(f"fou_mle: log-likelihood is {float(-f)} at the starting point")

    def newton_direction(Hs, gr):
        ev, V = np.linalg.eigh(np.asarray(Hs, float))
        return np.abs(ev), V, V.T @ np.asarray(gr, float)  # saddle-free: |Hessian|, never towards a maximum

    def converged(st):  # Newton decrement
        ev, _, gv = newton_direction(st[3], st[2])
        return 0.5 * np.sum(gv**2 / (ev + 1e-300)) < 1e-9

    def propose(st, lam):  # damped (Levenberg-Marquardt) saddle-free Newton step, trust radius 2 in u
        u, _, gr, Hs = st
        ev, V, gv = newton_direction(Hs, gr)
        step = -V @ (gv / (ev + lam * ev.max() + 1e-300))
        step *= min(1.0, 2.0 / (np.linalg.norm(step) + 1e-300))
        u_new = u + jnp.asarray(step, dtype)
        f_new, g_new, H_new = _fou_value_grad_hess(u_new, *args)
        return (u_new, f_new, g_new, H_new), -float(f_new)

    def adapt(accepted, lam, cur, new):
        return (max(lam / 4, 1e-12) if accepted else min(lam * 8, 1e6)), False

    (u, f, gr, Hs), _, trace = backoff_ascent(
        propose,
        (u, f, gr, Hs),
        -float(f),
        int(num_iters),
        1e-3,
        lambda cur, new: new >= cur,
        adapt,
        retry=False,
        converged=converged,
        desc="fou_mle",
    )
    it = trace.num_attempts
    H, sigma, theta = _fou_unpack(u, delta, estimate_theta)
    cov = np.linalg.inv(np.asarray(Hs, float))
    hsd = float(H) * (1 - float(H)) * np.sqrt(abs(cov[0, 0]))
    return FOUFit(H, sigma, theta, -f, jnp.asarray(hsd, dtype), jnp.linalg.norm(gr), it)


def _fou_unpack(u, delta, estimate_theta):
    H = jax.nn.sigmoid(u[0])
    sigma = jnp.exp(u[1]) * jnp.asarray(delta, u.dtype) ** (-H)
    theta = jnp.exp(u[2]) if estimate_theta else jnp.zeros((), u.dtype)
    return H, sigma, theta


@functools.partial(jax.jit, static_argnames=("grid", "kind", "estimate_theta"))
def _fou_value_grad_hess(u, y, gammas, horizon, noise_std, x0_std, grid, kind, estimate_theta):
    """Negative log-likelihood, gradient and central-difference Hessian (of the gradient).

    One batched gradient at ``u`` and ``u +- eps e_j``: much cheaper to compile than
    forward-over-reverse ``jax.hessian`` through the Kalman scan (minutes on CPU).
    """
    times = np.asarray(grid)
    delta = (times[-1] - times[0]) / (times.size - 1)

    def nll(v):
        H, sigma, theta = _fou_unpack(v, delta, estimate_theta)
        return -jnp.sum(_fou_paths_log_likelihood(theta, sigma, H, times, y, gammas, horizon, kind, x0_std, noise_std))

    p = u.shape[0]
    eps = 1e-3 if u.dtype == jnp.float64 else 3e-2
    E = eps * jnp.eye(p, dtype=u.dtype)
    pts = jnp.concatenate([u[None], u + E, u - E], axis=0)
    f, g = jax.lax.map(jax.value_and_grad(nll), pts)
    Hs = (g[1 : p + 1] - g[p + 1 :]) / (2 * eps)
    return f[0], g[0], 0.5 * (Hs + Hs.T)


def fou_posterior_marginals(
    theta, sigma, hurst, times, y, gammas, horizon=None, kind: str = "type1", x0_std=0.0, noise_std=1e-3
):
    """Exact smoothed ``(mean (T,), sd (T,))`` of ``X`` under the MA-fBM fOU (Kalman smoother)."""
    times = jnp.asarray(check_times(times))
    if horizon is None:
        horizon = float(np.asarray(times[-1] - times[0]))
    ssm = _fou_ssm(theta, sigma, hurst, times - times[0], gammas, horizon, kind, x0_std, noise_std)
    s = kalman.smoother(ssm, jnp.asarray(y)[:, None])
    return s.mean[:, 0], jnp.sqrt(s.cov[:, 0, 0])


def fou_numpyro_model(
    times, y, gammas, horizon=None, kind: str = "type1", noise_std=1e-3, x0_std=0.0, estimate_theta: bool = True
):
    """numpyro program: priors on ``(theta, sigma, H)``, exact MA-fBM likelihood by Kalman.

    ``y`` is (T,) or (P, T) (independent paths sharing the parameters). Priors:
    ``H ~ Uniform(0.05, 0.95)``, ``sigma ~ LogNormal(0, 1)``, ``theta ~ HalfNormal(2)``
    (``theta = 0`` when ``estimate_theta=False``). Run it with :func:`probdyn.inference.mcmc.sample`.
    """
    import numpyro
    import numpyro.distributions as dist

    from probdyn._checks import fix_lazy_numpyro

    fix_lazy_numpyro()

    times = jnp.asarray(times)
    y = jnp.atleast_2d(jnp.asarray(y))
    H = numpyro.sample("H", dist.Uniform(0.05, 0.95))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    theta = numpyro.sample("theta", dist.HalfNormal(2.0)) if estimate_theta else 0.0
    if horizon is None:
        horizon = float(np.asarray(times[-1] - times[0]))
    ll = _fou_paths_log_likelihood(theta, sigma, H, times, y, gammas, horizon, kind, x0_std, noise_std)
    numpyro.factor("loglik", jnp.sum(ll))
