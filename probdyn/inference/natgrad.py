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
the damped update :func:`damped`, the step-size back-off driver :func:`natural_gradient_ascent`,
and :func:`condition_chain`, which multiplies a Gauss–Markov chain by Gaussian node and pair
potentials whose precisions may be *indefinite* (only the product has to be a proper
Gaussian) and returns the result in forward Markov form with its marginals. The Kalman
engine's updates need positive-definite observation noise, so such potentials (the path sites
of :mod:`probdyn.models.sde_posteriors.sparse_gp`) cannot be applied as pseudo-observations; the
backward pass here is an information-form recursion in the whitened coordinates of the
transition noise, and the forward marginals use :func:`probdyn.inference.kalman.predict`.
Models (e.g. :mod:`probdyn.models.sde_posteriors.sparse_gp`) provide the expectations; the engines here
never branch on the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, SupportsFloat

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, Float

from probdyn.inference.optimize import backoff_ascent
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
    "GaussMarkovChain",
    "condition_chain",
    "chain_from_factors",
    "chain_natural_params",
    "natural_from_moment_gradients",
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
    def zeros(cls, n: int, p: int, dtype: DTypeLike = float) -> GaussianSites:
        """``n`` sites of dimension ``p`` with zero natural parameters (flat sites)."""
        return cls(jnp.zeros((n, p), dtype), jnp.zeros((n, p, p), dtype))

    @classmethod
    def from_moments(cls, y: Float[Array, "n p"], R: Float[Array, "n p p"]) -> GaussianSites:
        """Sites ``N(y_i | z, R_i)`` (as functions of ``z``)."""
        P = jnp.linalg.inv(R)
        return cls(jnp.einsum("nij,nj->ni", P, y), -0.5 * P)

    @property
    def precision(self) -> Float[Array, "n p p"]:
        """The sites' precision matrices ``-2 nat2``, shape (n, p, p)."""
        return -2.0 * symmetrize(self.nat2)

    def __add__(self, other: GaussianSites) -> GaussianSites:  # type: ignore[override]
        return GaussianSites(self.nat1 + other.nat1, self.nat2 + other.nat2)

    def pseudo_observations(self, floor: float = 0.0):
        """Kalman pseudo-observations in the site precision's eigenbasis.

        Returns ``(U, y, r)``: emission matrix rows ``U_i^T`` (n, p, p), pseudo-data
        ``y_i = diag(1/lam) U^T nat1`` (n, p) and variances ``r = 1/lam`` (n, p), so that
        ``prod_j N(y_ij | (U^T z)_j, r_ij)`` is proportional to the site. Eigen-directions with
        precision ``lam <= floor`` are returned as NaN (missing), i.e. dropped: the Kalman
        engine needs positive-definite observation noise, so only the positive-definite part
        of a site can be applied this way. Sites with indefinite precision are applied exactly
        by :func:`condition_chain` instead.
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
    """ELBO at the start and after each accepted step (n + 1,), the step sizes used (n,),
    rejected steps (back-offs, including a final rounding-level rejection)."""

    elbo: np.ndarray
    rho: np.ndarray
    num_backoffs: int


def natural_gradient_ascent(
    step: Callable[[Any, Any], Any],
    objective: Callable[[Any], Any] | None,
    state: Any,
    num_iters: int,
    rho: float = 1.0,
    shrink: float = 0.5,
    min_rho: float = 1e-3,
    grow: float = 1.0,
    max_rho: float = 1.0,
    tol: float = 0.0,
    atol: float = 0.0,
    progress_bar: bool = False,
    desc: str = "natgrad",
    initial_value: SupportsFloat | None = None,
    checkpoint=None,
    checkpoint_every: int = 10,
) -> tuple[Any, NatGradTrace]:
    """Iterate ``state <- step(state, rho)`` with step-size back-off on ELBO decrease.

    A step whose ``objective`` (the ELBO, to be maximised) is lower than the current one by
    more than ``tol * |elbo|`` (or non-finite) is rejected and retried with ``rho * shrink``
    until ``rho < min_rho`` (then the iteration stops). After an accepted step ``rho`` is
    multiplied by ``grow`` (capped at ``max_rho``). With ``atol > 0`` the iteration also stops
    (converged) after an accepted step that raised the objective by less than ``atol``, or at
    a rejected step that lowered it by less than ``atol`` (rounding level; no back-off).
    ``step`` and ``objective`` should be jitted by the caller (they are called with ``rho`` as
    a 0-d array, so changing it does not recompile). With ``objective=None``, ``step`` returns
    ``(candidate, objective(candidate))`` in one call (saves an evaluation per iteration) and
    ``initial_value`` (the objective at ``state``) must be given. The loop is
    :func:`probdyn.inference.optimize.backoff_ascent`; ``checkpoint`` (a path) saves and
    resumes it there.
    """
    if not (0.0 < rho <= 1.0):
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if not (0.0 < shrink < 1.0):
        raise ValueError(f"shrink must be in (0, 1), got {shrink}")
    if objective is None:
        if initial_value is None:
            raise ValueError("with objective=None give initial_value (the objective at state)")
        cur = float(initial_value)
        fused = step
    else:
        cur = float(objective(state)) if initial_value is None else float(initial_value)

        def step_and_value(s, r):
            c = step(s, r)
            return c, objective(c)

        fused = step_and_value

    def accept(cur, new):
        return new >= cur - tol * abs(cur)

    def adapt(accepted, r, cur, new):
        if accepted:  # stop (converged) after a gain below atol
            return min(r * grow, max_rho), atol > 0 and new - cur < atol
        if atol > 0 and np.isfinite(new) and cur - new < atol:  # a rounding-level loss: converged
            return r, True
        r = r * shrink
        return r, r < min_rho

    state, _, tr = backoff_ascent(
        lambda st, r: fused(st, jnp.asarray(r)),
        state,
        cur,
        num_iters,
        rho,
        accept,
        adapt,
        progress_bar=progress_bar,
        desc=desc,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    return state, NatGradTrace(tr.values, tr.dampings, tr.num_rejected)


# ----------------------------------------------------------------------------------
# Gauss–Markov chain x potentials (information-form backward pass)
# ----------------------------------------------------------------------------------
class GaussMarkovChain(NamedTuple):
    """A Gaussian chain in forward Markov form with its marginals.

    ``x_0 ~ N(initial_mean, initial_cov)``, ``x_{k+1} | x_k ~ N(F_k x_k + g_k, Q_k)``;
    marginal means ``mean`` (N, d), covariances ``cov`` (N, d, d), lag-one cross-covariances
    ``cross_cov[k] = Cov(x_k, x_{k+1})`` (N-1, d, d), ``chol_Q`` (N-1, d, d) lower square roots
    of ``Q_k``. ``dF = F - Psi``, ``dg = g - c``, ``dQ = Q - V``, ``d_initial_mean``,
    ``d_initial_cov`` are the differences to the prior chain that was conditioned, computed
    without cancellation (they feed KL divergences in float32).
    """

    mean: Float[Array, "N d"]
    cov: Float[Array, "N d d"]
    cross_cov: Float[Array, "N1 d d"]
    F: Float[Array, "N1 d d"]
    g: Float[Array, "N1 d"]
    Q: Float[Array, "N1 d d"]
    chol_Q: Float[Array, "N1 d d"]
    dF: Float[Array, "N1 d d"]
    dg: Float[Array, "N1 d"]
    dQ: Float[Array, "N1 d d"]
    initial_mean: Float[Array, " d"]
    initial_cov: Float[Array, "d d"]
    d_initial_mean: Float[Array, " d"]
    d_initial_cov: Float[Array, "d d"]


def _whitened_gain(V, Lam):
    """For ``Omega = V^{-1} + Lam`` (Lam may be indefinite): ``chol(Q)`` with ``Q = Omega^{-1}``
    and ``Einv(x) = Q V^{-1} x = (I + V Lam)^{-1} x``; NaN when ``Omega`` is not PD."""
    d = V.shape[-1]
    if d == 1:  # scalar fast path (compiles much faster than 1x1 LAPACK calls)
        den = 1.0 + V[0, 0] * Lam[0, 0]
        cholQ = jnp.sqrt(V / den)  # NaN when den <= 0 (not proper)
        return cholQ, lambda x: x / den
    SV = jnp.linalg.cholesky(symmetrize(V))
    Mh = jnp.eye(d, dtype=V.dtype) + SV.T @ Lam @ SV
    LM = jnp.linalg.cholesky(symmetrize(Mh))
    cholQ = jax.scipy.linalg.solve_triangular(LM, SV.T, lower=True).T  # SV LM^{-T}

    def Einv(x):
        z = jax.scipy.linalg.solve_triangular(SV, x, lower=True)
        z = jax.scipy.linalg.cho_solve((LM, True), z)
        return SV @ z

    return cholQ, Einv


def condition_chain(initial_mean, initial_cov, Psi, c, V, nat1, nat2, pair) -> GaussMarkovChain:
    r"""Condition a Gauss–Markov chain on Gaussian node and pair potentials.

    Prior ``p(x) = N(x_0 | m_0, P_0) prod_k N(x_{k+1} | Psi_k x_k + c_k, V_k)`` times
    potentials ``exp(sum_k [nat1_k^T x_k + x_k^T nat2_k x_k] + sum_k x_k^T pair_k x_{k+1})``.
    The potentials' precisions ``-2 nat2_k`` may be indefinite: only the product has to be a
    proper Gaussian (joint precision positive definite). A backward information pass
    (``beta_k(x) = site_k(x) int p(x'|x) pair_k(x, x') beta_{k+1}(x') dx'``, computed in the
    whitened coordinates of ``V_k``, never forming ``V_k^{-1}``) gives the forward kernels
    ``q(x_{k+1}|x_k) = N(F_k x_k + g_k, Q_k)`` and ``q(x_0)``; the marginals then come from
    square-root predictions (:func:`probdyn.inference.kalman.predict`). Cost O(N d^3),
    sequential in N. When the product is not proper (a non-PD ``I + S^T Lam S`` on the way)
    the outputs are NaN. For d = 1 the same recursions run in scalar form (the 1x1 LAPACK
    calls dominate compile time otherwise).

    Args:
        initial_mean: (d,), initial_cov: (d, d) PD.
        Psi: (N-1, d, d), c: (N-1, d), V: (N-1, d, d) PD transition noise.
        nat1: (N, d), nat2: (N, d, d) symmetric node potentials; pair: (N-1, d, d).
    Returns:
        :class:`GaussMarkovChain`.
    """

    def bstep(carry, inp):
        Lam, eta = carry
        Ps, cc, Vk, Wk, J, h = inp
        cholQ, Einv = _whitened_gain(Vk, Lam)
        Q = cholQ @ cholQ.T
        EPsi = Einv(Ps)
        F = EPsi + Einv(Vk @ Wk.T)
        g = Einv(cc + Vk @ eta)
        dF = Q @ (Wk.T - Lam @ Ps)
        dg = Q @ (eta - Lam @ cc)
        dQ = -symmetrize(Q @ Lam @ Vk)
        Lm = EPsi.T @ Lam @ Ps - EPsi.T @ Wk.T - Wk @ EPsi - Wk @ Einv(Vk @ Wk.T)
        em = EPsi.T @ (eta - Lam @ cc) + Wk @ Einv(cc + Vk @ eta)
        return (J + symmetrize(Lm), h + em), (F, g, Q, cholQ, dF, dg, dQ)

    J = -2.0 * symmetrize(nat2)
    init = (J[-1], nat1[-1])
    (Lam0, eta0), (F, g, Q, cholQ, dF, dg, dQ) = jax.lax.scan(
        bstep, init, (Psi, c, V, pair, J[:-1], nat1[:-1]), reverse=True
    )
    chol0, Einv0 = _whitened_gain(initial_cov, Lam0)
    P0 = chol0 @ chol0.T
    m0 = Einv0(initial_mean + initial_cov @ eta0)
    dm0 = P0 @ (eta0 - Lam0 @ initial_mean)
    dP0 = -symmetrize(P0 @ Lam0 @ initial_cov)

    mean, cov, cross = _forward_marginals(m0, chol0, F, g, cholQ)
    return GaussMarkovChain(mean, cov, cross, F, g, Q, cholQ, dF, dg, dQ, m0, P0, dm0, dP0)


def _forward_marginals(m0, chol0, F, g, cholQ):
    """Marginal means (N, d), covariances (N, d, d) and ``Cov(x_k, x_{k+1}) = C_k F_k^T``
    (N-1, d, d) of a forward chain, by square-root predictions."""
    from probdyn.inference import kalman

    def fstep(carry, inp):
        m, S = carry
        Fk, gk, Lk = inp
        mn, Sn = kalman.predict(m, S, Fk, Lk, gk)  # d = 1: a norm, no QR (linalg.tria)
        return (mn, Sn), (mn, Sn)

    _, (ms, Ss) = jax.lax.scan(fstep, (m0, chol0), (F, g, cholQ))
    mean = jnp.concatenate([m0[None], ms])
    S = jnp.concatenate([chol0[None], Ss])
    cov = jnp.einsum("nij,nkj->nik", S, S)
    return mean, cov, jnp.einsum("nij,nkj->nik", cov[:-1], F)


def chain_from_factors(
    initial_mean: Float[Array, " d"],
    initial_chol: Float[Array, "d d"],
    F: Float[Array, "N1 d d"],
    g: Float[Array, "N1 d"],
    chol_Q: Float[Array, "N1 d d"],
    prior_mean: Float[Array, " d"],
    prior_cov: Float[Array, "d d"],
) -> GaussMarkovChain:
    """The chain ``x_0 ~ N(initial_mean, L_0 L_0^T)``, ``x_{k+1} | x_k ~ N(F_k x_k + g_k, L_k L_k^T)``
    with its marginals (square-root predictions), given by its factors (``initial_chol`` and
    ``chol_Q`` lower square roots). Always proper, so any factors parameterise a valid chain
    (direct optimisation of an ELBO over the family). The differences ``dF, dg, dQ`` are zero
    (the chain is its own representation); ``d_initial_*`` are taken to ``N(prior_mean, prior_cov)``.
    """
    mean, cov, cross = _forward_marginals(initial_mean, initial_chol, F, g, chol_Q)
    Q = jnp.einsum("nij,nkj->nik", chol_Q, chol_Q)
    P0 = initial_chol @ initial_chol.T
    z = jnp.zeros_like
    return GaussMarkovChain(
        mean, cov, cross, F, g, Q, chol_Q, z(F), z(g), z(Q), initial_mean, P0, initial_mean - prior_mean, P0 - prior_cov
    )


def chain_natural_params(chain: GaussMarkovChain):
    r"""Natural parameters of a chain's joint density (initial density included):
    ``log q(x) = sum_k [nat1_k^T x_k + x_k^T nat2_k x_k] + sum_k x_k^T pair_k x_{k+1} + const``.
    Returns ``nat1`` (N, d), ``nat2`` (N, d, d), ``pair`` (N-1, d, d) (the inverse of
    :func:`condition_chain` for a flat prior; forms ``Q_k^{-1}``, so use float64 for fine grids)."""
    Qi = jax.vmap(lambda L: jax.scipy.linalg.cho_solve((L, True), jnp.eye(L.shape[-1], dtype=L.dtype)))(chain.chol_Q)
    P0i = jnp.linalg.inv(symmetrize(chain.initial_cov))
    FtQi = jnp.einsum("kji,kjl->kil", chain.F, Qi)
    nat2 = jnp.zeros_like(chain.cov).at[0].add(-0.5 * P0i).at[1:].add(-0.5 * Qi)
    nat2 = nat2.at[:-1].add(-0.5 * jnp.einsum("kij,kjl->kil", FtQi, chain.F))
    nat1 = jnp.zeros_like(chain.mean).at[0].add(P0i @ chain.initial_mean)
    nat1 = nat1.at[1:].add(jnp.einsum("kij,kj->ki", Qi, chain.g))
    nat1 = nat1.at[:-1].add(-jnp.einsum("kij,kj->ki", FtQi, chain.g))
    return nat1, symmetrize(nat2), FtQi


def natural_from_moment_gradients(g_m, g_C, g_X, mean):
    r"""Chain natural parameters from gradients w.r.t. centred moments.

    For ``G(m, S, M) = G~(m, C = S - m m^T, X = M - m_k m_{k+1}^T)`` the CVI target
    ``nabla_mu G`` over the expectation parameters ``(E x_k, E x_k x_k^T, E x_k x_{k+1}^T)``
    is, in terms of the gradients ``g_m (N, d), g_C (N, d, d), g_X (N-1, d, d)`` of ``G~``:
    ``nat2 = sym(g_C)``, ``pair = g_X``,
    ``nat1_k = g_m,k - 2 nat2_k m_k - g_X,k m_{k+1} - g_X,k-1^T m_{k-1}``. Differentiating
    ``G~`` at the centred moments avoids forming ``S - m m^T`` (cancellation in float32).
    Returns ``(nat1, nat2, pair)``.
    """
    nat2 = symmetrize(g_C)
    n1 = g_m - 2.0 * jnp.einsum("nij,nj->ni", nat2, mean)
    n1 = n1.at[:-1].add(-jnp.einsum("nij,nj->ni", g_X, mean[1:]))
    n1 = n1.at[1:].add(-jnp.einsum("nji,nj->ni", g_X, mean[:-1]))
    return n1, nat2, g_X
