r"""Gauss–Markov variational posteriors for SDEs observed at discrete times.

Model: ``dx = f(x, t) dt + L dW``, ``x(t_0) ~ N(mu_0, P_0)``, ``y_i ~ p(y_i | H x(t_i))``,
with additive diffusion (``L L^T`` positive definite), on a time grid containing the
observation times. Two variational families fit it:

* :class:`SparseGPSDE` (:mod:`~probdyn.models.sde_posteriors.sparse_gp`): Verma, Adam &
  Solin, "Sparse Gaussian processes for SDEs" (2021) and "Variational Gaussian process
  diffusion processes" (AISTATS 2024) — a Gauss–Markov chain over (dense or sparse) inducing
  states with bridges of the re-linearised prior in between, fitted by CVI natural-gradient
  site updates (:mod:`probdyn.inference.natgrad`); the ELBO (Girsanov split into an exact
  linear part and a discretised nonlinear residual) is ``SparseGPSDE.elbo``, derived in the
  module docstring of :mod:`~probdyn.models.sde_posteriors.sparse_gp`;
* :class:`VGPA` (:mod:`~probdyn.models.sde_posteriors.vgpa`): Archambeau, Cornford, Opper &
  Shawe-Taylor (2007), the linear time-varying posterior SDE, fitted by the paper's
  forward–backward smoothing iterations; its free energy is ``VGPA.elbo`` (module docstring).

Shared pieces: :class:`ObservedSDEModel` and :func:`check_observed_sde` (the validated
problem and its observation terms, :mod:`~probdyn.models.sde_posteriors.observed`), the drift
families, grids, exact linear discretisation and statistical linearisation
(:mod:`~probdyn.models.sde_posteriors.drifts`), the inducing-state bridges
(:mod:`~probdyn.models.sde_posteriors.bridges`) and variational EM for the drift
parameters (:func:`variational_em`, :mod:`~probdyn.models.sde_posteriors.em`).

Everything public is re-exported here: ``from probdyn.models import sde_posteriors as sp``.
"""

from probdyn.models.sde_posteriors import bridges as _bridges
from probdyn.models.sde_posteriors import drifts as _drifts
from probdyn.models.sde_posteriors import em as _em
from probdyn.models.sde_posteriors import observed as _observed
from probdyn.models.sde_posteriors import sparse_gp as _sparse_gp
from probdyn.models.sde_posteriors import vgpa as _vgpa
from probdyn.models.sde_posteriors.bridges import *  # noqa: F401,F403
from probdyn.models.sde_posteriors.drifts import *  # noqa: F401,F403
from probdyn.models.sde_posteriors.em import *  # noqa: F401,F403
from probdyn.models.sde_posteriors.observed import *  # noqa: F401,F403
from probdyn.models.sde_posteriors.sparse_gp import *  # noqa: F401,F403
from probdyn.models.sde_posteriors.vgpa import *  # noqa: F401,F403

__all__ = (
    list(_sparse_gp.__all__)
    + list(_vgpa.__all__)
    + list(_observed.__all__)
    + list(_drifts.__all__)
    + list(_em.__all__)
    + list(_bridges.__all__)
)
