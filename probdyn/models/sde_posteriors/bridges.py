r"""Bridges of the linearised prior between inducing states (the sparse variant of
:class:`probdyn.models.sde_posteriors.sparse_gp.SparseGPSDE`).

Between consecutive inducing times ``z_j < z_{j+1}`` (cell length ``h``) the variational
process follows the bridge of the cell's linear SDE ``dx = (A_j x + b_j) dt + L dW``: with
``(Psi(s), c(s), V(s))`` its exact discretisation over ``s`` (:func:`probdyn.ssm.discretise_affine`),

.. math::
    x(z_j + s) \mid u_j, u_{j+1} \sim N(B_1 u_j + B_2 u_{j+1} + \beta, V_b),\quad
    V_b = (V(s)^{-1} + \Psi(h-s)^T V(h-s)^{-1} \Psi(h-s))^{-1},

``B_1 = V_b V(s)^{-1} Psi(s)``, ``B_2 = V_b Psi(h-s)^T V(h-s)^{-1}``,
``beta = V_b (V(s)^{-1} c(s) - Psi(h-s)^T V(h-s)^{-1} c(h-s))``. From these the grid and
observation marginals of ``q`` follow from the inducing-state moments, and the nonlinear
residual of the ELBO is integrated over each cell by Gauss–Legendre quadrature. The methods
here are mixed into :class:`~probdyn.models.sde_posteriors.sparse_gp.SparseGPSDE` and use its fields
(grid, inducing indices, node kinds, ``sde``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from probdyn.inference.natgrad import gaussian_expectation
from probdyn.linalg import small_inv, small_solve, symmetrize

if TYPE_CHECKING:
    from probdyn.sde.base import SDE

__all__ = ["InducingBridges"]


class InducingBridges(eqx.Module):
    """Bridge algebra of the sparse variant (a mixin of :class:`~probdyn.models.sde_posteriors.sparse_gp.SparseGPSDE`;
    no fields of its own: ``self`` is the ``SparseGPSDE``)."""

    if TYPE_CHECKING:  # the host's fields and helpers used here, for type checkers only
        state_dim: int
        dtype: Any
        sde: SDE
        grid: Array
        obs_idx: Array
        node_cell: Array
        node_kind: Array
        right_inducing: Array
        dense: bool
        quad_order: int

        def _zt(self) -> Array: ...
        def _cell_len(self) -> Array: ...
        def _disc(self, A, b, dt) -> tuple[Array, Array, Array]: ...
        def _sigma(self) -> Array: ...
        def _rule(self) -> Any: ...

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
        L1 = small_inv(V1)
        L2 = small_inv(V2)
        Vb = symmetrize(small_inv(L1 + P2.T @ L2 @ P2))
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
            Ld = small_inv(Vd)
            Vbp = small_inv(Ld + P2t.T @ small_solve(V2s, P2t))
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
        Si = small_inv(self._sigma())
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
                Kt = small_solve(Ct, B @ Cu1).T  # Cov(u_{j+1}, x_t) C_t^{-1}
                Ge = small_solve(Ve, Pe).T  # Psi_e^T V_e^{-1}
                t = z + tau

                def g(x):
                    r = self.sde.drift_fn(x, t) - Aj @ x - bj
                    return r @ Ge @ (m1 + Kt @ (x - mt) - Pe @ x - ce) - 0.5 * r @ Si @ r

                return 0.5 * hj * wi * gaussian_expectation(g, mt, Ct, rule)

            return jnp.sum(jax.vmap(point)(xg, wg))

        zt = self._zt()
        return jnp.sum(jax.vmap(cell)(A, b, self._cell_len(), zt[:-1], m[:-1], m[1:], C[:-1], C[1:], X))
