"""Nonlinear SDEs: definitions, simulation, ODE solves (one entry point, :func:`solve_ode`) and
fractional (Markov-approximate fBM) noise."""

from .base import SDE, check_drift, euler_maruyama, euler_maruyama_interval, simulate_diffrax
from .fractional import (
    MAFBMLTI,
    MAFBMSystem,
    fbm_covariance,
    fbm_scale,
    fbm_variance,
    gamma_grid,
    ma_fbm_covariance,
    ma_fbm_initial_cov,
    ma_fbm_linear_sde,
    ma_fbm_lti,
    ma_fbm_system,
    ma_fbm_weights,
    optimal_weights,
    relative_integrated_mse,
    sample_fbm,
)
from .ode import SolverFailureCounter, solve_ode, solver_failures

__all__ = [
    "SDE",
    "check_drift",
    "euler_maruyama",
    "euler_maruyama_interval",
    "simulate_diffrax",
    "solve_ode",
    "solver_failures",
    "SolverFailureCounter",
    "MAFBMLTI",
    "MAFBMSystem",
    "fbm_covariance",
    "fbm_scale",
    "fbm_variance",
    "gamma_grid",
    "ma_fbm_covariance",
    "ma_fbm_initial_cov",
    "ma_fbm_linear_sde",
    "ma_fbm_lti",
    "ma_fbm_system",
    "ma_fbm_weights",
    "optimal_weights",
    "relative_integrated_mse",
    "sample_fbm",
]
