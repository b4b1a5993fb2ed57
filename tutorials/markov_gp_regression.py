# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Markov-GP regression on the Mauna Loa CO2 record
#
# The weekly Mauna Loa CO2 record (1958-2001, shipped offline with `statsmodels`) has a
# smooth trend, a yearly cycle of changing shape, and 59 missing weeks. We model it as
#
# $$ y(t) = \mu + f(t) + \varepsilon, \quad f \sim \mathrm{GP}\big(0,\ k_{M52}(\ell_1, s_1^2)
#   + k_{\mathrm{SHO}}(\omega, Q, s_2^2) + k_{M12}(\ell_3, s_3^2)\big),
#   \quad \varepsilon \sim N(0, \sigma^2) $$
#
# a sum of a long-lengthscale trend, a quasi-periodic seasonal term (a lightly damped
# stochastic harmonic oscillator with a period near one year) and short-term
# irregularities: a 6-dimensional state. Every kernel is a linear SDE, so
# the log-likelihood costs O(N) with the Kalman filter; missing weeks are NaN. We fit the
# hyperparameters by maximising the log-likelihood with optax, forecast the last five years
# and compare the sequential and parallel-in-time schedules.
#
# Environment: `PROBDYN_SMOKE=1` (tiny sizes), `PROBDYN_OUT` (figure folder),
# `PROBDYN_METRICS=path.json` (key numbers as JSON).
# Time: the full run takes 75 s on 2 CPU cores (measured 2026-12-07); it prints the time of each section.
# `PROBDYN_LARGE=1` runs 2000 Adam steps instead of 400 (not timed). On a GPU the default
# `parallel=None` picks the parallel-in-time filter, the schedule built for it (the last
# section times both); not timed on one here.

# %%
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import statsmodels.api as sm

jax.config.update("jax_enable_x64", True)

from probdyn import MarkovGP, kernels, plotting  # noqa: E402
from probdyn.tutorials import Sections  # noqa: E402

sections = Sections()  # wall time per section, printed and written to the metrics

SMOKE = os.environ.get("PROBDYN_SMOKE", "0") == "1"
LARGE = os.environ.get("PROBDYN_LARGE", "0") == "1" and not SMOKE  # the larger setting (top of the file)
OUT = os.environ.get("PROBDYN_OUT", os.path.join("probdyn-out", "tutorials", "markov_gp_regression"))
os.makedirs(OUT, exist_ok=True)
STEPS = 30 if SMOKE else (2000 if LARGE else 400)
STRIDE = 8 if SMOKE else 1  # smoke mode: every 8th week

# %% [markdown]
# ## Data: time in years, the last five years held out

# %%
sections.start("Data")
df = sm.datasets.co2.load_pandas().data
t_all = (df.index.year + (df.index.day_of_year - 1) / 365.25).to_numpy(float)[::STRIDE]
y_all = df["co2"].to_numpy(float)[::STRIDE]
split = t_all[-1] - 5.0
train, test = t_all <= split, t_all > split
t, y = t_all[train], y_all[train]
t_test, y_test = t_all[test], y_all[test]
print(f"{train.sum()} training weeks ({np.isnan(y).sum()} missing), {test.sum()} test weeks")

# %% [markdown]
# ## Model: kernels compose with `+` and `*`; parameters live on the log scale


# %%
sections.start("Model")


def build(p):
    e = jnp.exp
    k = (
        kernels.Matern52(e(p["l_trend"]), e(p["s_trend"]))
        + kernels.SHO(e(p["omega"]), e(p["quality"]), e(p["s_season"]))
        + kernels.Matern12(e(p["l_short"]), e(p["s_short"]))
    )
    return MarkovGP(k, t, noise=e(p["noise"]), mean=p["mean"])


init = {
    "l_trend": np.log(20.0),
    "s_trend": np.log(100.0),
    "omega": np.log(2 * np.pi),
    "quality": np.log(30.0),
    "s_season": np.log(5.0),
    "l_short": np.log(0.5),
    "s_short": np.log(0.5),
    "noise": np.log(0.1),
    "mean": float(np.nanmean(y)),
}
# explicit float64 arrays: weakly typed Python floats would make the first optimiser update
# change the input types of the jitted loss and trigger a second compilation
init = {k: jnp.asarray(v, jnp.float64) for k, v in init.items()}
print("state dimension:", build(init).kernel.state_dim)

# %% [markdown]
# ## Fit: maximise the Kalman log-likelihood with Adam

# %%
sections.start("Fit")
yj = jnp.asarray(y)


@jax.jit
def loss_and_grad(p):
    return jax.value_and_grad(lambda p: -build(p).log_likelihood(yj) / yj.size)(p)


opt = optax.adam(0.05)
state = opt.init(init)
params, trace = init, []
t0 = time.perf_counter()
for _ in range(STEPS):
    loss, g = loss_and_grad(params)
    updates, state = opt.update(g, state)
    params = optax.apply_updates(params, updates)
    trace.append(float(loss))
fit_s = time.perf_counter() - t0
gp = build(params)
ll = float(gp.log_likelihood(yj))
print(f"fitted in {fit_s:.1f}s: log-likelihood {ll:.1f}")
print({k: round(float(jnp.exp(v)), 3) if k != "mean" else round(float(v), 2) for k, v in params.items()})

# %% [markdown]
# ## Forecast with uncertainty (latent f; add the noise variance for new observations)

# %%
sections.start("Forecast with uncertainty")
grid = np.linspace(t[0], t_all[-1], 600 if not SMOKE else 120)
mu, var = gp.predict(yj, jnp.asarray(grid))
mu_te, var_te = gp.predict(yj, jnp.asarray(t_test))
ok = ~np.isnan(y_test)
pred_var = np.asarray(var_te)[ok] + float(jnp.exp(params["noise"]))
resid = y_test[ok] - np.asarray(mu_te)[ok]
rmse = float(np.sqrt(np.mean(resid**2)))
nlpd = float(np.mean(0.5 * np.log(2 * np.pi * pred_var) + 0.5 * resid**2 / pred_var))
cover = float(np.mean(np.abs(resid) < 1.96 * np.sqrt(pred_var)))
print(f"5-year forecast: RMSE {rmse:.3f} ppm, NLPD {nlpd:.3f}, 95% coverage {cover:.2f}")

fig, ax = plotting.new_figure(2, 1, panel=(9.0, 3.0))
for a, lo in zip(ax[:, 0], [t[0], split - 6]):
    sel = grid >= lo
    plotting.band(a, grid[sel], np.asarray(mu)[sel], np.sqrt(np.asarray(var))[sel], label="posterior mean (latent)")
    a.plot(t[t >= lo], y[t >= lo], ".", ms=2, color="k", label="training")
    a.plot(t_test, y_test, ".", ms=2, color="C3", label="held out")
    plotting.mark_forecast_start(a, split)
    a.set_ylabel("CO2 (ppm)")
ax[0, 0].legend(loc="upper left", fontsize=8)
ax[0, 0].set_title("Mauna Loa CO2: whole record (top), the last six years and the 5-year forecast (bottom)", fontsize=9)
ax[1, 0].set_xlabel("year")
plotting.save(fig, os.path.join(OUT, "forecast.png"))

# %% [markdown]
# ## Sequential vs parallel-in-time schedules (same numbers; speed depends on the device)

# %%
sections.start("Sequential vs parallel-in-time schedules")
timings = {}
for par in (False, True):
    f = jax.jit(lambda p, par=par: build(p).log_likelihood(yj, parallel=par))
    jax.block_until_ready(f(params))
    ts = []
    for _ in range(3 if SMOKE else 10):
        t1 = time.perf_counter()
        jax.block_until_ready(f(params))
        ts.append(time.perf_counter() - t1)
    timings["parallel" if par else "sequential"] = (1e3 * float(np.median(ts)), float(f(params)))
for name, (ms, val) in timings.items():
    print(f"{name:>10}: {ms:7.2f} ms   log-likelihood {val:.6f}  ({jax.default_backend()})")

# %%
metrics = {
    "log_likelihood": ll,
    "forecast_rmse": rmse,
    "forecast_nlpd": nlpd,
    "forecast_coverage_95": cover,
    "loss_first": trace[0],
    "loss_last": trace[-1],
    "seq_ms": timings["sequential"][0],
    "par_ms": timings["parallel"][0],
    "seq_par_abs_diff": abs(timings["sequential"][1] - timings["parallel"][1]),
    "n_train": int(train.sum()),
}
metrics["section_seconds"] = sections.stop()
if os.environ.get("PROBDYN_METRICS"):
    with open(os.environ["PROBDYN_METRICS"], "w") as fh:
        json.dump(metrics, fh, indent=2)
print(json.dumps(metrics, indent=2))
