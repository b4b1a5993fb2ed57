"""Continuous-discrete EKF on irregular times: probdyn against dynestyx, at matched accuracy.

The model: a stochastic Lotka–Volterra system in log-populations,
``du = (a - b e^v - s^2/2) dt + s dW1``, ``dv = (-c + d e^u - s^2/2) dt + s dW2`` with
``(a, b, c, d) = (1, 0.1, 1.5, 0.075)``, ``s = 0.1``, observed with noise sd 0.1 at T
irregular times whose gaps are log-uniform on [2e-4, 1.05] (four orders of magnitude),
``x(t_0) ~ N(log(10, 5), 0.1 I)``. Data simulated by Euler–Maruyama with step 1e-3.

Contenders, in one process (both libraries in one Python >= 3.12 environment):

  probdyn   ``gaussian_filters.filter(method="ekf")``: an explicit Runge-Kutta method on the
            moment ODEs (Tsit5 by default, ``solver="rk4"`` the earlier one) with
            ``num_substeps=n`` equal steps per interval (the default of earlier versions was
            ten RK4 steps) or ``max_step=h`` (each interval ``ceil(dt / h)`` steps; the
            default plan when neither is given).
  dynestyx  ``dynestyx.Filter(ContinuousTimeEKFConfig(...))`` around ``dsx.sample``, log
            density by ``numpyro.infer.util.log_density`` (cd-dynamax backend, diffrax
            Dopri5 with a constant step ``diffeqsolve_dt0``; its default is 0.01).

Per setting: the log-likelihood's error against the library's own converged value
(probdyn ``max_step=1e-4``, dynestyx ``dt0=2.5e-4``; the two converged values differ by the
fixed 1e-9 that cd-dynamax adds to the innovation covariance), the RK steps of one
evaluation, compile time, and medians of value and value+gradient times (jit, after
warm-up). ``--nuts`` adds numpyro NUTS on (a, b, c, d) (log-normal priors, sd 0.3 around
the truth; one chain started at the prior median; the same warmup/samples/seed for both;
sampling timed apart from warmup and compilation) for each library's fastest setting within ``--target`` relative
error: min bulk ESS over the four parameters per second of sampling, and the posterior
means' difference in posterior sd. Without dynestyx its rows are skipped with a message.

    python benchmarks/peers.py                      # the accuracy / time sweep
    python benchmarks/peers.py --nuts               # plus NUTS (about 2 minutes more)
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC, NUTS, init_to_median  # noqa: E402
from numpyro.infer.util import log_density  # noqa: E402

from probdyn.inference import gaussian_filters as gf  # noqa: E402
from probdyn.inference.gaussian_filters import continuous as cd  # noqa: E402
from probdyn.sde import SDE  # noqa: E402

THETA = np.array([1.0, 0.1, 1.5, 0.075])
SIGMA = 0.1
X0 = np.log([10.0, 5.0])


def problem(T: int, seed: int = 0):
    """(times (T,), y (T, 2)) of the module docstring's model."""
    rng = np.random.default_rng(seed)
    times = np.concatenate([[0.0], np.cumsum(np.exp(rng.uniform(np.log(2e-4), np.log(1.05), T - 1)))])
    a, b, c, d = THETA
    x, xs, t = X0.copy(), [], 0.0
    for tk in times:
        while t < tk - 1e-12:
            h = min(1e-3, tk - t)
            x = (
                x
                + np.array([a - b * np.exp(x[1]) - SIGMA**2 / 2, -c + d * np.exp(x[0]) - SIGMA**2 / 2]) * h
                + SIGMA * np.sqrt(h) * rng.normal(size=2)
            )
            t += h
        xs.append(x.copy())
    return times, np.array(xs) + 0.1 * rng.normal(size=(T, 2))


def drift_fn(theta, x):
    a, b, c, d = theta
    return jnp.stack([a - b * jnp.exp(x[1]) - SIGMA**2 / 2, -c + d * jnp.exp(x[0]) - SIGMA**2 / 2])


class Drift(eqx.Module):
    theta: jnp.ndarray

    def __call__(self, x, t):
        return drift_fn(self.theta, x)


def median_ms(f, *args, repeats: int = 20) -> float:
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def compile_s(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------
# the two libraries' log-likelihoods
# ----------------------------------------------------------------------------------
def probdyn_ll(times, y, **kw):
    o = gf.LinearGaussian(jnp.eye(2), 0.01 * jnp.eye(2))
    m0, P0 = jnp.asarray(X0), 0.1 * jnp.eye(2)

    def ll(theta):
        sde = SDE(Drift(theta), SIGMA * jnp.ones(2), 2)
        return gf.filter(sde, o, times, y, m0, P0, method="ekf", **kw).log_likelihood

    return ll


def probdyn_steps(times, kw) -> int:
    if "num_substeps" in kw:
        return kw["num_substeps"] * (len(times) - 1)
    h = kw.get("max_step", None) or cd.default_max_step(times, cd.plan_costs("ekf", solver=kw.get("solver")))
    return int(cd.step_counts(times, h).sum())


def dynestyx_ll(times, y, dt0):
    import diffrax
    import dynestyx as dsx
    from dynestyx.inference.configs.filter import ContinuousTimeEKFConfig

    cfg = ContinuousTimeEKFConfig(
        diffeqsolve_dt0=dt0,
        diffeqsolve_max_steps=int(1.1 / dt0) + 16,
        diffeqsolve_kwargs=dict(solver=diffrax.Dopri5(), stepsize_controller=diffrax.ConstantStepSize()),
    )
    t, yy = jnp.asarray(times), jnp.asarray(y)

    def model(theta):
        dyn = dsx.DynamicalModel(
            initial_condition=dist.MultivariateNormal(jnp.asarray(X0), 0.1 * jnp.eye(2)),
            state_evolution=dsx.ContinuousTimeStateEvolution(
                drift=lambda x, u, tt: drift_fn(theta, x), diffusion=dsx.FullDiffusion(SIGMA * jnp.eye(2))
            ),
            observation_model=dsx.LinearGaussianObservation(H=jnp.eye(2), R=0.01 * jnp.eye(2)),
        )
        with dsx.Filter(filter_config=cfg):
            dsx.sample("f", dyn, obs_times=t, obs_values=yy)

    return (lambda theta: log_density(model, (theta,), {}, {})[0]), model


def dynestyx_steps(times, dt0) -> int:
    return int(np.sum(np.ceil(np.diff(times) / dt0 - 1e-9)))


# ----------------------------------------------------------------------------------
def sweep(name, make, settings, reference, times, steps_of, repeats):
    theta = jnp.asarray(THETA)
    ref = float(jax.jit(make(reference))(theta))
    rows = []
    for label, setting in settings:
        ll = make(setting)
        f, g = jax.jit(ll), jax.jit(jax.value_and_grad(ll))
        comp = compile_s(jax.value_and_grad(ll), theta)
        err = abs(float(f(theta)) - ref) / abs(ref)
        rows.append(
            dict(
                lib=name,
                setting=label,
                steps=steps_of(setting),
                err=err,
                compile=comp,
                value=median_ms(f, theta, repeats=repeats),
                vg=median_ms(g, theta, repeats=repeats),
                kw=setting,
            )
        )
        r = rows[-1]
        print(
            f"| {name} | {label} | {r['steps']} | {r['err']:.1e} | {r['value']:.2f} | {r['vg']:.2f} | "
            f"{r['compile']:.2f} |",
            flush=True,
        )
    return ref, rows


def nuts(name, model_fn, warmup, samples, seed):
    """numpyro NUTS on theta; (ESS/s, means, sds, sampling seconds)."""
    # init_to_median (the prior median is the truth): numpyro's uniform initialisation sends
    # dynestyx's filter to NaN moments, which its distribution validation turns into an error
    mcmc = MCMC(
        NUTS(model_fn, init_strategy=init_to_median),
        num_warmup=warmup,
        num_samples=samples,
        num_chains=1,
        progress_bar=False,
    )
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    mcmc.warmup(key)
    t1 = time.perf_counter()
    mcmc.run(mcmc.post_warmup_state.rng_key)
    jax.block_until_ready(mcmc.get_samples())
    t2 = time.perf_counter()
    th = np.asarray(mcmc.get_samples()["theta"])
    ess = numpyro.diagnostics.effective_sample_size(th[None])
    div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    print(
        f"| {name} | {t1 - t0:.1f} | {t2 - t1:.1f} | {ess.min():.0f} | {ess.min() / (t2 - t1):.1f} | {div} |",
        flush=True,
    )
    return ess.min() / (t2 - t1), th.mean(0), th.std(0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=200)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--nuts", action="store_true")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--target", type=float, default=1e-7, help="relative log-likelihood error for NUTS settings")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    times, y = problem(args.T)
    gaps = np.diff(times)
    print(
        f"# {platform.node()} {time.strftime('%Y-%m-%d')}, jax {jax.__version__}, numpyro {numpyro.__version__}, "
        f"T = {args.T}, gaps {gaps.min():.1e}..{gaps.max():.2f}, span {times[-1]:.1f}"
    )
    print("\n| library | setting | RK steps | rel. error | value ms | value+grad ms | compile s |")
    print("|---|---|---|---|---|---|---|")
    settings = [
        ("RK4, num_substeps=10 (old default)", dict(num_substeps=10, solver="rk4")),
        ("RK4, max_step=0.02", dict(max_step=0.02, solver="rk4")),
        ("default (Tsit5)", {}),
        ("Tsit5, max_step=0.1", dict(max_step=0.1)),
        ("Tsit5, max_step=0.05", dict(max_step=0.05)),
        ("Tsit5, max_step=0.025", dict(max_step=0.025)),
    ]
    _, rows = sweep(
        "probdyn",
        lambda kw: probdyn_ll(times, y, **kw),
        settings,
        dict(max_step=1e-4),
        times,
        lambda kw: probdyn_steps(times, kw),
        args.repeats,
    )
    try:
        import dynestyx

        dx_version = dynestyx.__version__
    except ImportError:
        dx_version = None
        print("\n(dynestyx is not installed: its rows are skipped. It needs Python >= 3.12: pip install dynestyx)")
    if dx_version is not None:
        dts = [("dt0=0.04", 0.04), ("dt0=0.02", 0.02), ("dt0=0.01 (default)", 0.01), ("dt0=0.005", 0.005)]
        _, dx_rows = sweep(
            f"dynestyx {dx_version}",
            lambda dt: dynestyx_ll(times, y, dt)[0],
            dts,
            2.5e-4,
            times,
            lambda dt: dynestyx_steps(times, dt),
            args.repeats,
        )
        rows += dx_rows

    def best(lib):
        ok = [r for r in rows if r["lib"].startswith(lib) and r["err"] <= args.target]
        return min(ok, key=lambda r: r["vg"]) if ok else None

    bp, bd = best("probdyn"), best("dynestyx")
    if bp and bd:
        print(
            f"\nfastest within {args.target:.0e}: probdyn {bp['setting']} {bp['vg']:.2f} ms, dynestyx {bd['setting']} "
            f"{bd['vg']:.2f} ms: value+gradient ratio probdyn/dynestyx = {bp['vg'] / bd['vg']:.2f}"
        )
    if not args.nuts:
        return
    print(f"\nNUTS, 1 chain, {args.warmup} warmup + {args.samples} draws, seed {args.seed}")
    print("\n| library (setting) | warmup+compile s | sampling s | min ESS | ESS/s | divergences |")
    print("|---|---|---|---|---|---|")
    prior = dist.LogNormal(jnp.log(jnp.asarray(THETA)), 0.3).to_event(1)
    o = gf.LinearGaussian(jnp.eye(2), 0.01 * jnp.eye(2))
    kw = bp["kw"] if bp else {}

    def pd_model():
        theta = numpyro.sample("theta", prior)
        sde = SDE(Drift(theta), SIGMA * jnp.ones(2), 2)
        numpyro.sample(
            "y", gf.SDEFilterDistribution(sde, o, times, jnp.asarray(X0), 0.1 * jnp.eye(2), **kw), obs=jnp.asarray(y)
        )

    res = {
        "probdyn": nuts(
            f"probdyn ({bp['setting'] if bp else 'default'})", pd_model, args.warmup, args.samples, args.seed
        )
    }
    if dx_version is not None:
        dt0 = bd["kw"] if bd else 0.01
        _, dx_inner = dynestyx_ll(times, y, dt0)

        def dx_model():
            dx_inner(numpyro.sample("theta", prior))

        res["dynestyx"] = nuts(f"dynestyx (dt0={dt0})", dx_model, args.warmup, args.samples, args.seed)
        (ep, mp, sp), (ed, md, sd) = res["probdyn"], res["dynestyx"]
        print(
            f"\nESS/s ratio probdyn/dynestyx = {ep / ed:.2f}; posterior means differ by at most "
            f"{np.max(np.abs(mp - md) / np.maximum(sp, sd)):.2f} posterior sd (sampling noise of "
            f"{args.samples} draws: about {2 / np.sqrt(args.samples / 4):.2f})"
        )


if __name__ == "__main__":
    main()
