r"""Robust, differentiable ODE solves for inference, and the posteriordb Lotka–Volterra program.

:func:`ode_solve` is the ODE workhorse of :mod:`probdyn.models.sysid`:

* adaptive diffrax solve (Tsit5 by default, PID step control) saved at the observation times;
* **never raises** during inference: a failed solve (step limit reached, stiff region,
  non-finite or, optionally, non-positive state) returns ``ok = False`` and finite
  placeholder states, so a numpyro program can turn it into ``log density = -inf`` (the
  proposal is rejected, not the run aborted); failures are counted in :data:`solver_failures`;
* gradients by **forward-mode sensitivities** (``sensitivity="forward"``, default): a
  ``jax.custom_vjp`` whose forward pass propagates the Jacobian of the solution w.r.t. the
  parameters and initial state alongside the solution (``jax.jacfwd`` through
  ``diffrax.ForwardMode``) and whose backward pass is one matrix product. For a handful of
  parameters this is much cheaper than reverse mode through a checkpointed while loop;
  ``sensitivity="reverse"`` uses diffrax's ``RecursiveCheckpointAdjoint`` instead.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree

__all__ = ["ode_solve", "solver_failures", "SolverFailureCounter", "lotka_volterra", "lotka_volterra_drift",
           "REFERENCE_POSTERIOR_LV"]


class SolverFailureCounter:
    """Host-side tally of failed ODE solves seen during inference (``reset()`` before a run).

    ``evaluations`` counts solves, ``failures`` those that failed (each is a rejected
    proposal / an infinite potential, never an exception).
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.evaluations = 0
        self.failures = 0

    def _record(self, ok) -> None:
        ok = np.asarray(ok)
        self.evaluations += int(ok.size)
        self.failures += int(ok.size - ok.sum())

    def __repr__(self) -> str:
        return f"SolverFailureCounter(failures={self.failures}, evaluations={self.evaluations})"


solver_failures = SolverFailureCounter()


def _solve_raw(drift, theta, x0, times, solver, rtol, atol, max_steps, adjoint, dt0):
    import diffrax

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, x, th: drift(x, t, th)), solver, times[0], times[-1], dt0, x0, args=theta,
        saveat=diffrax.SaveAt(ts=times), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, throw=False, adjoint=adjoint)
    return sol.ys, sol.result == diffrax.RESULTS.successful


def ode_solve(
    drift: Callable[[jax.Array, jax.Array, Any], jax.Array],
    theta: Any,
    x0: jax.Array,
    times: jax.Array,
    solver=None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int = 1000,
    dt0: float | None = None,
    sensitivity: str = "forward",
    positive: bool = False,
    count_failures: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Solve ``dx/dt = drift(x, t, theta)``, ``x(times[0]) = x0``; return ``(xs (T, d), ok ())``.

    Args:
        drift: ``(x (d,), t (), theta) -> (d,)``.
        theta: parameter pytree (differentiable).
        x0: (d,) initial state at ``times[0]`` (differentiable).
        times: (T,) strictly increasing save times (the first is the initial time).
        solver: a diffrax solver (default ``Tsit5()``); rtol/atol: PID tolerances.
        max_steps: step limit; reaching it is a *failure* (``ok = False``), not an exception.
        sensitivity: ``"forward"`` (forward-mode sensitivities, custom VJP) or ``"reverse"``.
        positive: also treat a non-positive state as a failure (population models).
        count_failures: tally failures in :data:`solver_failures` (host callback).

    Returns:
        ``xs`` — the solution where ``ok``, else ones (finite placeholders so that downstream
        densities stay finite; combine with ``ok`` to reject); ``ok`` — bool scalar.
    """
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
    solver = diffrax.Tsit5() if solver is None else solver

    if sensitivity == "reverse":
        ys, ok = _solve_raw(drift, theta, x0, times, solver, rtol, atol, max_steps,
                            diffrax.RecursiveCheckpointAdjoint(), dt0)
    else:
        flat, unravel = ravel_pytree(theta)
        n = flat.shape[0]

        def solve_flat(p, times):
            ys, ok = _solve_raw(drift, unravel(p[:n]), p[n:], times, solver, rtol, atol, max_steps,
                                diffrax.ForwardMode(), dt0)
            return ys, ok

        @jax.custom_vjp
        def f(p, times):
            return solve_flat(p, times)

        def f_fwd(p, times):
            def primal(q):
                ys, ok = solve_flat(q, times)
                return ys, ok

            ys, jac, ok = _value_and_jacfwd(primal, p)
            return (ys, ok), (jac, jnp.zeros_like(times))

        def f_bwd(res, g):
            jac, zt = res
            gy = jnp.where(jnp.isfinite(g[0]), g[0], 0.0)
            gp = jnp.tensordot(gy, jnp.where(jnp.isfinite(jac), jac, 0.0), axes=gy.ndim)
            return gp, zt

        f.defvjp(f_fwd, f_bwd)
        p = jnp.concatenate([flat, x0.astype(flat.dtype) if n else x0])
        ys, ok = f(p, times)
    good = ok & jnp.all(jnp.isfinite(ys))
    if positive:
        good = good & jnp.all(ys > 0)
    if count_failures:
        jax.debug.callback(solver_failures._record, good)
    return jnp.where(good, ys, jnp.ones_like(ys)), good


def _value_and_jacfwd(fn, p):
    """``ys, d ys / d p, ok`` in one forward-mode pass (vmapped JVPs share the primal)."""
    basis = jnp.eye(p.shape[0], dtype=p.dtype)

    def jvp(v):
        (ys, ok), (dys, _) = jax.jvp(fn, (p,), (v,))
        return ys, ok, dys

    ys, ok, dys = jax.vmap(jvp, out_axes=(None, None, -1))(basis)
    return ys, dys, ok


# ----------------------------------------------------------------------------------
# The posteriordb Lotka–Volterra program (hudson_lynx_hare-lotka_volterra)
# ----------------------------------------------------------------------------------
def lotka_volterra_drift(z, t, theta):
    """``du/dt = (a - b v) u``, ``dv/dt = (-c + d u) v`` with ``theta = (a, b, c, d)``."""
    a, b, c, d = theta[0], theta[1], theta[2], theta[3]
    u, v = z[0], z[1]
    return jnp.stack([(a - b * v) * u, (-c + d * u) * v])


#: posteriordb reference posterior of ``hudson_lynx_hare-lotka_volterra`` (Stan, 10 chains x
#: 10 000 draws): means with Monte Carlo standard errors, and sds computed as
#: ``sqrt(mean_squared_value - mean**2)``. Source: github.com/stan-dev/posteriordb,
#: posterior_database/reference_posteriors/summary_statistics/{mean,mean_squared_value}/...
#: /hudson_lynx_hare-lotka_volterra.json.
REFERENCE_POSTERIOR_LV = {
    "names": ["theta[0]", "theta[1]", "theta[2]", "theta[3]", "z_init[0]", "z_init[1]", "sigma[0]", "sigma[1]"],
    "mean": [0.546864499783931, 0.0277472877678081, 0.800095360233122, 0.0240859152534545,
             34.0352224770469, 5.93589713368062, 0.24805686320252, 0.251016914583618],
    "mcse_mean": [0.00062626907415417, 4.11604266143508e-05, 0.000884603225898987, 3.50047668143892e-05,
                  0.0293082761729642, 0.00533872103038814, 0.000439337727695207, 0.000439525598676463],
    "mean_squared_value": [0.3030362900, 0.0007871719, 0.6481388153, 0.0005925775,
                           1166.9038171313, 35.5163321009, 0.0634036795, 0.0649094189],
}
REFERENCE_POSTERIOR_LV["sd"] = [float(np.sqrt(m2 - m**2)) for m, m2 in
                                zip(REFERENCE_POSTERIOR_LV["mean"], REFERENCE_POSTERIOR_LV["mean_squared_value"])]


def lotka_volterra(ts, y_init, y=None, *, solver=None, rtol: float = 1e-6, atol: float = 1e-6,
                   max_steps: int = 1000, sensitivity: str = "forward"):
    r"""The posteriordb ``lotka_volterra`` program for the Hudson's Bay lynx–hare data (numpyro).

    .. math::
        \dot u = (\alpha - \beta v) u,\ \dot v = (-\gamma + \delta u) v,\ z(0) = z_{init};\quad
        \alpha,\gamma \sim N^+(1, 0.5),\ \beta,\delta \sim N^+(0.05, 0.05),\
        \sigma_k \sim \mathrm{LogNormal}(-1, 1),\ z_{init,k} \sim \mathrm{LogNormal}(\log 10, 1),

    ``y_init[k] ~ LogNormal(log z_init[k], sigma[k])``, ``y[:, k] ~ LogNormal(log z(ts)[:, k], sigma[k])``.

    Args:
        ts: (N,) observation times (> 0, increasing; the initial state is at t = 0).
        y_init: (2,) observed [hare, lynx] at t = 0 (``None`` to sample it).
        y: (N, 2) observations (``None`` to sample them, prior/posterior predictive).
        solver, rtol, atol, max_steps, sensitivity: see :func:`ode_solve`.

    Sites ``theta`` (4,), ``z_init`` (2,), ``sigma`` (2,), observed ``y_init``, ``y``; the
    factor ``ode_ok`` is 0 for a successful solve and ``-inf`` (rejection) otherwise.
    """
    ts = jnp.asarray(ts)
    if ts.ndim != 1:
        raise ValueError(f"ts must be one-dimensional, got shape {ts.shape}")
    if y is not None and jnp.shape(y) != (ts.shape[0], 2):
        raise ValueError(f"y must have shape ({ts.shape[0]}, 2), got {jnp.shape(y)}")
    dtype = ts.dtype if jnp.issubdtype(ts.dtype, jnp.floating) else jnp.result_type(float)
    ts = ts.astype(dtype)
    loc = jnp.array([1.0, 0.05, 1.0, 0.05], dtype)
    scale = jnp.array([0.5, 0.05, 0.5, 0.05], dtype)
    theta = numpyro.sample("theta", dist.TruncatedNormal(loc, scale, low=0.0))
    z_init = numpyro.sample("z_init", dist.LogNormal(jnp.log(jnp.asarray(10.0, dtype)), 1.0).expand([2]))
    sigma = numpyro.sample("sigma", dist.LogNormal(jnp.asarray(-1.0, dtype), 1.0).expand([2]))
    times = jnp.concatenate([jnp.zeros((1,), dtype), ts])
    z, ok = ode_solve(lotka_volterra_drift, theta, z_init, times, solver=solver, rtol=rtol, atol=atol,
                      max_steps=max_steps, sensitivity=sensitivity, positive=True)
    numpyro.factor("ode_ok", jnp.where(ok, 0.0, -jnp.inf))
    numpyro.deterministic("z", z[1:])
    numpyro.sample("y_init", dist.LogNormal(jnp.log(z_init), sigma), obs=y_init)
    numpyro.sample("y", dist.LogNormal(jnp.log(z[1:]), sigma).to_event(1), obs=y)
