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
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn.inference.natgrad import (
    GaussianSites,
    GaussMarkovChain,
    NatGradTrace,
    condition_chain,
    cvi_site_target,
    damped,
    gauss_hermite,
    gaussian_expectation,
    natural_from_moment_gradients,
    natural_gradient_ascent,
)
from probdyn.linalg import psd_cholesky, symmetrize
from probdyn.sde.base import SDE
from probdyn.ssm import LTISDE, check_times

__all__ = [
    "SparseGPSDE",
    "VariationalState",
    "Posterior",
    "FitTrace",
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
]

_LOG2PI = float(np.log(2 * np.pi))


# ----------------------------------------------------------------------------------
# Drifts of the benchmark SDEs (parameters are pytree leaves, so they can be learned)
# ----------------------------------------------------------------------------------
class OUDrift(eqx.Module):
    """Ornstein–Uhlenbeck ``f(x) = -decay * x``."""

    decay: Float[Array, ""]

    def __call__(self, x, t):
        return -self.decay * x


class DoubleWellDrift(eqx.Module):
    """Double well ``f(x) = scale * x * (c - x^2)`` (Verma et al.: scale 4)."""

    c: Float[Array, ""]
    scale: float = eqx.field(static=True, default=4.0)

    def __call__(self, x, t):
        return self.scale * x * (self.c - x**2)


class BenesDrift(eqx.Module):
    """Beneš ``f(x) = tanh(x)``."""

    def __call__(self, x, t):
        return jnp.tanh(x)


class SineDrift(eqx.Module):
    """``f(x) = sin(x)``."""

    def __call__(self, x, t):
        return jnp.sin(x)


class SqrtDrift(eqx.Module):
    """``f(x) = sqrt(|x|)``."""

    def __call__(self, x, t):
        return jnp.sqrt(jnp.abs(x))


class VanDerPolDrift(eqx.Module):
    """Van der Pol oscillator in Liénard form, state (2,):
    ``f(x) = (a (x_1 - x_1^3 / 3 - x_2),  b x_1)``."""

    a: Float[Array, ""]
    b: Float[Array, ""]

    def __call__(self, x, t):
        return jnp.stack([self.a * (x[0] - x[0] ** 3 / 3.0 - x[1]), self.b * x[0]])


class PolynomialDrift(eqx.Module):
    """Scalar polynomial drift ``f(x) = sum_k coef_k x^k`` (coef (K,), learnable)."""

    coef: Float[Array, " K"]

    def __call__(self, x, t):
        return jnp.polyval(self.coef[::-1], x)


class LinearDrift(eqx.Module):
    """Linear drift ``f(x) = A x + b`` (A (d, d), b (d,), learnable)."""

    A: Float[Array, "d d"]
    b: Float[Array, " d"]

    def __call__(self, x, t):
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


def _phi1(z):
    """``expm1(z) / z`` (1 at 0), safe for autodiff."""
    small = jnp.abs(z) < 1e-3
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, 1.0 + z / 2 + z * z / 6 + z**3 / 24, jnp.expm1(zs) / zs)


def discretise_linear(A: Float[Array, "d d"], b: Float[Array, " d"], Sigma: Float[Array, "d d"], dt):
    """Exact discretisation of ``dx = (A x + b) dt + L dW`` (``Sigma = L L^T``) over ``dt >= 0``.

    Returns ``(Psi = e^{A dt} (d, d), c = int_0^dt e^{A s} b ds (d,), V (d, d))``. Closed form
    for d = 1 (stable as ``A dt -> 0``), matrix exponentials (Van Loan) otherwise.
    """
    d = A.shape[-1]
    if d == 1:
        z = A[0, 0] * dt
        Psi = jnp.exp(z).reshape(1, 1)
        c = b * dt * _phi1(z)
        V = Sigma * dt * _phi1(2.0 * z)
        return Psi, c, V
    aug = jnp.zeros((d + 1, d + 1), A.dtype).at[:d, :d].set(A).at[:d, d].set(b)
    E = jax.scipy.linalg.expm(aug * dt)
    eye = jnp.eye(d, dtype=A.dtype)
    V = LTISDE(A, eye, Sigma, eye).process_cov(dt)
    return E[:d, :d], E[:d, d], V


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


class FitTrace(NamedTuple):
    """Variational-EM trace: ELBO after each E-step (num_steps + 1,), the learned parameters
    after each step (a list of pytrees), CVI iterations per E-step, the last step size and
    the wall time."""

    elbo: np.ndarray
    params: list
    cvi_iters: np.ndarray
    rho: float
    time_s: float


class _Chain(NamedTuple):
    """q(u) in forward form plus the representation's prior transitions (for KL terms)."""

    q: GaussMarkovChain
    Psi: Float[Array, "K d d"]
    c: Float[Array, "K d"]
    V: Float[Array, "K d d"]


@eqx.filter_jit
def _jit_call(name, model, *args):
    return getattr(model, name)(*args)


def _inv(M):
    return 1.0 / M if M.shape[-1] == 1 else jnp.linalg.inv(M)


def _solve(A, B):
    """``A^{-1} B`` (scalar fast path for 1x1 ``A``)."""
    if A.shape[-1] == 1:
        return B / A[0, 0]
    return jnp.linalg.solve(A, B)


def _chol(M):
    return jnp.sqrt(M) if M.shape[-1] == 1 else jnp.linalg.cholesky(symmetrize(M))


def _tsolve(L, B):
    """``L^{-1} B`` for lower-triangular ``L``."""
    if L.shape[-1] == 1:
        return B / L[0, 0]
    return jax.scipy.linalg.solve_triangular(L, B, lower=True)


def _chol_logdet(P):
    return 2.0 * jnp.sum(jnp.log(jnp.diag(_chol(P))))


def _kl_cov_term(dQ, V):
    """``tr(V^{-1} Q) - d - log det(V^{-1} Q)`` for ``Q = V + dQ``, via ``e - log1p(e)``."""
    if V.shape[-1] == 1:
        e = (dQ / V).reshape(1)
    else:
        Lv = _chol(V)
        Z = _tsolve(Lv, _tsolve(Lv, dQ).T)
        e = jnp.linalg.eigvalsh(symmetrize(Z))
    return jnp.sum(e - jnp.log1p(e))


# ----------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------
class SparseGPSDE(eqx.Module):
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

    sde: SDE
    grid: Float[Array, " N"]
    obs_idx: Array
    y: Float[Array, "n p"]
    obs_matrix: Float[Array, "p d"]
    obs_log_std: Float[Array, " p"]
    initial_mean: Float[Array, " d"]
    initial_cov: Float[Array, "d d"]
    ind_idx: Array
    node_cell: Array
    node_kind: Array
    right_inducing: Array
    log_likelihood_fn: Callable | None = eqx.field(static=True)
    dense: bool = eqx.field(static=True)
    gh_order: int = eqx.field(static=True)
    quad_order: int = eqx.field(static=True)
    path_sites: bool = eqx.field(static=True)

    def __init__(self, sde: SDE, obs_times, y, obs_noise=1.0, obs_matrix=None, log_likelihood=None,
                 dt: float | None = None, t_span=None, grid=None, initial_mean=None, initial_cov=None,
                 inducing_times=None, gh_order: int = 10, quad_order: int = 8, path_sites: bool = True):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a probdyn.sde.SDE, got {type(sde).__name__}")
        if callable(sde.diffusion):
            raise ValueError("SparseGPSDE needs a constant (additive) diffusion matrix")
        sde.check()
        d = sde.state_dim
        Lm = np.asarray(sde.diffusion)
        if np.linalg.matrix_rank(Lm @ Lm.T) < d:
            raise ValueError("diffusion L must have L L^T positive definite (every state driven by noise)")
        t_obs = np.asarray(check_times(obs_times), float)
        y = np.asarray(y)
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[0] != t_obs.shape[0]:
            raise ValueError(f"y must have shape ({t_obs.shape[0]}, p), got {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError("y must be finite")
        p = y.shape[1]
        dtype = jnp.result_type(jnp.asarray(y).dtype, float)
        if grid is None:
            if dt is None:
                raise ValueError("give dt (grid step) or an explicit grid")
            t0, t1 = (t_obs[0], t_obs[-1]) if t_span is None else (float(t_span[0]), float(t_span[1]))
            if t_obs[0] < t0 - 1e-12 or t_obs[-1] > t1 + 1e-12:
                raise ValueError("observation times must lie inside t_span")
            grid = make_grid(t0, t1, float(dt), include=t_obs)
        grid = np.asarray(check_times(grid), float)
        if grid.size < 2:
            raise ValueError("the grid needs at least 2 points")
        idx = np.searchsorted(grid, t_obs)
        if np.any(idx >= grid.size) or not np.allclose(grid[np.minimum(idx, grid.size - 1)], t_obs, atol=1e-9):
            raise ValueError("every observation time must be a grid point (use make_grid(include=obs_times))")
        H = np.eye(d)[:p] if obs_matrix is None else np.asarray(obs_matrix, float)
        if H.shape != (p, d):
            raise ValueError(f"obs_matrix must have shape ({p}, {d}), got {H.shape}")
        noise = np.broadcast_to(np.asarray(obs_noise, float), (p,))
        if log_likelihood is None and (np.any(noise <= 0) or not np.all(np.isfinite(noise))):
            raise ValueError("obs_noise (variance) must be positive and finite")
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
        m0 = np.zeros(d) if initial_mean is None else np.asarray(initial_mean, float).reshape(d)
        P0 = np.eye(d) if initial_cov is None else np.asarray(initial_cov, float).reshape(d, d)
        if not np.all(np.linalg.eigvalsh(0.5 * (P0 + P0.T)) > 0):
            raise ValueError("initial_cov must be positive definite")
        self.sde = sde
        self.grid = jnp.asarray(grid, dtype)
        self.obs_idx = jnp.asarray(idx, jnp.int32)
        self.y = jnp.asarray(y, dtype)
        self.obs_matrix = jnp.asarray(H, dtype)
        self.obs_log_std = jnp.asarray(0.5 * np.log(np.maximum(noise, 1e-300)), dtype)
        self.initial_mean = jnp.asarray(m0, dtype)
        self.initial_cov = jnp.asarray(P0, dtype)
        self.ind_idx = jnp.asarray(Z, jnp.int32)
        self.node_cell = jnp.asarray(node_cell, jnp.int32)
        self.node_kind = jnp.asarray(kind, jnp.int32)
        self.right_inducing = jnp.asarray(is_ind[1:], bool)
        self.log_likelihood_fn = log_likelihood
        self.dense = inducing_times is None
        self.gh_order = int(gh_order)
        self.quad_order = int(quad_order)
        self.path_sites = bool(path_sites)

    # ------------------------------------------------------------------ basics
    @property
    def state_dim(self) -> int:
        """State dimension d."""
        return self.sde.state_dim

    @property
    def dtype(self):
        """Floating dtype of the model's arrays."""
        return self.grid.dtype

    @property
    def obs_var(self):
        """Observation-noise variances (p,)."""
        return jnp.exp(2.0 * self.obs_log_std)

    @property
    def num_inducing(self) -> int:
        """M: number of inducing states (N in the dense variant)."""
        return int(self.ind_idx.shape[0])

    def _sigma(self):
        Lm = jnp.asarray(self.sde.diffusion, self.dtype)
        return symmetrize(Lm @ Lm.T)

    def _rule(self):
        return gauss_hermite(self.state_dim, self.gh_order)

    def _zt(self):
        return self.grid[self.ind_idx]

    def _cell_len(self):
        return jnp.diff(self._zt())

    def _disc(self, A, b, dt):
        return discretise_linear(A, b, self._sigma(), dt)

    def _cell_disc(self, A, b):
        return jax.vmap(self._disc)(A, b, self._cell_len())

    def _slr_one(self, mk, Ck, t):
        def g(x):
            f = self.sde.drift_fn(x, t)
            return f, jnp.outer(f, x - mk)

        Ef, Cfx = gaussian_expectation(g, mk, Ck, self._rule())
        A = _solve(Ck, Cfx.T).T
        return A, Ef - A @ mk

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
        return VariationalState(A.astype(dt), b.astype(dt), GaussianSites.zeros(n, p, dt),
                                GaussianSites.zeros(M, d, dt), jnp.zeros((K, d, d), dt))

    # ------------------------------------------------------------------ bridges (sparse variant)
    def _rep(self, A, b, s, h, kind):
        """``x(z_j + s) | u_j, u_{j+1} ~ N(B1 u_j + B2 u_{j+1} + beta, Vb)`` under the linear SDE
        (A, b) of the cell (length h); kind 0/1/2 = left end / interior / right end. Also
        returns ``Psi(h - s), c(h - s), V(h - s)`` (the transition to the cell end)."""
        d = self.state_dim
        eye = jnp.eye(d, dtype=self.dtype)
        zero = jnp.zeros((d, d), self.dtype)
        inner = kind == 1
        s_ = jnp.where(inner, s, 0.5 * h)
        P1, c1, V1 = self._disc(A, b, s_)
        P2, c2, V2 = self._disc(A, b, h - s_)
        L1 = _inv(V1)
        L2 = _inv(V2)
        Vb = symmetrize(_inv(L1 + P2.T @ L2 @ P2))
        B2 = Vb @ P2.T @ L2
        B1 = Vb @ L1 @ P1
        beta = Vb @ (L1 @ c1 - P2.T @ L2 @ c2)
        left, right = kind == 0, kind == 2
        B1 = jnp.where(left, eye, jnp.where(right, zero, B1))
        B2 = jnp.where(left, zero, jnp.where(right, eye, B2))
        beta = jnp.where(inner, beta, 0.0)
        Vb = jnp.where(inner, Vb, zero)
        return B1, B2, beta, Vb, P2, c2, V2

    def _node_reps(self, A, b):
        """Bridge representation of every grid node in its cell (see :meth:`_rep`)."""
        j = self.node_cell
        s = self.grid - self._zt()[j]
        h = self._cell_len()[j]
        return jax.vmap(self._rep)(A[j], b[j], s, h, self.node_kind)

    def _fine(self, m, C, X, A, b):
        """Grid marginals (N, d), (N, d, d) and cross-covariances (N-1, d, d) of ``q`` from the
        inducing-state moments and the bridges of (A, b)."""
        if self.dense:
            return m, C, X
        d = self.state_dim
        B1, B2, beta, Vb, P2, _, V2 = self._node_reps(A, b)
        j = self.node_cell
        mU = jnp.concatenate([m[j], m[j + 1]], axis=1)  # (N, 2d)
        CU = jnp.block([[C[j], X[j]], [jnp.swapaxes(X[j], 1, 2), C[j + 1]]])
        B = jnp.concatenate([B1, B2], axis=2)  # (N, d, 2d)
        mean = jnp.einsum("nij,nj->ni", B, mU) + beta
        cov = symmetrize(jnp.einsum("nij,njk,nlk->nil", B, CU, B) + Vb)
        # intervals: right node in the left node's cell
        jk = j[:-1]
        eye = jnp.eye(d, dtype=self.dtype)
        zero = jnp.zeros((d, d), self.dtype)
        rin = self.right_inducing[:, None, None]
        Br = jnp.where(rin, jnp.concatenate([zero, eye], axis=1)[None], B[1:])
        CUk = CU[:-1]
        cross = jnp.einsum("nij,njk,nlk->nil", B[:-1], CUk, Br)
        # bridge cross-covariance Cov(x_s, x_t | U) = Vb(s) Phi^T, Phi = Vb' V(dt)^{-1} Psi(dt),
        # Vb' = (V(dt)^{-1} + Psi(h-t)^T V(h-t)^{-1} Psi(h-t))^{-1}; zero if t is the cell end
        dts = jnp.diff(self.grid)

        def phi(Ak, bk, dtk, P2t, V2t, right_end):
            Pd, _, Vd = self._disc(Ak, bk, dtk)
            V2s = jnp.where(right_end, eye, V2t)
            Ld = _inv(Vd)
            Vbp = _inv(Ld + P2t.T @ _solve(V2s, P2t))
            return jnp.where(right_end, zero, Vbp @ Ld @ Pd)

        Phi = jax.vmap(phi)(A[jk], b[jk], dts, P2[1:], V2[1:], self.right_inducing)
        cross = cross + jnp.einsum("nij,nkj->nik", Vb[:-1], Phi)
        return mean, cov, cross

    def _obs_reps(self, A, b):
        """Bridge representations (B1, B2, beta, Vb) and cells of the observation nodes."""
        k = self.obs_idx
        j = self.node_cell[k]
        s = self.grid[k] - self._zt()[j]
        B1, B2, beta, Vb, _, _, _ = jax.vmap(self._rep)(A[j], b[j], s, self._cell_len()[j], self.node_kind[k])
        return B1, B2, beta, Vb, j

    def _obs_marginals(self, m, C, X, A, b):
        """Marginals (n, d), (n, d, d) of ``q`` at the observation times."""
        if self.dense:
            return m[self.obs_idx], C[self.obs_idx]
        B1, B2, beta, Vb, j = self._obs_reps(A, b)
        B = jnp.concatenate([B1, B2], axis=2)
        mU = jnp.concatenate([m[j], m[j + 1]], axis=1)
        CU = jnp.block([[C[j], X[j]], [jnp.swapaxes(X[j], 1, 2), C[j + 1]]])
        return jnp.einsum("nij,nj->ni", B, mU) + beta, symmetrize(jnp.einsum("nij,njk,nlk->nil", B, CU, B) + Vb)

    def _residual_cells(self, m, C, X, A, b):
        r"""Sparse variant: ``E_q log dp/dp_L = int E_q[r^T Sigma^{-1} (phi - (f + f_L) / 2)] dt`` with
        ``phi(x, t) = E_q[dx_t | x_t = x] / dt``, by ``quad_order``-point Gauss–Legendre quadrature
        on every cell (O(M quad_order), independent of the grid). Inside a cell, given ``x_t``
        and the cell end ``u_{j+1}``, ``q`` is the linearised-prior bridge, whose drift is
        ``f_L + Sigma Psi_e^T V_e^{-1} (u_{j+1} - Psi_e x - c_e)`` (transition to the cell end),
        so the integrand is
        ``E[r^T Psi_e^T V_e^{-1} (E[u_{j+1} | x_t] - Psi_e x_t - c_e)] - E[r^T Sigma^{-1} r] / 2``."""
        xg, wg = np.polynomial.legendre.leggauss(self.quad_order)
        xg, wg = jnp.asarray(xg, self.dtype), jnp.asarray(wg, self.dtype)
        Si = _inv(self._sigma())
        rule = self._rule()
        one_ = jnp.ones((), jnp.int32)

        def cell(Aj, bj, hj, z, m0, m1, C0, C1, Xj):  # vmapped over cells (no gathers)
            mU = jnp.concatenate([m0, m1])
            CU = jnp.block([[C0, Xj], [Xj.T, C1]])
            Cu1 = jnp.concatenate([Xj, C1], axis=0)  # Cov([u_j; u_{j+1}], u_{j+1})

            def point(xi, wi):
                tau = 0.5 * hj * (1.0 + xi)
                B1, B2, beta, Vb, Pe, ce, Ve = self._rep(Aj, bj, tau, hj, one_)
                B = jnp.concatenate([B1, B2], axis=1)
                mt = B @ mU + beta
                Ct = symmetrize(B @ CU @ B.T + Vb)
                Kt = _solve(Ct, B @ Cu1).T  # Cov(u_{j+1}, x_t) C_t^{-1}
                Ge = _solve(Ve, Pe).T  # Psi_e^T V_e^{-1}
                t = z + tau

                def g(x):
                    r = self.sde.drift_fn(x, t) - Aj @ x - bj
                    return r @ Ge @ (m1 + Kt @ (x - mt) - Pe @ x - ce) - 0.5 * r @ Si @ r

                return 0.5 * hj * wi * gaussian_expectation(g, mt, Ct, rule)

            return jnp.sum(jax.vmap(point)(xg, wg))

        zt = self._zt()
        return jnp.sum(jax.vmap(cell)(A, b, self._cell_len(), zt[:-1], m[:-1], m[1:], C[:-1], C[1:], X))

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
        q = condition_chain(self.initial_mean, self.initial_cov, Psi, c, V,
                            n1 + state.path.nat1, n2 + state.path.nat2, W + state.path_pair)
        return _Chain(q, Psi, c, V)

    def posterior(self, state: VariationalState) -> Posterior:
        """Grid marginals and lag-one cross-covariances of ``q`` (jitted)."""
        if self.dense:  # the chain is the grid (reuses the compiled CVI step with rho = 0)
            q = _jit_call("_cvi_step", self, state, jnp.zeros((), self.dtype))[2].q
            return Posterior(q.mean, q.cov, q.cross_cov)
        return _jit_call("_posterior", self, state)

    def _posterior(self, state: VariationalState) -> Posterior:
        ch = self._chain(state)
        A, b = self._slr_cells(ch.q.mean, ch.q.cov)
        return Posterior(*self._fine(ch.q.mean, ch.q.cov, ch.q.cross_cov, A, b))

    # ------------------------------------------------------------------ ELBO pieces
    def _expected_log_lik(self, mean, cov):
        """``sum_i E_q[log p(y_i | H x_i)]`` from the marginals (n, d), (n, d, d) at the observations."""
        H = self.obs_matrix
        mz = mean @ H.T
        Cz = jnp.einsum("pd,nde,qe->npq", H, cov, H)
        if self.log_likelihood_fn is None:
            v = self.obs_var
            r = self.y - mz
            diag = jnp.diagonal(Cz, axis1=1, axis2=2)
            return jnp.sum(-0.5 * (_LOG2PI + jnp.log(v) + (r**2 + diag) / v))
        rule = gauss_hermite(H.shape[0], self.gh_order)
        one = lambda yi, mi, Ci: gaussian_expectation(lambda z: self.log_likelihood_fn(yi, z), mi, Ci, rule)  # noqa: E731
        return jnp.sum(jax.vmap(one)(self.y, mz, Cz))

    def _residual(self, mean, cov, cross, A, b):
        """Dense variant: Euler/Itô discretisation of ``E_q[log dp/dp_L]`` on the grid (one cell per
        grid interval; zero for linear drifts)."""
        Si = _inv(self._sigma())
        rule = self._rule()
        dts = jnp.diff(self.grid)

        def one(m0, C0, m1, X, Ak, bk, dt, t):
            Kg = _solve(C0, X).T  # Cov(x1, x0) C0^{-1}

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
            Lv = _chol((Vk))
            delta = Dk @ mk + dgk
            z = _tsolve(Lv, delta[:, None])[:, 0]
            ZD = _tsolve(Lv, Dk)
            return 0.5 * (_kl_cov_term(dQk, Vk) + z @ z + jnp.trace(ZD @ Ck @ ZD.T))

        L0 = _chol(self.initial_cov)
        z0 = _tsolve(L0, q.d_initial_mean[:, None])[:, 0]
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
        Vi = jax.vmap(lambda v: _inv(symmetrize(v)))(V)
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
            return -0.5 * (_chol_logdet(Vk) + jnp.trace(_solve(symmetrize(Vk), R)))

        return jnp.sum(jax.vmap(one)(Psi, c, V, m[:-1], m[1:], C[:-1], C[1:], X))

    def _data_target(self, mean, cov) -> GaussianSites:
        H = self.obs_matrix
        n, p = self.y.shape
        if self.log_likelihood_fn is None:
            v = jnp.broadcast_to(self.obs_var, (n, p))
            return GaussianSites(self.y / v, jax.vmap(jnp.diag)(-0.5 / v))
        mz = mean @ H.T
        Cz = jnp.einsum("pd,nde,qe->npq", H, cov, H)
        rule = gauss_hermite(p, self.gh_order)

        def one(yi, mi, Ci):
            exp = lambda a, B: gaussian_expectation(lambda z: self.log_likelihood_fn(yi, z), a, B, rule)  # noqa: E731
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
            return VariationalState(damped(state.A, A_s, rho), damped(state.b, b_s, rho), data_new,
                                    state.path, state.path_pair)
        sg = jax.lax.stop_gradient

        def parts(m_, C_, X_):
            A_, b_ = self._slr_cells(m_, C_)
            lik, res = self._lik_and_residual(m_, C_, X_, A_, b_)
            path = (res + self._expected_log_lin_prior(m_, C_, X_, A_, b_)
                    - self._expected_log_lin_prior(m_, C_, X_, sg(A_), sg(b_)))
            return lik, path

        _, vjp = jax.vjp(parts, m, C, X)
        one, zero = jnp.ones((), self.dtype), jnp.zeros((), self.dtype)
        g_path = natural_from_moment_gradients(*vjp((zero, one)), m)
        p_old = self._prior_natural(state.A, state.b)
        p_new = self._prior_natural(A_s, b_s)
        carry = [po - pn + pp for po, pn, pp in zip(p_old, p_new, (state.path.nat1, state.path.nat2, state.path_pair))]
        target = list(g_path)
        if not self.dense:  # data sites act through bridges that depend on the linearisation
            g_lik = natural_from_moment_gradients(*vjp((one, zero)), m)
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
        call = lambda s, r: _jit_call("_cvi_step", self, s, jnp.asarray(r, self.dtype))  # noqa: E731
        state, val, ch = call(state, 0.0)

        def step(aux, r):
            cand, v, c = call(aux[0], r)
            return (cand, c), v

        (st, ch), tr = natural_gradient_ascent(step, None, (state, ch), num_iters, rho=rho, initial_value=val,
                                               progress_bar=progress_bar, desc="cvi", **kwargs)
        return st, ch, tr

    def fit_posterior(self, state: VariationalState | None = None, num_iters: int = 20, rho: float = 1.0,
                      progress_bar: bool = False, **kwargs) -> tuple[VariationalState, NatGradTrace]:
        """Natural-gradient iterations with ELBO back-off from ``state`` (default: the prior).

        ``kwargs`` go to :func:`probdyn.inference.natgrad.natural_gradient_ascent`, e.g.
        ``atol`` to stop at convergence, ``grow`` to re-grow ``rho`` after back-offs."""
        st, _, tr = self._fit_aux(state, num_iters, rho=rho, progress_bar=progress_bar, **kwargs)
        return st, tr

    # ------------------------------------------------------------------ learning
    def fit(self, key: PRNGKeyArray, state: VariationalState | None = None, num_steps: int = 50,
            optimizer="lbfgs", learning_rate: float | None = None, max_step: float = 0.5,
            e_iters: int = 20, e_atol: float = 1e-6, rho: float = 1.0,
            learn_drift: bool = True, learn_diffusion: bool = False, learn_noise: bool = False,
            log_space: bool = True, progress_bar: bool = True,
            **fit_kwargs) -> tuple["SparseGPSDE", VariationalState, FitTrace]:
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
        ``log_space`` every learned leaf whose entries are all positive at the start (e.g. an
        OU decay, a diagonal diffusion's diagonal) is optimised as its logarithm (off-diagonal
        zeros of a diagonal diffusion stay zero). ``fit_kwargs`` go to
        :func:`probdyn.inference.optimize.fit` (clipping, checkpoints, ``optimizer=``).

        Returns ``(fitted model, state, FitTrace)``.
        """
        from probdyn.inference.optimize import fit as _fit

        t0 = time.perf_counter()
        spec = jax.tree_util.tree_map(lambda _: False, self)
        if learn_drift:
            spec = eqx.tree_at(lambda m: m.sde.drift, spec,
                               jax.tree_util.tree_map(eqx.is_inexact_array, self.sde.drift))
        if learn_diffusion:
            spec = eqx.tree_at(lambda m: m.sde.diffusion, spec, True)
        if learn_noise:
            spec = eqx.tree_at(lambda m: m.obs_log_std, spec, True)
        params, static = eqx.partition(self, spec)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        if not leaves:
            raise ValueError("nothing to learn: the drift has no array parameters and learn_diffusion/"
                             "learn_noise are off")
        modes = tuple(_leaf_mode(v, log_space) for v in leaves)
        raw = [_to_raw(v, mo) for v, mo in zip(leaves, modes)]
        n = float(self.y.shape[0])
        e_kw = dict(rho=rho, atol=float(e_atol) * n, grow=2.0)
        fit_kwargs["optimizer"] = _em_optimizer(optimizer, learning_rate, float(max_step))
        state, chain, tr = self._fit_aux(state, e_iters, **e_kw)
        holder = {"state": state, "chain": chain}
        elbos, iters, ptrace = [float(tr.elbo[-1])], [len(tr.rho)], [jax.tree_util.tree_unflatten(treedef, leaves)]

        def callback(i, p, loss):
            leaves_ = [_from_raw(v, mo) for v, mo in zip(p, modes)]
            mdl = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves_), static)
            st, ch, t = mdl._fit_aux(holder["state"], e_iters, **e_kw)
            holder["state"], holder["chain"] = st, ch
            elbos.append(float(t.elbo[-1]))
            iters.append(len(t.rho))
            ptrace.append(jax.tree_util.tree_unflatten(treedef, leaves_))

        res = _fit(_em_loss, raw, key, num_steps,
                   batches=lambda k, i: (holder["chain"], (treedef, modes), static, n),
                   callback=callback, progress_bar=progress_bar, desc="variational EM", **fit_kwargs)
        leaves_ = [_from_raw(v, mo) for v, mo in zip(res.params, modes)]
        fitted = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves_), static)
        return fitted, holder["state"], FitTrace(np.asarray(elbos), ptrace, np.asarray(iters), float(rho),
                                                 time.perf_counter() - t0)

    # ------------------------------------------------------------------ queries
    def _check_span(self, times):
        tc = None if isinstance(times, jax.core.Tracer) else np.asarray(times)
        g = np.asarray(self.grid)
        if tc is not None and (np.any(tc < g[0] - 1e-9) or np.any(tc > g[-1] + 1e-9) or not np.all(np.isfinite(tc))):
            raise ValueError(f"times must lie in the grid span [{g[0]}, {g[-1]}]")

    def marginals(self, state: VariationalState, times) -> tuple[Float[Array, "T d"], Float[Array, "T d d"]]:
        """Posterior marginal mean (T, d) and covariance (T, d, d) at any times in the grid span.

        Between inducing times ``q`` is the bridge of the linearised prior (SLR along ``q``), so
        ``x(t) | u_j, u_{j+1}`` is exact and is integrated against their pairwise marginal."""
        times = jnp.atleast_1d(jnp.asarray(times, self.dtype))
        self._check_span(times)
        return _jit_call("_marginals", self, state, times)

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
        return _jit_call("_sample_paths", self, key, state, int(num_samples))

    def _sample_paths(self, key, state, num_samples):
        ch = self._chain(state)
        q = ch.q
        d, M = self.state_dim, self.num_inducing
        k0, k1, k2 = jax.random.split(key, 3)
        e0 = jax.random.normal(k0, (num_samples, d), self.dtype)
        eps = jax.random.normal(k1, (num_samples, M - 1, d), self.dtype)
        L0 = _chol((q.initial_cov))

        def one(e0_, eps_):
            u0 = q.initial_mean + L0 @ e0_

            def step(u, inp):
                F, g, Lq, e = inp
                un = F @ u + g + Lq @ e
                return un, un

            _, us = jax.lax.scan(step, u0, (q.F, q.g, q.chol_Q, eps_))
            return jnp.concatenate([u0[None], us])

        U = jax.vmap(one)(e0, eps)
        if self.dense:
            return U
        A, b = self._slr_cells(q.mean, q.cov)
        B1, B2, beta, Vb, _, _, _ = self._node_reps(A, b)
        N = self.grid.shape[0]
        jk = self.node_cell[:-1]
        Pd, cd, Vd = jax.vmap(self._disc)(A[jk], b[jk], jnp.diff(self.grid))
        Ld = jax.vmap(lambda v: _chol((v)))(Vd)
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

    def predictive_log_density(self, state: VariationalState, times, y) -> Float[Array, " T"]:
        """``log int p(y_t | H x(t)) q(x(t)) dx`` per test point (Gaussian noise: closed form;
        else Gauss–Hermite of the likelihood, log-mean-exp)."""
        y = jnp.asarray(y, self.dtype)
        y = y[:, None] if y.ndim == 1 else y
        times = jnp.atleast_1d(jnp.asarray(times, self.dtype))
        self._check_span(times)
        mu, cov = _jit_call("_marginals", self, state, times)
        return self._predictive(mu, cov, y)

    def _predictive(self, mu, cov, y):
        H = self.obs_matrix
        mz = mu @ H.T
        Cz = jnp.einsum("pd,nde,qe->npq", H, cov, H)
        if self.log_likelihood_fn is None:
            S = Cz + jnp.diag(self.obs_var)[None]

            def lp(yi, mi, Si):
                r = yi - mi
                return -0.5 * (r.shape[0] * _LOG2PI + _chol_logdet(Si) + r @ _solve(Si, r))

            return jax.vmap(lp)(y, mz, S)
        rule = gauss_hermite(H.shape[0], max(self.gh_order, 20))
        w = jnp.log(jnp.asarray(rule.weights, self.dtype))

        def lp2(yi, mi, Ci):
            Lc = psd_cholesky(Ci)
            zs = mi[None] + jnp.asarray(rule.points, self.dtype) @ Lc.T
            return jax.scipy.special.logsumexp(w + jax.vmap(lambda z: self.log_likelihood_fn(yi, z))(zs))

        return jax.vmap(lp2)(y, mz, Cz)


# ----------------------------------------------------------------------------------
# Variational-EM helpers (module level so that the compiled M-step is reused across fits)
# ----------------------------------------------------------------------------------
def _leaf_mode(v, log_space: bool) -> str:
    a = np.asarray(v)
    if not log_space:
        return "raw"
    if np.all(a > 0):
        return "log"
    if a.ndim == 2 and a.shape[0] == a.shape[1] and np.all(a == np.diag(np.diag(a))) and np.all(np.diag(a) > 0):
        return "logdiag"
    return "raw"


def _to_raw(v, mode):
    if mode == "log":
        return jnp.log(v)
    if mode == "logdiag":
        return jnp.log(jnp.diag(v))
    return v


def _from_raw(v, mode):
    if mode == "log":
        return jnp.exp(v)
    if mode == "logdiag":
        return jnp.diag(jnp.exp(v))
    return v


@functools.lru_cache(maxsize=16)
def _em_cached(kind: str, lr: float, max_step: float):
    import optax

    opt = optax.lbfgs(learning_rate=lr, linesearch=None) if kind == "lbfgs" else optax.adam(lr)
    return optax.chain(opt, optax.clip_by_global_norm(max_step))


def _em_optimizer(optimizer, learning_rate, max_step):
    """The M-step optimiser (cached, so repeated fits reuse the compiled step)."""
    if isinstance(optimizer, str):
        kind = optimizer.lower()
        if kind not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs', 'adam' or an optax transformation, got {optimizer!r}")
        lr = (1.0 if kind == "lbfgs" else 0.05) if learning_rate is None else float(learning_rate)
        return _em_cached(kind, lr, max_step)
    import optax

    return _em_cached_custom(optimizer, max_step) if isinstance(optimizer, optax.GradientTransformation) else optimizer


@functools.lru_cache(maxsize=16)
def _em_cached_custom(optimizer, max_step):
    import optax

    return optax.chain(optimizer, optax.clip_by_global_norm(max_step))


def _em_loss(raw, key, batch):
    chain, (treedef, modes), static, n = batch
    leaves = [_from_raw(v, mo) for v, mo in zip(raw, modes)]
    model = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)
    return -model._elbo_chain(chain) / n
