# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Bayesian Markov-GP hyperparameters on Mauna Loa CO2: numpyro NUTS vs blackjax NUTS vs SVI
#
# The weekly Mauna Loa CO2 record (shipped offline with `statsmodels`) has a trend, a yearly
# cycle and gaps (NaN weeks). After removing a linear trend we model the residual as
#
# $$ y(t) = f(t) + \varepsilon,\quad
# f \sim \mathrm{GP}(0,\ k_{\mathrm{M32}}(\ell, s_1^2) + k_{\mathrm{SHO}}(\omega, Q, s_2^2)),
# \quad \varepsilon \sim N(0, \sigma^2), $$
#
# a Markov GP whose likelihood is evaluated in O(N) by the Kalman filter
# (`MarkovGP.numpyro_dist()`), missing weeks included. We infer the hyperparameters with
# the three engines of `probdyn.inference` and compare them side by side.
#
# Environment: `PROBDYN_SMOKE=1` (tiny sizes), `PROBDYN_OUT` (figure folder),
# `PROBDYN_METRICS=path.json` (key numbers as JSON).
# Time: the full run (500 weeks, 2 chains x 600 iterations per sampler) takes 6.0 min on 2 CPU
# cores (measured 2026-12-07); it prints the time of each section. `PROBDYN_LARGE=1` runs
# 1000 weeks with 4 chains per sampler (about 25 min here: numpyro NUTS alone took 11 min).
# A GPU changes the schedule, not the code: `parallel=None` picks the parallel-in-time filter
# there and chains run side by side; this tutorial has not been timed on one.

# %%
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
import statsmodels.api as sm  # noqa: E402

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402

from probdyn import MarkovGP, kernels, plotting  # noqa: E402
from probdyn.tutorials import Sections  # noqa: E402

sections = Sections()  # wall time per section, printed and written to the metrics
from probdyn.inference import mcmc, variational  # noqa: E402

SMOKE = os.environ.get("PROBDYN_SMOKE", "0") == "1"
LARGE = os.environ.get("PROBDYN_LARGE", "0") == "1" and not SMOKE  # 1000 weeks, 4 chains
OUT = os.environ.get("PROBDYN_OUT", os.path.join("probdyn-out", "tutorials", "markov_gp_bayesian"))
os.makedirs(OUT, exist_ok=True)
if SMOKE:
    SIZES, SVI_STEPS, N_POINTS = dict(num_warmup=60, num_samples=60, num_chains=2), 200, 80
elif LARGE:
    SIZES, SVI_STEPS, N_POINTS = dict(num_warmup=500, num_samples=500, num_chains=4), 3000, 1000
else:
    SIZES, SVI_STEPS, N_POINTS = dict(num_warmup=300, num_samples=300, num_chains=2), 3000, 500

# %% [markdown]
# ## Data: the last `N_POINTS` weeks, detrended, with the gaps kept as NaN

# %%
sections.start("Data")
co2 = sm.datasets.co2.load_pandas().data["co2"]
co2 = co2.iloc[-N_POINTS:]
t = np.asarray((co2.index - co2.index[0]).days, float) / 365.25  # years
y_raw = co2.to_numpy(float)
obs = ~np.isnan(y_raw)
coef = np.polyfit(t[obs], y_raw[obs], 2)
y = y_raw - np.polyval(coef, t)
print(f"{len(t)} weeks, {np.sum(~obs)} missing; residual sd {np.nanstd(y):.2f} ppm")


# %% [markdown]
# ## The numpyro program
# Priors are weakly informative on the log scale; the SHO frequency is centred on one cycle per year.


# %%
sections.start("The numpyro program")


def model(t, y=None):
    # smoke mode: a fixed smooth component keeps the compile time of the gradient small
    ell = 1.5 if SMOKE else numpyro.sample("ell", dist.LogNormal(0.0, 1.0))  # years
    s1 = 0.5 if SMOKE else numpyro.sample("s1", dist.HalfNormal(2.0))  # ppm
    omega = numpyro.sample("omega", dist.LogNormal(jnp.log(2 * jnp.pi), 0.2))  # rad / year
    s2 = numpyro.sample("s2", dist.HalfNormal(5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("period", 2 * jnp.pi / omega)
    k = kernels.SHO(omega=omega, quality=10.0, variance=s2**2)
    k = k if SMOKE else kernels.Matern32(ell, s1**2) + k
    numpyro.sample("y", MarkovGP(k, t, sigma**2).numpyro_dist(), obs=y)


# %% [markdown]
# ## Three engines, one model

# %%
sections.start("Three engines, one model")
results, timings = {}, {}
for backend in ("numpyro", "blackjax"):
    t0 = time.perf_counter()
    results[backend] = mcmc.sample(
        model, jax.random.PRNGKey(0), t, y=y, backend=backend, progress_bar=not SMOKE, report=False, **SIZES
    )
    timings[backend] = time.perf_counter() - t0

t0 = time.perf_counter()
fit = variational.svi(
    model,
    jax.random.PRNGKey(1),
    t,
    y=y,
    guide="mvn",
    optimizer=optax.adam(0.02),
    num_steps=SVI_STEPS,
    num_posterior_samples=1000,
    progress_bar=not SMOKE,
)
timings["svi"] = time.perf_counter() - t0
results["svi"] = fit.idata

# %% [markdown]
# ## Diagnostics (R-hat, bulk/tail ESS) and the posterior side by side

# %%
sections.start("Diagnostics (R-hat, bulk/tail ESS) and the posterior side by side")
params = ["omega", "s2", "sigma", "period"] if SMOKE else ["ell", "s1", "omega", "s2", "sigma", "period"]
diag = {b: mcmc.diagnostics(results[b], var_names=params) for b in ("numpyro", "blackjax")}
for b, tab in diag.items():
    ndiv = int(results[b].sample_stats["diverging"].sum())
    print(f"\n{b} NUTS ({timings[b]:.1f} s, {ndiv} divergences)\n{tab.to_string()}")

rows = []
for name in params:
    row = {"param": name}
    for b, idata in results.items():
        d = idata.posterior[name].values.ravel()
        row[f"{b} mean"], row[f"{b} sd"] = float(d.mean()), float(d.std())
    rows.append(row)
print("\n| param | " + " | ".join(f"{b} mean ± sd" for b in results) + " |")
print("|---|" + "---|" * len(results))
for r in rows:
    print(f"| {r['param']} | " + " | ".join(f"{r[f'{b} mean']:.3f} ± {r[f'{b} sd']:.3f}" for b in results) + " |")

# %% [markdown]
# ## Plots: trace (numpyro), posteriors of all three, and the ELBO trace

# %%
sections.start("Plots")
# arviz-plots (ArviZ >= 1.0): each call returns a PlotCollection that saves its figure
az.plot_trace_dist(results["numpyro"], var_names=params[:-1], backend="matplotlib").savefig(
    os.path.join(OUT, "trace_numpyro.png"), dpi=80
)
plt.close("all")

# plot_forest aligns the methods' draws, so each enters with the same number of pooled draws
n_pool = min(r.posterior.sizes["chain"] * r.posterior.sizes["draw"] for r in results.values())
pooled = {
    b: az.from_dict({"posterior": {v: r.posterior[v].values.reshape(1, -1)[:, :n_pool] for v in params[:-1]}})
    for b, r in results.items()
}
pc = az.plot_forest(pooled, var_names=params[:-1], combined=True, backend="matplotlib")
pc.add_legend("model")
pc.savefig(os.path.join(OUT, "forest_compare.png"), dpi=80)
plt.close("all")

az.plot_dist(results["blackjax"], var_names=["period", "sigma"], backend="matplotlib").savefig(
    os.path.join(OUT, "posterior_blackjax.png"), dpi=80
)
plt.close("all")

fig, ax = plotting.new_figure(1, 2, panel=(5.5, 3.5))
ax = ax[0]
ax[0].plot(np.asarray(fit.elbo))
ax[0].set(xlabel="SVI step", ylabel="ELBO (nats)", title="SVI (AutoMultivariateNormal)")
post = results["numpyro"].posterior
i = int(np.argmax(results["numpyro"].sample_stats["lp"].values.ravel()))
pick = {"ell": 1.5, "s1": 0.5, **{p: float(post[p].values.ravel()[i]) for p in params[:-1]}}
kern = kernels.SHO(omega=pick["omega"], quality=10.0, variance=pick["s2"] ** 2)
kern = kern if SMOKE else kernels.Matern32(pick["ell"], pick["s1"] ** 2) + kern
tt = np.linspace(t[0], t[-1], 400)
mu, var = MarkovGP(kern, t, pick["sigma"] ** 2).predict(y, tt)
ax[1].plot(t, y, ".", ms=3, label="detrended CO2")
plotting.band(
    ax[1], tt, np.asarray(mu), np.sqrt(np.asarray(var)), color="C1", label="GP posterior at the highest-lp NUTS draw"
)
ax[1].set(xlabel="years since the first point", ylabel="detrended CO2 (ppm)")
fig.legend(*ax[1].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
plotting.save(fig, os.path.join(OUT, "elbo_and_fit.png"))

# %% [markdown]
# ## Key numbers

# %%
sections.start("Key numbers")
metrics = {
    "n_points": int(len(t)),
    "n_missing": int(np.sum(~obs)),
    "period_mean": {b: float(results[b].posterior["period"].mean()) for b in results},
    "omega_mean": {b: float(results[b].posterior["omega"].mean()) for b in results},
    "sigma_mean": {b: float(results[b].posterior["sigma"].mean()) for b in results},
    "rhat_max": {b: float(diag[b]["r_hat"].max()) for b in diag},
    "ess_bulk_min": {b: float(diag[b]["ess_bulk"].min()) for b in diag},
    "divergences": {b: int(results[b].sample_stats["diverging"].sum()) for b in diag},
    "elbo_final": float(np.mean(np.asarray(fit.elbo)[-50:])),
    "wall_time_s": timings,
    "smoke": SMOKE,
}
print(json.dumps(metrics, indent=1))
metrics["section_seconds"] = sections.stop()
if os.environ.get("PROBDYN_METRICS"):
    with open(os.environ["PROBDYN_METRICS"], "w") as f:
        json.dump(metrics, f, indent=1)
