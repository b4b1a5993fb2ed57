r"""Bayesian system identification: continuous- vs discrete-time models of the same system.

Following Cheema & Rasmussen (2022), the same dynamical system can be learnt as

* a **continuous-time** model — an ODE ``dx/dt = f_theta(x, t)`` with unknown initial state
  (:class:`ODEModel`, adaptive embedded Runge–Kutta solve with fused forward sensitivities,
  :func:`probdyn.sde.solve_ode`; failures rejected)
  or an SDE ``dx = f_theta(x, t) dt + L_theta dW`` (:class:`SDEModel`, marginal likelihood
  by the continuous–discrete Gaussian filters of :mod:`probdyn.inference.gaussian_filters`);
* a **discrete-time** model ``x_{k+1} = g_theta(x_k) + q_k`` (:class:`DiscreteModel`):
  ``kind="direct"`` (``g`` learnt directly: an MLP or a mechanistic map, e.g. AR(1)),
  ``kind="euler"`` (``g(x) = x + dt_train f_theta(x)``: an Euler step at the *training*
  spacing, applied once per observation whatever the actual spacing — the naive model), and
  ``kind="time_aware"`` (the modification that makes the discrete model aware of time:
  ``num_substeps`` Euler sub-steps of ``dt_k / n`` between observations and process noise
  ``Q dt_k`` scaled with the step).

The objective is each model's filter log-likelihood (``log_likelihood`` methods in
:mod:`~probdyn.models.sysid.models`), maximised by :func:`fit_map`
(:mod:`~probdyn.models.sysid.fit`, through :func:`probdyn.inference.optimize.fit`) or
sampled with NUTS through numpyro programs whose likelihoods are
:class:`probdyn.inference.gaussian_filters.SDEFilterDistribution` /
:class:`~probdyn.inference.gaussian_filters.DiscreteFilterDistribution`.

Modules:

* :mod:`~probdyn.models.sysid.drifts`: mechanistic, neural and summed drifts; directly
  learnt maps (:class:`AR1Map`, :class:`ResidualMLP`);
* :mod:`~probdyn.models.sysid.models`: :class:`ODEModel`, :class:`SDEModel`,
  :class:`DiscreteModel`, :func:`check_data`, :func:`simulate_observations`;
* :mod:`~probdyn.models.sysid.fit`: :func:`fit_map`, :func:`forecast`, :func:`initial_prior`;
* :mod:`~probdyn.models.sysid.sde_fit`: :func:`fit_sde` (a built-in drift family fitted to one
  series: maximum likelihood, then NUTS / SVI) and :func:`forecast_sde` (the smoothed forecast);
* :mod:`~probdyn.models.sysid.systems`: the built-in ground-truth systems (:data:`SYSTEMS`);
* :mod:`~probdyn.models.sysid.equivalence`: the exact OU / AR(1) check :func:`ou_ar1_check`;
* :mod:`~probdyn.models.sysid.harness`: :func:`compare` = :func:`simulate_data` ->
  :func:`fit_models` -> :func:`score_forecasts` -> :func:`report`.

* :mod:`~probdyn.models.sysid.lotka_volterra`: the posteriordb Lotka–Volterra program
  :func:`lotka_volterra` and its reference posterior.

Everything public is re-exported here: ``from probdyn.models import sysid``.
"""

from probdyn.models.sysid import drifts as _drifts
from probdyn.models.sysid import equivalence as _equivalence
from probdyn.models.sysid import fit as _fit
from probdyn.models.sysid import harness as _harness
from probdyn.models.sysid import lotka_volterra as _lotka_volterra
from probdyn.models.sysid import models as _models
from probdyn.models.sysid import sde_fit as _sde_fit
from probdyn.models.sysid import systems as _systems
from probdyn.models.sysid.drifts import *  # noqa: F401,F403
from probdyn.models.sysid.equivalence import *  # noqa: F401,F403
from probdyn.models.sysid.fit import *  # noqa: F401,F403
from probdyn.models.sysid.harness import *  # noqa: F401,F403
from probdyn.models.sysid.lotka_volterra import *  # noqa: F401,F403
from probdyn.models.sysid.models import *  # noqa: F401,F403
from probdyn.models.sysid.sde_fit import *  # noqa: F401,F403
from probdyn.models.sysid.systems import *  # noqa: F401,F403
from probdyn.sde.ode import SolverFailureCounter, solver_failures  # noqa: F401

__all__ = (
    list(_drifts.__all__)
    + list(_models.__all__)
    + list(_fit.__all__)
    + list(_equivalence.__all__)
    + list(_harness.__all__)
    + list(_systems.__all__)
    + list(_lotka_volterra.__all__)
    + list(_sde_fit.__all__)
    + ["solver_failures", "SolverFailureCounter"]
)


def __getattr__(name):
    if name == "ode_solve":  # deprecated for one release: the one entry point is probdyn.sde.solve_ode
        from probdyn.models.sysid_ode import ode_solve

        return ode_solve
    raise AttributeError(f"module 'probdyn.models.sysid' has no attribute {name!r}")
