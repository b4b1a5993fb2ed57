r"""Natural-gradient (conjugate-computation VI) site updates for Gaussian variational families.

Conjugate-computation variational inference (CVI; Khan & Lin 2017) maximises an ELBO over a
Gaussian (or Gauss–Markov) ``q`` whose natural parameters ``lambda`` are written as a conjugate
part plus *sites*. The natural gradient of the ELBO w.r.t. ``lambda`` equals the ordinary
gradient w.r.t. the expectation parameters ``mu = (E[x], E[x x^T])``, so one step with step
size ``rho`` is

.. math:: \lambda \leftarrow (1-\rho)\,\lambda + \rho\,\nabla_{\mu}\,E_q[\log \ell(x)],

i.e. a damped update of the site natural parameters towards ``nabla_mu E_q[log l]``. For a
site of ``N(m, C)``: ``nat1 = g_m - 2 g_C m``, ``nat2 = g_C`` with ``g_m, g_C`` the gradients of
``E_{N(m,C)}[log l]`` w.r.t. ``m`` and ``C`` (Bonnet/Price theorems give them by autodiff of a
Gauss–Hermite or cubature expectation, no second derivatives of ``l`` are needed).

This module holds the generic pieces: Gaussian quadrature rules and expectations,
:class:`GaussianSites` (natural parameters ``nat1 = P mu``, ``nat2 = -P/2``) with conversion
to Kalman pseudo-observations, the expectation-parameter gradient :func:`cvi_site_target`,
the damped update :func:`damped`, and the step-size back-off driver :func:`natural_gradient_ascent`.
Models (e.g. :mod:`probdyn.models.sparse_gp_sde`) provide the expectations; the engines here
never branch on the model.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probdyn.linalg import psd_cholesky, symmetrize

__all__ = [
    "QuadratureRule",
    "gauss_hermite",
    "cubature",
    "gaussian_expectation",
    "GaussianSites",
    "cvi_site_target",
    "damped",
    "NatGradTrace",
    "natural_gradient_ascent",
]


class QuadratureRule(NamedTuple):
    """Points (K, d) and weights (K,) for ``E_{N(0, I_d)}[g(z)] ~ sum_k w_k g(z_k)``."""

    points: np.ndarray
    weights: np.ndarray


def gauss_hermite(dim: int, order: int = 10) -> QuadratureRule:
    """Tensor-product Gauss–Hermite rule (``order**dim`` points), exact for polynomials of
    degree ``2*order - 1`` in each coordinate."""
    if int(dim) < 1 or int(order) < 1:
        raise ValueError(f"dim and order must be >= 1, got {dim}, {order}")
    x, w = np.polynomial.hermite_e.hermegauss(int(order))
    w = w / math.sqrt(2 * math.pi)
    grids = np.meshgrid(*([x] * dim), indexing="ij")
    wgrids = np.meshgrid(*([w] * dim), indexing="ij")
    pts = np.stack([g.reshape(-1) for g in grids], axis=1)
    wts = np.prod(np.stack([g.reshape(-1) for g in wgrids], axis=1), axis=1)
    return QuadratureRule(pts, wts)


def cubature(dim: int) -> QuadratureRule:
    """Third-degree spherical cubature rule (2 d points, as in the cubature Kalman filter)."""
    d = int(dim)
    if d < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    pts = math.sqrt(d) * np.concatenate([np.eye(d), -np.eye(d)], axis=0)
    return QuadratureRule(pts, np.full(2 * d, 1.0 / (2 * d)))


def gaussian_expectation(fn: Callable, m: Float[Array, " d"], C: Float[Array, "d d"], rule: QuadratureRule):
    """``E_{N(m, C)}[fn(x)]`` by the quadrature ``rule``; ``fn`` maps (d,) to a pytree.

    Differentiable in ``m`` and ``C`` (``C`` enters through its Cholesky factor).
    """
    Lc = psd_cholesky(symmetrize(C))
    pts = jnp.asarray(rule.points, m.dtype)
    w = jnp.asarray(rule.weights, m.dtype)
    xs = m[None, :] + pts @ Lc.T
    vals = jax.vmap(fn)(xs)
    return jax.tree_util.tree_map(lambda v: jnp.tensordot(w, v, axes=1), vals)


class GaussianSites(NamedTuple):
    """A stack of Gaussian sites ``t_i(z) = exp(nat1_i^T z + z^T nat2_i z)``.

    ``nat1``: (n, p), ``nat2``: (n, p, p) symmetric (``-P/2`` for site precision ``P``).
    A zero site (both zero) is the constant 1.
    """

    nat1: Float[Array, "n p"]
    nat2: Float[Array, "n p p"]

    @classmethod
    def zeros(cls, n: int, p: int, dtype=float) -> "GaussianSites":
        return cls(jnp.zeros((n, p), dtype), jnp.zeros((n, p, p), dtype))

    @classmethod
    def from_moments(cls, y: Float[Array, "n p"], R: Float[Array, "n p p"]) -> "GaussianSites":
        """Sites ``N(y_i | z, R_i)`` (as functions of ``z``)."""
        P = jnp.linalg.inv(R)
        return cls(jnp.einsum("nij,nj->ni", P, y), -0.5 * P)

    @property
    def precision(self) -> Float[Array, "n p p"]:
        return -2.0 * symmetrize(self.nat2)

    def __add__(self, other: "GaussianSites") -> "GaussianSites":  # type: ignore[override]
        return GaussianSites(self.nat1 + other.nat1, self.nat2 + other.nat2)

    def pseudo_observations(self, floor: float = 0.0):
        """Kalman pseudo-observations in the site precision's eigenbasis.

        Returns ``(U, y, r)``: emission matrix rows ``U_i^T`` (n, p, p), pseudo-data
        ``y_i = diag(1/lam) U^T nat1`` (n, p) and variances ``r = 1/lam`` (n, p), so that
        ``prod_j N(y_ij | (U^T z)_j, r_ij)`` is proportional to the site. Eigen-directions with
        precision ``lam <= floor`` are returned as NaN (missing), i.e. dropped: the Kalman
        engine needs positive-definite observation noise, so only the positive-definite part
        of a site can be applied (see the model documentation for how that is used).
        """
        lam, U = jnp.linalg.eigh(self.precision)
        ok = lam > floor
        lam_safe = jnp.where(ok, lam, 1.0)
        yU = jnp.einsum("npk,np->nk", U, self.nat1) / lam_safe
        y = jnp.where(ok, yU, jnp.nan)
        return jnp.swapaxes(U, -1, -2), y, 1.0 / lam_safe


def cvi_site_target(expected: Callable, m: Float[Array, " p"], C: Float[Array, "p p"]):
    """Natural parameters ``(nat1, nat2)`` of the CVI target ``nabla_mu E_q[log l]``.

    ``expected(m, C)`` must return ``E_{N(m, C)}[log l(z)]``; the gradient w.r.t. the
    expectation parameters ``mu1 = m``, ``mu2 = C + m m^T`` is ``nat2 = g_C``,
    ``nat1 = g_m - 2 g_C m``. For a Gaussian ``l(z) = N(y | z, R)`` this is exactly
    ``(R^{-1} y, -R^{-1}/2)`` whatever ``(m, C)``.
    """
    g_m, g_C = jax.grad(expected, argnums=(0, 1))(m, C)
    g_C = symmetrize(g_C)
    return g_m - 2.0 * g_C @ m, g_C


def damped(old: Any, target: Any, rho) -> Any:
    """``(1 - rho) * old + rho * target`` leaf-wise (the CVI natural-parameter step)."""
    return jax.tree_util.tree_map(lambda o, t: (1.0 - rho) * o + rho * t, old, target)


class NatGradTrace(NamedTuple):
    """ELBO after each accepted step (num_iters + 1,), the step sizes used, back-offs taken."""

    elbo: np.ndarray
    rho: np.ndarray
    num_backoffs: int


def natural_gradient_ascent(
    step: Callable[[Any, Any], Any],
    objective: Callable[[Any], Any],
    state: Any,
    num_iters: int,
    rho: float = 1.0,
    shrink: float = 0.5,
    min_rho: float = 1e-3,
    grow: float = 1.0,
    max_rho: float = 1.0,
    tol: float = 0.0,
    progress_bar: bool = False,
    desc: str = "natgrad",
) -> tuple[Any, NatGradTrace]:
    """Iterate ``state <- step(state, rho)`` with step-size back-off on ELBO decrease.

    A step whose ``objective`` (the ELBO, to be maximised) is lower than the current one by
    more than ``tol * |elbo|`` (or non-finite) is rejected and retried with ``rho * shrink``
    until ``rho < min_rho`` (then the iteration stops). After an accepted step ``rho`` is
    multiplied by ``grow`` (capped at ``max_rho``). ``step`` and ``objective`` should be
    jitted by the caller (they are called with a Python float ``rho``; pass it as an array
    to avoid recompiles).
    """
    if not (0.0 < rho <= 1.0):
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if not (0.0 < shrink < 1.0):
        raise ValueError(f"shrink must be in (0, 1), got {shrink}")
    cur = float(objective(state))
    if not np.isfinite(cur):
        raise FloatingPointError(f"{desc}: the initial objective is {cur}")
    elbos, rhos, backoffs = [cur], [], 0
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(num_iters), desc=desc, leave=False)
    try:
        for _ in range(int(num_iters)):
            while True:
                cand = step(state, jnp.asarray(rho))
                val = float(objective(cand))
                if np.isfinite(val) and val >= cur - tol * abs(cur):
                    break
                backoffs += 1
                rho *= shrink
                if rho < min_rho:
                    return state, NatGradTrace(np.asarray(elbos), np.asarray(rhos), backoffs)
            state, cur = cand, val
            elbos.append(cur)
            rhos.append(rho)
            rho = min(rho * grow, max_rho)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(elbo=f"{cur:.5g}", rho=f"{rho:.3g}")
    finally:
        if bar is not None:
            bar.close()
    return state, NatGradTrace(np.asarray(elbos), np.asarray(rhos), backoffs)
