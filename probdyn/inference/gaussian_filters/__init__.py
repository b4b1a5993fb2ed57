r"""Gaussian filters for nonlinear state-space models, their observation models, and the
numpyro distributions whose densities they give.

* :mod:`~probdyn.inference.gaussian_filters.continuous`: the continuous–discrete filter
  :func:`filter` and RTS :func:`smoother` for an Itô SDE observed at sorted times (moment ODEs
  by RK4, or exact discretisation of the local linearisation; EKF / UKF / cubature /
  Gauss–Hermite expectations; Särkkä & Solin 2019, ch. 9);
* :mod:`~probdyn.inference.gaussian_filters.discrete`: :func:`discrete_filter` for
  ``x_{k+1} = g(x_k, k) + N(0, Q_k)``;
* :mod:`~probdyn.inference.gaussian_filters.iterated`: the iterated extended Kalman smoother
  :func:`iterated_smoother` (Gauss–Newton / Levenberg–Marquardt on the MAP trajectory) and the
  iterated posterior-linearisation smoother :func:`iterated_posterior_linearisation_smoother`
  (sigma-point SLR under the current smoothing marginals), each step one linearised Kalman
  smoother, sequential or parallel in time; :mod:`~probdyn.inference.gaussian_filters.iterated_sde`
  runs both for SDEs on the Euler sub-step grid (:func:`iterated_sde_smoother`);
* :mod:`~probdyn.inference.gaussian_filters.particle`: bootstrap :func:`particle_filter` and
  the scalar FFBSm :func:`particle_smoother_scalar` (independent references);
* :mod:`~probdyn.inference.gaussian_filters.observations`: ``p(y_t | x_t)`` models with their
  measurement updates (:class:`LinearGaussian`, :class:`LogNormal` exact; :class:`Poisson`,
  :class:`LogDensity` Laplace);
* :mod:`~probdyn.inference.gaussian_filters.distributions`: :class:`SDEFilterDistribution`,
  :class:`DiscreteFilterDistribution` (the filters' log marginal likelihoods as numpyro
  likelihoods) and :class:`IteratedSmootherDistribution` (the likelihood linearised at the IEKS
  MAP path, :func:`linearised_log_likelihood`);
* :mod:`~probdyn.inference.gaussian_filters.common`: result types, sigma-point rules and the
  input checks all of them share.

Every filter's objective is its approximate log marginal likelihood, the sum of the one-step
predictive densities (``GaussianFilterResult.log_likelihood``). Everything public is re-exported here:
``from probdyn.inference import gaussian_filters as gf``.
"""

from probdyn.inference.gaussian_filters.common import (
    METHODS,
    PROPAGATIONS,
    GaussianFilterResult,
    GaussianSmootherResult,
    sigma_points,
)
from probdyn.inference.gaussian_filters.continuous import filter, smoother
from probdyn.inference.gaussian_filters.discrete import discrete_filter
from probdyn.inference.gaussian_filters.distributions import (
    DiscreteFilterDistribution,
    IteratedSmootherDistribution,
    SDEFilterDistribution,
)
from probdyn.inference.gaussian_filters.iterated import (
    IteratedSmootherResult,
    PosteriorLinearisationResult,
    iterated_posterior_linearisation_smoother,
    iterated_smoother,
    linearised_log_likelihood,
)
from probdyn.inference.gaussian_filters.iterated_sde import SDESmootherResult, iterated_sde_smoother, substep_grid
from probdyn.inference.gaussian_filters.observations import (
    LinearGaussian,
    LogDensity,
    LogNormal,
    ObservationModel,
    Poisson,
    laplace_update,
)
from probdyn.inference.gaussian_filters.particle import particle_filter, particle_smoother_scalar

__all__ = [
    "GaussianFilterResult",
    "GaussianSmootherResult",
    "filter",
    "smoother",
    "discrete_filter",
    "iterated_smoother",
    "IteratedSmootherResult",
    "linearised_log_likelihood",
    "iterated_posterior_linearisation_smoother",
    "PosteriorLinearisationResult",
    "iterated_sde_smoother",
    "SDESmootherResult",
    "substep_grid",
    "particle_filter",
    "particle_smoother_scalar",
    "sigma_points",
    "METHODS",
    "PROPAGATIONS",
    "ObservationModel",
    "LinearGaussian",
    "LogNormal",
    "Poisson",
    "LogDensity",
    "laplace_update",
    "SDEFilterDistribution",
    "DiscreteFilterDistribution",
    "IteratedSmootherDistribution",
]


def __getattr__(name):
    if name in ("FilterResult", "SmootherResult"):  # old names, one release
        import warnings

        new = "Gaussian" + name
        warnings.warn(
            f"probdyn.inference.gaussian_filters.{name} is deprecated (it shared its name with "
            f"probdyn.inference.kalman.{name}); use {new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module 'probdyn.inference.gaussian_filters' has no attribute {name!r}")
