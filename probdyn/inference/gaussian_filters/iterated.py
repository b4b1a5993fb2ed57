r"""Iterated extended Kalman smoother (IEKS): Gauss–Newton on the MAP trajectory.

Model (discrete time, additive Gaussian noise):

.. math::
    x_0 \sim N(m_0, P_0),\quad x_{k+1} = f(x_k, k) + q_k,\ q_k \sim N(0, Q),\quad
    y_k = h(x_k, k) + r_k,\ r_k \sim N(0, R)\quad (k = 0..T-1).

The MAP trajectory minimises

.. math::
    J(x) = \tfrac12 \|x_0 - m_0\|^2_{P_0^{-1}} + \tfrac12\sum_k \|x_{k+1} - f(x_k, k)\|^2_{Q^{-1}}
         + \tfrac12 \sum_k \|y_k - h(x_k, k)\|^2_{R^{-1}}.

Each iteration linearises ``f`` and ``h`` at the current trajectory ``xbar``
(``f(x) ~ F_k x + c_k``, ``h(x) ~ H_k x + d_k``, Jacobians by ``jax.jacfwd``) and solves the
linearised problem exactly with the Kalman engine (:func:`probdyn.inference.kalman.smoother`,
``parallel=`` selects its sequential or parallel-in-time schedule: Yaghoobi, Corenflos, Hassan
& Särkkä 2021/2022): a Gauss–Newton step (Bell 1994). The transition offsets ``c_k`` are
removed by smoothing the deviation from the linearised model's mean path
``mu_{k+1} = F_k mu_k + c_k`` (an associative scan of affine maps in the parallel schedule), so
the engine sees an offset-free :class:`~probdyn.ssm.LinearGaussianSSM`.

**Levenberg–Marquardt damping** (Särkkä & Svensson 2020): the step minimises
``J_lin(x) + lambda/2 ||x - xbar||^2``, i.e. every ``x_k`` is also observed at ``xbar_k`` with
covariance ``I / lambda`` (extra rows of the engine's emission). A step that lowers ``J`` is
accepted and ``lambda`` divided by 10; otherwise it is retried with ``lambda`` times 10. This
makes the iteration converge from poor starts; ``damping = 0`` is plain Gauss–Newton (every
step accepted). The returned covariances are the undamped linearised smoother's at the final
trajectory (a Laplace-type approximation of the posterior).

**Iterated posterior linearisation** (IPLS; García-Fernández, Svensson & Särkkä 2017;
parallel: Yaghoobi et al. 2022): :func:`iterated_posterior_linearisation_smoother` replaces the
Taylor expansion by statistical linear regression (SLR) of ``f`` and ``h`` under the *current
smoothing marginals* ``N(m_k, P_k)`` with a sigma-point rule,
``f(x) ~ A_k x + b_k + e_k``, ``e_k ~ N(0, Lambda_k)`` (``A_k = Cov(f(x), x) P_k^{-1}``,
``Lambda_k = Cov(f(x)) - A_k P_k A_k^T``), adds the linearisation error to the noise
(``Q + Lambda_k``, ``R + Omega_k``) and smooths again, until the means stop moving. Its
fixed point is not a MAP estimate: it is the Gaussian approximation whose linearisation is
statistically consistent with itself.

**Learning**: :func:`linearised_log_likelihood` is the exact marginal likelihood of the model
linearised at the MAP path (= the Gauss–Newton Laplace approximation), traceable and
differentiable in the model's parameters by implicit differentiation at the fixed point;
:class:`~probdyn.inference.gaussian_filters.IteratedSmootherDistribution` makes it a numpyro
likelihood.

Needs ``Q``, ``R`` and ``P_0`` positive definite (``J`` uses their inverses). For a linear
model one Gauss–Newton step from any start is the Kalman (RTS) smoother.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probdyn._checks import is_concrete
from probdyn._typing import ArrayInput
from probdyn.inference import kalman
from probdyn.inference.gaussian_filters.common import SigmaPointRule, check_options, sigma_point_rule
from probdyn.inference.optimize import backoff_ascent
from probdyn.linalg import block_tridiag_solve, psd_cholesky, solve_lower
from probdyn.ssm import LinearGaussianSSM

__all__ = [
    "IteratedSmootherResult",
    "iterated_smoother",
    "linearised_log_likelihood",
    "PosteriorLinearisationResult",
    "iterated_posterior_linearisation_smoother",
]


class IteratedSmootherResult(NamedTuple):
    """MAP trajectory ``mean`` (T, d), linearised smoother covariances ``cov`` (T, d, d) at it,
    the objective ``J`` at the start and after each accepted step (n + 1,), the damping each
    accepted step used (n,), the number of rejected steps and whether ``J`` stopped changing
    (relative change below ``tol``) before ``num_iters``."""

    mean: Float[Array, "T d"]
    cov: Float[Array, "T d d"]
    objective: np.ndarray
    damping: np.ndarray
    num_rejected: int
    converged: bool


def _pd(name: str, A, d: int, dtype, steps: int | None = None) -> Array:
    """A covariance (d, d) (or (d,) variances; with ``steps``, also one per step (steps, d, d)),
    checked finite, symmetric and positive definite."""
    A = jnp.asarray(A, dtype)
    if A.ndim == 1 and A.shape[0] == d:
        A = jnp.diag(A)
    if A.shape != (d, d) and (steps is None or A.shape != (steps, d, d)):
        per = "" if steps is None else f" or ({steps}, {d}, {d})"
        raise ValueError(f"{name} must have shape ({d}, {d}), ({d},){per}, got {A.shape}")
    if not is_concrete(A):  # traced (a numpyro sample site, inside grad): shapes only
        return A
    An = np.asarray(A).reshape(-1, d, d)
    sym = np.allclose(An, np.swapaxes(An, 1, 2))
    if not np.all(np.isfinite(An)) or not sym or np.linalg.eigvalsh(An).min() <= 0:
        raise ValueError(
            f"{name} must be a finite, symmetric positive-definite matrix (the MAP objective uses its inverse)"
        )
    return A


class _Problem(eqx.Module):
    transition: Callable = eqx.field(static=True)
    observation: Callable = eqx.field(static=True)
    Q: Array
    R: Array
    y: Array
    m0: Array
    P0: Array

    def _transition_term(self, a, b, k, Qk):
        """``1/2 ||b - f(a, k)||^2_{Q_k^{-1}}`` (one step of ``J``)."""
        return 0.5 * jnp.sum(_whiten(Qk, b - self.transition(a, k)) ** 2)

    def _observation_term(self, x, k, yk):
        """``1/2 ||y_k - h(x, k)||^2_{R^{-1}}`` over the observed entries of ``yk`` (NaN entries
        drop out: their rows and columns of ``R`` replaced by the identity, residual 0)."""
        obs = ~jnp.isnan(yk)
        o = obs.astype(x.dtype)
        Rm = self.R * o[:, None] * o[None, :] + jnp.diag(1.0 - o)
        return 0.5 * jnp.sum(_whiten(Rm, jnp.where(obs, yk - self.observation(x, k), 0.0)) ** 2)

    def _prior_term(self, x0):
        return 0.5 * jnp.sum(_whiten(self.P0, x0 - self.m0) ** 2)

    def _steps_Q(self, T: int):
        return jnp.broadcast_to(self.Q, (T - 1,) + self.Q.shape[-2:])

    def objective(self, x):
        """``J(x)`` (see the module doc); missing (NaN) entries of ``y`` drop out."""
        k = jnp.arange(x.shape[0])
        trans = jax.vmap(self._transition_term)(x[:-1], x[1:], k[:-1], self._steps_Q(x.shape[0]))
        return self._prior_term(x[0]) + jnp.sum(trans) + jnp.sum(jax.vmap(self._observation_term)(x, k, self.y))

    def hessian_blocks(self, x):
        """The exact Hessian of ``J`` at ``x`` (T d, T d), block tridiagonal: diagonal blocks
        (T, d, d) and the blocks ``d^2 J / dx_k dx_{k+1}`` (T - 1, d, d)."""
        T, d = x.shape
        k = jnp.arange(T)
        pair = lambda ab, kk, Qk: self._transition_term(ab[:d], ab[d:], kk, Qk)  # noqa: E731
        hp = jax.vmap(jax.hessian(pair))(jnp.concatenate([x[:-1], x[1:]], axis=1), k[:-1], self._steps_Q(T))
        D = jax.vmap(jax.hessian(self._observation_term))(x, k, self.y)
        D = D.at[:-1].add(hp[:, :d, :d]).at[1:].add(hp[:, d:, d:]).at[0].add(jax.hessian(self._prior_term)(x[0]))
        return D, hp[:, :d, d:]

    def linearise(self, xbar):
        """Taylor expansions of ``f`` and ``h`` along the path ``xbar`` (T, d): ``F`` (T-1, d, d),
        ``c`` (T-1, d), ``H`` (T, p, d), ``dh`` (T, p)."""
        k = jnp.arange(xbar.shape[0])
        return (*_taylor(self.transition, xbar[:-1], k[:-1]), *_taylor(self.observation, xbar, k))

    def step(self, xbar, lam, parallel: bool, damped: bool):
        """One (damped) Gauss–Newton step from ``xbar``: the linearised smoother's mean and covariances."""
        F, c, H, dh = self.linearise(xbar)
        return _linear_smoother(
            self.m0, self.P0, F, c, self.Q, H, dh, self.R, self.y, parallel, xbar if damped else None, lam
        )


def _whiten(C, r):
    """``C^{-1/2} r`` through the lower Cholesky factor of ``C``."""
    return solve_lower(psd_cholesky(C), r)


def _taylor(fn, xs, ks):
    """First-order Taylor expansion ``fn(x, k) ~ J_k x + c_k`` at each ``xs[k]``: (K, q, d), (K, q)."""
    J = jax.vmap(jax.jacfwd(fn))(xs, ks)
    return J, jax.vmap(fn)(xs, ks) - jnp.einsum("kij,kj->ki", J, xs)


def _linearised_ssm(m0, P0, F, c, Q, H, dh, R, y, parallel: bool):
    """The engine's offset-free model of ``x_0 ~ N(m0, P0)``, ``x_{k+1} = F_k x_k + c_k + N(0, Q_k)``,
    ``y_k = H_k x_k + dh_k + N(0, R_k)`` (``Q``, ``R`` one matrix or one per step): the deviation
    from the mean path ``mu`` (T, d), observed as ``z = y - dh - H mu`` (T, p). Returns the
    :class:`~probdyn.ssm.LinearGaussianSSM`, ``z`` and ``mu``; ``z`` has the same density as ``y``."""
    mu = _mean_path(m0, F, c, parallel)
    z = y - dh - jnp.einsum("kij,kj->ki", H, mu)
    return LinearGaussianSSM(jnp.zeros(m0.shape[0], m0.dtype), P0, F, Q, H, R), z, mu


def _linear_smoother(m0, P0, F, c, Q, H, dh, R, y, parallel: bool, xbar=None, lam=None):
    """Kalman smoother of the model of :func:`_linearised_ssm`; with ``xbar`` every ``x_k`` is
    also observed at ``xbar_k`` with covariance ``I / lam`` (Levenberg–Marquardt). Returns means
    (T, d), covs (T, d, d)."""
    T, d = y.shape[0], m0.shape[0]
    if xbar is not None:
        p = y.shape[1]
        R = jnp.broadcast_to(R, (T,) + R.shape[-2:])
        Rl = jnp.zeros((T, p + d, p + d), R.dtype).at[:, :p, :p].set(R)
        R = Rl.at[:, p:, p:].set(jnp.eye(d, dtype=R.dtype) / jnp.asarray(lam))
        H = jnp.concatenate([H, jnp.broadcast_to(jnp.eye(d, dtype=H.dtype), (T, d, d))], axis=1)
        dh = jnp.concatenate([dh, jnp.zeros((T, d), dh.dtype)], axis=1)
        y = jnp.concatenate([y, xbar], axis=1)
    ssm, z, mu = _linearised_ssm(m0, P0, F, c, Q, H, dh, R, y, parallel)
    sm = kalman.smoother(ssm, z, parallel=parallel)
    return sm.mean + mu, sm.cov


def _mean_path(m0, F, c, parallel: bool):
    """``mu_0 = m0``, ``mu_{k+1} = F_k mu_k + c_k`` (T, d): a scan, or an associative scan of
    the affine maps ``x -> F_k x + c_k`` (composition ``(F2, c2) o (F1, c1) = (F2 F1, F2 c1 + c2)``)."""
    if not parallel:

        def stepf(m, fc):
            m = fc[0] @ m + fc[1]
            return m, m

        return jnp.concatenate([m0[None], jax.lax.scan(stepf, m0, (F, c))[1]])

    def compose(e1, e2):  # e1 earlier, e2 later
        F1, c1 = e1
        F2, c2 = e2
        return F2 @ F1, jnp.einsum("...ij,...j->...i", F2, c1) + c2

    Fc, cc = jax.lax.associative_scan(compose, (F, c))
    return jnp.concatenate([m0[None], jnp.einsum("kij,j->ki", Fc, m0) + cc])


@eqx.filter_jit
def _propose(problem: _Problem, xbar, lam, parallel: bool, damped: bool):
    x, _ = problem.step(xbar, lam, parallel, damped)
    return x, -problem.objective(x)


@eqx.filter_jit
def _final(problem: _Problem, x, parallel: bool):
    return problem.step(x, jnp.ones((), x.dtype), parallel, False)


def iterated_smoother(
    transition: Callable,
    Q: ArrayInput,
    observation: Callable,
    R: ArrayInput,
    y: ArrayInput,
    m0: ArrayInput,
    P0: ArrayInput,
    *,
    num_iters: int = 50,
    init: ArrayInput | None = None,
    damping: float = 1e-2,
    tol: float = 1e-12,
    parallel: bool | None = None,
) -> IteratedSmootherResult:
    """Iterated extended Kalman smoother (Gauss–Newton / Levenberg–Marquardt on the MAP trajectory).

    Args:
        transition: ``f(x (d,), k) -> (d,)``, the mean of ``x_{k+1}``.
        Q: (d, d) or (d,) process-noise covariance, or one per step (T - 1, d, d); positive definite.
        observation: ``h(x (d,), k) -> (p,)``, the mean of ``y_k``.
        R: (p, p) or (p,) observation-noise covariance, positive definite.
        y: (T, p) observations (``(T,)`` when p = 1); NaN marks a missing entry.
        m0, P0: prior of ``x_0``: (d,), (d, d) positive definite.
        num_iters: at most this many accepted steps (``0`` returns the start: by default the
            single-pass extended Kalman smoother's means).
        init: (T, d) starting trajectory; default: the single-pass extended Kalman smoother's means
            (a start from a poor path, e.g. ``m0`` pushed through ``f``, can end in a local
            minimum of ``J``: ``benchmarks/iterated_smoothers.py``).
        damping: initial Levenberg–Marquardt ``lambda`` (``0``: plain Gauss–Newton).
        tol: stop when an accepted step changes ``J`` by less than ``tol * (1 + |J|)``.
        parallel: the Kalman engine's schedule for each linearised smoother (``None``: parallel
            on GPU/TPU); the same numbers either way.

    Returns:
        :class:`IteratedSmootherResult`.
    """
    if not np.isfinite(damping) or float(damping) < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    prob, x0, _ = _setup(transition, Q, observation, R, y, m0, P0, init)
    dtype = x0.dtype
    par = kalman.use_parallel(parallel)
    damped = float(damping) > 0

    def propose(x, lam):
        return _propose(prob, x, jnp.asarray(lam, dtype), par, damped)

    def accept(cur, new):
        return new >= cur or not damped

    def adapt(ok, lam, cur, new):
        small = abs(new - cur) < tol * (1.0 + abs(cur))
        if ok:
            return lam / 10.0, bool(small)
        return lam * 10.0, lam * 10.0 > 1e16

    x, _, tr = backoff_ascent(
        propose, x0, -float(prob.objective(x0)), int(num_iters), float(damping), accept, adapt, desc="ieks"
    )
    vals = -np.asarray(tr.values)
    converged = len(vals) > 1 and abs(vals[-1] - vals[-2]) < tol * (1.0 + abs(vals[-2]))
    _, cov = _final(prob, x, par)
    return IteratedSmootherResult(x, cov, vals, np.asarray(tr.dampings), tr.num_rejected, bool(converged))


def _lm_scan(prob: _Problem, x, num_iters: int, damping: float, parallel: bool):
    """``num_iters`` Levenberg–Marquardt steps as in :func:`iterated_smoother`, traceable (a
    ``lax.scan``; a rejected step keeps ``x`` and multiplies ``lambda`` by 10). Returns the path
    (T, d)."""
    damped = damping > 0

    def body(carry, _):
        x, J, lam = carry
        xn, _ = prob.step(x, lam, parallel, damped)
        Jn = prob.objective(xn)
        ok = (Jn <= J) | (not damped)
        lam = jnp.clip(jnp.where(ok, lam / 10.0, lam * 10.0), 1e-12, 1e12)
        return (jnp.where(ok, xn, x), jnp.where(ok, Jn, J), lam), None

    lam0 = jnp.asarray(damping if damped else 1.0, x.dtype)
    return jax.lax.scan(body, (x, prob.objective(x), lam0), None, length=num_iters)[0][0]


def linearised_log_likelihood(
    transition: Callable,
    Q: ArrayInput,
    observation: Callable,
    R: ArrayInput,
    y: ArrayInput,
    m0: ArrayInput,
    P0: ArrayInput,
    *,
    num_iters: int = 20,
    init: ArrayInput | None = None,
    damping: float = 1e-2,
    parallel: bool | None = None,
    pointwise: bool = False,
) -> Float[Array, ""] | Float[Array, " T"]:
    r"""Approximate ``log p(y)`` of the model of :func:`iterated_smoother`: the exact log marginal
    likelihood of the model linearised (first-order Taylor) at the MAP path ``x*``, computed by
    the Kalman engine. At a Gauss–Newton fixed point it equals the Laplace approximation with
    the Gauss–Newton Hessian ``H_GN``:
    ``-J(x*) - 1/2 log det H_GN - 1/2 log det P0 - 1/2 sum log det Q_k - 1/2 sum log det 2 pi R``
    (the last over observed rows). For a linear model it is the exact ``log p(y)``.

    Traceable and differentiable in everything ``transition``, ``observation``, ``Q``, ``R``,
    ``m0``, ``P0`` (and ``y``) depend on, so they may be numpyro sample sites. ``x*`` comes from
    ``num_iters`` Levenberg–Marquardt steps (a ``lax.scan``, started at the single-pass EKS)
    without gradient, then one Newton step with the exact Hessian (it polishes ``x*`` to
    rounding); its derivative is that of the Newton step: **implicit differentiation** at the fixed
    point, ``dx*/dθ = -(∇²_xx J)^{-1} ∇²_xθ J``, with the exact block-tridiagonal Hessian
    (:func:`~probdyn.linalg.block_tridiag_solve`, ``O(T d^3)``). Not through the last iteration:
    the Gauss–Newton map's own Jacobian is not zero at ``x*`` when residuals are not zero, so
    one differentiated step misses part of ``dx*/dθ``; unrolling every step costs memory per
    iteration and is only as exact as the convergence.

    Args: as :func:`iterated_smoother`; ``num_iters`` is fixed (no early stop, so it traces):
    check convergence once with :func:`iterated_smoother`. The value is only as good as the
    minimum of ``J`` the iterations reach: where the single-pass EKS start lies in another
    basin of ``J`` (poor prior, parameters far from the data's), the value drops by the
    difference in ``J``; a warm start ``init`` (T, d), e.g. the MAP path at a good parameter
    value, removes that (``tutorials/iterated_smoothers.py``). Returns a scalar; ``-inf`` (not NaN)
    when the smoother or the linearised filter gave a non-finite value. ``pointwise=True``
    returns the linearised model's one-step predictive log densities instead (T,), which sum
    to it (the linearisation point itself depends on all of ``y``).
    """
    if int(num_iters) < 0 or not np.isfinite(damping) or float(damping) < 0:
        raise ValueError(f"num_iters must be >= 0 and damping >= 0, got {num_iters}, {damping}")
    prob, x0, _ = _setup(transition, Q, observation, R, y, m0, P0, init)
    return _linearised_ll(prob, x0, int(num_iters), float(damping), kalman.use_parallel(parallel), bool(pointwise))


@eqx.filter_jit
def _linearised_ll(prob: _Problem, x0, num_iters: int, damping: float, parallel: bool, pointwise: bool):
    x = jax.lax.stop_gradient(_lm_scan(prob, x0, num_iters, damping, parallel))
    # One Newton step with the exact Hessian H (held fixed): its value polishes x* (quadratic
    # convergence), its derivative -H^{-1} d(grad J)/dθ is the implicit-function-theorem
    # derivative at grad J(x*) = 0 (H's own derivative multiplies grad J = 0 there).
    D, U = jax.lax.stop_gradient(prob.hessian_blocks(x))
    step = block_tridiag_solve(D, U, jax.grad(prob.objective)(x))
    x = jnp.where(jnp.all(jnp.isfinite(step)), x - step, x)  # H not positive definite: no polish
    F, c, H, dh = prob.linearise(x)
    ssm, z, _ = _linearised_ssm(prob.m0, prob.P0, F, c, prob.Q, H, dh, prob.R, prob.y, parallel)
    if pointwise:
        ll = kalman.pointwise_log_likelihood(ssm, z, parallel=parallel)
    else:
        ll = kalman.log_likelihood(ssm, z, parallel=parallel)
    return jnp.where(jnp.isfinite(ll), ll, -jnp.inf)


class PosteriorLinearisationResult(NamedTuple):
    """Smoothed means (T, d) and covariances (T, d, d) at the fixed point, the largest change
    of a mean in each iteration (n,), and whether it fell below ``tol``."""

    mean: Float[Array, "T d"]
    cov: Float[Array, "T d d"]
    change: np.ndarray
    converged: bool


def _slr(fn, rule: SigmaPointRule, m, P, k):
    """SLR of ``fn(., k)`` under ``N(m, P)``: ``A`` (q, d), ``b`` (q,), error covariance (q, q)."""
    L = psd_cholesky(P)
    X = m + rule.xi @ L.T
    Y = jax.vmap(lambda x: fn(x, k).astype(m.dtype))(X)
    ybar = rule.wm @ Y
    dX, dY = X - m, Y - ybar
    Psi = dX.T @ (rule.wc[:, None] * dY)  # Cov(x, f(x)) (d, q)
    A = jax.scipy.linalg.cho_solve((L, True), Psi).T
    Lam = dY.T @ (rule.wc[:, None] * dY) - A @ P @ A.T
    return A, ybar - A @ m, 0.5 * (Lam + Lam.T)


@eqx.filter_jit
def _ipls_step(problem: _Problem, rule: SigmaPointRule, m, P, parallel: bool):
    k = jnp.arange(m.shape[0])
    F, c, Lam = jax.vmap(lambda mk, Pk, kk: _slr(problem.transition, rule, mk, Pk, kk))(m[:-1], P[:-1], k[:-1])
    H, dh, Om = jax.vmap(lambda mk, Pk, kk: _slr(problem.observation, rule, mk, Pk, kk))(m, P, k)
    return _linear_smoother(problem.m0, problem.P0, F, c, problem.Q + Lam, H, dh, problem.R + Om, problem.y, parallel)


def _setup(transition, Q, observation, R, y, m0, P0, init):
    """The validated problem and the starting marginals: ``init`` (covariances ``P0``) or, by
    default, the single-pass extended Kalman smoother's means and covariances."""
    m0 = jnp.asarray(m0)
    if m0.ndim != 1:
        raise ValueError(f"m0 must be a vector (d,), got shape {m0.shape}")
    dtype = m0.dtype if jnp.issubdtype(m0.dtype, jnp.floating) else jnp.result_type(float)
    d = m0.shape[0]
    y = jnp.asarray(y, dtype)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] < 2:
        raise ValueError(f"y must be (T, p) with T >= 2, got shape {y.shape}")
    if is_concrete(y) and np.any(np.isinf(np.asarray(y))):
        raise ValueError("y contains infinite values (use NaN for missing observations)")
    T, p = y.shape
    prob = _Problem(
        transition,
        observation,
        _pd("Q", Q, d, dtype, T - 1),
        _pd("R", R, p, dtype),
        y,
        m0.astype(dtype),
        _pd("P0", P0, d, dtype),
    )
    hx = jax.eval_shape(lambda x: observation(x, 0), jax.ShapeDtypeStruct((d,), dtype))
    if hx.shape != (p,):
        raise ValueError(f"observation(x, k) must return shape ({p},) like a row of y, got {hx.shape}")
    if init is None:
        return prob, *_eks(prob)
    x0 = jnp.asarray(init, dtype)
    if x0.shape != (T, d):
        raise ValueError(f"init must have shape ({T}, {d}), got {x0.shape}")
    return prob, x0, jnp.broadcast_to(prob.P0, (T, d, d))


@eqx.filter_jit
def _eks(prob: _Problem):
    """Single-pass extended Kalman smoother (the default start of both iterations): EKF with
    Jacobians at the predicted / filtered means, then RTS with the transition linearised at
    the filtered means. Returns means (T, d) and covariances (T, d, d)."""
    T = prob.y.shape[0]
    SQ = jnp.broadcast_to(psd_cholesky(prob.Q), (T - 1,) + prob.Q.shape[-2:])
    SR = psd_cholesky(prob.R)

    def upd(m, S, k):
        H = jax.jacfwd(prob.observation)(m, k)
        return kalman.update(m, S, H, SR, prob.y[k], offset=prob.observation(m, k) - H @ m)[:2]

    def step(c, k):
        m, S = c
        F = jax.jacfwd(prob.transition)(m, k - 1)
        m, S = upd(*kalman.predict(m, S, F, SQ[k - 1], prob.transition(m, k - 1) - F @ m), k)
        return (m, S), (m, S)

    m, S = upd(prob.m0, psd_cholesky(prob.P0), 0)
    _, (ms, Ss) = jax.lax.scan(step, (m, S), jnp.arange(1, T))
    ms, Ss = jnp.concatenate([m[None], ms]), jnp.concatenate([S[None], Ss])
    F, c = _taylor(prob.transition, ms[:-1], jnp.arange(T - 1))
    ms, Ss = kalman.rts_smooth(ms, Ss, F, SQ, c, parallel=False)
    return ms, Ss @ jnp.swapaxes(Ss, -1, -2)


def iterated_posterior_linearisation_smoother(
    transition: Callable,
    Q: ArrayInput,
    observation: Callable,
    R: ArrayInput,
    y: ArrayInput,
    m0: ArrayInput,
    P0: ArrayInput,
    *,
    method: str = "cubature",
    num_iters: int = 50,
    init: ArrayInput | None = None,
    init_cov: ArrayInput | None = None,
    tol: float = 1e-8,
    damping: float = 1.0,
    parallel: bool | None = None,
    ukf_params: tuple = (1.0, 0.0, None),
    gh_order: int = 3,
) -> PosteriorLinearisationResult:
    """Iterated posterior-linearisation smoother (see the module doc); arguments as in
    :func:`iterated_smoother`, plus the sigma-point ``method`` (``"cubature"``, ``"ukf"`` or
    ``"gauss_hermite"``) used for the SLR, and the starting marginals: means ``init`` (T, d) and
    covariances ``init_cov`` (T, d, d) (default ``P0`` at every step when ``init`` is given);
    default: the single-pass extended Kalman smoother's marginals. ``damping`` in (0, 1] moves
    the marginals that the next SLR uses only that fraction of the way to the new smoother's
    (``m <- m + a (m' - m)``, likewise ``P``; damped posterior linearisation), which settles
    oscillating iterations. Stops when no
    mean of the smoother moves by more than ``tol`` in an iteration."""
    if not (0.0 < float(damping) <= 1.0):
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    if int(num_iters) < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    check_options(method, None, None, allowed=("cubature", "ukf", "gauss_hermite"))
    prob, m, P = _setup(transition, Q, observation, R, y, m0, P0, init)
    T, d = m.shape
    P = P if init_cov is None else jnp.asarray(init_cov, m.dtype)
    if P.shape != (T, d, d):
        raise ValueError(f"init_cov must have shape ({T}, {d}, {d}), got {P.shape}")
    rule = sigma_point_rule(method, d, m.dtype, tuple(ukf_params), int(gh_order))
    assert rule is not None
    par = kalman.use_parallel(parallel)
    changes = []
    a = float(damping)
    sm = m
    for _ in range(int(num_iters)):
        sm_new, P_new = _ipls_step(prob, rule, m, P, par)
        changes.append(float(jnp.max(jnp.abs(sm_new - sm))))
        sm = sm_new
        m, P = (sm_new, P_new) if a == 1.0 else (m + a * (sm_new - m), P + a * (P_new - P))
        if not np.isfinite(changes[-1]) or changes[-1] < tol:
            break
    if not np.isfinite(changes[-1]):
        raise FloatingPointError("iterated posterior linearisation diverged (non-finite means)")
    return PosteriorLinearisationResult(sm, P_new, np.asarray(changes), bool(changes[-1] < tol))
