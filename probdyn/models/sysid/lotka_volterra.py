r"""The posteriordb Lotka–Volterra program (``hudson_lynx_hare-lotka_volterra``) and its drifts.

:func:`lotka_volterra` is the numpyro program of the Stan model, solved by
:func:`probdyn.sde.solve_ode` (failed solves become a ``-inf`` factor, a rejected proposal);
:data:`REFERENCE_POSTERIOR_LV` is posteriordb's reference posterior for it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from probdyn._checks import fix_lazy_numpyro
from probdyn.sde.ode import solve_ode

fix_lazy_numpyro()

__all__ = ["lotka_volterra", "lotka_volterra_drift", "lotka_volterra_log_drift", "REFERENCE_POSTERIOR_LV"]


def lotka_volterra_drift(z, t, theta):
    """``du/dt = (a - b v) u``, ``dv/dt = (-c + d u) v`` with ``theta = (a, b, c, d)``."""
    a, b, c, d = theta[0], theta[1], theta[2], theta[3]
    u, v = z[0], z[1]
    return jnp.stack([(a - b * v) * u, (-c + d * u) * v])


def lotka_volterra_log_drift(w, t, theta):
    """:func:`lotka_volterra_drift` in log-populations ``w = log z``: ``dw/dt = (a - b e^{w_2}, -c + d e^{w_1})``.

    Args:
        w: (2,) log-populations [log hare, log lynx]; t: time (unused); theta: (4,) ``(a, b, c, d)``.

    Returns:
        (2,) ``dw/dt``.
    """
    a, b, c, d = theta[0], theta[1], theta[2], theta[3]
    return jnp.stack([a - b * jnp.exp(w[1]), -c + d * jnp.exp(w[0])])


#: posteriordb reference posterior of ``hudson_lynx_hare-lotka_volterra`` (Stan, 10 chains x
#: 10 000 draws): means with Monte Carlo standard errors, and sds computed as
#: ``sqrt(mean_squared_value - mean**2)``. Source: github.com/stan-dev/posteriordb,
#: posterior_database/reference_posteriors/summary_statistics/{mean,mean_squared_value}/...
#: /hudson_lynx_hare-lotka_volterra.json.
REFERENCE_POSTERIOR_LV = {
    "names": ["theta[0]", "theta[1]", "theta[2]", "theta[3]", "z_init[0]", "z_init[1]", "sigma[0]", "sigma[1]"],
    "mean": [
        0.546864499783931,
        0.0277472877678081,
        0.800095360233122,
        0.0240859152534545,
        34.0352224770469,
        5.93589713368062,
        0.24805686320252,
        0.251016914583618,
    ],
    "mcse_mean": [
        0.00062626907415417,
        4.11604266143508e-05,
        0.000884603225898987,
        3.50047668143892e-05,
        0.0293082761729642,
        0.00533872103038814,
        0.000439337727695207,
        0.000439525598676463,
    ],
    "mean_squared_value": [
        0.3030362900,
        0.0007871719,
        0.6481388153,
        0.0005925775,
        1166.9038171313,
        35.5163321009,
        0.0634036795,
        0.0649094189,
    ],
}
REFERENCE_POSTERIOR_LV["sd"] = [
    float(np.sqrt(m2 - m**2))
    for m, m2 in zip(REFERENCE_POSTERIOR_LV["mean"], REFERENCE_POSTERIOR_LV["mean_squared_value"])
]


def lotka_volterra(
    ts,
    y_init,
    y=None,
    *,
    solver=None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int = 1000,
    sensitivity: str = "forward",
    log_space: bool = True,
    backend: str = "fused_rk",
):
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
        solver, max_steps, sensitivity, backend: see :func:`probdyn.sde.solve_ode`.
        rtol, atol: solver tolerances. With ``log_space=True`` the step error of the
            log-populations, i.e. the relative error of the populations, is held below
            ``rtol`` (``atol`` is not used); with ``log_space=False`` the populations are
            controlled with ``atol + rtol |z|`` as in the Stan program.
        log_space: integrate the same ODE in the log-populations ``w = log z``,
            ``dw/dt = (alpha - beta e^{w_2}, -gamma + delta e^{w_1})`` (exactly equivalent), so
            that the populations keep their *relative* accuracy however small they become.
            In ``z`` the absolute tolerance swamps a collapsing population, ``log z`` — which
            the likelihood needs — is then numerical noise, and NUTS chains started by the
            default initialisation in such regions freeze there with maximal trees (seen on
            2 of 3 seeds of 4 chains; none in log space). The likelihood uses ``w`` directly.

    Sites ``theta`` (4,), ``z_init`` (2,), ``sigma`` (2,), observed ``y_init``, ``y``, the
    deterministic ``z`` (N, 2); the factor ``ode_ok`` is 0 for a successful solve and
    ``-inf`` (rejection) otherwise.
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
    if log_space:
        logz, ok = solve_ode(
            lotka_volterra_log_drift,
            jnp.log(z_init),
            times,
            theta,
            backend=backend,
            solver=solver,
            rtol=0.0,
            atol=rtol,
            max_steps=max_steps,
            sensitivity=sensitivity,
        )
    else:
        z, ok = solve_ode(
            lotka_volterra_drift,
            z_init,
            times,
            theta,
            backend=backend,
            solver=solver,
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
            sensitivity=sensitivity,
            positive=True,
        )
        logz = jnp.log(z)
    numpyro.factor("ode_ok", jnp.where(ok, 0.0, -jnp.inf))
    numpyro.deterministic("z", jnp.exp(logz[1:]))
    numpyro.sample("y_init", dist.LogNormal(jnp.log(z_init), sigma), obs=y_init)
    numpyro.sample("y", dist.LogNormal(logz[1:], sigma).to_event(1), obs=y)
