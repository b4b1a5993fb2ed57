r"""Built-in ground-truth systems for :func:`probdyn.models.sysid.compare`.

Each :class:`System` is a continuous-time Itô SDE ``dx = f(x, t; theta) dt + diag(s) dW``
with a mechanistic drift ``f(x, t, params)`` over a dict of *positive* parameters, the
values used to simulate data, a default observation matrix (partial observation where
natural) and noise, and default spacings/lengths.

=================  ===  ===========================================================  ========
system             d    drift                                                        observed
=================  ===  ===========================================================  ========
ornstein_uhlenbeck 1    ``-lam x``                                                   x
damped_pendulum    2    ``(w, -omega^2 sin(q) - c w)``                               angle q
van_der_pol        2    ``(v, mu (1 - u^2) v - u)``                                  u, v
lotka_volterra     2    log-populations ``(alpha - beta e^v, -gamma + delta e^u)``   both
double_well        1    ``a x - b x^3``                                              x
=================  ===  ===========================================================  ========

The Lotka–Volterra system is written for log-populations ``(u, v) = (log prey, log
predator)`` (additive noise in log space = multiplicative noise on the populations), so
log-normal count data are linear-Gaussian in ``log y``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = ["System", "SYSTEMS", "get_system"]


class System(NamedTuple):
    """A ground-truth continuous-time system (see module docstring)."""

    name: str
    state_dim: int
    drift: Callable  # (x (d,), t, params dict) -> (d,)
    params: dict  # true positive parameters
    diffusion: np.ndarray  # (d,) diagonal diffusion of the truth
    x0: np.ndarray  # (d,) initial state of simulated paths
    H: np.ndarray  # (p, d)
    obs_sd: float
    dt_train: float
    dt_test: float
    T_train: float  # time span of the training series
    linear: bool = False


def _ou(x, t, p):
    return -p["lam"] * x


def _pendulum(x, t, p):
    return jnp.stack([x[1], -p["omega2"] * jnp.sin(x[0]) - p["damping"] * x[1]])


def _vdp(x, t, p):
    return jnp.stack([x[1], p["mu"] * (1.0 - x[0] ** 2) * x[1] - x[0]])


def _lv_log(x, t, p):
    return jnp.stack([p["alpha"] - p["beta"] * jnp.exp(x[1]), -p["gamma"] + p["delta"] * jnp.exp(x[0])])


def _double_well(x, t, p):
    return p["a"] * x - p["b"] * x**3


SYSTEMS = {
    "ornstein_uhlenbeck": System(
        "ornstein_uhlenbeck",
        1,
        _ou,
        {"lam": 0.5},
        np.array([0.5]),
        np.array([1.0]),
        np.eye(1),
        0.1,
        1.0,
        0.5,
        150.0,
        linear=True,
    ),
    "damped_pendulum": System(
        "damped_pendulum",
        2,
        _pendulum,
        {"omega2": 4.0, "damping": 0.15},
        np.array([0.02, 0.3]),
        np.array([1.5, 0.0]),
        np.array([[1.0, 0.0]]),
        0.05,
        0.3,
        0.15,
        60.0,
    ),
    "van_der_pol": System(
        "van_der_pol", 2, _vdp, {"mu": 1.5}, np.array([0.05, 0.3]), np.array([2.0, 0.0]), np.eye(2), 0.1, 0.4, 0.2, 60.0
    ),
    "lotka_volterra": System(
        "lotka_volterra",
        2,
        _lv_log,
        {"alpha": 0.55, "beta": 0.028, "gamma": 0.8, "delta": 0.024},
        np.array([0.05, 0.05]),
        np.log(np.array([34.0, 6.0])),
        np.eye(2),
        0.1,
        1.0,
        0.5,
        80.0,
    ),
    "double_well": System(
        "double_well",
        1,
        _double_well,
        {"a": 1.0, "b": 1.0},
        np.array([0.7]),
        np.array([1.0]),
        np.eye(1),
        0.1,
        0.5,
        0.25,
        150.0,
    ),
}


def get_system(name: str) -> System:
    """Look up a built-in system by name (``SYSTEMS`` keys)."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; choose one of {sorted(SYSTEMS)}")
    return SYSTEMS[name]
