"""Deprecated path: the ODE solver moved to :mod:`probdyn.sde.ode` (one entry point,
:func:`probdyn.sde.solve_ode`) and the Lotka–Volterra program to
:mod:`probdyn.models.sysid.lotka_volterra`; this module re-exports both for one release."""

import warnings
from typing import Any

from probdyn.models.sysid.lotka_volterra import *  # noqa: F401,F403
from probdyn.sde.ode import *  # noqa: F401,F403
from probdyn.sde.ode import solve_ode

warnings.warn(
    "probdyn.models.sysid_ode is deprecated and will be removed in the next release; import "
    "probdyn.sde.ode (solve_ode) and probdyn.models.sysid.lotka_volterra instead",
    DeprecationWarning,
    stacklevel=2,
)


def ode_solve(
    drift,
    theta,
    x0,
    times,
    solver=None,
    rtol=1e-6,
    atol=1e-6,
    max_steps=1000,
    dt0=None,
    sensitivity="forward",
    positive=False,
    count_failures=True,
    return_stats=False,
):
    """Deprecated: ``probdyn.sde.solve_ode(drift, x0, times, theta, backend=...)``. As before, explicit
    embedded pairs with ``sensitivity="forward"`` run the fused RK backend, anything else diffrax."""
    warnings.warn(
        "ode_solve(drift, theta, x0, times) is deprecated; use probdyn.sde.solve_ode(drift, x0, "
        "times, theta, backend='fused_rk' | 'diffrax')",
        DeprecationWarning,
        stacklevel=2,
    )
    kw: dict[str, Any] = dict(
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        dt0=dt0,
        sensitivity=sensitivity,
        positive=positive,
        count_failures=count_failures,
        return_stats=return_stats,
    )
    if sensitivity == "forward":
        try:
            return solve_ode(drift, x0, times, theta, backend="fused_rk", **kw)
        except ValueError as e:  # not an explicit embedded pair: diffrax, as ode_solve did
            if "explicit embedded" not in str(e):
                raise
    return solve_ode(drift, x0, times, theta, backend="diffrax", **kw)
