r"""Variational inference for numpyro programs (stochastic VI with optax).

:func:`svi` fits a guide (a numpyro autoguide, by name or class, or a custom guide
program) to ``model(*args, **kwargs)`` by maximising the ELBO with an optax optimiser, and
returns the fitted parameters, the ELBO trace and the approximate posterior as
ArviZ ``xarray.DataTree`` (one chain of ``num_posterior_samples`` independent draws, same
groups as :func:`probdyn.inference.mcmc.sample` minus ``sample_stats``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple, SupportsInt

import jax
import jax.numpy as jnp
import optax
import xarray as xr
from jaxtyping import Array, Float
from numpyro import handlers
from numpyro.infer import SVI, Predictive, Trace_ELBO, autoguide
from numpyro.optim import _NumPyroOptim, optax_to_numpyro

from probdyn._checks import as_key, check_int, fix_lazy_numpyro
from probdyn._typing import KeyInput
from probdyn.inference.mcmc import to_inference_data

fix_lazy_numpyro()

__all__ = ["SVIResult", "svi", "posterior_idata", "make_guide", "AUTOGUIDES"]

AUTOGUIDES: dict[str, type] = {
    "normal": autoguide.AutoNormal,
    "mvn": autoguide.AutoMultivariateNormal,
    "multivariate_normal": autoguide.AutoMultivariateNormal,
    "lowrank": autoguide.AutoLowRankMultivariateNormal,
    "low_rank_multivariate_normal": autoguide.AutoLowRankMultivariateNormal,
    "delta": autoguide.AutoDelta,
    "laplace": autoguide.AutoLaplaceApproximation,
}


class SVIResult(NamedTuple):
    """Output of :func:`svi`.

    params: fitted guide parameters (dict); elbo: (num_steps,) ELBO trace (``-loss``);
    guide: the guide used; idata: approximate posterior as ArviZ's ``xarray.DataTree``;
    state: the final ``SVIState``; time_s: wall time of the optimisation (incl. compile).
    """

    params: dict
    elbo: Float[Array, " num_steps"]
    guide: Callable
    idata: xr.DataTree
    state: Any
    time_s: float


def make_guide(model: Callable, guide: str | type | Callable = "normal", **guide_kwargs) -> Callable:
    """Resolve ``guide``: an autoguide name (see :data:`AUTOGUIDES`), an ``AutoGuide`` class
    (instantiated with ``model`` and ``guide_kwargs``), or a guide (instance/callable) as is."""
    if isinstance(guide, str):
        if guide.lower() not in AUTOGUIDES:
            raise ValueError(f"unknown guide {guide!r}; choose one of {sorted(AUTOGUIDES)} or pass a guide")
        return AUTOGUIDES[guide.lower()](model, **guide_kwargs)
    if isinstance(guide, type):
        if not issubclass(guide, autoguide.AutoGuide):
            raise TypeError(f"guide class must subclass numpyro AutoGuide, got {guide.__name__}")
        return guide(model, **guide_kwargs)
    if not callable(guide):
        raise TypeError(f"guide must be a name, an AutoGuide class or a callable, got {type(guide).__name__}")
    if guide_kwargs:
        raise ValueError("guide_kwargs only apply when guide is an autoguide name or class")
    return guide


def _optimizer(opt):
    if isinstance(opt, (int, float)):
        if opt <= 0:
            raise ValueError(f"learning rate must be positive, got {opt}")
        return optax_to_numpyro(optax.adam(float(opt)))
    if isinstance(opt, optax.GradientTransformation):
        return optax_to_numpyro(opt)
    if isinstance(opt, _NumPyroOptim):
        return opt
    raise TypeError("optimizer must be an optax GradientTransformation, a numpyro optimizer or a learning rate")


def svi(
    model: Callable,
    key: KeyInput,
    *args: Any,
    guide: str | type | Callable = "normal",
    optimizer: optax.GradientTransformation | float = 1e-2,
    num_steps: SupportsInt = 2000,
    num_particles: SupportsInt = 1,
    loss=None,
    progress_bar: bool = True,
    num_posterior_samples: SupportsInt = 1000,
    guide_kwargs: dict | None = None,
    log_likelihood: bool = True,
    stable_update: bool = True,
    **kwargs: Any,
) -> SVIResult:
    """Stochastic variational inference on ``model(*args, **kwargs)``.

    Args:
        guide: autoguide name (``"normal"``, ``"mvn"``, ``"lowrank"``, ``"delta"``,
            ``"laplace"``), an ``AutoGuide`` class, or a custom guide (callable with the
            model's signature, parameters via ``numpyro.param``).
        optimizer: optax transformation (or a learning rate for Adam).
        num_steps: optimisation steps; num_particles: ELBO Monte Carlo particles.
        loss: a numpyro ELBO (default ``Trace_ELBO(num_particles)``).
        progress_bar: numpyro's tqdm progress bar (shows the running loss).
        num_posterior_samples: draws of the fitted guide stored in ``idata``.
        stable_update: skip updates whose loss/grad is not finite.
    """
    num_steps = check_int(num_steps, "num_steps", 1)
    num_particles = check_int(num_particles, "num_particles", 1)
    num_posterior_samples = check_int(num_posterior_samples, "num_posterior_samples", 1)
    key = as_key(key)
    g = make_guide(model, guide, **(guide_kwargs or {}))
    loss = Trace_ELBO(num_particles=num_particles) if loss is None else loss
    engine = SVI(model, g, _optimizer(optimizer), loss)
    kfit, kpost = jax.random.split(key)
    t0 = time.perf_counter()
    res = engine.run(kfit, num_steps, *args, progress_bar=progress_bar, stable_update=stable_update, **kwargs)
    jax.block_until_ready(res.losses)
    elapsed = time.perf_counter() - t0
    idata = posterior_idata(
        model, g, res.params, kpost, *args, num_samples=num_posterior_samples, log_likelihood=log_likelihood, **kwargs
    )
    idata.attrs.update(
        method="svi",
        guide=type(g).__name__ if isinstance(g, autoguide.AutoGuide) else getattr(g, "__name__", "custom"),
        num_steps=num_steps,
        time_s=float(elapsed),
        final_elbo=float(-res.losses[-1]),
    )
    return SVIResult(res.params, -res.losses, g, idata, res.state, elapsed)


def posterior_idata(
    model: Callable,
    guide: Callable,
    params: dict,
    key: KeyInput,
    *args: Any,
    num_samples: int = 1000,
    log_likelihood: bool = True,
    **kwargs: Any,
) -> xr.DataTree:
    """Draws of a fitted ``guide`` (plus the model's deterministic sites) as a ``DataTree``
    with one chain; observed sites give ``observed_data`` and the pointwise ``log_likelihood``."""
    tr = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
    latent = [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
    determ = [n for n, s in tr.items() if s["type"] == "deterministic"]
    k1, k2 = jax.random.split(key)
    draws = Predictive(guide, params=params, num_samples=num_samples, return_sites=latent)(k1, *args, **kwargs)
    missing = [n for n in latent if n not in draws]
    if missing:
        raise ValueError(f"guide does not sample the latent sites {missing}")
    if determ:
        draws.update(Predictive(model, posterior_samples=draws, return_sites=determ)(k2, *args, **kwargs))
    samples = {n: jnp.asarray(v)[None] for n, v in draws.items()}
    return to_inference_data(model, samples, *args, log_likelihood=log_likelihood, **kwargs)


# ----------------------------------------------------------------------------------
# Natural-gradient (CVI) site updates: the generic machinery lives in
# :mod:`probdyn.inference.natgrad` and is re-exported here.
# ----------------------------------------------------------------------------------
from probdyn.inference.natgrad import (  # noqa: E402
    GaussianSites,
    GaussMarkovChain,
    NatGradTrace,
    QuadratureRule,
    condition_chain,
    cubature,
    cvi_site_target,
    damped,
    gauss_hermite,
    gaussian_expectation,
    natural_from_moment_gradients,
    natural_gradient_ascent,
)

__all__ += [
    "GaussianSites",
    "GaussMarkovChain",
    "NatGradTrace",
    "QuadratureRule",
    "condition_chain",
    "cubature",
    "cvi_site_target",
    "damped",
    "gauss_hermite",
    "gaussian_expectation",
    "natural_from_moment_gradients",
    "natural_gradient_ascent",
]
