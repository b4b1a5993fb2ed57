"""The ``probdyn`` command (also ``python -m probdyn``).

Sub-commands::

    probdyn compare   discrete- vs continuous-time models of one system (the main job)
    probdyn fit       fit a model to a CSV time series or an embedded dataset
    probdyn tutorials list the tutorials
    probdyn run NAME  run one tutorial and collect its figures and metrics

Wrong input exits with status 2 and a one-line explanation (``--debug`` shows the
traceback); nothing already on disk is overwritten without ``--force``.

Length: one concept (the command: parsing, I/O, the sub-commands' calls into the library),
kept in one module although it runs past 600 lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main", "CLIError", "read_series", "parse_kernel", "markdown_table"]

DATASETS = ("lynx_hare", "co2", "nile")
KERNELS = ("matern12", "matern32", "matern52", "sho", "periodic", "cosine", "constant")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------
def read_series(csv: str, time_col: str | None, columns: str | None, min_points: int = 5):
    """Read ``(times (T,), values (T, k), names)`` from a CSV with a header row.

    Times must be numeric, finite and strictly increasing; values may be empty/NaN (missing).
    """
    import numpy as np
    import pandas as pd

    path = Path(csv)
    if not path.exists():
        raise CLIError(f"file not found: {csv}")
    try:
        df = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot read {csv} as CSV: {e}") from None
    if df.shape[1] < 2:
        raise CLIError(f"{csv} needs a time column and at least one value column (found {list(df.columns)})")
    tc = time_col or str(df.columns[0])
    if tc not in df.columns:
        raise CLIError(f"unknown time column {tc!r}; columns are {list(df.columns)}")
    names = [c.strip() for c in columns.split(",")] if columns else [c for c in df.columns if c != tc]
    for c in names:
        if c not in df.columns:
            raise CLIError(f"unknown column {c!r}; columns are {list(df.columns)}")
    t = pd.to_numeric(df[tc], errors="coerce").to_numpy(float)
    if not np.all(np.isfinite(t)):
        bad = int(np.argmax(~np.isfinite(t)))
        raise CLIError(f"time column {tc!r} must be numeric and finite (row {bad + 2}: {df[tc].iloc[bad]!r})")
    if np.any(np.diff(t) <= 0):
        bad = int(np.argmax(np.diff(t) <= 0))
        raise CLIError(f"times must be strictly increasing (rows {bad + 2} and {bad + 3}: {t[bad]} then {t[bad + 1]})")
    vals = []
    for c in names:
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() & df[c].notna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise CLIError(f"column {c!r} has a non-numeric value at row {i + 2}: {df[c].iloc[i]!r}")
        vals.append(v.to_numpy(float))
    y = np.stack(vals, axis=1)
    if np.any(np.isinf(y)):
        raise CLIError("values must be finite (leave a cell empty for a missing value)")
    n_obs = int(np.sum(np.any(np.isfinite(y), axis=1)))
    if n_obs < min_points:
        raise CLIError(f"too few points: {n_obs} observed rows, need at least {min_points}")
    return t, y, names


def load_dataset(name: str):
    """Embedded datasets as ``(times, values (T, k), names)``."""
    import numpy as np

    if name == "lynx_hare":
        from probdyn.datasets import lynx_hare

        d = lynx_hare()
        t = np.concatenate([[0.0], np.asarray(d.ts, float)])
        y = np.concatenate([np.asarray(d.y_init, float)[None], np.asarray(d.y, float)])
        return t, y, ["hare", "lynx"]
    if name == "co2":
        import statsmodels.api as sm

        df = sm.datasets.co2.load_pandas().data
        t = 1958.0 + np.arange(len(df)) * 7.0 / 365.25
        return t, df["co2"].to_numpy(float)[:, None], ["co2"]
    if name == "nile":
        import statsmodels.api as sm

        df = sm.datasets.nile.load_pandas().data
        return df["year"].to_numpy(float), df["volume"].to_numpy(float)[:, None], ["volume"]
    raise CLIError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def markdown_table(df, floatfmt: str = ".4g") -> str:
    """A pandas DataFrame as a GitHub markdown table (index as the first column)."""

    def fmt(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    head = [str(df.index.name or "")] + [str(c) for c in df.columns]
    rows = [[fmt(i)] + [fmt(v) for v in r] for i, r in zip(df.index, df.itertuples(index=False))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _prepare_out(out: str, files: list[str], force: bool) -> Path:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    clash = [f for f in files if (p / f).exists()]
    if clash and not force:
        raise CLIError(f"{p / clash[0]} already exists; use --force to overwrite or choose another --out")
    p.mkdir(parents=True, exist_ok=True)
    return p


# ----------------------------------------------------------------------------------
# Kernels from a spec string
# ----------------------------------------------------------------------------------
def parse_kernel(spec: str) -> list[list[str]]:
    """``"matern32+sho*periodic"`` -> ``[["matern32"], ["sho", "periodic"]]`` (sum of products)."""
    terms = [[f.strip().lower() for f in term.split("*")] for term in spec.split("+")]
    for term in terms:
        for f in term:
            if f not in KERNELS:
                raise CLIError(f"unknown kernel {f!r} in {spec!r}; choose from {', '.join(KERNELS)}")
    return terms


def _kernel_model(terms, span: float):
    """A function building the kernel from numpyro sample sites (priors relative to ``span``)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from probdyn import kernels

    def site(name, loc):
        return numpyro.sample(name, dist.LogNormal(jnp.log(loc), 1.0))

    def build():
        total = None
        for i, term in enumerate(terms):
            prod = None
            for j, f in enumerate(term):
                tag = f"{f}_{i}{j}" if len(terms) > 1 or len(term) > 1 else f
                if f.startswith("matern"):
                    k = getattr(kernels, f"Matern{f[-2:]}")(lengthscale=site(f"{tag}_lengthscale", span / 5), variance=1.0)
                elif f == "sho":
                    k = kernels.SHO(omega=site(f"{tag}_omega", 2 * jnp.pi / (span / 5)), quality=site(f"{tag}_quality", 3.0), variance=1.0)
                elif f == "periodic":
                    k = kernels.Periodic(period=site(f"{tag}_period", span / 5), lengthscale=site(f"{tag}_lengthscale", 1.0), variance=1.0)
                elif f == "cosine":
                    k = kernels.Cosine(period=site(f"{tag}_period", span / 5), variance=1.0)
                else:
                    k = kernels.Constant(variance=1.0)
                prod = k if prod is None else prod * k
            prod = prod * numpyro.sample(f"amplitude_{i}", dist.LogNormal(0.0, 1.0)) ** 2
            total = prod if total is None else total + prod
        return total

    return build


# ----------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------
def _cmd_tutorials(a) -> int:
    for name, title in _tutorials().items():
        print(f"{name:<36} {title}")
    return 0


def _tutorial_dir() -> Path:
    env = os.environ.get("PROBDYN_TUTORIALS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "tutorials"


def _tutorials() -> dict[str, str]:
    d = _tutorial_dir()
    if not d.is_dir():
        raise CLIError(f"tutorial folder not found at {d} (set PROBDYN_TUTORIALS or install from a clone)")
    out = {}
    for f in sorted(d.glob("*.py")):
        title = ""
        for line in f.read_text().splitlines():
            m = re.match(r"#\s*#\s+(.*)", line)
            if m:
                title = m.group(1).strip()
                break
        out[f.stem] = title
    return out


def _cmd_run(a) -> int:
    tuts = _tutorials()
    name = a.name[:-3] if a.name.endswith(".py") else a.name
    if name not in tuts:
        raise CLIError(f"unknown tutorial {a.name!r}; `probdyn tutorials` lists: {', '.join(tuts)}")
    out = _prepare_out(os.path.join(a.out, name), ["metrics.json"], a.force)
    env = {**os.environ, "PROBDYN_OUT": str(out), "PROBDYN_METRICS": str(out / "metrics.json"), "MPLBACKEND": "Agg"}
    if a.smoke:
        env["PROBDYN_SMOKE"] = "1"
    root = str(_tutorial_dir().parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    print(f"running tutorial {name}{' (smoke)' if a.smoke else ''} -> {out}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(_tutorial_dir() / f"{name}.py")], env=env, cwd=str(out))
    if r.returncode != 0:
        raise CLIError(f"tutorial {name} failed with exit status {r.returncode} (see its output above)")
    figs = sorted(p.name for p in out.glob("*.png"))
    print(f"done in {time.perf_counter() - t0:.0f} s: {len(figs)} figures and metrics.json in {out}")
    return 0


def _cmd_fit(a) -> int:
    if a.csv:
        t, y, names = read_series(a.csv, a.time_col, a.columns)
    else:
        t, y, names = load_dataset(a.dataset)
    if a.model == "markov-gp":
        return _fit_markov_gp(a, t, y, names)
    return _fit_sde(a, t, y, names)


def _write_fit_outputs(out: Path, idata, extra: dict, point_estimate: bool = False) -> None:
    import warnings

    with warnings.catch_warnings():  # arviz's notes on a single draw (a point estimate)
        warnings.simplefilter("ignore", UserWarning)
        import arviz as az

        idata.to_netcdf(str(out / "posterior.nc"))
        summ = az.summary(idata, kind="all" if idata.posterior.sizes.get("chain", 1) > 1 else "stats")
    if point_estimate:
        summ = summ[["mean"]].rename(columns={"mean": "MAP"})
    summ.to_csv(out / "summary.csv")
    (out / "summary.md").write_text(markdown_table(summ))
    print(summ.to_string())
    (out / "fit.json").write_text(json.dumps(extra, indent=2))


def _fit_markov_gp(a, t, y, names) -> int:
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import numpyro
    import numpyro.distributions as dist

    from probdyn import MarkovGP
    from probdyn.inference import mcmc, variational

    if y.shape[1] != 1:
        raise CLIError(f"--model markov-gp fits one series; pick one with --columns (got {', '.join(names)})")
    terms = parse_kernel(a.kernel)
    files = ["posterior.nc", "summary.csv", "summary.md", "forecast.png", "fit.json"]
    out = _prepare_out(a.out, files, a.force)
    yv = y[:, 0]
    mu, sd = np.nanmean(yv), np.nanstd(yv)
    if not np.isfinite(sd) or sd == 0:
        raise CLIError("the series is constant or empty; nothing to fit")
    z = jnp.asarray((yv - mu) / sd)
    tt = jnp.asarray(t)
    span = float(t[-1] - t[0])
    build = _kernel_model(terms, span)

    def model(times, obs=None):
        k = build()
        noise = numpyro.sample("noise_sd", dist.LogNormal(jnp.log(0.1), 1.0))
        numpyro.sample("y", MarkovGP(k, times, noise=noise**2).numpyro_dist(), obs=obs)

    key = jax.random.PRNGKey(a.seed)
    t0 = time.perf_counter()
    print(f"fitting a Markov GP ({a.kernel}) to {names[0]} ({len(t)} points) with engine={a.engine}", flush=True)
    if a.engine == "nuts":
        idata = mcmc.sample(model, key, tt, z, num_warmup=a.warmup, num_samples=a.samples, num_chains=a.chains,
                            progress_bar=not a.no_progress)
    else:
        res = variational.svi(model, key, tt, z, guide="delta" if a.engine == "map" else "normal",
                              optimizer=a.lr, num_steps=a.steps, progress_bar=not a.no_progress,
                              num_posterior_samples=1 if a.engine == "map" else 200)
        idata = res.idata
    elapsed = time.perf_counter() - t0

    # posterior predictive of the latent series on the data span plus a forecast horizon
    horizon = a.horizon if a.horizon is not None else 0.1 * span
    grid = jnp.linspace(t[0], t[-1] + horizon, 400)
    post = idata.posterior
    draws = {k: np.asarray(post[k]).reshape(-1, *post[k].shape[2:]) for k in post.data_vars}
    n = next(iter(draws.values())).shape[0]
    sel = np.linspace(0, n - 1, min(n, 50)).astype(int)
    from numpyro import handlers

    def predict_one(i):
        params = {k: v[i] for k, v in draws.items()}
        with handlers.seed(rng_seed=0), handlers.condition(data=params):
            kern = build()
        return MarkovGP(kern, tt, noise=float(params["noise_sd"]) ** 2).predict(z, grid)

    ms, vs = zip(*(predict_one(i) for i in sel))
    ms, vs = np.stack(ms), np.stack(vs)
    mean = ms.mean(0)
    var = vs.mean(0) + ms.var(0)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(t, yv, ".", ms=3, color="k", label="data")
    m = mu + sd * mean
    s = sd * np.sqrt(var)
    ax.plot(grid, m, color="C0", label=f"Markov GP ({a.engine})")
    ax.fill_between(grid, m - 2 * s, m + 2 * s, color="C0", alpha=0.25, label="±2 sd")
    ax.axvline(t[-1], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("time")
    ax.set_ylabel(names[0])
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=120)
    plt.close(fig)
    _write_fit_outputs(out, idata, {"model": "markov-gp", "kernel": a.kernel, "engine": a.engine, "series": names[0],
                                    "n_points": int(len(t)), "wall_time_s": elapsed,
                                    "standardisation": {"mean": float(mu), "sd": float(sd)}},
                       point_estimate=a.engine == "map")
    print(f"\nwrote {', '.join(str(out / f) for f in files)}")
    return 0


def _fit_sde(a, t, y, names) -> int:
    """Fit a built-in mechanistic SDE drift family by its continuous–discrete EKF likelihood:
    maximum likelihood (``map``), or NUTS / SVI started there (``nuts``, ``svi``)."""
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from probdyn.inference.gaussian_filters import observations as obs_lib
    from probdyn.inference import gaussian_filters as gf
    from probdyn.models import sysid

    try:
        system = sysid.get_system(a.drift)
    except ValueError as e:
        raise CLIError(f"unknown --drift: {e}") from None
    H = np.asarray(system.H, float)
    if H.shape[0] != y.shape[1]:
        raise CLIError(f"--drift {a.drift} observes {H.shape[0]} coordinate(s) but the data have {y.shape[1]} "
                       f"column(s) ({', '.join(names)}); choose them with --columns")
    files = ["posterior.nc", "summary.csv", "summary.md", "forecast.png", "fit.json"]
    out = _prepare_out(a.out, files, a.force)
    log_state = a.drift == "lotka_volterra"  # state = log populations; count data are log-normal
    if log_state:
        if np.any(y[np.isfinite(y)] <= 0):
            raise CLIError("--drift lotka_volterra models positive populations; the data have values <= 0")
        ob = obs_lib.LogNormal(jnp.asarray(H), 0.25 * jnp.ones(H.shape[0]))
    else:
        ob = obs_lib.LinearGaussian(jnp.asarray(H), (system.obs_sd**2) * jnp.ones(H.shape[0]))
    model = sysid.SDEModel(sysid.MechanisticDrift(system.drift, dict(system.params)),
                           float(np.mean(system.diffusion)), system.state_dim)
    tt, yy = jnp.asarray(t), jnp.asarray(y)
    print(f"fitting the {a.drift} SDE drift family to {', '.join(names)} ({len(t)} points) by the "
          f"continuous-discrete EKF likelihood", flush=True)
    t0 = time.perf_counter()
    fkw = {}  # the CD filter's default step plan
    info = sysid.fit_map(model, ob, tt, yy, jax.random.PRNGKey(a.seed), num_steps=a.steps, learning_rate=a.lr,
                         filter_kwargs=fkw, progress_bar=not a.no_progress)
    fitted = {k: float(jnp.exp(v)) for k, v in info.model.drift.log_params.items()}
    for i, v in enumerate(np.exp(np.asarray(info.model.log_diffusion))):
        fitted[f"diffusion_{i}"] = float(v)
    m0, P0 = sysid.initial_prior(ob, yy[0], system.state_dim, 1.0)
    build = _sde_builder(info.model)
    if a.engine == "map":
        import arviz as az

        idata = az.from_dict({"posterior": {k: np.array([[v]]) for k, v in fitted.items()}})
    else:  # Bayesian: priors around the system's nominal parameters, the filter likelihood, MAP start
        idata = _sde_posterior(a, system, build, ob, tt, yy, m0, P0, fkw, fitted)
    elapsed = time.perf_counter() - t0

    # smoothed path over the data and a forecast horizon (future rows are missing data)
    span = float(t[-1] - t[0])
    horizon = a.horizon if a.horizon is not None else 0.1 * span
    dt = float(np.median(np.diff(t)))
    n_h = max(1, int(round(horizon / dt)))
    t_ext = jnp.concatenate([tt, tt[-1] + dt * jnp.arange(1, n_h + 1)])
    y_ext = jnp.concatenate([yy, jnp.full((n_h, y.shape[1]), jnp.nan)])
    post = idata.posterior
    draws = {k: np.asarray(post[k]).reshape(-1) for k in post.data_vars}
    n = len(next(iter(draws.values())))
    sel = np.linspace(0, n - 1, min(n, 32)).astype(int)
    Hj = jnp.asarray(H)

    def smooth(pars):  # observed-coordinate mean (T, p) and variance (T, p) of the smoother
        sm = gf.smoother(build(pars), ob, t_ext, y_ext, m0, P0, method="ekf", **fkw)
        return sm.mean @ Hj.T, jnp.einsum("pd,tde,pe->tp", Hj, sm.cov, Hj)

    ms, vs = jax.vmap(smooth)({k: jnp.asarray(v[sel]) for k, v in draws.items()})
    ms, vs = np.asarray(ms), np.asarray(vs)
    mean = ms.mean(0)
    sd = np.sqrt(vs.mean(0) + ms.var(0))  # mixture over posterior draws
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.8 * len(names)), squeeze=False)
    for i, (ax, nm) in enumerate(zip(axes[:, 0], names)):
        lo, mid, hi = mean[:, i] - 2 * sd[:, i], mean[:, i], mean[:, i] + 2 * sd[:, i]
        if log_state:
            lo, mid, hi = np.exp(lo), np.exp(mid), np.exp(hi)
        ax.plot(t, y[:, i], "k.", ms=4, label="data")
        ax.plot(np.asarray(t_ext), mid, color="C0", label=f"{a.drift} SDE (smoothed / forecast)")
        ax.fill_between(np.asarray(t_ext), lo, hi, color="C0", alpha=0.25, label="±2 sd")
        ax.axvline(t[-1], color="gray", lw=0.8, ls="--")
        ax.set_ylabel(nm)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("time")
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=120)
    plt.close(fig)

    _write_fit_outputs(out, idata, {"model": "sde", "drift": a.drift, "engine": a.engine, "series": names,
                                    "n_points": int(len(t)), "wall_time_s": elapsed,
                                    "map_log_likelihood": float(info.log_likelihood), "map_parameters": fitted},
                       point_estimate=a.engine == "map")
    print(f"\nwrote {', '.join(str(out / f) for f in files)}")
    return 0


def _sde_builder(model):
    """``pars -> SDE``: the fitted model's drift/diffusion with parameters from a dict of
    positive values (drift names and ``diffusion_i``); traceable, so usable in numpyro/vmap."""
    import equinox as eqx
    import jax.numpy as jnp

    from probdyn.sde import SDE

    names = list(model.drift.log_params)

    def build(pars):
        drift = eqx.tree_at(lambda m: m.log_params, model.drift, {k: jnp.log(pars[k]) for k in names})
        diffusion = jnp.stack([pars[f"diffusion_{i}"] for i in range(model.state_dim)])
        return SDE(drift, diffusion, model.state_dim)

    return build


def _sde_posterior(a, system, build, ob, tt, yy, m0, P0, fkw, start: dict):
    """NUTS or SVI (mean-field normal guide) over the positive drift parameters and the
    diffusions, priors ``LogNormal(log nominal, 1)``, likelihood the continuous-discrete EKF
    (``SDEFilterDistribution``); chains / guide start at the maximum-likelihood values."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import init_to_value

    from probdyn.inference.gaussian_filters import SDEFilterDistribution
    from probdyn.inference import mcmc, variational

    loc = {k: float(np.log(v)) for k, v in system.params.items()}
    loc.update({f"diffusion_{i}": float(np.log(np.mean(system.diffusion))) for i in range(system.state_dim)})

    def model(times, obs=None):
        pars = {k: numpyro.sample(k, dist.LogNormal(jnp.asarray(m, jnp.result_type(float)), 1.0)) for k, m in loc.items()}
        numpyro.sample("y", SDEFilterDistribution(build(pars), ob, times, m0, P0, method="ekf", **fkw), obs=obs)

    init = init_to_value(values={k: jnp.asarray(v) for k, v in start.items()})
    key = jax.random.PRNGKey(a.seed + 1)
    print(f"posterior by {a.engine} (starting at the maximum-likelihood fit)", flush=True)
    if a.engine == "nuts":
        return mcmc.sample(model, key, tt, yy, num_warmup=a.warmup, num_samples=a.samples, num_chains=a.chains,
                           init_strategy=init, progress_bar=not a.no_progress)
    return variational.svi(model, key, tt, yy, guide="normal", guide_kwargs={"init_loc_fn": init},
                           optimizer=a.lr, num_steps=a.steps, progress_bar=not a.no_progress,
                           num_posterior_samples=200).idata


def _compare_figures(res, out: Path) -> list[Path]:
    """NLPD/RMSE against lead time per model and spacing, and one forecast per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    df = res.table
    figs = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (model, spacing), g in df.groupby(["model", "spacing"]):
        g = g.sort_values("horizon_time")
        ls = "-" if spacing == "test" else ":"
        for ax, col in zip(axes, ("nlpd", "rmse")):
            ax.plot(g["horizon_time"], g[col], ls, marker="o", ms=3, label=f"{model} [{spacing} spacing]")
    for ax, col in zip(axes, ("NLPD", "RMSE")):
        ax.set_xlabel("lead time")
        ax.set_ylabel(col)
    axes[1].set_yscale("log")  # diverging discrete models would flatten the others
    axes[0].legend(fontsize=7)
    fig.suptitle("forecast scores (solid: test spacing, dotted: training spacing)")
    fig.tight_layout()
    figs.append(out / "scores.png")
    fig.savefig(figs[-1], dpi=120)
    plt.close(fig)

    keys = [k for k in res.forecasts if k[1] == "test"]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), sharey=True, squeeze=False)
        for ax, key in zip(axes[0], keys):
            f = res.forecasts[key]
            m, v = np.asarray(f["mean"])[:, 0], np.asarray(f["cov"])[:, 0, 0]
            ax.plot(f["ctx_times"], np.asarray(f["ctx_y"])[:, 0], "k.", ms=4, label="context")
            ax.plot(f["times"], np.asarray(f["truth"])[:, 0], "kx", ms=4, label="held out")
            ax.plot(f["times"], m, color="C0")
            ax.fill_between(f["times"], m - 2 * np.sqrt(v), m + 2 * np.sqrt(v), color="C0", alpha=0.3)
            ax.set_title(key[0], fontsize=9)
            ax.set_xlabel("time")
        axes[0][0].legend(fontsize=7)
        fig.suptitle("forecasts at the test spacing (mean ± 2 sd, first observed coordinate)")
        fig.tight_layout()
        figs.append(out / "forecasts.png")
        fig.savefig(figs[-1], dpi=120)
        plt.close(fig)
    return figs


def _cmd_compare(a) -> int:
    from probdyn.models import sysid

    files = ["report.md", "comparison.csv", "scores.png", "forecasts.png"]
    out = _prepare_out(a.out, files, a.force)
    kwargs = dict(quick=a.quick, key=a.seed)
    if a.csv:
        t, y, names = read_series(a.csv, a.time_col, a.columns, min_points=30)
        name = a.system or ("ornstein_uhlenbeck" if y.shape[1] == 1 else "van_der_pol")
        try:
            system = sysid.get_system(name)
        except ValueError as e:
            raise CLIError(str(e)) from None
        if system.H.shape[0] != y.shape[1]:
            raise CLIError(f"--system {name} observes {system.H.shape[0]} coordinate(s) but the CSV gives "
                           f"{y.shape[1]} column(s) ({', '.join(names)})")
        kwargs.update(system=system, times=t, y=y)
        title = f"{a.csv} ({', '.join(names)}), {name} drift family"
    else:
        name = a.system or "lotka_volterra"
        try:
            sysid.get_system(name)
        except ValueError as e:
            raise CLIError(str(e)) from None
        kwargs.update(system=name)
        if a.test_spacing is not None:
            if a.test_spacing <= 0:
                raise CLIError("--test-spacing must be positive")
            kwargs["dt_test"] = a.test_spacing
        title = f"simulated {name}"
    print(f"probdyn compare: {title}{' (quick)' if a.quick else ''}", flush=True)
    t0 = time.perf_counter()
    res = sysid.compare(**kwargs)
    elapsed = time.perf_counter() - t0
    table = res.to_markdown()
    print(table)
    res.table.to_csv(out / "comparison.csv", index=False)
    figs = _compare_figures(res, out)
    lines = [f"# probdyn compare: {title}", "",
             "Continuous-time (SDE, continuous-discrete filter) and discrete-time models fitted by the same",
             "engine (maximum likelihood of their Gaussian-filter likelihoods); forecasts scored against",
             "held-out data at the training spacing and at a different test spacing.", "", table, ""]
    lines += [f"![{f.stem}]({f.name})" for f in figs]
    lines += ["", f"Run time: {elapsed:.0f} s."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out / 'report.md'}, {out / 'comparison.csv'} and {len(figs)} figures in {out}")
    return 0


# ----------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="probdyn", description="probabilistic dynamical systems in JAX", formatter_class=fmt,
                                epilog="examples:\n  probdyn compare --quick\n  probdyn fit --dataset co2 --kernel matern52+sho\n"
                                       "  probdyn tutorials\n  probdyn run markov_gp_regression --smoke")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp):
        sp.add_argument("--csv", help="CSV file with a header row")
        sp.add_argument("--time-col", help="name of the time column (default: the first column)")
        sp.add_argument("--columns", help="comma-separated value columns (default: all others)")
        sp.add_argument("--out", default="probdyn-out", help="output folder (default: ./probdyn-out)")
        sp.add_argument("--force", action="store_true", help="overwrite existing outputs")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--no-progress", action="store_true", help="hide progress bars")

    c = sub.add_parser("compare", help="discrete- vs continuous-time models of one system (the main job)", formatter_class=fmt,
                       description="Fit a continuous-time (SDE) and a discrete-time model to the same data with the same\n"
                                   "engine and compare forecasts (RMSE, NLPD vs horizon), parameters and run time.",
                       epilog="examples:\n  probdyn compare --quick                      # simulated Lotka-Volterra\n"
                              "  probdyn compare --system van_der_pol --out vdp\n"
                              "  probdyn compare --csv data.csv --time-col t --columns a,b --system van_der_pol")
    common(c)
    c.add_argument("--system", help="built-in system: ornstein_uhlenbeck, damped_pendulum, van_der_pol, "
                                    "lotka_volterra (default; parameters of the lynx-hare posterior), double_well; "
                                    "with --csv: the drift family to fit")
    c.add_argument("--test-spacing", type=float, help="observation spacing of the test data (simulated systems)")
    c.add_argument("--quick", action="store_true", help="small settings, about a minute")
    c.set_defaults(func=_cmd_compare)

    f = sub.add_parser("fit", help="fit a model to a CSV time series or an embedded dataset", formatter_class=fmt,
                       epilog="examples:\n  probdyn fit --dataset co2 --kernel matern52+sho --engine map\n"
                              "  probdyn fit --csv data.csv --time-col t --columns y --engine nuts --chains 4\n"
                              "  probdyn fit --dataset lynx_hare --model sde --drift lotka_volterra --steps 300\n"
                              "  probdyn fit --dataset lynx_hare --model sde --drift lotka_volterra --engine nuts --chains 2")
    common(f)
    f.add_argument("--dataset", choices=DATASETS, default="nile", help="embedded dataset when no --csv (default: nile)")
    f.add_argument("--model", choices=["markov-gp", "sde"], default="markov-gp")
    f.add_argument("--kernel", default="matern32", help="sum/product of " + ", ".join(KERNELS) + " (e.g. matern32+sho)")
    f.add_argument("--drift", default="ornstein_uhlenbeck",
                   help="built-in drift family for --model sde: ornstein_uhlenbeck, damped_pendulum, van_der_pol, "
                        "lotka_volterra, double_well")
    f.add_argument("--engine", choices=["map", "svi", "nuts"], default="map",
                   help="map: maximum a posteriori (markov-gp) / maximum likelihood (sde); svi: mean-field "
                        "normal guide; nuts: NUTS with --chains chains (sde: started at the ML fit)")
    f.add_argument("--chains", type=int, default=4)
    f.add_argument("--warmup", type=int, default=500)
    f.add_argument("--samples", type=int, default=500)
    f.add_argument("--steps", type=int, default=1500, help="optimisation steps (map, svi)")
    f.add_argument("--lr", type=float, default=0.02)
    f.add_argument("--horizon", type=float, help="forecast horizon in time units (default: 10%% of the span)")
    f.set_defaults(func=_cmd_fit)

    t = sub.add_parser("tutorials", help="list the tutorials")
    t.set_defaults(func=_cmd_tutorials)
    r = sub.add_parser("run", help="run a tutorial and collect its figures and metrics", formatter_class=fmt,
                       epilog="example:\n  probdyn run markov_gp_regression --smoke --out runs")
    r.add_argument("name")
    r.add_argument("--smoke", action="store_true", help="tiny sizes (PROBDYN_SMOKE=1)")
    r.add_argument("--out", default=os.path.join("probdyn-out", "tutorials"))
    r.add_argument("--force", action="store_true")
    r.set_defaults(func=_cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``probdyn`` command; returns the exit status (0 ok, 2 bad input)."""
    p = _parser()
    a = p.parse_args(argv)
    if a.command is None:
        p.print_help()
        return 2
    if getattr(a, "chains", 1) is not None and getattr(a, "chains", 1) < 1:
        print("probdyn: error: --chains must be >= 1", file=sys.stderr)
        return 2
    try:
        return int(a.func(a) or 0)
    except CLIError as e:
        if a.debug:
            raise
        print(f"probdyn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probdyn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, never a traceback, unless --debug
        if a.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"probdyn: error: {type(e).__name__}: {msg} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
