r"""Sparse Gauss–Markov variational posteriors for nonlinear SDEs, fitted by natural gradients.

Verma, Adam & Solin, "Sparse Gaussian processes for SDEs" (2021) and "Variational Gaussian
process diffusion processes" (AISTATS 2024). Model

.. math::
    dx = f_\theta(x, t)\,dt + L\,dW,\quad x(t_0) \sim N(\mu_0, P_0),\quad
    y_i \sim p(y_i \mid H x(t_i)),\qquad \Sigma = L L^T \ (\text{positive definite}).

**Posterior family.** A time grid ``t_0 < ... < t_{N-1}`` contains the observation times.
The variational process ``q`` is a Gauss–Markov chain over the *inducing states*
``u_j = x(z_j)`` at ``M`` grid nodes ``z_0 = t_0 < ... < z_{M-1} = t_{N-1}`` (dense variant:
every grid node, ``M = N``; sparse variant: ``inducing_times``), and between consecutive
inducing times ``x`` follows the bridge of the *linearised prior* ``p_L``: the linear SDE
``dx = (A_j x + b_j) dt + L dW`` on cell ``[z_j, z_{j+1}]``, discretised exactly. ``q(u)`` is
stored as the linearised prior times sites,

.. math:: q(u) \propto p_L(u)\ \prod_i t_i(H x(t_i))\ \prod_j s_j(u_j)\ \prod_j w_j(u_j, u_{j+1}),

with Gaussian **data sites** ``t_i`` in observation space (in the sparse variant an
observation inside a cell acts on ``(u_j, u_{j+1})`` through the bridge mean) and **path
("Girsanov") sites** ``s_j`` (node) and ``w_j`` (pair) that correct the linearisation of a
nonlinear drift. Path-site precisions are indefinite in general; the chain is conditioned on
them by :func:`probdyn.inference.natgrad.condition_chain` (an information-form backward
pass; only the product has to be a proper Gaussian), so nothing is projected or dropped.

**ELBO** (maximised). With ``A^*(q), b^*(q)`` the statistical linear regression (SLR) of ``f``
under ``q(u_j)`` on each cell (Gauss–Hermite; the linearised prior is *re-linearised along the
current posterior*), Girsanov's theorem splits the KL of the path measures as
``KL(q || p) = KL(q || p_{L^*}) + E_q[log dp_{L^*}/dp]``:

.. math::
    \mathcal L(q) = \sum_i E_q[\log p(y_i\mid Hx(t_i))] - KL\big(q(u)\,\|\,p_{L^*}(u)\big)
      + \sum_k E_q\Big[r(x_k)^T\Sigma^{-1}\Big(x_{k+1} - x_k - \tfrac{\Delta_k}{2}
        \big(f(x_k) + f_{L^*}(x_k)\big)\Big)\Big],\quad r = f - f_{L^*},

where the KL of the linear part is **exact** (Gaussian chains over the inducing states with
the exactly discretised linear SDE; the bridges are shared) and only the nonlinear residual
``E_q log dp/dp_{L^*}`` is discretised: in the dense variant by the Itô/Euler rule on the grid
(the sum above; pairwise marginals of ``x(t_k), x(t_{k+1})`` under ``q``, Gauss–Hermite), in
the sparse variant in its drift form ``int E_q[r^T Sigma^{-1} (phi - (f + f_{L^*}) / 2)] dt``
(``phi`` = conditional drift of ``q``, closed form from the bridges) by Gauss–Legendre
quadrature on each cell (``quad_order`` points; independent of the grid). For a linear drift
the residual vanishes identically, so the ELBO is the exact one of the continuous-time model
(at the optimum, the exact log marginal likelihood); for nonlinear drifts it converges to the
continuous-time ELBO as the grid step (dense) or the cell length / ``quad_order`` (sparse)
goes to 0, and ELBOs are comparable on the same grid / inducing set.

**Updates** (CVI, natural gradients in the chain's expectation parameters
``(E u_j, E u_j u_j^T, E u_j u_{j+1}^T)``): the target natural parameters are
``nabla_mu [E_q log p(y|x) + E_q log p_{L^*(q)}(u) + residual]``, computed by automatic
differentiation at the current centred moments (including the dependence of ``L^*`` and of
the bridges on ``q``). Its pair part is exactly the linearised prior's in the dense variant;
the remainder is the data and path sites. One step: ``lambda <- (1-rho) lambda + rho target``,
re-expressed on the re-linearised prior ``p_{L^*}``; steps that lower the ELBO (or leave the
family) are retried with ``rho / 2``. For a linear drift one ``rho = 1`` step from the prior
is the exact GP posterior (the path sites stay exactly zero). The fixed point is a stationary
point of the ELBO above.

**Sparse variant.** With ``M`` inducing times the backward/forward pass runs over the ``M``
inducing states, the expected log-likelihood over the ``n`` observations (through the bridges)
and the residual over ``M * quad_order`` quadrature points, so one iteration costs
``O(M + n)``, independent of the grid (which then only sets where :meth:`SparseGPSDE.posterior`
and :meth:`SparseGPSDE.sample_paths` report). The linearisation is one ``(A_j, b_j)`` per cell
(SLR under ``q(u_j)``), constant over the cell. This is the family of the 2021 paper's
inducing-state construction (sites at the inducing states, the linearised prior's bridges in
between); the details of its parameterisation (e.g. how the linearisation is shared across a
cell) are ours. With few inducing states the family is coarse: observations between inducing
times only see the bridge mean, and the ELBO pays ``E Var(x(t_i) | u) / sigma^2``.

**Learning** (:meth:`SparseGPSDE.fit`): variational EM on the ELBO. E-step: CVI iterations to
convergence (warm started); M-step: one Adam step on ``-ELBO / n`` w.r.t. the drift (and
optionally diffusion and noise) parameters at fixed ``q`` (positive parameters in log space).
For a linear drift the ELBO is exact, so variational EM converges to the exact
maximum-likelihood estimate.

Limitations: constant (additive) diffusion with ``L L^T`` positive definite; for nonlinear
drifts the posterior is a Gaussian approximation (biased where the true posterior is skewed
or bimodal); the residual uses Gauss–Hermite with ``gh_order`` points per dimension
(``order**d`` points).

Length: one concept (the sparse-GP SDE posterior: chain, ELBO, CVI step), just past 600 lines
(the bridge algebra is in :mod:`~probdyn.models.sde_posteriors.bridges`).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn.inference import kalman
from probdyn.inference.natgrad import (
    GaussianSites,
    GaussMarkovChain,
    NatGradTrace,
    chain_from_factors,
    chain_natural_params,
    condition_chain,
    cvi_site_target,
    damped,
    gauss_hermite,
    gaussian_expectation,
    natural_from_moment_gradients,
    natural_gradient_ascent,
)
from probdyn.inference.optimize import MinimizeResult, lbfgs_minimize
from probdyn.linalg import small_cholesky, small_inv, small_logdet, small_solve, small_solve_lower, symmetrize
from probdyn.models.sde_posteriors.bridges import InducingBridges
from probdyn.models.sde_posteriors.drifts import statistical_linearisation
from probdyn.models.sde_posteriors.em import FitTrace, variational_em
from probdyn.models.sde_posteriors.observed import (
    ObservedSDEModel,
    check_observed_sde,
    expected_log_likelihood,
)
from probdyn.sde.base import SDE
from probdyn.ssm import discretise_affine

__all__ = ["SparseGPSDE", "VariationalState", "Posterior"]


# ----------------------------------------------------------------------------------
# State and results
# ----------------------------------------------------------------------------------
class VariationalState(eqx.Module):
    """Variational parameters: the linearisation ``A`` (K, d, d), ``b`` (K, d) of the
    linearised prior on the K = M - 1 cells, data sites (n, p) in observation space, node
    path sites (M, d) and pair path sites ``path_pair`` (K, d, d) (``u_j^T W_j u_{j+1}``)."""

    A: Float[Array, "K d d"]
    b: Float[Array, "K d"]
    data: GaussianSites
    path: GaussianSites
    path_pair: Float[Array, "K d d"]


class Posterior(NamedTuple):
    """Marginals on the grid: mean (N, d), cov (N, d, d), and lag-one cross-covariances
    ``Cov(x_k, x_{k+1})`` (N-1, d, d)."""

    mean: Float[Array, "N d"]
    cov: Float[Array, "N d d"]
    cross_cov: Float[Array, "N1 d d"]


class _Chain(NamedTuple):
    """q(u) in forward form plus the representation's prior transitions (for KL terms)."""

    q: GaussMarkovChain
    Psi: Float[Array, "K d d"]
    c: Float[Array, "K d"]
    V: Float[Array, "K d d"]


def _kl_cov_term(dQ, V):
    """``tr(V^{-1} Q) - d - log det(V^{-1} Q)`` for ``Q = V + dQ``, via ``e - log1p(e)``."""
    if V.shape[-1] == 1:
        e = (dQ / V).reshape(1)
    else:
        Lv = small_cholesky(V)
        Z = small_solve_lower(Lv, small_solve_lower(Lv, dQ).T)
        e = jnp.linalg.eigvalsh(symmetrize(Z))
    return jnp.sum(e - jnp.log1p(e))


# ----------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------
class SparseGPSDE(ObservedSDEModel, InducingBridges):
    """Gauss–Markov variational posterior for an SDE with additive noise (see module doc).

    Args:
        sde: a :class:`probdyn.sde.SDE` with a constant ``diffusion`` (d, m), ``L L^T`` PD.
        obs_times: (n,) strictly increasing observation times.
        y: (n, p) (or (n,) when p = 1) observations; must be finite.
        obs_noise: Gaussian observation-noise variance, scalar or (p,) (learnable as log-sd).
        obs_matrix: H (p, d), default the first p state coordinates (p = y.shape[1]).
        log_likelihood: optional non-Gaussian ``log p(y (p,), z = H x (p,)) -> ()``, handled by
            Gauss–Hermite quadrature (then ``obs_noise`` is unused).
        dt: grid step; the grid covers ``[t_span[0], t_span[1]]`` plus the observation times.
        t_span: (t0, t1); default (first, last observation time).
        grid: explicit grid (overrides ``dt``/``t_span``; must contain the observation times).
        initial_mean, initial_cov: prior of ``x(t0)``; default 0 and the identity.
        inducing_times: (M,) for the sparse variant (rounded to grid nodes; the grid's first
            and last nodes are always included). ``None``: every grid node (dense).
        gh_order: Gauss–Hermite points per dimension.
        quad_order: Gauss–Legendre points per cell for the residual of the sparse variant.
        path_sites: use the full natural-gradient target (data sites, path sites and the
            re-linearised prior; default). ``False``: the simpler fixed-point scheme
            ``q = p_L x data sites`` with ``p_L`` the damped SLR along ``q`` and no path sites
            (no Girsanov correction; not an ascent method, kept for comparison).
    """

    ind_idx: Array
    node_cell: Array
    node_kind: Array
    right_inducing: Array
    dense: bool = eqx.field(static=True)
    quad_order: int = eqx.field(static=True)
    path_sites: bool = eqx.field(static=True)

    def __init__(
        self,
        sde: SDE,
        obs_times,
        y,
        obs_noise=1.0,
        obs_matrix=None,
        log_likelihood=None,
        dt: float | None = None,
        t_span=None,
        grid=None,
        initial_mean=None,
        initial_cov=None,
        inducing_times=None,
        gh_order: int = 10,
        quad_order: int = 8,
        path_sites: bool = True,
    ):
        prob = check_observed_sde(
            sde, obs_times, y, obs_noise, obs_matrix, log_likelihood, dt, t_span, grid, initial_mean, initial_cov
        )
        super().__init__(sde, prob, log_likelihood, gh_order)
        grid = prob.grid
        if int(gh_order) < 1 or int(quad_order) < 1:
            raise ValueError(f"gh_order and quad_order must be >= 1, got {gh_order}, {quad_order}")
        N = grid.size
        if inducing_times is None:
            Z = np.arange(N)
        else:
            ind = np.asarray(inducing_times, float).reshape(-1)
            if ind.size == 0 or not np.all(np.isfinite(ind)):
                raise ValueError("inducing_times must be a non-empty array of finite times")
            if np.any(ind < grid[0] - 1e-9) or np.any(ind > grid[-1] + 1e-9):
                raise ValueError(f"inducing_times must lie in the grid span [{grid[0]}, {grid[-1]}]")
            near = np.clip(np.searchsorted(grid, ind), 1, N - 1)
            near = np.where(np.abs(grid[near - 1] - ind) <= np.abs(grid[near] - ind), near - 1, near)
            Z = np.unique(np.concatenate([[0, N - 1], near]))
        K = Z.size - 1
        cell = np.searchsorted(Z, np.arange(N - 1), side="right") - 1
        node_cell = np.concatenate([cell, [K - 1]])
        is_ind = np.zeros(N, bool)
        is_ind[Z] = True
        kind = np.where(is_ind, 0, 1)
        kind[-1] = 2
        self.ind_idx = jnp.asarray(Z, jnp.int32)
        self.node_cell = jnp.asarray(node_cell, jnp.int32)
        self.node_kind = jnp.asarray(kind, jnp.int32)
        self.right_inducing = jnp.asarray(is_ind[1:], bool)
        self.dense = inducing_times is None
        self.quad_order = int(quad_order)
        self.path_sites = bool(path_sites)

    # ------------------------------------------------------------------ basics
    @property
    def num_inducing(self) -> int:
        """M: number of inducing states (N in the dense variant)."""
        return int(self.ind_idx.shape[0])

    def _zt(self):
        return self.grid[self.ind_idx]

    def _cell_len(self):
        return jnp.diff(self._zt())

    def _disc(self, A, b, dt):
        return discretise_affine(A, b, self._sigma(), dt)

    def _cell_disc(self, A, b):
        return jax.vmap(self._disc)(A, b, self._cell_len())

    def _slr_one(self, mk, Ck, t):
        return statistical_linearisation(self.sde.drift_fn, mk, Ck, t, self._rule())

    def _slr_cells(self, m, C):
        """SLR of the drift under ``q(u_j)`` per cell: (A (K, d, d), b (K, d))."""
        return jax.vmap(self._slr_one)(m[:-1], C[:-1], self._zt()[:-1])

    def init_state(self) -> VariationalState:
        """The prior: no sites, drift statistically linearised under ``N(initial_mean, initial_cov)``
        (Gauss–Hermite; works for non-differentiable drifts such as ``sqrt|x|``)."""
        d, dt = self.state_dim, self.dtype
        M = self.num_inducing
        K = M - 1
        A, b = jax.vmap(lambda t: self._slr_one(self.initial_mean, self.initial_cov, t))(self._zt()[:-1])
        n, p = self.y.shape
        return VariationalState(
            A.astype(dt),
            b.astype(dt),
            GaussianSites.zeros(n, p, dt),
            GaussianSites.zeros(M, d, dt),
            jnp.zeros((K, d, d), dt),
        )

    # ------------------------------------------------------------------ the chain q(u)
    def _map_data(self, data: GaussianSites, A, b):
        """Data sites (observation space) as node (M, d), (M, d, d) and pair (K, d, d) potentials
        on the inducing states (through the bridge mean in the sparse variant)."""
        M, K, d = self.num_inducing, self.num_inducing - 1, self.state_dim
        H = self.obs_matrix
        if self.dense:
            n1 = jnp.zeros((M, d), self.dtype).at[self.obs_idx].add(data.nat1 @ H)
            n2 = jnp.zeros((M, d, d), self.dtype).at[self.obs_idx].add(jnp.einsum("pi,npq,qj->nij", H, data.nat2, H))
            return n1, n2, jnp.zeros((K, d, d), self.dtype)
        B1, B2, beta, _, j = self._obs_reps(A, b)
        D1 = jnp.einsum("pi,nij->npj", H, B1)
        D2 = jnp.einsum("pi,nij->npj", H, B2)
        e = jnp.einsum("pi,ni->np", H, beta)
        v = data.nat1 + 2.0 * jnp.einsum("npq,nq->np", data.nat2, e)
        n1 = jnp.zeros((M, d), self.dtype).at[j].add(jnp.einsum("npi,np->ni", D1, v))
        n1 = n1.at[j + 1].add(jnp.einsum("npi,np->ni", D2, v))
        n2 = jnp.zeros((M, d, d), self.dtype).at[j].add(jnp.einsum("npi,npq,nqj->nij", D1, data.nat2, D1))
        n2 = n2.at[j + 1].add(jnp.einsum("npi,npq,nqj->nij", D2, data.nat2, D2))
        W = jnp.zeros((K, d, d), self.dtype).at[j].add(2.0 * jnp.einsum("npi,npq,nqj->nij", D1, data.nat2, D2))
        return n1, n2, W

    def _chain(self, state: VariationalState) -> _Chain:
        Psi, c, V = self._cell_disc(state.A, state.b)
        n1, n2, W = self._map_data(state.data, state.A, state.b)
        q = condition_chain(
            self.initial_mean,
            self.initial_cov,
            Psi,
            c,
            V,
            n1 + state.path.nat1,
            n2 + state.path.nat2,
            W + state.path_pair,
        )
        return _Chain(q, Psi, c, V)

    def posterior(self, state: VariationalState) -> Posterior:
        """Grid marginals and lag-one cross-covariances of ``q`` (jitted)."""
        if self.dense:  # the chain is the grid (reuses the compiled CVI step with rho = 0)
            q = self._jit_call("_cvi_step", state, jnp.zeros((), self.dtype))[2].q
            return Posterior(q.mean, q.cov, q.cross_cov)
        return self._jit_call("_posterior", state)

    def _posterior(self, state: VariationalState) -> Posterior:
        ch = self._chain(state)
        A, b = self._slr_cells(ch.q.mean, ch.q.cov)
        return Posterior(*self._fine(ch.q.mean, ch.q.cov, ch.q.cross_cov, A, b))

    # ------------------------------------------------------------------ ELBO pieces
    def _expected_log_lik(self, mean, cov):
        """``sum_i E_q[log p(y_i | H x_i)]`` from the marginals (n, d), (n, d, d) at the observations."""
        return expected_log_likelihood(
            self.y, mean, cov, self.obs_matrix, self.obs_var, self.log_likelihood_fn, self.gh_order
        )

    def _residual(self, mean, cov, cross, A, b):
        """Dense variant: Euler/Itô discretisation of ``E_q[log dp/dp_L]`` on the grid (one cell per
        grid interval; zero for linear drifts)."""
        Si = small_inv(self._sigma())
        rule = self._rule()
        dts = jnp.diff(self.grid)

        def one(m0, C0, m1, X, Ak, bk, dt, t):
            Kg = small_solve(C0, X).T  # Cov(x1, x0) C0^{-1}

            def g(x):
                f = self.sde.drift_fn(x, t)
                fl = Ak @ x + bk
                return (f - fl) @ Si @ (m1 + Kg @ (x - m0) - x - 0.5 * dt * (f + fl))

            return gaussian_expectation(g, m0, C0, rule)

        return jnp.sum(jax.vmap(one)(mean[:-1], cov[:-1], mean[1:], cross, A, b, dts, self.grid[:-1]))

    def _kl(self, ch: _Chain, A, b):
        """``KL(q(u) || p_{A,b}(u))`` between Gaussian chains (exact discretisation), computed
        from the differences stored in the chain (no cancellation of large terms)."""
        q = ch.q
        Ps, cs, Vs = self._cell_disc(A, b)
        D = q.dF + (ch.Psi - Ps)
        dg = q.dg + (ch.c - cs)
        dQ = q.dQ + (ch.V - Vs)
        m, C = q.mean[:-1], q.cov[:-1]

        def one(Dk, dgk, dQk, Vk, mk, Ck):
            Lv = small_cholesky(Vk)
            delta = Dk @ mk + dgk
            z = small_solve_lower(Lv, delta[:, None])[:, 0]
            ZD = small_solve_lower(Lv, Dk)
            return 0.5 * (_kl_cov_term(dQk, Vk) + z @ z + jnp.trace(ZD @ Ck @ ZD.T))

        L0 = small_cholesky(self.initial_cov)
        z0 = small_solve_lower(L0, q.d_initial_mean[:, None])[:, 0]
        kl0 = 0.5 * (_kl_cov_term(q.d_initial_cov, self.initial_cov) + z0 @ z0)
        return kl0 + jnp.sum(jax.vmap(one)(D, dg, dQ, Vs, m, C))

    def _lik_and_residual(self, m, C, X, A, b):
        """``(E_q log p(y | x), E_q log dp/dp_L)`` from the inducing-state moments."""
        mo, Co = self._obs_marginals(m, C, X, A, b)
        lik = self._expected_log_lik(mo, Co)
        if self.dense:
            return lik, self._residual(m, C, X, A, b)
        return lik, self._residual_cells(m, C, X, A, b)

    def _elbo_chain(self, ch: _Chain):
        q = ch.q
        A, b = self._slr_cells(q.mean, q.cov)
        lik, res = self._lik_and_residual(q.mean, q.cov, q.cross_cov, A, b)
        return lik - self._kl(ch, A, b) + res

    def elbo(self, state: VariationalState) -> Float[Array, ""]:
        """ELBO (see module doc) of ``q(state)`` under this model's parameters."""
        return self._elbo_chain(self._chain(state))

    # ------------------------------------------------------------------ natural-gradient step
    def _prior_natural(self, A, b):
        """Natural parameters of the linearised prior's transitions: node (M, d), (M, d, d) and
        pair (K, d, d) (the initial density, common to all linearisations, is left out)."""
        Psi, c, V = self._cell_disc(A, b)
        M, d = self.num_inducing, self.state_dim
        Vi = jax.vmap(lambda v: small_inv(symmetrize(v)))(V)
        PtVi = jnp.einsum("kji,kjl->kil", Psi, Vi)
        n1 = jnp.zeros((M, d), self.dtype).at[1:].add(jnp.einsum("kij,kj->ki", Vi, c))
        n1 = n1.at[:-1].add(-jnp.einsum("kij,kj->ki", PtVi, c))
        n2 = jnp.zeros((M, d, d), self.dtype).at[1:].add(-0.5 * Vi)
        n2 = n2.at[:-1].add(-0.5 * jnp.einsum("kij,kjl->kil", PtVi, Psi))
        return n1, n2, PtVi

    def _expected_log_lin_prior(self, m, C, X, A, b):
        """``E_q[log p_{A,b}(u)]`` of the transitions, from centred moments (for gradients)."""
        Psi, c, V = self._cell_disc(A, b)

        def one(Ps, cc, Vk, m0, m1, C0, C1, Xk):
            dl = m1 - Ps @ m0 - cc
            R = jnp.outer(dl, dl) + C1 - Xk.T @ Ps.T - Ps @ Xk + Ps @ C0 @ Ps.T
            return -0.5 * (small_logdet(Vk) + jnp.trace(small_solve(symmetrize(Vk), R)))

        return jnp.sum(jax.vmap(one)(Psi, c, V, m[:-1], m[1:], C[:-1], C[1:], X))

    def _data_target(self, mean, cov) -> GaussianSites:
        H = self.obs_matrix
        n, p = self.y.shape
        loglik = self.log_likelihood_fn
        if loglik is None:
            v = jnp.broadcast_to(self.obs_var, (n, p))
            return GaussianSites(self.y / v, jax.vmap(jnp.diag)(-0.5 / v))
        mz = mean @ H.T
        Cz = jnp.einsum("pd,nde,qe->npq", H, cov, H)
        rule = gauss_hermite(p, self.gh_order)

        def one(yi, mi, Ci):
            exp = lambda a, B: gaussian_expectation(lambda z: loglik(yi, z), a, B, rule)  # noqa: E731
            return cvi_site_target(exp, mi, Ci)

        n1, n2 = jax.vmap(one)(self.y, mz, Cz)
        return GaussianSites(n1, n2)

    def natural_gradient_step(self, state: VariationalState, rho, chain=None) -> VariationalState:
        """One damped CVI step: re-linearise the prior along ``q`` and move the data and path
        sites so that ``q``'s natural parameters become ``(1 - rho) lambda + rho target``
        (``chain``: ``q(u)`` of ``state`` if already computed)."""
        ch = self._chain(state) if chain is None else chain
        m, C, X = ch.q.mean, ch.q.cov, ch.q.cross_cov
        A_s, b_s = self._slr_cells(m, C)
        data_t = self._data_target(*self._obs_marginals(m, C, X, A_s, b_s))
        data_new = damped(state.data, data_t, rho)
        if not self.path_sites:
            return VariationalState(
                damped(state.A, A_s, rho), damped(state.b, b_s, rho), data_new, state.path, state.path_pair
            )
        sg = jax.lax.stop_gradient

        def parts(m_, C_, X_):
            A_, b_ = self._slr_cells(m_, C_)
            lik, res = self._lik_and_residual(m_, C_, X_, A_, b_)
            path = (
                res
                + self._expected_log_lin_prior(m_, C_, X_, A_, b_)
                - self._expected_log_lin_prior(m_, C_, X_, sg(A_), sg(b_))
            )
            return lik, path

        _, vjp = jax.vjp(parts, m, C, X)
        one, zero = jnp.ones((), self.dtype), jnp.zeros((), self.dtype)
        g_m, g_C, g_X = vjp((zero, one))
        g_path = natural_from_moment_gradients(g_m, g_C, g_X, m)
        p_old = self._prior_natural(state.A, state.b)
        p_new = self._prior_natural(A_s, b_s)
        carry = [po - pn + pp for po, pn, pp in zip(p_old, p_new, (state.path.nat1, state.path.nat2, state.path_pair))]
        target = list(g_path)
        if not self.dense:  # data sites act through bridges that depend on the linearisation
            g_m, g_C, g_X = vjp((one, zero))
            g_lik = natural_from_moment_gradients(g_m, g_C, g_X, m)
            d_old = self._map_data(state.data, state.A, state.b)
            d_new = self._map_data(state.data, A_s, b_s)
            d_t = self._map_data(data_t, A_s, b_s)
            carry = [cr + do - dn for cr, do, dn in zip(carry, d_old, d_new)]
            target = [tp + gl - dt for tp, gl, dt in zip(target, g_lik, d_t)]
        new = [(1.0 - rho) * cr + rho * tg for cr, tg in zip(carry, target)]
        return VariationalState(A_s, b_s, data_new, GaussianSites(new[0], symmetrize(new[1])), new[2])

    def _cvi_step(self, state, rho):
        """One CVI step, and the candidate's ELBO and chain, in one compiled call (``rho = 0``
        keeps ``q`` and only re-expresses it on the re-linearised prior)."""
        cand = self.natural_gradient_step(state, rho)
        ch = self._chain(cand)
        return cand, self._elbo_chain(ch), ch

    def _fit_aux(self, state, num_iters, rho=1.0, progress_bar=False, **kwargs):
        state = self.init_state() if state is None else state
        call = lambda s, r: self._jit_call("_cvi_step", s, jnp.asarray(r, self.dtype))  # noqa: E731
        state, val, ch = call(state, 0.0)

        def step(aux, r):
            cand, v, c = call(aux[0], r)
            return (cand, c), v

        (st, ch), tr = natural_gradient_ascent(
            step,
            None,
            (state, ch),
            num_iters,
            rho=rho,
            initial_value=val,
            progress_bar=progress_bar,
            desc="cvi",
            **kwargs,
        )
        return st, ch, tr

    def fit_posterior(
        self,
        state: VariationalState | None = None,
        num_iters: int = 20,
        rho: float = 1.0,
        progress_bar: bool = False,
        **kwargs,
    ) -> tuple[VariationalState, NatGradTrace]:
        """Natural-gradient iterations with ELBO back-off from ``state`` (default: the prior).

        ``kwargs`` go to :func:`probdyn.inference.natgrad.natural_gradient_ascent`, e.g.
        ``atol`` to stop at convergence, ``grow`` to re-grow ``rho`` after back-offs."""
        st, _, tr = self._fit_aux(state, num_iters, rho=rho, progress_bar=progress_bar, **kwargs)
        return st, tr

    # ------------------------------------------------------------------ direct optimum (reference)
    def fit_posterior_direct(
        self,
        state: VariationalState | None = None,
        gtol: float = 1e-9,
        max_iters: int = 50_000,
        history: int = 50,
    ) -> tuple[VariationalState, MinimizeResult]:
        """Maximise the same ELBO directly over the chain ``q(u)`` with L-BFGS (a reference for CVI).

        ``q(u)`` is parameterised by its forward factors: initial mean and Cholesky factor,
        transitions ``F_j, g_j`` and Cholesky factors of ``Q_j`` (diagonals in log space), so every
        parameter value is a proper member of the family. Starts from ``q(state)`` (default: the
        prior, a cold start) and runs :func:`probdyn.inference.optimize.lbfgs_minimize` (scipy,
        float64 on the host; ``gtol`` on the largest gradient entry). Returns the optimum as a
        :class:`VariationalState` (all sites in the path sites, re-linearised along ``q``) and the
        :class:`~probdyn.inference.optimize.MinimizeResult` (its ``value`` is ``-ELBO``). Much slower
        than CVI (thousands of first-order iterations from a cold start); use float64.
        """
        q = self._chain(self.init_state() if state is None else state).q
        res = lbfgs_minimize(
            lambda f: self._jit_call("_direct_objective", f), self._factors(q), gtol, max_iters, history
        )
        return self._jit_call("_state_from_chain", self._factor_chain(res.x).q), res

    @staticmethod
    def _factors(q: GaussMarkovChain):
        """Unconstrained factors of a chain: lower Cholesky factors with the log of their diagonals."""

        def raw(L):
            dg = jnp.diagonal(L, axis1=-2, axis2=-1)
            return jnp.tril(L, -1) + jnp.vectorize(jnp.diag, signature="(d)->(d,d)")(jnp.log(dg))

        return (q.initial_mean, raw(small_cholesky(q.initial_cov)), q.F, q.g, raw(q.chol_Q))

    def _factor_chain(self, factors) -> _Chain:
        m0, r0, F, g, rQ = factors

        def chol(r):
            dg = jnp.diagonal(r, axis1=-2, axis2=-1)
            return jnp.tril(r, -1) + jnp.vectorize(jnp.diag, signature="(d)->(d,d)")(jnp.exp(dg))

        q = chain_from_factors(m0, chol(r0), F, g, chol(rQ), self.initial_mean, self.initial_cov)
        return _Chain(q, q.F, q.g, q.Q)

    def _direct_objective(self, factors):
        return jax.value_and_grad(lambda f: -self._elbo_chain(self._factor_chain(f)))(factors)

    def _state_from_chain(self, q: GaussMarkovChain) -> VariationalState:
        """The state whose ``q(u)`` is the chain ``q``: linearisation by SLR along ``q``, no data
        sites, path sites = ``q``'s natural parameters minus the linearised prior's."""
        A, b = self._slr_cells(q.mean, q.cov)
        n1, n2, W = chain_natural_params(q)
        p1, p2, pW = self._prior_natural(A, b)
        P0i = small_inv(self.initial_cov)
        p1 = p1.at[0].add(P0i @ self.initial_mean)
        p2 = p2.at[0].add(-0.5 * P0i)
        n, p = self.y.shape
        path = GaussianSites(n1 - p1, symmetrize(n2 - p2))
        return VariationalState(A, b, GaussianSites.zeros(n, p, self.dtype), path, W - pW)

    # ------------------------------------------------------------------ learning
    def fit(
        self,
        key: PRNGKeyArray,
        state: VariationalState | None = None,
        num_steps: int = 50,
        optimizer="lbfgs",
        learning_rate: float | None = None,
        max_step: float = 0.5,
        e_iters: int = 20,
        e_atol: float = 1e-6,
        rho: float = 1.0,
        learn_drift: bool = True,
        learn_diffusion: bool = False,
        learn_noise: bool = False,
        log_space: bool = True,
        progress_bar: bool = True,
        **fit_kwargs,
    ) -> tuple[SparseGPSDE, VariationalState, FitTrace]:
        """Variational EM by gradient steps on the ELBO.

        Each of the ``num_steps`` steps is one optimiser step on ``-ELBO / n`` w.r.t. the
        learned parameters at fixed ``q`` (M-step), followed by CVI iterations (warm started,
        at most ``e_iters``, stopped when the ELBO gains less than ``e_atol * n``) that bring
        ``q`` back to the optimum for the new parameters (E-step); an E-step to convergence
        also precedes the first step. By the envelope theorem the M-step gradient is then the
        gradient of the collapsed objective ``max_q ELBO``, so a quasi-Newton method applies:
        ``optimizer="lbfgs"`` (default; optax L-BFGS without line search, learning rate 1) or
        ``"adam"`` (learning rate 0.05), or any optax transformation; every update is clipped
        to global norm ``max_step`` (in the unconstrained parameters) as a trust region.

        Learned parameters: the drift's inexact-array leaves (``learn_drift``), the diffusion
        matrix (``learn_diffusion``) and the observation log-sd (``learn_noise``). With
        ``log_space`` every learned *scalar* leaf that is positive at the start (e.g. an OU decay)
        is optimised as its logarithm and a positive diagonal diffusion matrix as the log of its
        diagonal (off-diagonal zeros stay zero); vector/matrix leaves (network weights,
        polynomial coefficients, the log-sd) stay unconstrained. ``fit_kwargs`` go to
        :func:`probdyn.inference.optimize.fit` (clipping, checkpoints). Implemented by
        :func:`probdyn.models.sde_posteriors.em.variational_em`.

        Returns ``(fitted model, state, FitTrace)``.
        """
        return variational_em(
            self,
            key,
            state,
            num_steps,
            optimizer,
            learning_rate,
            max_step,
            e_iters,
            e_atol,
            rho,
            learn_drift,
            learn_diffusion,
            learn_noise,
            log_space,
            progress_bar,
            **fit_kwargs,
        )

    def _elbo_aux(self, chain: _Chain):
        """ELBO at fixed ``q(u)`` (the chain) as a function of the model's parameters (M-step)."""
        return self._elbo_chain(chain)

    # ------------------------------------------------------------------ queries
    def marginals(self, state: VariationalState, times) -> tuple[Float[Array, "T d"], Float[Array, "T d d"]]:
        """Posterior marginal mean (T, d) and covariance (T, d, d) at any times in the grid span.

        Between inducing times ``q`` is the bridge of the linearised prior (SLR along ``q``), so
        ``x(t) | u_j, u_{j+1}`` is exact and is integrated against their pairwise marginal."""
        times = jnp.atleast_1d(jnp.asarray(times, self.dtype))
        self._check_span(times)
        return self._jit_call("_marginals", state, times)

    def _marginals(self, state, times):
        ch = self._chain(state)
        m, C, X = ch.q.mean, ch.q.cov, ch.q.cross_cov
        A, b = self._slr_cells(m, C)
        zt, h = self._zt(), self._cell_len()
        K = h.shape[0]
        j = jnp.clip(jnp.searchsorted(zt, times, side="right") - 1, 0, K - 1)
        s = times - zt[j]
        tol = 1e-9 * h[j]
        kind = jnp.where(s <= tol, 0, jnp.where(s >= h[j] - tol, 2, 1))
        B1, B2, beta, Vb, _, _, _ = jax.vmap(self._rep)(A[j], b[j], s, h[j], kind)
        B = jnp.concatenate([B1, B2], axis=2)
        mU = jnp.concatenate([m[j], m[j + 1]], axis=1)
        CU = jnp.block([[C[j], X[j]], [jnp.swapaxes(X[j], 1, 2), C[j + 1]]])
        mean = jnp.einsum("nij,nj->ni", B, mU) + beta
        cov = symmetrize(jnp.einsum("nij,njk,nlk->nil", B, CU, B) + Vb)
        return mean, cov

    def sample_paths(self, key: PRNGKeyArray, state: VariationalState, num_samples: int = 1) -> Float[Array, "S N d"]:
        """Joint posterior paths on the grid: ancestral sampling of the inducing states from
        ``q(u)``'s forward kernels, then (sparse variant) exact bridge samples in between
        (forward simulation of the linearised prior plus Matheron's correction)."""
        return self._jit_call("_sample_paths", key, state, int(num_samples))

    def _sample_paths(self, key, state, num_samples):
        ch = self._chain(state)
        q = ch.q
        d, M = self.state_dim, self.num_inducing
        k0, k1, k2 = jax.random.split(key, 3)
        e0 = jax.random.normal(k0, (num_samples, d), self.dtype)
        eps = jax.random.normal(k1, (num_samples, M - 1, d), self.dtype)
        L0 = small_cholesky(q.initial_cov)

        def one(e0_, eps_):
            return kalman.simulate_chain(q.initial_mean + L0 @ e0_, (q.F, q.g), q.chol_Q, eps_)

        U = jax.vmap(one)(e0, eps)
        if self.dense:
            return U
        A, b = self._slr_cells(q.mean, q.cov)
        B1, B2, beta, Vb, _, _, _ = self._node_reps(A, b)
        N = self.grid.shape[0]
        jk = self.node_cell[:-1]
        Pd, cd, Vd = jax.vmap(self._disc)(A[jk], b[jk], jnp.diff(self.grid))
        Ld = jax.vmap(lambda v: small_cholesky(v))(Vd)
        is_ind = self.node_kind == 0
        zpos = jnp.clip(jnp.searchsorted(self.ind_idx, jnp.arange(N)), 0, M - 1)
        epsf = jax.random.normal(k2, (num_samples, N - 1, d), self.dtype)

        def bridge(u, e):
            def step(x, inp):
                k, P, c, L, ek = inp
                x = jnp.where(is_ind[k], u[zpos[k]], x)
                xn = P @ x + c + L @ ek
                return xn, xn

            _, xs = jax.lax.scan(step, u[0], (jnp.arange(N - 1), Pd, cd, Ld, e))
            xt = jnp.concatenate([u[0][None], xs])  # forward simulation, pre-reset values
            j = self.node_cell
            xend = xt[self.ind_idx[1:]]  # simulated value at each cell's end
            corr = jnp.einsum("nij,nj->ni", B2, u[j + 1] - xend[j])
            x = xt + corr
            return jnp.where(is_ind[:, None], u[zpos], jnp.where((self.node_kind == 2)[:, None], u[-1], x))

        return jax.vmap(bridge)(U, epsf)
