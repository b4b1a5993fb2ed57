# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # System identification: continuous-time vs discrete-time models
#
# Cheema & Rasmussen (2022) contrast two ways of learning a dynamical system from noisy
# observations: a **continuous-time** model (an SDE `dx = f(x) dt + L dW`, whose likelihood a
# continuous–discrete Gaussian filter evaluates at *any* observation times) and a
# **discrete-time** model `x_{k+1} = g(x_k) + q_k` fitted at the training spacing. The naive
# discrete model has no notion of time: applied at a different spacing it goes wrong. Making
# it time-aware (Euler sub-steps of the actual interval, noise scaled with the step) repairs it.
#
# We (1) check that on the Ornstein–Uhlenbeck process the OU and AR(1) likelihoods coincide
# exactly, (2) run `probdyn.models.sysid.compare` on the Van der Pol oscillator (train at one
# spacing, test at another), and (3) fit the Hudson's Bay lynx–hare data three ways: the
# posteriordb Lotka–Volterra ODE by NUTS, a stochastic Lotka–Volterra SDE by the filters, and
# its discrete-time counterpart.
#
# Environment: `PROBDYN_SMOKE=1` (tiny sizes), `PROBDYN_OUT` (figure folder),
# `PROBDYN_METRICS=path.json` (key numbers as JSON).
# Time: the full run takes 63 s on 2 CPU cores (measured 2026-12-07); it prints the time of each section.
# `PROBDYN_LARGE=1` runs 1000 MAP steps per model instead of 300 (not timed). A GPU changes
# little here: the series are short (tens to hundreds of steps) and sequential filtering
# dominates; not timed.

# %%
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402

from probdyn import plotting  # noqa: E402
from probdyn.tutorials import Sections  # noqa: E402

sections = Sections()  # wall time per section, printed and written to the metrics
from probdyn.datasets import lynx_hare  # noqa: E402
from probdyn.inference import gaussian_filters as gf  # noqa: E402
from probdyn.inference import mcmc  # noqa: E402
from probdyn.inference.gaussian_filters import observations as obs  # noqa: E402
from probdyn.models import sysid  # noqa: E402

SMOKE = os.environ.get("PROBDYN_SMOKE", "0") == "1"
LARGE = os.environ.get("PROBDYN_LARGE", "0") == "1" and not SMOKE  # the larger setting (top of the file)
OUT = os.environ.get("PROBDYN_OUT", os.path.join("probdyn-out", "tutorials", "sysid_continuous_vs_discrete"))
os.makedirs(OUT, exist_ok=True)
FIT_STEPS = 50 if SMOKE else (1000 if LARGE else 300)
NUTS = (
    dict(num_warmup=40, num_samples=40, num_chains=1)
    if SMOKE
    else dict(num_warmup=1000, num_samples=1000, num_chains=4)
)
metrics = {"smoke": SMOKE}
wall = {}

# %% [markdown]
# ## 1. OU vs AR(1): the sanity check
# An OU process `dx = -lam x dt + s sqrt(2 lam) dW` observed every `dt` *is* the AR(1)
# `x_{k+1} = a x_k + q_k` with `a = exp(-lam dt)`, `Var q = s^2 (1 - a^2)`. Their
# log-likelihoods (Kalman engine on the exactly discretised OU, the AR(1) state-space
# model, the continuous–discrete filter and the discrete filter) must agree to rounding.

# %%
sections.start("OU vs AR(1)")
t0 = time.perf_counter()
ou = sysid.get_system("ornstein_uhlenbeck")
rng = np.random.default_rng(0)
a = np.exp(-0.5 * 1.0)
x = np.zeros(200)
for k in range(1, 200):
    x[k] = a * x[k - 1] + 0.5 * np.sqrt(1 - a**2) * rng.standard_normal()
y_ou = x + 0.1 * rng.standard_normal(200)
chk = sysid.ou_ar1_check(y_ou, 1.0, [0.5, 0.2, 1.0, 2.0], [0.5, 1.0, 0.3, 0.5], 0.01)
print("OU log-lik:   ", chk["ou_kalman"])
print("AR(1) log-lik:", chk["ar1_kalman"])
print(f"max |OU - AR(1)| = {chk['max_abs_diff']:.2e}")
metrics["ou_ar1_max_abs_diff"] = chk["max_abs_diff"]
wall["ou_ar1"] = time.perf_counter() - t0

# %% [markdown]
# ## 2. Van der Pol: train at spacing 0.4, forecast at spacing 0.4 and 0.2
# `compare` simulates the ground-truth SDE, fits the continuous SDE, the naive Euler
# discrete model and the time-aware discrete model (same mechanistic drift family, same
# maximum-likelihood engine: Adam on the filters' log-likelihoods), and scores forecasts
# (RMSE, NLPD) at the same physical lead times on both spacings.

# %%
sections.start("Van der Pol")
t0 = time.perf_counter()
res = sysid.compare("van_der_pol", quick=SMOKE, num_steps=FIT_STEPS, key=0, verbose=True)
wall["compare"] = time.perf_counter() - t0
print(res.to_markdown())
tab = res.table
test = tab[tab.spacing == "test"]
horizons = sorted(test.horizon_time.unique())


def nl(name, sp="test"):
    return [
        float(tab[(tab.model == name) & (tab.spacing == sp) & (tab.horizon_time == h)].nlpd.iloc[0]) for h in horizons
    ]


metrics["horizons"] = [float(h) for h in horizons]
metrics["nlpd_continuous"] = nl("continuous (SDE)")
metrics["nlpd_discrete"] = nl("discrete naive Euler")
metrics["nlpd_discrete_time_aware"] = nl("discrete time-aware")
metrics["nlpd_continuous_train_spacing"] = nl("continuous (SDE)", "train")
metrics["nlpd_discrete_train_spacing"] = nl("discrete naive Euler", "train")
metrics["fitted_params"] = res.params
# a forecast whose moments overflow is flagged and scored inf (never NaN)
metrics["diverged_forecasts"] = [
    f"{r.model}, {r.spacing} spacing, lead {r.horizon_time:g}" for r in tab[tab.diverged].itertuples()
]
assert not tab[["rmse", "nlpd"]].isna().any().any()

# %% [markdown]
# Each panel keeps the scale of its own data: the naive Euler forecast leaves it within a few
# steps at the test spacing, and is marked as diverged rather than flattening the others.

# %%
plotting.compare_forecasts(
    os.path.join(OUT, "vdp_forecasts.png"), res.forecasts, names=["x (position)", "v (velocity)"]
)
plotting.compare_scores(os.path.join(OUT, "vdp_scores.png"), tab)

# %% [markdown]
# ## 3. Hudson's Bay lynx and hare, three ways
# (a) the posteriordb Lotka–Volterra ODE program with NUTS (numpyro's default
# initialisation; failed ODE solves are rejected, not fatal);
# (b) a stochastic LV for log-populations `d log u = (alpha - beta v) dt + s_1 dW_1`,
# `d log v = (-gamma + delta u) dt + s_2 dW_2` with log-normal observations, fitted by
# maximum likelihood through the continuous–discrete EKF;
# (c) its discrete-time counterpart (naive Euler at the yearly spacing) fitted the same way.

# %%
sections.start("Hudson's Bay lynx and hare, three ways")
d = lynx_hare()
t0 = time.perf_counter()
sysid.solver_failures.reset()
idata = mcmc.sample(
    sysid.lotka_volterra,
    jax.random.PRNGKey(0),
    d.ts,
    d.y_init,
    d.y,
    progress_bar=False,
    report=False,
    log_likelihood=False,
    **NUTS,
)
wall["nuts_lv"] = time.perf_counter() - t0
summ = az.summary(idata, var_names=["theta", "z_init", "sigma"], round_to="none")
print(summ[["mean", "sd", "ess_bulk", "r_hat"]].round(4).to_string())
ref = sysid.REFERENCE_POSTERIOR_LV
zscore = (summ["mean"].to_numpy() - np.asarray(ref["mean"])) / np.sqrt(
    summ["mcse_mean"].to_numpy() ** 2 + np.asarray(ref["mcse_mean"]) ** 2
)
print("z-scores vs the posteriordb Stan reference:", np.round(zscore, 2))
print("solver failures (rejected proposals):", sysid.solver_failures)
metrics["lv_theta_mean"] = summ["mean"].to_numpy()[:4].tolist()
metrics["lv_max_abs_z_vs_stan"] = float(np.max(np.abs(zscore)))
metrics["lv_solver_failures"] = sysid.solver_failures.failures

# %%
lv = sysid.get_system("lotka_volterra")
ob_ln = obs.LogNormal(None, jnp.array([0.25, 0.25]))
times, yall = d.times_all, d.y_all
t0 = time.perf_counter()
init = {"alpha": 0.7, "beta": 0.04, "gamma": 0.6, "delta": 0.03}
sde_fit = sysid.fit_map(
    sysid.SDEModel(sysid.MechanisticDrift(lv.drift, init), 0.1, 2),
    ob_ln,
    times,
    yall,
    jax.random.PRNGKey(1),
    num_steps=FIT_STEPS,
    P0_scale=0.3,
)
disc_fit = sysid.fit_map(
    sysid.DiscreteModel(sysid.MechanisticDrift(lv.drift, init), 0.1, 2, "euler", 1.0),
    ob_ln,
    times,
    yall,
    jax.random.PRNGKey(1),
    num_steps=FIT_STEPS,
    P0_scale=0.3,
)
wall["lv_sde_and_discrete"] = time.perf_counter() - t0
m0 = jnp.log(jnp.asarray(yall[0]))
P0 = 0.09 * jnp.eye(2)
sde_sm = gf.smoother(sde_fit.model.sde, ob_ln, times, yall, m0, P0)
disc_f = disc_fit.model.filter(ob_ln, times, yall, m0, P0)
print("SDE fit:", sysid.fitted_params(sde_fit.model), "loglik", round(sde_fit.log_likelihood, 2))
print("discrete fit:", sysid.fitted_params(disc_fit.model), "loglik", round(disc_fit.log_likelihood, 2))
metrics["lv_sde_params"] = sysid.fitted_params(sde_fit.model)
metrics["lv_discrete_params"] = sysid.fitted_params(disc_fit.model)

# %%
z = np.asarray(idata.posterior["z"]).reshape(-1, 20, 2)
fig, axes = plotting.new_figure(1, 3, panel=(4.7, 3.6), sharey=True)
for j, (c, lab) in enumerate([("C0", "hare"), ("C3", "lynx")]):
    lo, med, hi = np.percentile(z[..., j], [5, 50, 95], axis=0)
    axes[0, 0].plot(d.ts, med, c, label=f"{lab}, 90% band")
    axes[0, 0].fill_between(d.ts, lo, hi, color=c, alpha=0.3, lw=0)
    for ax, mean, cov in ((axes[0, 1], sde_sm.mean, sde_sm.cov), (axes[0, 2], disc_f.mean, disc_f.cov)):
        plotting.band(
            ax, times, np.asarray(mean[:, j]), np.sqrt(np.asarray(cov[:, j, j])), color=c, z=1.64, transform=np.exp
        )
    for ax in axes[0]:
        ax.plot(times, yall[:, j], ".", color=c, label=f"{lab} data")
        ax.set_xlabel("years since 1900")
axes[0, 0].set_ylabel("population (thousands of pelts)")
axes[0, 0].set_title("ODE (posteriordb program), NUTS", fontsize=9)
axes[0, 1].set_title("stochastic LV (SDE), EKF smoother", fontsize=9)
axes[0, 2].set_title("discrete-time LV (Euler), EKF filter", fontsize=9)
axes[0, 0].legend(fontsize=7)
fig.suptitle("lynx and hare: 90% bands of three models", fontsize=10)
plotting.save(fig, os.path.join(OUT, "lynx_hare_three_models.png"))

# %%
metrics["wall_time_s"] = wall
print(json.dumps(metrics, indent=1, default=float))
metrics["section_seconds"] = sections.stop()
if os.environ.get("PROBDYN_METRICS"):
    with open(os.environ["PROBDYN_METRICS"], "w") as f:
        json.dump(metrics, f, indent=1, default=float)
