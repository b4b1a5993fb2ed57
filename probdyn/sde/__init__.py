"""Nonlinear SDEs: definitions, simulation and fractional (Markov-approximate fBM) noise."""

from .base import SDE, check_drift, euler_maruyama, simulate_diffrax, solve_ode
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

__all__ = [
    "SDE",
    "check_drift",
    "euler_maruyama",
    "simulate_diffrax",
    "solve_ode",
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
