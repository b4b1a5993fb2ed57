"""Drifts and discrete maps of the system-identification models.

* :class:`MechanisticDrift`: a user function ``fn(x, t, params)`` with positive parameters;
* :class:`NeuralDrift`: an equinox MLP; :class:`SumDrift`: their sum (e.g. mechanistic +
  neural correction);
* :class:`AR1Map` and :class:`ResidualMLP`: maps ``g(x)`` learnt directly by
  ``DiscreteModel(kind="direct")``.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

__all__ = ["MechanisticDrift", "NeuralDrift", "SumDrift", "AR1Map", "ResidualMLP"]


class MechanisticDrift(eqx.Module):
    """``f(x, t) = fn(x, t, params)`` with positive parameters held on the log scale.

    Args:
        fn: ``(x (d,), t (), params dict) -> (d,)``.
        params: dict of positive initial values (floats or arrays).
    """

    fn: Callable = eqx.field(static=True)
    log_params: dict

    def __init__(self, fn: Callable, params: dict):
        if not callable(fn):
            raise TypeError("fn must be callable as fn(x, t, params)")
        vals = {k: np.asarray(v, float) for k, v in params.items()}
        for k, v in vals.items():
            if not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(f"mechanistic parameter {k!r} must be positive and finite, got {v}")
        self.fn = fn
        self.log_params = {k: jnp.log(jnp.asarray(v)) for k, v in vals.items()}

    @property
    def params(self) -> dict:
        """The positive parameters by name (``exp`` of the learnt logs)."""
        return {k: jnp.exp(v) for k, v in self.log_params.items()}

    def __call__(self, x, t):
        """``f(x, t) = fn(x, t, params)``, shape (d,)."""
        return self.fn(x, t, self.params)


class NeuralDrift(eqx.Module):
    """``f(x, t) = MLP(x)`` (or ``MLP([x, t])`` with ``time_input=True``), an equinox MLP."""

    mlp: eqx.nn.MLP
    time_input: bool = eqx.field(static=True)

    def __init__(
        self,
        state_dim: int,
        key: PRNGKeyArray,
        width: int = 32,
        depth: int = 2,
        time_input: bool = False,
        activation: Callable = jax.nn.tanh,
        scale: float = 0.1,
    ):
        d = int(state_dim)
        mlp = eqx.nn.MLP(d + int(time_input), d, width, depth, activation=activation, key=key)
        # small last layer: the initial drift is close to zero (a random walk)
        mlp = eqx.tree_at(lambda m: m.layers[-1].weight, mlp, mlp.layers[-1].weight * scale)
        self.mlp, self.time_input = mlp, bool(time_input)

    def __call__(self, x, t):
        """The MLP drift at ``(x, t)`` (time an input when ``time_input``), shape (d,)."""
        inp = jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)]) if self.time_input else x
        return self.mlp(inp).astype(x.dtype)


class SumDrift(eqx.Module):
    """``f = f_1 + f_2 + ...`` (e.g. mechanistic + neural correction)."""

    parts: tuple

    def __init__(self, *parts: Callable):
        if not parts or not all(callable(p) for p in parts):
            raise TypeError("SumDrift needs one or more drift callables")
        self.parts = tuple(parts)

    def __call__(self, x, t):
        """The sum of the parts' drifts at ``(x, t)``."""
        return sum(p(x, t) for p in self.parts)


class AR1Map(eqx.Module):
    """``g(x) = a x`` with unconstrained ``a`` (the AR(1) of the OU sanity check)."""

    a: Array

    def __init__(self, a0: float):
        self.a = jnp.asarray(a0)

    def __call__(self, x):
        """``g(x) = a x``."""
        return self.a * x


class ResidualMLP(eqx.Module):
    """``g(x) = x + MLP(x)``: a discrete map learnt directly."""

    net: NeuralDrift

    def __init__(self, d, key):
        self.net = NeuralDrift(d, key, width=32, depth=2)

    def __call__(self, x):
        """``g(x) = x + MLP(x)``."""
        return x + self.net(x, 0.0)
