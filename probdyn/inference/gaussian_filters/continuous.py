r"""Continuous–discrete Gaussian filter and smoother for nonlinear SDEs.

Model (continuous–discrete): an Itô SDE (:class:`probdyn.sde.SDE`) observed at sorted times,

.. math:: dx = f(x, t)\,dt + L(x, t)\,dW,\quad x(t_0) \sim N(m_0, P_0),\quad
          y_k \sim p(y_k \mid x(t_k))\ (\text{a :mod:`~probdyn.inference.gaussian_filters.observations` model}).

Between observations the Gaussian approximation ``N(m, P)`` is propagated in equal
sub-steps, in one of two ways (``propagation=``):

* ``"moments"`` — the moment ODEs (Särkkä & Solin 2019, ch. 9; Särkkä 2007, IEEE TAC)

  .. math:: \dot m = E[f],\quad \dot P = E[f\,(x-m)^T] + E[(x-m)\,f^T] + E[L L^T],

  integrated with an explicit Runge–Kutta method (``solver=``: Tsit5, fifth order, by
  default; ``"rk4"``, the classical fourth-order method of earlier versions; or any explicit
  diffrax solver). ``method="ekf"`` uses the Taylor form
  ``\dot m = f(m)``, ``\dot P = J P + P J^T + L(m) L(m)^T``; ``"ukf"``, ``"cubature"`` and
  ``"gauss_hermite"`` evaluate the expectations with sigma points ``m + \sqrt{P}\,\xi_i``.
  ``P`` is symmetrised after every step and factorised with a PSD-safe Cholesky.
* ``"linearised"`` — local linearisation (Ozaki 1992; Jimenez et al.): on every substep the
  drift is replaced by ``f(m, t) + \hat J (x - m) + \partial_t f\,(s - t)`` (``\hat J`` the
  Jacobian at ``m`` for the EKF, the sigma-point average of Jacobians otherwise — statistical
  linearisation) and the resulting linear SDE is discretised *exactly*
  (``A = e^{\hat J h}``, the forced mean and Van Loan's process noise from one augmented
  matrix exponential, :func:`probdyn.ssm.discretise_affine`). The substeps of an interval compose into
  one affine-Gaussian map applied with the engine's square-root
  :func:`probdyn.inference.kalman.predict`; for a linear SDE (also with forcing affine in
  ``t``) this is the exact discretisation (to rounding).

Measurement updates are the observation model's ``update`` (exact Kalman for linear-Gaussian
and log-normal data, Laplace for Poisson / user log-densities). The log marginal likelihood
is the sum of the (approximate) one-step predictive densities.

Step size (:func:`step_counts`): with ``max_step=h`` an interval of length ``dt`` takes
``ceil(dt / h)`` equal sub-steps, so the long gaps of an irregular grid get as many steps as
they need and the short ones one. ``num_substeps=n`` instead gives every interval ``n`` steps.
Where ``times`` are concrete the intervals are split into one grid whose segments run at most
``chunk`` masked sub-steps each (:func:`chunk_size`: a scan iteration costs about as much as
16 RK4 steps of the EKF or 4 of a sigma-point filter, so long intervals are split and short
ones padded by the cheaper trade); the filter runs over that grid and reports the observation times. Where
``times`` are traced (an argument of ``jit``) the counts are not known when tracing:
``max_step`` then needs the bound ``max_substeps``, every interval runs ``max_substeps`` masked
steps of which ``min(ceil(dt / h), max_substeps)`` are used (an interval longer than
``max_substeps * max_step`` gets ``max_substeps`` longer steps).

The default (neither given) is the step of :func:`default_max_step`: the smallest ``h``
whose plan costs no more than ten RK4 steps on every interval (the fixed default of earlier
versions; costs from :func:`plan_costs`, measured), spent on Tsit5 steps evenly in time.
Measured on the stochastic Lotka–Volterra model of the tests (log-populations, gaps
log-uniform on [2e-4, 1.05]), log-likelihood error relative to a ``max_step = 1e-4``
reference, default against ten RK4 steps per interval: T = 200, EKF 9.6e-9 against 3.1e-6
(value 0.45 against 0.48 ms, value+gradient 1.94 against 1.89 ms), cubature 2.1e-8 against
3.6e-6 (1.07 against 1.43 ms, 4.24 against 4.77 ms); T = 60, EKF 4.4e-8 against 1.7e-6.
On a regular grid the default is four Tsit5 steps per interval. With traced times the
default is the same budget on every interval: ``round(10 / c)`` steps, ``c`` the cost of one
step in RK4 steps (five Tsit5 steps).

The smoother is the Gaussian RTS smoother over the filter output, using the interval's
linearised transition ``x_{k+1} \approx A_k x_k + b_k + q_k`` (for ``"moments"``: ``A_k`` is
the integrated ``\dot \Phi = \hat J \Phi``, ``Q_k = P^-_{k+1} - A_k P_k A_k^T``); it runs the
engine's square-root backward kernels. For linear SDEs it equals
:func:`probdyn.inference.kalman.smoother`.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from probdyn._checks import concrete
from probdyn._typing import ArrayInput
from probdyn.inference import kalman
from probdyn.inference.gaussian_filters.common import (
    GaussianFilterResult,
    GaussianSmootherResult,
    check_options,
    check_sde_inputs,
    check_step_options,
    diffusion_at,
    drift_at,
    filter_scan,
    sigma_point_rule,
)
from probdyn.inference.gaussian_filters.observations import ObservationModel
from probdyn.linalg import psd_cholesky, symmetrize
from probdyn.sde import SDE
from probdyn.sde.ode import RK4, Tableau, explicit_tableau, rk_step
from probdyn.ssm import discretise_affine

__all__ = [
    "filter",
    "smoother",
    "step_counts",
    "chunk_size",
    "default_max_step",
    "plan_costs",
    "plan_cost",
    "refined_grid",
    "solver_tableau",
    "DEFAULT_STEPS_PER_INTERVAL",
]

# The default cost budget: as much as this many RK4 steps on every interval (module docstring).
DEFAULT_STEPS_PER_INTERVAL = 10
# Costs in RK4 steps. A Runge-Kutta step costs its stages plus a quarter of its nonzero
# tableau coefficients (the stage sums), in units of that for RK4 (measured with value and
# gradient, EKF, d = 2: a Tsit5 step 2.0x an RK4 step; the rule gives 2.2x). A scan iteration
# (moments in and out, an observation update) costs about as much as this many RK4 steps
# (measured on the stochastic Lotka-Volterra model, d = 2: EKF 5.2 us per iteration against
# 0.40 us per RK4 step, i.e. 13, set to 16 so that the default plan's value+gradient time
# matches ten RK4 steps per interval there; cubature 5.9 us against 1.5 us).
SEGMENT_COST = {"ekf": 16.0}
SIGMA_POINT_SEGMENT_COST = 4.0
CHUNKS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64)


def _jac(sde: SDE, x, t):
    return jax.jacfwd(lambda z: drift_at(sde, z, t))(x)


def _moment_rhs(sde: SDE, rule, m, P, Phi, t, need_trans):
    """Right-hand side of the moment ODEs (and of ``dPhi/dt = J Phi``)."""
    if rule is None:
        f = drift_at(sde, m, t)
        J = _jac(sde, m, t)
        L = diffusion_at(sde, m, t)
        dP = J @ P + P @ J.T + L @ L.T
        dPhi = J @ Phi if need_trans else Phi
        return f, dP, dPhi
    S = psd_cholesky(P)
    X = m + rule.xi @ S.T
    F = jax.vmap(lambda x: drift_at(sde, x, t))(X)
    dm = rule.wm @ F
    cross = (X - m).T @ (rule.wc[:, None] * (F - dm))
    if callable(sde.diffusion):
        Ls = jax.vmap(lambda x: diffusion_at(sde, x, t))(X)
        LL = jnp.einsum("n,nij,nkj->ik", rule.wm, Ls, Ls)
    else:
        L = diffusion_at(sde, m, t)
        LL = L @ L.T
    dP = cross + cross.T + LL
    if need_trans:
        Jbar = jnp.einsum("n,nij->ij", rule.wm, jax.vmap(lambda x: _jac(sde, x, t))(X))
        dPhi = Jbar @ Phi
    else:
        dPhi = Phi
    return dm, dP, dPhi


def _substeps(step, carry, n, active, dtype):
    """``carry = step(carry, j)`` for ``j = 0..n-1`` (one ``lax.scan``); with a traced count
    ``active`` the steps ``j >= active`` keep the carry (masked with ``where``: computed, not
    kept, so the loop has one cost under ``jit``, ``grad`` and ``vmap``)."""

    def body(c, j):
        if active is None:
            return step(c, j), None
        return jax.tree.map(lambda a, b: jnp.where(j < active, a, b), step(c, j), c), None

    return jax.lax.scan(body, carry, jnp.arange(n, dtype=dtype))[0]


def _propagate_moments(sde, rule, m, S, t0, t1, n, need_trans, active=None, tab: Tableau = RK4):
    """The moment ODEs over [t0, t1] in n explicit Runge-Kutta steps (tableau ``tab``) ->
    (m, S, A, SQ); with a traced count ``active <= n`` only the first ``active`` steps run,
    each of length ``(t1 - t0) / active``."""
    d = m.shape[0]
    h = (t1 - t0) / (n if active is None else active)
    P = S @ S.T
    Phi = jnp.eye(d, dtype=m.dtype)

    def rhs(Y, t):
        m, P, Phi = Y
        return _moment_rhs(sde, rule, m, symmetrize(P), Phi, t, need_trans)

    def step(carry, j):
        Y, K = carry
        (mn, Pn, Phin), _, Kn = rk_step(rhs, Y, K, t0 + j * h, h, tab)
        return (mn, symmetrize(Pn), (Phin if need_trans else Y[2])), Kn

    (m1, P1, Phi1), _ = _substeps(step, ((m, P, Phi), rhs((m, P, Phi), t0)), n, active, m.dtype)
    S1 = psd_cholesky(P1)
    if not need_trans:
        return m1, S1, None, None
    Q = symmetrize(P1 - Phi1 @ P @ Phi1.T)
    return m1, S1, Phi1, psd_cholesky(Q)


def _local_linear(sde, rule, m, S, t):
    """(J, E f, d_t E f, E[L L^T]) for the local linearisation at (m, S S^T, t)."""

    def f_and_ft(x):
        return jax.jvp(lambda tt: drift_at(sde, x, tt), (t,), (jnp.ones_like(t),))

    if rule is None:
        f0, ft = f_and_ft(m)
        J = _jac(sde, m, t)
        L = diffusion_at(sde, m, t)
        return J, f0, ft, L @ L.T
    X = m + rule.xi @ S.T
    F, Ft = jax.vmap(f_and_ft)(X)
    J = jnp.einsum("n,nij->ij", rule.wm, jax.vmap(lambda x: _jac(sde, x, t))(X))
    if callable(sde.diffusion):
        Ls = jax.vmap(lambda x: diffusion_at(sde, x, t))(X)
        LL = jnp.einsum("n,nij,nkj->ik", rule.wm, Ls, Ls)
    else:
        L = diffusion_at(sde, m, t)
        LL = L @ L.T
    return J, rule.wm @ F, rule.wm @ Ft, LL


def _propagate_linearised(sde, rule, m, S, t0, t1, n, need_trans, active=None):
    """Local-linearisation substeps composed into one affine-Gaussian map over [t0, t1]
    (``x(t1) = A x(t0) + b + q``, ``q ~ N(0, Q)``), applied with ``kalman.predict``
    (``active`` as in :func:`_propagate_moments`)."""
    d = m.shape[0]
    dtype = m.dtype
    h = (t1 - t0) / (n if active is None else active)
    eye = jnp.eye(d, dtype=dtype)
    P0 = S @ S.T

    def step(carry, j):
        mj, A_acc, Q_acc = carry
        t = t0 + j * h
        Sj = None if rule is None else psd_cholesky(symmetrize(A_acc @ P0 @ A_acc.T + Q_acc))
        J, f0, ft, LL = _local_linear(sde, rule, mj, Sj, t)
        A, e, Q = discretise_affine(J, f0, LL, h, b_t=ft)
        return mj + e, A @ A_acc, symmetrize(A @ Q_acc @ A.T + Q)

    m1, A, Q = _substeps(step, (m, eye, jnp.zeros((d, d), dtype)), n, active, dtype)
    SQ = psd_cholesky(Q)
    mp, Sp = kalman.predict(m, S, A, SQ, m1 - A @ m)
    return mp, Sp, (A if need_trans else None), (SQ if need_trans else None)


def step_counts(times, max_step: float) -> np.ndarray:
    """Sub-steps per interval, ``ceil(dt_k / max_step)`` (at least 1), for concrete ``times``
    (T,) -> (T - 1,) ints."""
    dt = np.diff(np.asarray(times, np.float64))
    # the factor keeps an interval that is a whole multiple of max_step (up to rounding) at that multiple
    return np.maximum(1, np.ceil(dt / max_step * (1.0 - 1e-12))).astype(np.int64)


def solver_tableau(solver=None) -> Tableau:
    """The explicit Runge-Kutta tableau for the moment ODEs: ``None`` -> Tsit5 (fifth order),
    ``"rk4"`` -> classical RK4, or any explicit diffrax Runge-Kutta solver instance."""
    if solver is None:
        import diffrax

        solver = diffrax.Tsit5()
    if isinstance(solver, str) and solver.lower() == "rk4":
        return RK4
    tab = explicit_tableau(solver) if not isinstance(solver, str) else None
    if tab is None:
        raise ValueError(
            f"solver must be 'rk4' or an explicit diffrax Runge-Kutta solver (Tsit5(), Dopri5(), "
            f"Bosh3(), ...), got {solver!r}"
        )
    return tab


def _step_cost(tab: Tableau) -> float:
    stages = len(tab.c) - int(tab.fsal)  # FSAL: the last stage is the next step's first
    return stages + sum(c != 0.0 for row in tab.a + (tab.b,) for c in row) / 4


def plan_costs(method: str = "ekf", propagation: str = "moments", solver=None) -> tuple[float, float]:
    """(cost of a scan iteration, cost of a sub-step) in RK4 steps (module docstring)."""
    return _costs(method, propagation, solver_tableau(solver))


def _costs(method, propagation, tab: Tableau) -> tuple[float, float]:
    segment = SEGMENT_COST.get(method, SIGMA_POINT_SEGMENT_COST)
    return segment, (_step_cost(tab) / _step_cost(RK4) if propagation == "moments" else 1.0)


def plan_cost(counts, chunk, costs):
    """Cost of ``counts`` run in segments of ``chunk`` masked sub-steps."""
    segment, step = costs
    return float(np.sum(-(-counts // chunk))) * (chunk * step + segment)


def chunk_size(counts, costs=(SEGMENT_COST["ekf"], 1.0)) -> int:
    """The segment length (masked sub-steps per scan iteration) of least cost for ``counts``
    (``costs`` from :func:`plan_costs`)."""
    top = int(counts.max(initial=1))
    candidates = [c for c in CHUNKS if c < top] + [min(top, CHUNKS[-1])]
    return min(candidates, key=lambda c: plan_cost(counts, c, costs))


def default_max_step(times, costs=(SEGMENT_COST["ekf"], 1.0)) -> float:
    """The default step for concrete ``times``: the smallest ``h`` whose plan costs no more than
    ``DEFAULT_STEPS_PER_INTERVAL`` RK4 steps on every interval (module docstring)."""
    t = np.asarray(times, np.float64)
    num = t.size - 1
    budget = num * (DEFAULT_STEPS_PER_INTERVAL + costs[0])
    lo, hi = (t[-1] - t[0]) / (DEFAULT_STEPS_PER_INTERVAL * num) / 2, np.diff(t).max()  # lo over, hi within budget

    def cost(h):
        counts = step_counts(t, h)
        return plan_cost(counts, chunk_size(counts, costs), costs)

    if cost(lo) <= budget:
        return lo
    for _ in range(40):
        mid = np.sqrt(lo * hi)
        lo, hi = (lo, mid) if cost(mid) <= budget else (mid, hi)
    return float(hi)


def refined_grid(times, counts, chunk):
    """Concrete ``times`` (T,) with interval ``k`` split into ``counts[k]`` equal steps, grouped
    into segments of at most ``chunk`` steps -> (segment end points (N,), steps per segment
    (N,) with 1 for the first point, indices (T,) of the observation times among them (exact))."""
    t = np.asarray(times, np.float64)
    per = -(-counts // chunk)  # segments per interval
    idx = np.concatenate([[0], np.cumsum(per)])
    k = np.repeat(np.arange(counts.size), per)
    q = np.arange(1, idx[-1] + 1) - idx[k]  # 1-based segment number within its interval
    done = np.minimum(q * chunk, counts[k])  # steps of the interval done at the segment's end
    grid = np.concatenate([t[:1], t[k] + np.diff(t)[k] * done / counts[k]])
    grid[idx] = t
    return grid, np.concatenate([[1], done - (q - 1) * chunk]), idx


@functools.lru_cache(maxsize=64)
def _cached_plan(times_bytes: bytes, dtype: str, max_step, costs):
    """(grid, steps per segment, indices of the times, chunk) of the step plan for concrete
    times (given as bytes, so repeated eager calls on one grid plan once)."""
    t = np.frombuffer(times_bytes, dtype=dtype)
    counts = step_counts(t, default_max_step(t, costs) if max_step is None else max_step)
    chunk = chunk_size(counts, costs)
    grid, steps, idx = refined_grid(t, counts, chunk)
    for a in (grid, steps, idx):
        a.flags.writeable = False
    return grid, steps, idx, chunk


def _run_filter(
    sde,
    observation,
    times,
    y,
    m0,
    P0,
    method,
    propagation,
    num_substeps,
    max_step,
    max_substeps,
    solver,
    need_trans,
    ukf_params,
    gh_order,
):
    """The filter on the step plan of the module docstring -> (result, the per-step ``(A, SQ)``
    transitions of the grid it ran on or ``None``, and the indices of ``times`` in that grid or
    ``None`` when it is ``times`` itself). Without ``need_trans`` the result is at ``times``;
    with it, on the grid (the smoother subsamples after smoothing)."""
    check_options(method, propagation, num_substeps)
    check_step_options(num_substeps, max_step, max_substeps)
    t_np = concrete(times)  # before any cast: inside jit a cast of concrete times is a tracer
    times, y, m0, P0, dtype = check_sde_inputs(sde, observation, times, y, m0, P0)
    tab = solver_tableau(solver)
    costs = _costs(method, propagation, tab)
    options = (method, propagation, tab, need_trans, tuple(ukf_params), int(gh_order))
    if num_substeps is not None or times.shape[0] == 1 or (t_np is None and max_step is None):
        n = max(1, round(DEFAULT_STEPS_PER_INTERVAL / costs[1])) if num_substeps is None else int(num_substeps)
        return _filter_core(sde, observation, times, y, m0, P0, n, None, None, *options) + (None,)
    if t_np is None:
        if max_substeps is None:
            raise ValueError(
                "max_step with traced times (an argument of jit/vmap) needs max_substeps, the "
                "most sub-steps an interval may take (or pass the times as a concrete array, or "
                "use num_substeps)"
            )
        counts = jnp.clip(jnp.ceil(jnp.diff(times) / jnp.asarray(max_step, dtype)), 1, max_substeps)
        active = jnp.concatenate([jnp.ones(1, dtype), counts])
        return _filter_core(sde, observation, times, y, m0, P0, int(max_substeps), active, None, *options) + (None,)
    t_np = np.ascontiguousarray(t_np, dtype)
    grid, steps, idx, chunk = _cached_plan(
        t_np.tobytes(), t_np.dtype.str, None if max_step is None else float(max_step), costs
    )
    if grid.size == times.shape[0] and np.all(steps[1:] == chunk):  # n equal steps on every interval
        return _filter_core(sde, observation, times, y, m0, P0, chunk, None, None, *options) + (None,)
    idx = jnp.asarray(idx)
    res, trans = _filter_core(
        sde, observation, jnp.asarray(grid, dtype), y, m0, P0, chunk, jnp.asarray(steps, dtype), idx, *options
    )
    return res, trans, (idx if need_trans else None)


def _at(res: GaussianFilterResult, idx) -> GaussianFilterResult:
    """The filter result at grid points ``idx`` (the log-likelihood sums over every point; the
    unobserved ones contribute 0)."""
    return res._replace(**{name: getattr(res, name)[idx] for name in res._fields if name != "log_likelihood"})


@eqx.filter_jit
def _filter_core(
    sde, observation, times, y, m0, P0, n, active, idx, method, propagation, tab, need_trans, ukf_params, gh_order
):
    """The scan over ``times`` (the observation times, or a refined grid with the observation
    times at ``idx``: ``y`` (T, p) is placed there, NaN elsewhere, and without ``need_trans`` the
    result is taken back at ``idx``)."""
    dtype = m0.dtype
    d = m0.shape[0]
    rule = sigma_point_rule(method, d, dtype, ukf_params, gh_order)
    if propagation == "moments":
        prop = functools.partial(_propagate_moments, tab=tab)
    else:
        prop = _propagate_linearised
    if idx is not None:
        y = jnp.full((times.shape[0], y.shape[1]), jnp.nan, y.dtype).at[idx].set(y)  # NaN: nothing observed
    S0 = psd_cholesky(P0)
    t_prev = jnp.concatenate([times[:1], times[:-1]])

    def predict(m, S, k):
        mp, Sp, A, SQ = prop(sde, rule, m, S, t_prev[k], times[k], n, need_trans, None if active is None else active[k])
        return mp, Sp, ((A, SQ) if need_trans else None)

    res, trans = filter_scan(predict, observation, y, m0, S0, method)
    if idx is not None and not need_trans:
        res = _at(res, idx)
    return res, trans


def filter(
    sde: SDE,
    observation: ObservationModel,
    times: ArrayInput,
    y: ArrayInput,
    m0: ArrayInput,
    P0: ArrayInput,
    method: str = "ekf",
    num_substeps: int | None = None,
    propagation: str = "moments",
    *,
    max_step: float | None = None,
    max_substeps: int | None = None,
    solver=None,
    ukf_params: tuple = (1.0, 0.0, None),
    gh_order: int = 3,
) -> GaussianFilterResult:
    """Continuous–discrete Gaussian filter (module docstring); ``x(times[0]) ~ N(m0, P0)``.

    Args:
        sde: the state SDE. observation: a :mod:`~probdyn.inference.gaussian_filters.observations` model.
        times: (T,) strictly increasing observation times (irregular grids are fine).
        y: (T, p) observations (or (T,) when p = 1); NaN entries/rows are missing.
        method: ``"ekf" | "ukf" | "cubature" | "gauss_hermite"``.
        num_substeps: equal propagation steps per interval (instead of ``max_step``).
        propagation: ``"moments"`` (Runge-Kutta on the moment ODEs) or ``"linearised"``
            (exact discretisation of the local linearisation).
        max_step: longest propagation step (time units); an interval of length ``dt`` takes
            ``ceil(dt / max_step)`` equal steps. Default (neither given): the step of
            :func:`default_max_step` (module docstring).
        max_substeps: bound on the steps of one interval, needed with ``max_step`` only where
            ``times`` are traced.
        solver: explicit Runge-Kutta method for ``"moments"``: ``None`` (Tsit5, fifth order),
            ``"rk4"``, or a diffrax solver instance (``Dopri5()``, ``Bosh3()``, ...).
        ukf_params: ``(alpha, beta, kappa)`` for ``"ukf"``; gh_order: points per dimension.

    Jit-, grad- and vmap-compatible (options are static Python values).
    """
    return _run_filter(
        sde,
        observation,
        times,
        y,
        m0,
        P0,
        method,
        propagation,
        num_substeps,
        max_step,
        max_substeps,
        solver,
        False,
        ukf_params,
        gh_order,
    )[0]


@jax.jit
def _rts(f: GaussianFilterResult, A, SQ, idx=None):
    """Gaussian RTS smoother over filter output with transitions ``x_{k+1} ≈ A x_k + b + q``
    -> (means, covariances, filter result), taken at ``idx`` when given (a refined grid)."""
    b = f.pred_mean[1:] - jnp.einsum("kij,kj->ki", A, f.mean[:-1])
    ms, Ss = kalman.rts_smooth(f.mean, f.chol, A, SQ, b, parallel=False)
    Ps = Ss @ jnp.swapaxes(Ss, -1, -2)
    return (ms, Ps, f) if idx is None else (ms[idx], Ps[idx], _at(f, idx))


def smoother(
    sde: SDE,
    observation: ObservationModel,
    times: ArrayInput,
    y: ArrayInput,
    m0: ArrayInput,
    P0: ArrayInput,
    method: str = "ekf",
    num_substeps: int | None = None,
    propagation: str = "moments",
    *,
    max_step: float | None = None,
    max_substeps: int | None = None,
    solver=None,
    ukf_params: tuple = (1.0, 0.0, None),
    gh_order: int = 3,
) -> GaussianSmootherResult:
    """Gaussian RTS smoother over :func:`filter` (same arguments); see module docstring. On a
    refined grid it smooths over every grid point and reports the observation times."""
    f, trans, idx = _run_filter(
        sde,
        observation,
        times,
        y,
        m0,
        P0,
        method,
        propagation,
        num_substeps,
        max_step,
        max_substeps,
        solver,
        True,
        ukf_params,
        gh_order,
    )
    if f.mean.shape[0] == 1:
        return GaussianSmootherResult(f.mean, f.cov, f.log_likelihood, f)
    ms, Ps, f = _rts(f, *trans, idx)
    return GaussianSmootherResult(ms, Ps, f.log_likelihood, f)
