r"""Robust, differentiable ODE solves for inference: :func:`solve_ode`, the one entry point.

Two backends solve ``dx/dt = f(x, t[, theta])`` and save at given times:

* ``backend="fused_rk"`` (default) — probdyn's own solver, described below;
* ``backend="diffrax"`` — ``diffrax.diffeqsolve`` with a PID controller (any diffrax solver,
  implicit ones for stiff problems included), gradients by ``diffrax.ForwardMode``
  (``sensitivity="forward"``) or ``RecursiveCheckpointAdjoint`` (``"reverse"``).

Both never raise on a failed solve (``ok = False``, finite placeholders; failures counted in
:data:`solver_failures`). The fused backend is

* an **embedded explicit Runge–Kutta pair** (the Butcher tableau of a diffrax solver:
  ``Tsit5`` by default; ``Dopri5``, ``Dopri8``, ``Bosh3``, ... work too) stepped by a plain
  ``lax.while_loop`` per observation interval, with PI step-size control on the primal
  state: the last step of each interval lands on the observation time (no interpolation);
* **never raises** during inference: a failed solve (step limit reached, step size
  underflow, non-finite or, optionally, non-positive state) returns ``ok = False`` and finite
  placeholder states, so a numpyro program can turn it into ``log density = -inf`` (the
  proposal is rejected, not the run aborted); failures are counted in :data:`solver_failures`
  (a host callback that runs only when a solve fails);
* gradients by **forward sensitivities fused into the solve** (``sensitivity="forward"``,
  default): a ``jax.custom_jvp`` whose rule integrates the solution together with its
  Jacobian ``S = dx/d(theta, x0)`` — each stage evaluates the drift once and its
  directional derivatives along the columns of ``S`` (``dS/dt = f_x S + f_theta``) — on the
  primal's step sequence. This is the exact derivative of the discrete solution for that
  step sequence (explicit RK commutes with differentiation), so gradients are as accurate
  as the solution. Reverse mode (``jax.grad``) transposes the linear map ``S``; forward mode
  (``jax.jvp``/``jacfwd``) works too. Only inputs that are actually differentiated get
  sensitivity columns (symbolic zeros), and the observation times are differentiable
  (``dx(t_i)/dt_i = f(x(t_i))``, ``dx(t_i)/dt_0 = -S_{x0}(t_i) f(x_0)``).
  For a handful of parameters this is much cheaper than reverse mode through a
  checkpointed while loop (``backend="diffrax", sensitivity="reverse"``); a non-explicit
  solver such as ``Kvaerno5`` needs ``backend="diffrax"``.

Step-size control (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4; Hairer & Wanner II,
IV.2 for the PI form): with the embedded error ``e`` of the primal state,
``err = rms(e / (atol + rtol max(|x_n|, |x_{n+1}|)))``; the step is accepted when
``err <= 1`` and the next step is ``h * clip(0.9 err^{-a} err_prev^{b}, 0.2, 10)`` with
``b = 0.04``, ``a = 1/p - 0.75 b`` (``p`` the order of the pair), and no growth right after a
rejection. The first step follows the same book's starting-step algorithm unless ``dt0``
is given. Sensitivities are not part of the error control.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.custom_derivatives import SymbolicZero
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

__all__ = [
    "solve_ode",
    "solver_failures",
    "SolverFailureCounter",
    "BACKENDS",
    "Tableau",
    "explicit_tableau",
    "rk_step",
    "RK4",
]

BACKENDS = ("fused_rk", "diffrax")


class SolverFailureCounter:
    """Host-side tally of failed ODE solves seen during inference (``reset()`` before a run).

    ``failures`` counts failed solves (each is a rejected proposal / an infinite potential,
    never an exception). Only failing solves call back to the host, so counting costs
    nothing on the successful path; under ``vmap`` (vectorised chains) one callback reports
    the whole batch.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Set the failure count back to 0."""
        self.failures = 0

    def _record(self, ok) -> None:
        ok = np.asarray(ok)
        self.failures += int(ok.size - ok.sum())

    def __repr__(self) -> str:
        return f"SolverFailureCounter(failures={self.failures})"


solver_failures = SolverFailureCounter()


@custom_vmap
def _report_failures(ok):
    """Host callback with the failing ``ok`` flags, only when one is ``False``."""
    jax.lax.cond(jnp.all(ok), lambda: None, lambda: jax.debug.callback(solver_failures._record, ok))
    return jnp.zeros((), jnp.int32)


@_report_failures.def_vmap
def _report_failures_batched(axis_size, in_batched, ok):
    # one real conditional over the whole batch (a batched predicate would turn lax.cond into a
    # select that calls back on every evaluation); nested vmaps flatten level by level
    ok = ok if in_batched[0] else jnp.broadcast_to(ok, (axis_size,) + jnp.shape(ok))
    _report_failures(ok.reshape(-1))
    return jnp.zeros((axis_size,), jnp.int32), True


# ----------------------------------------------------------------------------------
# embedded explicit Runge-Kutta pairs
# ----------------------------------------------------------------------------------
class Tableau(NamedTuple):
    """Explicit RK pair: nodes ``c`` (s,), rows of the strictly lower ``a`` (stages 2..s),
    weights ``b`` (s,), error weights ``e = b - b_hat`` (s,), FSAL flag, order ``p``."""

    c: tuple
    a: tuple
    b: tuple
    e: tuple
    fsal: bool
    order: int


# classical fourth-order Runge-Kutta (no embedded error estimate: e = 0)
RK4 = Tableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    e=(0.0, 0.0, 0.0, 0.0),
    fsal=False,
    order=4,
)


def explicit_tableau(solver) -> Tableau | None:
    """The embedded explicit pair of a diffrax solver, or ``None`` (implicit, no error estimate)."""
    import diffrax

    tab = getattr(solver, "tableau", None)
    if not isinstance(tab, diffrax.ButcherTableau) or tab.implicit or tab.b_error is None:
        return None
    if getattr(tab, "c1", 0.0) != 0.0:
        return None
    order = int(solver.order(None))
    fl = lambda v: tuple(float(x) for x in np.asarray(v, dtype=np.float64))  # noqa: E731
    c, a, b = (0.0,) + fl(tab.c), tuple(fl(r) for r in tab.a_lower), fl(tab.b_sol)
    # first-same-as-last only where the last stage *is* the new point (b = last row of a, c = 1)
    fsal = bool(tab.fsal) and c[-1] == 1.0 and a[-1] + (0.0,) == b
    return Tableau(c=c, a=a, b=b, e=fl(tab.b_error), fsal=fsal, order=order)


def _lincomb(coefs, ks, h):
    """``h * sum_j coefs[j] ks[j]`` over pytrees, skipping zero coefficients (static)."""
    out = None
    for cj, kj in zip(coefs, ks):
        if cj == 0.0:
            continue
        term = jax.tree.map(lambda k, c=cj: c * k, kj)
        out = term if out is None else jax.tree.map(jnp.add, out, term)
    if out is None:
        return jax.tree.map(jnp.zeros_like, ks[0])
    return jax.tree.map(lambda o: h * o, out)


def rk_step(rhs, Y, K0, t, h, tab: Tableau):
    """One explicit RK step of ``dY/dt = rhs(Y, t)`` (pytrees) from ``Y`` with ``K0 = rhs(Y, t)``:
    ``(Y_{n+1}, error estimate, rhs(Y_{n+1}, t + h))``."""
    ks, Yi = [K0], Y
    for i, row in enumerate(tab.a):
        Yi = jax.tree.map(jnp.add, Y, _lincomb(row, ks, h))
        ks.append(rhs(Yi, t + tab.c[i + 1] * h))
    if tab.fsal:  # last stage is the new point: b equals the last row of a
        Ynew, Knew = Yi, ks[-1]
    else:
        Ynew = jax.tree.map(jnp.add, Y, _lincomb(tab.b, ks, h))
        Knew = rhs(Ynew, t + h)
    return Ynew, _lincomb(tab.e, ks, h), Knew


def _rms(x):
    return jnp.sqrt(jnp.mean(x**2))


def _initial_step(rhs, primal, Y0, K0, t0, span, tab, rtol, atol):
    """Starting step (Hairer, Nørsett & Wanner I, II.4): one extra drift evaluation."""
    y0, f0 = primal(Y0), primal(K0)
    sc = atol + rtol * jnp.abs(y0)
    d0, d1 = _rms(y0 / sc), _rms(f0 / sc)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6 * jnp.maximum(span, 1.0), 0.01 * d0 / jnp.maximum(d1, 1e-300))
    h0 = jnp.minimum(h0, span)
    y1 = y0 + h0 * f0
    f1 = primal(rhs(jax.tree.map(lambda a, k: a + h0 * k, Y0, K0), t0 + h0))
    d2 = _rms((f1 - f0) / sc) / h0
    dm = jnp.maximum(d1, d2)
    h1 = jnp.where(
        dm <= 1e-15,
        jnp.maximum(1e-6 * jnp.maximum(span, 1.0), h0 * 1e-3),
        (0.01 / jnp.maximum(dm, 1e-300)) ** (1.0 / tab.order),
    )
    h = jnp.minimum(jnp.minimum(100 * h0, h1), span)
    return jnp.where(jnp.isfinite(h) & (h > 0) & jnp.all(jnp.isfinite(y1)), h, 1e-6 * jnp.maximum(span, 1.0))


_BETA, _SAFETY, _FACMIN, _FACMAX = 0.04, 0.9, 0.2, 10.0


def _rk_solve(rhs, primal, Y0, times, tab: Tableau, rtol, atol, max_steps, dt0):
    """Integrate ``dY/dt = rhs(Y, t)`` from ``times[0]``; return ``(Y at times, ok, steps, rejected)``.

    One ``lax.while_loop`` per observation interval (a ``lax.scan`` over intervals); the step
    size carries over between intervals; the last step of an interval ends on its time.
    """
    dtype = times.dtype
    t0 = times[0]
    span = times[-1] - t0
    K0 = rhs(Y0, t0)
    h = _initial_step(rhs, primal, Y0, K0, t0, span, tab, rtol, atol) if dt0 is None else jnp.asarray(dt0, dtype)
    alpha, beta = 1.0 / tab.order - 0.75 * _BETA, _BETA
    tiny = 16 * jnp.finfo(dtype).eps

    def interval(carry, t_end):
        def cond(c):
            t, _, _, _, _, n, _, ok = c
            return ok & (t < t_end) & (n < max_steps)

        def body(c):
            t, Y, K, h, errp, n, nrej, ok = c
            rem = t_end - t
            land = h >= rem
            hh = jnp.where(land, rem, jnp.where(h * 2 > rem, rem / 2, h))  # no sliver before t_end
            Yn, Ye, Kn = rk_step(rhs, Y, K, t, hh, tab)
            y, yn, ye = primal(Y), primal(Yn), primal(Ye)
            err = _rms(ye / (atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(yn))))
            finite = jnp.all(jnp.isfinite(yn)) & jnp.isfinite(err)
            acc = finite & (err <= 1.0)
            err = jnp.maximum(err, 1e-10)
            fac = jnp.clip(_SAFETY * err ** (-alpha) * errp**beta, _FACMIN, jnp.where(acc, _FACMAX, 1.0))
            hnew = hh * jnp.where(finite, fac, _FACMIN)
            hnew = jnp.where(acc & (hh < h), jnp.maximum(hnew, h), hnew)  # a shortened step keeps h
            keep = lambda a, b: jax.tree.map(lambda u, v: jnp.where(acc, u, v), a, b)  # noqa: E731
            t_new = jnp.where(acc, jnp.where(land, t_end, t + hh), t)
            ok = ok & (hnew > tiny * jnp.maximum(jnp.abs(t), jnp.abs(span)))
            return (
                t_new,
                keep(Yn, Y),
                keep(Kn, K),
                hnew,
                jnp.where(acc & (hh == h), err, errp),
                n + 1,
                nrej + (~acc).astype(n.dtype),
                ok,
            )

        t, Y, K, h, errp, n, nrej, ok = jax.lax.while_loop(cond, body, carry)
        ok = ok & (t >= t_end)
        return (t, Y, K, h, errp, n, nrej, ok), Y

    zero = jnp.zeros((), jnp.int32)
    carry = (t0, Y0, K0, h, jnp.ones((), dtype), zero, zero, jnp.asarray(True))
    carry, Ys = jax.lax.scan(interval, carry, times[1:])
    Ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), Y0, Ys)
    return Ys, carry[-1], carry[5], carry[6]


def _float0(x):
    return np.zeros(jnp.shape(x), dtype=jax.dtypes.float0)


def _make_rk_solver(drift, tab, rtol, atol, max_steps, dt0):
    """``solve(theta, x0, times, consts) -> (xs, ok, steps, rejected)`` with the fused-sensitivity JVP."""

    @jax.custom_jvp
    def solve(theta, x0, times, consts):
        rhs = lambda y, t: drift(y, t, theta, consts)  # noqa: E731
        return _rk_solve(rhs, lambda Y: Y, x0, times, tab, rtol, atol, max_steps, dt0)

    def solve_jvp(primals, tangents):
        theta, x0, times, consts = primals
        dtheta, dx0, dtimes, dconsts = tangents
        d = x0.shape[0]
        # differentiated parameter-like inputs: theta leaves and closed-over float values
        is_zero = lambda v: isinstance(v, SymbolicZero)  # noqa: E731
        pt = [
            (x, dx)
            for x, dx in zip(jax.tree.leaves(theta), jax.tree.leaves(dtheta, is_leaf=is_zero))
            if not is_zero(dx)
        ]
        pc = [(i, x, dx) for i, (x, dx) in enumerate(zip(consts, dconsts)) if not is_zero(dx)]
        q, unravel_q = ravel_pytree(([x for x, _ in pt], [x for _, x, _ in pc]))
        dq, _ = ravel_pytree(([dx for _, dx in pt], [dx for _, _, dx in pc]))
        nq, with_x0 = q.shape[0], not is_zero(dx0)
        n = nq + (d if with_x0 else 0)
        if n == 0 and is_zero(dtimes):
            out = solve(theta, x0, times, consts)
            return out, (jnp.zeros_like(out[0]),) + tuple(_float0(o) for o in out[1:])

        def fq(y, t, qq):  # drift with the differentiated inputs replaced by qq
            lt, lc = unravel_q(qq)
            leaves, it = jax.tree.leaves(theta), iter(lt)
            th_leaves = [
                next(it) if not is_zero(dx) else x for x, dx in zip(leaves, jax.tree.leaves(dtheta, is_leaf=is_zero))
            ]
            th = jax.tree.unflatten(jax.tree.structure(theta), th_leaves)
            cs, it = list(consts), iter(lc)
            for i, _, _ in pc:
                cs[i] = next(it)
            return drift(y, t, th, tuple(cs))

        dtype = x0.dtype
        E = jnp.eye(nq, n, dtype=q.dtype)  # parameter part of each direction
        S0 = jnp.zeros((d, n), dtype).at[:, nq:].set(jnp.eye(d, dtype=dtype)) if with_x0 else jnp.zeros((d, n), dtype)

        def rhs(Y, t):
            y, S = Y
            jv = lambda s, e: jax.jvp(lambda yy, qq: fq(yy, t, qq), (y, q), (s, e))  # noqa: E731
            return jax.vmap(jv, in_axes=(1, 1), out_axes=(None, 1))(S, E)

        (xs, S), ok, steps, rej = _rk_solve(rhs, lambda Y: Y[0], (x0, S0), times, tab, rtol, atol, max_steps, dt0)
        S = jnp.where(jnp.isfinite(S), S, 0.0)
        dxs = jnp.zeros_like(xs)
        if nq:
            dxs = dxs + S[..., :nq] @ dq.astype(dtype)
        if with_x0:
            dxs = dxs + S[..., nq:] @ dx0
        if not is_zero(dtimes):
            fs = jax.vmap(lambda y, t: drift(y, t, theta, consts))(xs, times)
            fs = jnp.where(jnp.isfinite(fs), fs, 0.0)
            # x(t_0) = x0 is given: d x(t_i)/d t_i = f(x(t_i)), d x(t_i)/d t_0 = -Phi(t_i, t_0) f(x0)
            dxs = dxs.at[1:].add(fs[1:] * dtimes[1:, None])
            if with_x0:
                dxs = dxs.at[1:].add(-(S[1:, :, nq:] @ fs[0]) * dtimes[0])
            else:  # Phi(t_i, t_0) needs the x0 columns: one more forward-mode pass
                phi = jax.jacfwd(lambda z: solve(theta, z, times, consts)[0])(x0)
                dxs = dxs.at[1:].add(-(phi[1:] @ fs[0]) * dtimes[0])
        return (xs, ok, steps, rej), (dxs, _float0(ok), _float0(steps), _float0(rej))

    # the rule's float0 tangents of the integer outputs are not in jax's annotation of defjvp
    solve.defjvp(solve_jvp, symbolic_zeros=True)  # pyright: ignore[reportArgumentType]
    return solve


def _solve_diffrax(drift, theta, x0, times, solver, rtol, atol, max_steps, adjoint, dt0) -> tuple[jax.Array, ...]:
    import diffrax

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, x, th: drift(x, t, th)),
        solver,
        times[0],
        times[-1],
        dt0,
        x0,
        args=theta,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
        adjoint=adjoint,
    )
    ok = sol.result == diffrax.RESULTS.successful
    # SaveAt(ts=times) always saves: ys is never None
    return sol.ys, ok, sol.stats["num_steps"], sol.stats["num_rejected_steps"]  # pyright: ignore[reportReturnType]


def _solve_diffrax_forward(drift, theta, x0, times, solver, rtol, atol, max_steps, dt0):
    """diffrax solve whose reverse-mode gradient is one ``jacfwd`` pass (``diffrax.ForwardMode``)
    over ``theta``, the float values the drift closes over, and ``x0``; the save times get the
    exact ``dx(t_i)/dt_i = f(x(t_i))``, ``dx(t_i)/dt_0 = -S_{x0}(t_i) f(x_0)``."""
    import diffrax

    conv, consts = jax.closure_convert(lambda x, t, th: drift(x, t, th), x0, jnp.zeros((), x0.dtype), theta)
    flat, unravel = ravel_pytree((theta, tuple(consts)))
    n = flat.shape[0]

    def rhs(x, t, args):
        th, cs = args
        return conv(x, t, th, *cs)

    def solve_flat(p, times):
        return _solve_diffrax(
            rhs, unravel(p[:n]), p[n:], times, solver, rtol, atol, max_steps, diffrax.ForwardMode(), dt0
        )

    @jax.custom_vjp
    def f(p, times):
        return solve_flat(p, times)

    def f_fwd(p, times):
        basis = jnp.eye(p.shape[0], dtype=p.dtype)

        def jvp(v):
            out, (dys, *_) = jax.jvp(lambda q: solve_flat(q, times), (p,), (v,))
            return out, dys

        out, jac = jax.vmap(jvp, out_axes=(None, -1))(basis)
        fs = jax.vmap(lambda y, t: rhs(y, t, unravel(p[:n])))(out[0], times)
        return out, (jnp.where(jnp.isfinite(jac), jac, 0.0), jnp.where(jnp.isfinite(fs), fs, 0.0))

    def f_bwd(res, g):
        jac, fs = res
        gy = jnp.where(jnp.isfinite(g[0]), g[0], 0.0)
        gt = jnp.sum(gy * fs, axis=-1).at[0].set(0.0)
        gt = gt.at[0].add(-jnp.einsum("ti,tij,j->", gy[1:], jac[1:, :, n:], fs[0]))
        return jnp.tensordot(gy, jac, axes=gy.ndim), gt

    f.defvjp(f_fwd, f_bwd)
    return f(jnp.concatenate([flat, x0.astype(flat.dtype) if n else x0]), times)


@overload
def solve_ode(
    drift: Callable,
    x0: ArrayLike,
    times: ArrayLike,
    theta: Any = None,
    *,
    backend: str = "fused_rk",
    solver=None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int = 1000,
    dt0: float | None = None,
    sensitivity: str = "forward",
    positive: bool = False,
    count_failures: bool = True,
    return_stats: Literal[False] = False,
) -> tuple[jax.Array, jax.Array]: ...


@overload
def solve_ode(
    drift: Callable,
    x0: ArrayLike,
    times: ArrayLike,
    theta: Any = None,
    *,
    backend: str = "fused_rk",
    solver=None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int = 1000,
    dt0: float | None = None,
    sensitivity: str = "forward",
    positive: bool = False,
    count_failures: bool = True,
    return_stats: Literal[True],
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]: ...


def solve_ode(
    drift: Callable,
    x0: ArrayLike,
    times: ArrayLike,
    theta: Any = None,
    *,
    backend: str = "fused_rk",
    solver=None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int = 1000,
    dt0: float | None = None,
    sensitivity: str = "forward",
    positive: bool = False,
    count_failures: bool = True,
    return_stats: bool = False,
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Solve ``dx/dt = drift(x, t[, theta])``, ``x(times[0]) = x0``; return ``(xs (T, d), ok ())``.

    Args:
        drift: ``(x (d,), t ()) -> (d,)``, or ``(x, t, theta) -> (d,)`` when ``theta`` is
            given. Pass differentiable parameters through ``theta``; traced values the drift
            closes over are differentiated correctly too (extra sensitivity columns).
        x0: (d,) initial state at ``times[0]`` (differentiable).
        times: (T,) strictly increasing save times (the first is the initial time;
            differentiable).
        theta: parameter pytree (differentiable), or ``None``.
        backend: ``"fused_rk"`` (probdyn's embedded RK loop with fused forward sensitivities;
            module docstring) or ``"diffrax"`` (``diffrax.diffeqsolve``, PID controller).
        solver: a diffrax solver (default ``Tsit5()``). ``"fused_rk"`` takes explicit embedded
            pairs (``Tsit5``, ``Dopri5``, ``Dopri8``, ``Bosh3``, ...); ``"diffrax"`` any solver.
        rtol, atol: tolerances of the step-size control (on the state, not the sensitivities).
        max_steps: limit on attempted steps; reaching it is a *failure* (``ok = False``), not
            an exception.
        dt0: first step (default: the starting-step heuristic).
        sensitivity: ``"forward"`` (``"fused_rk"``: fused forward sensitivities; ``"diffrax"``:
            ``diffrax.ForwardMode``) or ``"reverse"`` (``"diffrax"`` only:
            ``RecursiveCheckpointAdjoint``).
        positive: also treat a non-positive state as a failure (population models).
        count_failures: tally failures in :data:`solver_failures` (host callback on failure only).
        return_stats: also return ``{"num_steps": (), "num_rejected": ()}`` (attempted and
            rejected steps).

    Returns:
        ``xs`` — the solution where ``ok``, else ones (finite placeholders so that downstream
        densities stay finite; combine with ``ok`` to reject); ``ok`` — bool scalar; and the
        stats dict when ``return_stats``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if theta is None:
        theta, fn = (), lambda x, t, th: drift(x, t)
    else:
        fn = drift
    return _solve(
        fn,
        theta,
        x0,
        times,
        backend,
        solver,
        rtol,
        atol,
        max_steps,
        dt0,
        sensitivity,
        positive,
        count_failures,
        return_stats,
    )


def _solve(
    drift,
    theta,
    x0,
    times,
    backend,
    solver,
    rtol,
    atol,
    max_steps,
    dt0,
    sensitivity,
    positive,
    count_failures,
    return_stats,
):
    import diffrax

    if sensitivity not in ("forward", "reverse"):
        raise ValueError(f"sensitivity must be 'forward' or 'reverse', got {sensitivity!r}")
    x0 = jnp.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"x0 must have shape (d,), got {x0.shape}")
    out = jax.eval_shape(lambda x, th: drift(x, jnp.zeros((), x.dtype), th), x0, theta)
    if tuple(out.shape) != x0.shape:
        raise ValueError(f"drift(x, t, theta) must return shape {x0.shape}, got {tuple(out.shape)}")
    times = jnp.asarray(times)
    if times.ndim != 1 or times.shape[0] < 1:
        raise ValueError(f"times must have shape (T,) with T >= 1, got {times.shape}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    dtype = jnp.result_type(x0.dtype, times.dtype, float)
    x0, times = x0.astype(dtype), times.astype(dtype)
    solver = diffrax.Tsit5() if solver is None else solver
    tab = None
    if backend == "fused_rk":
        if sensitivity != "forward":
            raise ValueError(
                "backend='fused_rk' fuses forward sensitivities into the solve; for "
                "sensitivity='reverse' use backend='diffrax'"
            )
        tab = explicit_tableau(solver)
        if tab is None:
            raise ValueError(
                f"backend='fused_rk' needs an explicit embedded Runge-Kutta pair (Tsit5, Dopri5, "
                f"Dopri8, Bosh3, ...), got {type(solver).__name__}; use backend='diffrax'"
            )

    def run(theta, x0, times):
        if tab is not None:
            # closed-over traced values become explicit inputs (so that they are differentiated)
            conv, consts = jax.closure_convert(lambda x, t, th: drift(x, t, th), x0, jnp.zeros((), dtype), theta)
            solve = _make_rk_solver(lambda x, t, th, cs: conv(x, t, th, *cs), tab, rtol, atol, int(max_steps), dt0)
            ys, ok, steps, rej = solve(theta, x0, times, tuple(consts))
        elif sensitivity == "reverse":
            ys, ok, steps, rej = _solve_diffrax(
                drift, theta, x0, times, solver, rtol, atol, int(max_steps), diffrax.RecursiveCheckpointAdjoint(), dt0
            )
        else:
            ys, ok, steps, rej = _solve_diffrax_forward(
                drift, theta, x0, times, solver, rtol, atol, int(max_steps), dt0
            )
        good = ok & jnp.all(jnp.isfinite(ys))
        if positive:
            good = good & jnp.all(ys > 0)
        if count_failures:
            _report_failures(good)
        ys = jnp.where(good, ys, jnp.ones_like(ys))
        return ys, good, steps, rej

    # one compiled program also when called eagerly (op-by-op dispatch of the loop set-up is slow)
    ys, good, steps, rej = jax.jit(run)(theta, x0, times)
    if return_stats:
        return ys, good, {"num_steps": steps, "num_rejected": rej}
    return ys, good
