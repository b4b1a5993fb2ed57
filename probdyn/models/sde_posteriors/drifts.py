r"""Drift families, time grids and exact linear discretisation for the Gauss–Markov SDE posteriors.

Shared by :mod:`probdyn.models.sde_posteriors.sparse_gp` (CVI natural gradients) and
:mod:`probdyn.models.sde_posteriors.vgpa` (Archambeau et al. 2007):

* drift families of the benchmark SDEs of Verma, Adam & Solin (2024) (parameters are pytree
  leaves, so variational EM can learn them) and two learnable generic families
  (:class:`PolynomialDrift`, :class:`LinearDrift`); any callable ``f(x (d,), t) -> (d,)``
  works as well, e.g. an equinox MLP (:class:`probdyn.models.sysid.NeuralDrift`);
* :func:`make_grid`: a regular grid merged with observation / test times;
* :func:`discretise_linear`: exact discretisation of ``dx = (A x + b) dt + L dW``
  (:func:`probdyn.ssm.discretise_affine`);
* :func:`statistical_linearisation`: the statistical linear regression ``(A, b)`` of a drift
  under a Gaussian (Gauss–Hermite), ``A = Cov(f, x) Cov(x)^{-1} = E[df/dx]`` (Stein).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probdyn.inference.natgrad import QuadratureRule, gaussian_expectation
from probdyn.linalg import small_solve
from probdyn.ssm import discretise_affine

__all__ = [
    "OUDrift",
    "DoubleWellDrift",
    "BenesDrift",
    "SineDrift",
    "SqrtDrift",
    "VanDerPolDrift",
    "PolynomialDrift",
    "LinearDrift",
    "make_grid",
    "discretise_linear",
    "statistical_linearisation",
]


class OUDrift(eqx.Module):
    """Ornstein–Uhlenbeck ``f(x) = -decay * x``."""

    decay: Float[Array, ""]

    def __call__(self, x, t):
        """``f(x, t) = -decay x``."""
        return -self.decay * x


class DoubleWellDrift(eqx.Module):
    """Double well ``f(x) = scale * x * (c - x^2)`` (Verma et al.: scale 4)."""

    c: Float[Array, ""]
    scale: float = eqx.field(static=True, default=4.0)

    def __call__(self, x, t):
        """``f(x, t) = scale x (c - x^2)``."""
        return self.scale * x * (self.c - x**2)


class BenesDrift(eqx.Module):
    """Beneš ``f(x) = tanh(x)``."""

    def __call__(self, x, t):
        """``f(x, t) = tanh(x)``."""
        return jnp.tanh(x)


class SineDrift(eqx.Module):
    """``f(x) = sin(x)``."""

    def __call__(self, x, t):
        """``f(x, t) = sin(x)``."""
        return jnp.sin(x)


class SqrtDrift(eqx.Module):
    """``f(x) = sqrt(|x|)``."""

    def __call__(self, x, t):
        """``f(x, t) = sqrt(|x|)``."""
        return jnp.sqrt(jnp.abs(x))


class VanDerPolDrift(eqx.Module):
    """Van der Pol oscillator in Liénard form, state (2,):
    ``f(x) = (a (x_1 - x_1^3 / 3 - x_2),  b x_1)``."""

    a: Float[Array, ""]
    b: Float[Array, ""]

    def __call__(self, x, t):
        """``f(x, t) = (a (x0 - x0^3 / 3 - x1), b x0)`` (FitzHugh–Nagumo form)."""
        return jnp.stack([self.a * (x[0] - x[0] ** 3 / 3.0 - x[1]), self.b * x[0]])


class PolynomialDrift(eqx.Module):
    """Scalar polynomial drift ``f(x) = sum_k coef_k x^k`` (coef (K,), learnable)."""

    coef: Float[Array, " K"]

    def __call__(self, x, t):
        """``f(x, t) = sum_k coef[k] x^k``."""
        return jnp.polyval(self.coef[::-1], x)


class LinearDrift(eqx.Module):
    """Linear drift ``f(x) = A x + b`` (A (d, d), b (d,), learnable)."""

    A: Float[Array, "d d"]
    b: Float[Array, " d"]

    def __call__(self, x, t):
        """``f(x, t) = A x + b``."""
        return self.A @ x + self.b


def make_grid(t0: float, t1: float, dt: float, include=()) -> np.ndarray:
    """Regular grid ``t0, t0 + dt, ..., >= t1`` merged with the times in ``include``
    (times closer than ``dt * 1e-6`` to a grid point replace it)."""
    if not (dt > 0 and t1 > t0):
        raise ValueError(f"need dt > 0 and t1 > t0, got dt={dt}, t0={t0}, t1={t1}")
    n = int(np.ceil((t1 - t0) / dt - 1e-9)) + 1
    g = t0 + dt * np.arange(n)
    inc = np.unique(np.asarray(include, float).reshape(-1))
    if inc.size:
        idx = np.clip(np.searchsorted(g, inc), 1, len(g) - 1)
        near = np.where(np.abs(g[idx - 1] - inc) < np.abs(g[idx] - inc), idx - 1, idx)
        close = np.abs(g[near] - inc) < dt * 1e-6
        g = np.delete(g, near[close])
        g = np.unique(np.concatenate([g, inc]))
    return g


#: Exact discretisation of ``dx = (A x + b) dt + L dW`` (``Sigma = L L^T``) over ``dt``:
#: ``(Psi (d, d), c (d,), V (d, d)) = discretise_linear(A, b, Sigma, dt)``; the engine's
#: :func:`probdyn.ssm.discretise_affine` under this family's name.
discretise_linear = discretise_affine


def statistical_linearisation(
    drift: Callable, m: Float[Array, " d"], C: Float[Array, "d d"], t, rule: QuadratureRule
) -> tuple[Float[Array, "d d"], Float[Array, " d"]]:
    """Statistical linear regression of ``drift(x, t)`` under ``x ~ N(m, C)``.

    Returns ``(A (d, d), b (d,))`` with ``A = Cov(f(x), x) C^{-1}`` (= ``E[df/dx]`` for a
    differentiable drift, by Stein's lemma; needs no derivative, so ``sqrt|x|`` works) and
    ``b = E[f(x)] - A m``, i.e. the best linear fit ``A x + b`` of ``f`` in ``L^2(N(m, C))``.
    Expectations by the quadrature ``rule`` (e.g. :func:`probdyn.inference.natgrad.gauss_hermite`).
    """

    def g(x):
        f = drift(x, t)
        return f, jnp.outer(f, x - m)

    Ef, Cfx = gaussian_expectation(g, m, C, rule)
    A = small_solve(C, Cfx.T).T
    return A, Ef - A @ m
