r"""Variational Gaussian-process approximation of SDEs (Archambeau et al. 2007), a baseline.

Archambeau, Cornford, Opper & Shawe-Taylor, "Gaussian process approximations of stochastic
differential equations", JMLR W&CP 1:1-16 (2007). Model (as in
:mod:`probdyn.models.sde_posteriors.sparse_gp`)

.. math::
    dx = f(x, t)\,dt + L\,dW,\quad x(t_0) \sim N(\mu_0, P_0),\quad y_i \sim p(y_i \mid H x(t_i)),
    \qquad \Sigma = L L^T\ \text{positive definite}.

**Posterior family.** A linear time-varying SDE ``dx = (-A(t) x + b(t)) dt + L dW`` with the
prior's diffusion, ``x(t_0) ~ N(m_0, S_0)``; ``(A, b)`` are constant on each cell
``[t_k, t_{k+1})`` of a time grid that contains the observation times (variational parameters
``A`` (K, d, d), ``b`` (K, d), ``m_0``, ``S_0``; K = N - 1).

**Time discretisation (ours; the paper integrates the same ODEs on a fixed grid).** Both the
prior and ``q`` are taken in their Euler–Maruyama form on the grid,
``x_{k+1} = x_k + Delta_k f(x_k, t_k) + sqrt(Delta_k) L eps`` and
``x_{k+1} = (I - Delta_k A_k) x_k + Delta_k b_k + sqrt(Delta_k) L eps``. Because the two
chains share the transition covariance ``Delta_k Sigma``, the KL divergence between them is
exactly the discretised energy of the paper, and the free energy below is the **exact**
negative ELBO of the Euler–Maruyama model on the grid (a lower bound of its log marginal
likelihood; the grid step sets how close that model is to the continuous one, O(Delta)):

.. math::
    -\mathcal L = KL\big(N(m_0, S_0)\,\|\,N(\mu_0, P_0)\big)
      + \sum_k \Delta_k E_k - \sum_i E_q[\log p(y_i \mid H x_{k_i})],\qquad
    E_k = \tfrac12 E_{N(m_k, S_k)}\big[(f(x, t_k) + A_k x - b_k)^T \Sigma^{-1} (\cdot)\big].

The marginal moments follow the Euler–Maruyama moment recursion (the discretised moment ODEs
``dm/dt = -A m + b``, ``dS/dt = -A S - S A^T + Sigma``), computed in square-root form by
:func:`probdyn.inference.kalman.predict`:
``m_{k+1} = (I - Delta A_k) m_k + Delta b_k``,
``S_{k+1} = (I - Delta A_k) S_k (I - Delta A_k)^T + Delta Sigma``. ``E_k`` and its
gradients are Gauss–Hermite expectations (``gh_order`` points per dimension; exact for
polynomial drifts of degree < ``gh_order``).

**Smoothing algorithm** (the paper's forward–backward fixed point). The Lagrange multipliers
``lambda_k = dF/dm_k`` and ``Psi_k = dF/dS_k`` of the moment constraints are computed by the
backward recursion (the discrete counterpart of the paper's backward ODEs
``dlambda/dt = -dE/dm + A^T lambda``, ``dPsi/dt = -dE/dS + Psi A + A^T Psi`` with jumps
``dE_obs/dm``, ``dE_obs/dS`` at the observations and zero end conditions):

.. math::
    \lambda_k = \Delta_k \partial_m E_k + \partial_m O_k + F_k^T \lambda_{k+1},\quad
    \Psi_k = \Delta_k \partial_S E_k + \partial_S O_k + F_k^T \Psi_{k+1} F_k,\quad
    F_k = I - \Delta_k A_k,

with ``O_k = -E_q log p(y | H x_k)`` at observation nodes. Setting the gradients of the free
energy w.r.t. ``A_k`` and ``b_k`` to zero at fixed multipliers gives the paper's update
(``A = -<Df> + 2 Sigma Psi``, ``b = <f> + A m - Sigma lambda``), here with the exact
Euler–Maruyama factor:

.. math::
    \tilde A_k = (I + 2\Delta_k \Sigma \Psi_{k+1})^{-1} (2 \Sigma \Psi_{k+1} - \langle Df \rangle_k),
    \quad \tilde b_k = \langle f \rangle_k + \tilde A_k m_k - \Sigma \lambda_{k+1},

``<Df>_k = Cov(f, x) S_k^{-1}`` (statistical linearisation, Stein's lemma), and for the
initial state ``m_0 = mu_0 - P_0 lambda_0``, ``S_0 = (P_0^{-1} + 2 Psi_0)^{-1}``.

**Steps (ours; same fixed point).** The paper's targets for ``b`` and ``m_0`` treat the
multiplier ``lambda`` as fixed, i.e. ignore that moving the mean path moves ``lambda`` too
(curvature ``2 Psi``: ``d^2 F / dm^2 = 2 dF/dS`` for Gaussian expectations, exactly). Where
the data are informative that overshoots (``m_0`` by a factor ``1 + 2 P_0 Psi_0``, the
offsets by ``1 + 2 Delta Sigma Psi``, ~100 for precise observations) and the damped iteration
oscillates or stalls. So the offset ``c_k = A_k m_k - b_k`` (the drift of ``q`` at the mean is
``-c_k``; in ``(A_k, c_k)`` the per-cell Lagrangian separates) takes the Newton step
``c <- c + (I + 2 Delta Sigma Psi_{k+1})^{-1} (c~ - c)`` towards the paper's
``c~ = Sigma lambda_{k+1} - <f>_k``, and ``m_0`` the Newton step
``m_0 <- m_0 - S~_0 (P_0^{-1} (m_0 - mu_0) + lambda_0)``; ``A`` and ``S_0`` are the paper's
targets. Every stationary point of these updates is one of the paper's. One iteration:
forward moments, backward multipliers, then the damped step ``A <- A + omega (A~ - A)``
(likewise ``c``, ``m_0``; ``S_0`` in precision form), with ``omega`` halved whenever the ELBO
decreases (:func:`probdyn.inference.natgrad.natural_gradient_ascent`). At a fixed point every
gradient of the free energy vanishes, i.e. it is a stationary point of the ELBO above (tested
by automatic differentiation).

**Accuracy of the discretised family.** ``q`` keeps the prior's step variance
``Delta Sigma``, while the exact posterior of the Euler–Maruyama model has step variance
``(Delta^{-1} Sigma^{-1} + Lambda)^{-1}``, smaller where observations inform the step. So even
for a linear drift the optimal ``q`` is *not* that posterior: it has its exact mean, but the
covariance is inflated and the ELBO lies below the discretised model's log marginal
likelihood, both by O(Delta) (tested against dense Gaussian computations and the exact GP
posterior of :class:`probdyn.MarkovGP`, Matérn-1/2 kernel). The constant is large where
``Delta Sigma`` is comparable to the posterior variance: ``S_k >= Delta Sigma`` at every node,
so with precise observations (noise variance below ``Delta Sigma``) ``q`` cannot shrink to the
data; choose ``Delta`` well below ``sigma^2 / Sigma`` there. (In continuous time the family
contains the exact posterior of a linear SDE.)

**What is simplified.** The grid is Euler–Maruyama (first order; the paper's choice of
integrator is not reproduced), ``A, b`` are piecewise constant, the diffusion is constant
(learnable by variational EM, but not a variational parameter), and the initial state is
updated jointly with ``(A, b)`` by the same fixed point.
Between grid nodes :meth:`VGPA.marginals` uses the Euler–Maruyama continuous extension
(exact at the nodes). Learning drift parameters uses the shared variational EM
(:func:`probdyn.models.sde_posteriors.em.variational_em`). Cost per iteration O(N d^3 + N G^d) for N grid
nodes and G = ``gh_order``, sequential in N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn._typing import ArrayInput
from probdyn.inference import kalman
from probdyn.inference.natgrad import NatGradTrace, gaussian_expectation, natural_gradient_ascent
from probdyn.linalg import small_cholesky, small_inv, small_logdet, small_solve, symmetrize
from probdyn.models.sde_posteriors.drifts import statistical_linearisation
from probdyn.models.sde_posteriors.em import FitTrace, variational_em
from probdyn.models.sde_posteriors.observed import ObservedSDEModel, check_observed_sde, expected_log_likelihood
from probdyn.sde.base import SDE

__all__ = ["VGPA", "VGPAState", "Moments"]


class VGPAState(eqx.Module):
    """Variational parameters: ``A`` (K, d, d), ``b`` (K, d) of the posterior drift
    ``-A_k x + b_k`` on the K = N - 1 grid cells, and ``q(x(t_0)) = N(m0 (d,), S0 (d, d))``."""

    A: Float[Array, "K d d"]
    b: Float[Array, "K d"]
    m0: Float[Array, " d"]
    S0: Float[Array, "d d"]


class Moments(NamedTuple):
    """Marginals of ``q`` on the grid: mean (N, d), cov (N, d, d), and the lower Cholesky
    factors chol (N, d, d) of ``cov``."""

    mean: Float[Array, "N d"]
    cov: Float[Array, "N d d"]
    chol: Float[Array, "N d d"]


def _check_omega(omega) -> None:
    if not (0.0 < float(omega) <= 1.0):
        raise ValueError(f"omega (damping step) must be in (0, 1], got {omega}")


class VGPA(ObservedSDEModel):
    """Archambeau et al. (2007) variational Gaussian-process approximation (see module doc).

    Args:
        sde: a :class:`probdyn.sde.SDE` with a constant ``diffusion`` (d, m), ``L L^T`` PD.
        obs_times: (n,) strictly increasing; y: (n, p) or (n,), finite.
        obs_noise: Gaussian observation-noise variance, scalar or (p,).
        obs_matrix: H (p, d), default the first p state coordinates.
        log_likelihood: optional non-Gaussian ``log p(y (p,), z = H x (p,)) -> ()`` (Gauss–Hermite).
        dt, t_span, grid: the time grid (must contain the observation times); see
            :func:`probdyn.models.sde_posteriors.observed.check_observed_sde`. The Euler family needs
            ``dt Sigma`` well below the posterior variance at the data (module doc).
        initial_mean, initial_cov: prior of ``x(t0)``; default 0 and the identity.
        gh_order: Gauss–Hermite points per dimension for the energy and its gradients.
    """

    def __init__(
        self,
        sde: SDE,
        obs_times: ArrayInput,
        y: ArrayInput,
        obs_noise: ArrayInput = 1.0,
        obs_matrix: ArrayInput | None = None,
        log_likelihood: Callable | None = None,
        dt: float | None = None,
        t_span: tuple[float, float] | None = None,
        grid: ArrayInput | None = None,
        initial_mean: ArrayInput | None = None,
        initial_cov: ArrayInput | None = None,
        gh_order: int = 10,
    ):
        prob = check_observed_sde(
            sde, obs_times, y, obs_noise, obs_matrix, log_likelihood, dt, t_span, grid, initial_mean, initial_cov
        )
        if int(gh_order) < 2:
            raise ValueError(f"gh_order must be >= 2, got {gh_order}")
        super().__init__(sde, prob, log_likelihood, gh_order)

    def init_state(self) -> VGPAState:
        """The statistically linearised prior: ``-A_k x + b_k`` the SLR of the drift under
        ``N(initial_mean, initial_cov)`` on every cell, ``q(x(t_0))`` the prior."""
        slr = jax.vmap(
            lambda t: statistical_linearisation(self.sde.drift_fn, self.initial_mean, self.initial_cov, t, self._rule())
        )
        J, c = slr(self.grid[:-1])
        return VGPAState(-J, c, self.initial_mean, self.initial_cov)

    # ------------------------------------------------------------------ forward pass (moments)
    def _moments(self, state: VGPAState) -> Moments:
        dts = jnp.diff(self.grid)
        d = self.state_dim
        eye = jnp.eye(d, dtype=self.dtype)
        Lm = self._L()

        def step(carry, inp):
            m, S = carry
            Ak, bk, h = inp
            mn, Sn = kalman.predict(m, S, eye - h * Ak, jnp.sqrt(h) * Lm, h * bk)
            return (mn, Sn), (mn, Sn)

        S0 = small_cholesky(state.S0)
        _, (ms, Ss) = jax.lax.scan(step, (state.m0, S0), (state.A, state.b, dts))
        mean = jnp.concatenate([state.m0[None], ms])
        chol = jnp.concatenate([S0[None], Ss])
        return Moments(mean, jnp.einsum("nij,nkj->nik", chol, chol), chol)

    def moments(self, state: VGPAState) -> Moments:
        """Marginal means (N, d) and covariances (N, d, d) of ``q`` on the grid (jitted)."""
        return self._jit_call("_moments", state)

    # ------------------------------------------------------------------ free energy
    def _energy(self, m, S, A, b, t):
        """``E = 1/2 E_{N(m,S)}[(f(x,t) + A x - b)^T Sigma^{-1} (f(x,t) + A x - b)]``."""
        Si = small_inv(self._sigma())

        def g(x):
            r = self.sde.drift_fn(x, t) + A @ x - b
            return 0.5 * r @ Si @ r

        return gaussian_expectation(g, m, S, self._rule())

    def _obs_energy(self, m, S):
        """``-sum_i E_q[log p(y_i | H x_i)]`` from the observation-node marginals (n, d), (n, d, d)."""
        return -expected_log_likelihood(
            self.y, m, S, self.obs_matrix, self.obs_var, self.log_likelihood_fn, self.gh_order
        )

    def _kl0(self, m0, S0):
        P0, d = self.initial_cov, self.state_dim
        r = m0 - self.initial_mean
        return 0.5 * (jnp.trace(small_solve(P0, S0)) + r @ small_solve(P0, r) - d + small_logdet(P0) - small_logdet(S0))

    def _free_energy(self, state: VGPAState, mom: Moments):
        dts = jnp.diff(self.grid)
        E = jax.vmap(self._energy)(mom.mean[:-1], mom.cov[:-1], state.A, state.b, self.grid[:-1])
        obs = self._obs_energy(mom.mean[self.obs_idx], mom.cov[self.obs_idx])
        return self._kl0(state.m0, state.S0) + jnp.sum(dts * E) + obs

    def _elbo_state(self, state: VGPAState):
        return -self._free_energy(state, self._moments(state))

    def elbo(self, state: VGPAState) -> Float[Array, ""]:
        """ELBO of ``q(state)`` (the exact ELBO of the Euler–Maruyama model on the grid; see module doc)."""
        return self._jit_call("_elbo_state", state)

    def _elbo_aux(self, state: VGPAState):
        """ELBO at fixed ``q`` as a function of the model's parameters (variational-EM M-step)."""
        return self._elbo_state(state)

    # ------------------------------------------------------------------ backward pass (multipliers)
    def _multipliers(self, state: VGPAState, mom: Moments):
        """Lagrange multipliers ``lambda`` (N, d), ``Psi`` (N, d, d) by the backward recursion."""
        N, d = mom.mean.shape
        dts = jnp.diff(self.grid)
        eye = jnp.eye(d, dtype=self.dtype)
        gE = jax.vmap(jax.grad(self._energy, argnums=(0, 1)))
        gm, gS = gE(mom.mean[:-1], mom.cov[:-1], state.A, state.b, self.grid[:-1])
        om, oS = jax.grad(self._obs_energy, argnums=(0, 1))(mom.mean[self.obs_idx], mom.cov[self.obs_idx])
        Om = jnp.zeros((N, d), self.dtype).at[self.obs_idx].add(om)
        OS = jnp.zeros((N, d, d), self.dtype).at[self.obs_idx].add(symmetrize(oS))
        loc_m = Om.at[:-1].add(dts[:, None] * gm)
        loc_S = OS.at[:-1].add(dts[:, None, None] * symmetrize(gS))

        def back(carry, inp):
            lam, Psi = carry
            Ak, h, lm, lS = inp
            F = eye - h * Ak
            lam_k = lm + F.T @ lam
            Psi_k = symmetrize(lS + F.T @ Psi @ F)
            return (lam_k, Psi_k), (lam_k, Psi_k)

        init = (loc_m[-1], loc_S[-1])
        _, (lam, Psi) = jax.lax.scan(back, init, (state.A, dts, loc_m[:-1], loc_S[:-1]), reverse=True)
        return jnp.concatenate([lam, init[0][None]]), jnp.concatenate([Psi, init[1][None]])

    def _targets(self, state: VGPAState, mom: Moments) -> VGPAState:
        """The undamped update at the current multipliers: the paper's ``A~`` and ``S0~``, Newton
        steps towards its offset and ``m0`` targets (module doc); ``omega = 1`` gives this state."""
        lam, Psi = self._multipliers(state, mom)
        dts = jnp.diff(self.grid)
        Sig = self._sigma()
        d = self.state_dim
        eye = jnp.eye(d, dtype=self.dtype)
        J, c = jax.vmap(lambda m, S, t: statistical_linearisation(self.sde.drift_fn, m, S, t, self._rule()))(
            mom.mean[:-1], mom.cov[:-1], self.grid[:-1]
        )
        Ef = c + jnp.einsum("kij,kj->ki", J, mom.mean[:-1])  # <f>

        def upd(Jk, Efk, mk, lk, Pk, h, Ak, bk):
            M = eye + 2.0 * h * Sig @ Pk
            At = small_solve(M, 2.0 * Sig @ Pk - Jk)
            # offset c = A m - b: Newton step with curvature Delta (Sigma^{-1} + 2 Delta Psi_{k+1})
            # towards the paper's c~ = Sigma lambda - <f> (same fixed point as b~)
            return At, bk + (At - Ak) @ mk + small_solve(M, Efk + Ak @ mk - Sig @ lk - bk)

        A_t, b_t = jax.vmap(upd)(J, Ef, mom.mean[:-1], lam[1:], Psi[1:], dts, state.A, state.b)
        P0 = self.initial_cov
        S0_t = symmetrize(small_inv(small_inv(P0) + 2.0 * Psi[0]))
        # paper's m0~ = mu0 - P0 lambda_0, reached by a Newton step (curvature P0^{-1} + 2 Psi_0)
        m0_t = state.m0 - S0_t @ (small_solve(P0, state.m0 - self.initial_mean) + lam[0])
        return VGPAState(A_t, b_t, m0_t, S0_t)

    def update(self, state: VGPAState, omega: float | Array) -> VGPAState:
        """One damped smoothing iteration (not jitted; :meth:`fit_posterior` runs the compiled
        one): forward moments, backward multipliers, then ``A <- A + omega (A~ - A)``, likewise
        the offsets ``c = A m - b`` and ``m0`` (module doc); ``S0`` is interpolated in precision
        form (stays positive definite when both ends are)."""
        tgt = self._targets(state, self._moments(state))
        dmp = lambda o, t: (1.0 - omega) * o + omega * t  # noqa: E731
        prec = dmp(small_inv(state.S0), small_inv(tgt.S0))
        return VGPAState(dmp(state.A, tgt.A), dmp(state.b, tgt.b), dmp(state.m0, tgt.m0), symmetrize(small_inv(prec)))

    def _step(self, state, omega):
        cand = self.update(state, omega)
        return cand, self._elbo_state(cand)

    def _fit_aux(self, state, num_iters, rho=1.0, progress_bar=False, **kwargs):
        state = self.init_state() if state is None else state
        val = self._jit_call("_elbo_state", state)
        call = lambda s, r: self._jit_call("_step", s, jnp.asarray(r, self.dtype))  # noqa: E731
        st, tr = natural_gradient_ascent(
            call, None, state, num_iters, rho=rho, initial_value=val, progress_bar=progress_bar, desc="vgpa", **kwargs
        )
        return st, st, tr

    def fit_posterior(
        self,
        state: VGPAState | None = None,
        num_iters: int = 100,
        omega: float = 0.5,
        progress_bar: bool = False,
        **kwargs,
    ) -> tuple[VGPAState, NatGradTrace]:
        """Smoothing iterations with step ``omega`` and ELBO back-off from ``state`` (default:
        :meth:`init_state`). ``kwargs`` go to :func:`probdyn.inference.natgrad.natural_gradient_ascent`
        (e.g. ``atol`` to stop at convergence, ``grow`` to re-grow ``omega`` after back-offs)."""
        _check_omega(omega)
        st, _, tr = self._fit_aux(state, num_iters, rho=omega, progress_bar=progress_bar, **kwargs)
        return st, tr

    def fit(
        self,
        key: PRNGKeyArray,
        state: VGPAState | None = None,
        num_steps: int = 50,
        e_iters: int = 50,
        omega: float = 0.5,
        **kwargs,
    ) -> tuple[VGPA, VGPAState, FitTrace]:
        """Variational EM for the drift (and optionally diffusion / noise) parameters with the
        smoothing iterations as E-step: :func:`probdyn.models.sde_posteriors.em.variational_em` (same
        options, e.g. ``learn_diffusion``, ``optimizer``). Returns ``(fitted model, state, FitTrace)``."""
        _check_omega(omega)
        return variational_em(self, key, state, num_steps, e_iters=e_iters, rho=omega, desc="VGPA EM", **kwargs)

    def gradients(self, state: VGPAState) -> VGPAState:
        """Gradient of the free energy ``-ELBO`` w.r.t. ``(A, b, m0, S0)`` by automatic
        differentiation (zero at a fixed point of the smoothing algorithm; for checks)."""
        return self._jit_call("_grad_free_energy", state)

    def _grad_free_energy(self, state):
        return jax.grad(lambda s: -self._elbo_state(s))(state)

    # ------------------------------------------------------------------ queries
    def marginals(self, state: VGPAState, times: ArrayInput) -> tuple[Float[Array, "T d"], Float[Array, "T d d"]]:
        """Marginal mean (T, d) and covariance (T, d, d) at any times in the grid span: at grid
        nodes the chain's moments, in between the Euler–Maruyama continuous extension
        ``m(t_k + s) = (I - s A_k) m_k + s b_k``, ``S = (I - s A_k) S_k (I - s A_k)^T + s Sigma``."""
        times = jnp.atleast_1d(jnp.asarray(times, self.dtype))
        self._check_span(times)
        return self._jit_call("_marginals", state, times)

    def _marginals(self, state, times):
        mom = self._moments(state)
        K = self.grid.shape[0] - 1
        k = jnp.clip(jnp.searchsorted(self.grid, times, side="right") - 1, 0, K - 1)
        s = jnp.clip(times - self.grid[k], 0.0, None)
        d = self.state_dim
        eye = jnp.eye(d, dtype=self.dtype)
        F = eye[None] - s[:, None, None] * state.A[k]
        mean = jnp.einsum("tij,tj->ti", F, mom.mean[k]) + s[:, None] * state.b[k]
        cov = jnp.einsum("tij,tjk,tlk->til", F, mom.cov[k], F) + s[:, None, None] * self._sigma()[None]
        return mean, symmetrize(cov)

    def sample_paths(self, key: PRNGKeyArray, state: VGPAState, num_samples: int = 1) -> Float[Array, "S N d"]:
        """Joint paths of ``q`` on the grid (ancestral Euler–Maruyama sampling of the posterior SDE)."""
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        return self._jit_call("_sample_paths", key, state, int(num_samples))

    def _sample_paths(self, key, state, num_samples):
        d, N = self.state_dim, self.grid.shape[0]
        dts = jnp.diff(self.grid)
        Lm = self._L()
        k0, k1 = jax.random.split(key)
        x0 = state.m0 + jax.random.normal(k0, (num_samples, d), self.dtype) @ small_cholesky(state.S0).T
        eps = jax.random.normal(k1, (N - 1, num_samples, Lm.shape[1]), self.dtype)

        def drift_step(x, k):  # Euler-Maruyama of the posterior SDE dx = (-A_k x + b_k) dt + L dW
            return x - dts[k] * (state.A[k] @ x) + dts[k] * state.b[k]

        noise = jnp.sqrt(dts)[:, None, None] * Lm[None]
        return jax.vmap(lambda x0_, e: kalman.simulate_chain(x0_, drift_step, noise, e), in_axes=(0, 1))(x0, eps)
