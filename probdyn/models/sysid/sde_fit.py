"""Fitting a built-in SDE drift family to one observed series, and its smoothed forecast.

What ``probdyn fit --model sde`` runs, as library functions:

* :func:`observation_for`: the observation model of a built-in system for data ``y`` (T, p)
  (log-normal counts for the Lotka–Volterra log-population state, Gaussian otherwise);
* :func:`parameterised_sde`: ``pars -> SDE`` from a dict of positive parameter values;
* :func:`sde_posterior`: NUTS or mean-field SVI over those parameters, priors
  ``LogNormal(log nominal, 1)``, likelihood the continuous–discrete EKF;
* :func:`fit_sde`: maximum likelihood (:func:`~probdyn.models.sysid.fit.fit_map`), then
  optionally the posterior started there, as an :class:`SDEFit`;
* :func:`forecast_sde`: the smoother's moments of the observed coordinates over the data and a
  forecast horizon (future rows are missing data), mixed over posterior draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn.inference.gaussian_filters import observations as obs_lib
from probdyn.models.sysid.drifts import MechanisticDrift
from probdyn.models.sysid.fit import FitInfo, fit_map, initial_prior
from probdyn.models.sysid.models import SDEModel
from probdyn.models.sysid.systems import get_system
from probdyn.sde import SDE

__all__ = ["observation_for", "parameterised_sde", "sde_posterior", "SDEFit", "fit_sde", "SDEForecast", "forecast_sde"]

ENGINES = ("map", "svi", "nuts")


def observation_for(system, y) -> obs_lib.ObservationModel:
    """The observation model for data ``y`` (T, p) of a built-in ``system`` (a name or a
    :class:`~probdyn.models.sysid.systems.System`): ``LogNormal(H, 0.25)`` for
    ``lotka_volterra`` (its state is the log populations; the data must be positive),
    ``LinearGaussian(H, obs_sd^2)`` otherwise. ``ValueError`` when the system observes a
    different number of coordinates than ``y`` has columns."""
    system = get_system(system) if isinstance(system, str) else system
    H = np.asarray(system.H, float)
    y = np.asarray(y, float)
    if y.ndim != 2 or H.shape[0] != y.shape[1]:
        raise ValueError(
            f"the {system.name} system observes {H.shape[0]} coordinate(s) but the data have shape {y.shape} (T, p)"
        )
    if system.name == "lotka_volterra":
        if np.any(y[np.isfinite(y)] <= 0):
            raise ValueError("the lotka_volterra system models positive populations; the data have values <= 0")
        return obs_lib.LogNormal(jnp.asarray(H), 0.25 * jnp.ones(H.shape[0]))
    return obs_lib.LinearGaussian(jnp.asarray(H), (system.obs_sd**2) * jnp.ones(H.shape[0]))


def parameterised_sde(model: SDEModel) -> Callable[[dict], SDE]:
    """``pars -> SDE``: ``model``'s drift and diffusion with parameters from a dict of positive
    values (the drift's names and ``diffusion_i``, each a scalar); traceable (numpyro, vmap)."""
    names = list(model.drift.log_params)

    def build(pars: dict) -> SDE:
        drift = eqx.tree_at(lambda m: m.log_params, model.drift, {k: jnp.log(pars[k]) for k in names})
        diffusion = jnp.stack([pars[f"diffusion_{i}"] for i in range(model.state_dim)])
        return SDE(drift, diffusion, model.state_dim)

    return build


def sde_posterior(
    system,
    build: Callable[[dict], SDE],
    observation,
    times,
    y,
    m0,
    P0,
    start: dict,
    key: PRNGKeyArray,
    engine: str = "nuts",
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    num_steps: int = 1500,
    learning_rate: float = 0.02,
    progress_bar: bool = False,
):
    """Posterior over the positive drift parameters and diffusions of ``system`` as an arviz
    ``InferenceData``: priors ``LogNormal(log nominal, 1)`` (the system's parameters and mean
    diffusion), likelihood the continuous–discrete EKF
    (:class:`~probdyn.inference.gaussian_filters.SDEFilterDistribution`, default step plan),
    by NUTS (``num_chains`` chains) or SVI with a mean-field normal guide (200 draws); both
    start at ``start`` (e.g. the maximum-likelihood values). ``times`` (T,), ``y`` (T, p),
    ``m0`` (d,), ``P0`` (d, d)."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import init_to_value

    from probdyn.inference import mcmc, variational
    from probdyn.inference.gaussian_filters import SDEFilterDistribution

    if engine not in ("nuts", "svi"):
        raise ValueError(f"engine must be 'nuts' or 'svi', got {engine!r}")
    system = get_system(system) if isinstance(system, str) else system
    loc = {k: float(np.log(v)) for k, v in system.params.items()}
    loc.update({f"diffusion_{i}": float(np.log(np.mean(system.diffusion))) for i in range(system.state_dim)})

    def model(times, obs=None):
        pars = {
            k: numpyro.sample(k, dist.LogNormal(jnp.asarray(m, jnp.result_type(float)), 1.0)) for k, m in loc.items()
        }
        numpyro.sample("y", SDEFilterDistribution(build(pars), observation, times, m0, P0, method="ekf"), obs=obs)

    # numpyro annotates init_to_value's result as optional (None only when called without values)
    init: Any = init_to_value(values={k: jnp.asarray(v) for k, v in start.items()})
    if engine == "nuts":
        return mcmc.sample(
            model,
            key,
            times,
            y,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            init_strategy=init,
            progress_bar=progress_bar,
        )
    return variational.svi(
        model,
        key,
        times,
        y,
        guide="normal",
        guide_kwargs={"init_loc_fn": init},
        optimizer=learning_rate,
        num_steps=num_steps,
        progress_bar=progress_bar,
        num_posterior_samples=200,
    ).idata


class SDEFit(NamedTuple):
    """Result of :func:`fit_sde`: ``idata`` (the posterior, or the ML point as one draw),
    ``map`` (the maximum-likelihood :class:`~probdyn.models.sysid.fit.FitInfo`),
    ``parameters`` (ML values by name), ``build`` (``pars -> SDE``), ``observation``, the
    initial prior ``m0`` (d,), ``P0`` (d, d), ``engine`` and ``wall_time_s``."""

    idata: Any
    map: FitInfo
    parameters: dict
    build: Callable[[dict], SDE]
    observation: Any
    m0: Array
    P0: Array
    engine: str
    wall_time_s: float


def fit_sde(
    system,
    times,
    y,
    key: PRNGKeyArray,
    engine: str = "map",
    num_steps: int = 1500,
    learning_rate: float = 0.02,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    progress_bar: bool = False,
) -> SDEFit:
    """Fit the drift family of a built-in ``system`` (name or System) to ``times`` (T,), ``y``
    (T, p) by its continuous–discrete EKF likelihood: maximum likelihood by Adam
    (``num_steps``, ``learning_rate``) from the system's nominal parameters, then, for
    ``engine="nuts"`` / ``"svi"``, the posterior of :func:`sde_posterior` started there.
    Times are shifted to start at 0 (the built-in drifts do not depend on time); their unit
    is the unit of the drift's rates."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    system = get_system(system) if isinstance(system, str) else system
    ob = observation_for(system, y)
    t = np.asarray(times, float)
    tt, yy = jnp.asarray(t - t[0]), jnp.asarray(y)  # shifted: an offset (e.g. Unix seconds) keeps its spacings
    model = SDEModel(
        MechanisticDrift(system.drift, dict(system.params)), float(np.mean(system.diffusion)), system.state_dim
    )
    t0 = time.perf_counter()
    k_map, k_post = jax.random.split(key)
    try:
        info = fit_map(
            model, ob, tt, yy, k_map, num_steps=num_steps, learning_rate=learning_rate, progress_bar=progress_bar
        )
    except FloatingPointError as e:
        spacing = float(np.median(np.diff(t)))
        raise ValueError(
            f"the {system.name} fit failed ({e}); its starting rates {dict(system.params)} are per unit "
            f"of time and suit spacings near {system.dt_train}, the data's median spacing is "
            f"{spacing:.3g}: give times in a unit where the spacing is of that order"
        ) from None
    fitted = {k: float(jnp.exp(v)) for k, v in info.model.drift.log_params.items()}
    for i, v in enumerate(np.exp(np.asarray(info.model.log_diffusion))):
        fitted[f"diffusion_{i}"] = float(v)
    m0, P0 = initial_prior(ob, yy[0], system.state_dim, 1.0)
    build = parameterised_sde(info.model)
    if engine == "map":
        import arviz as az

        idata = az.from_dict({"posterior": {k: np.array([[v]]) for k, v in fitted.items()}})
    else:
        idata = sde_posterior(
            system,
            build,
            ob,
            tt,
            yy,
            m0,
            P0,
            fitted,
            k_post,
            engine,
            num_warmup,
            num_samples,
            num_chains,
            num_steps,
            learning_rate,
            progress_bar,
        )
    return SDEFit(idata, info, fitted, build, ob, m0, P0, engine, time.perf_counter() - t0)


class SDEForecast(NamedTuple):
    """Moments of the observed coordinates ``H x`` at ``times`` (n,): ``mean`` and ``sd``
    (n, p), mixed over posterior draws. For a log-normal observation model they are on the
    log scale of the data (exponentiate ``mean +- 2 sd`` for bands on the data's scale:
    ``log_scale`` is then ``True``). ``last_data_time`` separates fit from forecast."""

    times: Float[np.ndarray, " n"]
    mean: Float[np.ndarray, "n p"]
    sd: Float[np.ndarray, "n p"]
    log_scale: bool
    last_data_time: float


def forecast_sde(fit: SDEFit, times, y, horizon: float | None = None, num_draws: int = 32) -> SDEForecast:
    """The smoother over the data ``times`` (T,), ``y`` (T, p) continued ``horizon`` time units
    past the last time (default 10 % of the span) at the median data spacing; moments of the
    observed coordinates mixed over up to ``num_draws`` posterior draws of ``fit.idata``."""
    from probdyn.inference import gaussian_filters as gf

    t = np.asarray(times, float)
    span = float(t[-1] - t[0])
    horizon = 0.1 * span if horizon is None else float(horizon)
    if not np.isfinite(horizon) or horizon < 0:
        raise ValueError(f"horizon must be a finite number >= 0, got {horizon}")
    dt = float(np.median(np.diff(t)))
    n_h = int(round(horizon / dt))
    tt, yy = jnp.asarray(t - t[0]), jnp.asarray(y)  # shifted as in fit_sde
    t_ext = jnp.concatenate([tt, tt[-1] + dt * jnp.arange(1, n_h + 1, dtype=tt.dtype)])
    y_ext = jnp.concatenate([yy, jnp.full((n_h, yy.shape[1]), jnp.nan, yy.dtype)])
    post = fit.idata.posterior
    draws = {k: np.asarray(post[k]).reshape(-1) for k in post.data_vars}
    n = len(next(iter(draws.values())))
    sel = np.linspace(0, n - 1, min(n, num_draws)).astype(int)
    H = jnp.asarray(fit.observation.H)

    def smooth(pars):
        sm = gf.smoother(fit.build(pars), fit.observation, t_ext, y_ext, fit.m0, fit.P0, method="ekf")
        return sm.mean @ H.T, jnp.einsum("pd,tde,pe->tp", H, sm.cov, H)

    ms, vs = jax.vmap(smooth)({k: jnp.asarray(v[sel]) for k, v in draws.items()})
    ms, vs = np.asarray(ms), np.asarray(vs)
    sd = np.sqrt(vs.mean(0) + ms.var(0))  # the mixture over posterior draws
    return SDEForecast(
        np.asarray(t_ext, float) + t[0], ms.mean(0), sd, isinstance(fit.observation, obs_lib.LogNormal), float(t[-1])
    )
