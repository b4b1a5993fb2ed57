"""probdyn: probabilistic dynamical systems in JAX.

Markov Gaussian processes, linear and nonlinear state-space models and SDEs, and the
inference engines that fit them, all built on one linear-Gaussian state-space engine
(:mod:`probdyn.inference.kalman`).
"""

from probdyn import kernels
from probdyn.gp import MarkovGP
from probdyn.inference import kalman
from probdyn.ssm import LTISDE, LinearGaussianSSM, TransitionBasis, discretise

__version__ = "0.1.0"

__all__ = ["kernels", "kalman", "MarkovGP", "LinearGaussianSSM", "LTISDE", "TransitionBasis", "discretise"]
