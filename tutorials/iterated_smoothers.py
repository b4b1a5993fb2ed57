# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Iterated smoothers: when one linearisation is not enough
#
# The single-pass extended Kalman smoother (EKS) linearises the model once, at each state's
# *filtered* estimate. With a poor prior, precise observations and a strongly nonlinear
# observation function, those early estimates are far off, the linearisation is wrong and
# the smoother is confidently wrong. The **iterated extended Kalman smoother** (IEKS:
# Gauss–Newton / Levenberg–Marquardt on the MAP path, Bell 1994; Särkkä & Svensson 2020)
# re-linearises at the whole smoothed path until it stops moving; the **iterated
# posterior-linearisation smoother** (IPLS, García-Fernández, Svensson & Särkkä 2017)
# replaces the Taylor expansion by sigma-point regression under the current smoothing
# marginals. Each iteration is one linear-Gaussian smoother of the Kalman engine,
# sequential or parallel in time.
#
# We (1) smooth a pendulum observed through `sin(angle)` with a poor prior, over many
# simulated data sets, and score each smoother against the truth (error, and the normalised
# error that says whether its covariances are honest), (2) check that the parallel-in-time
# schedule gives the same numbers, and (3) learn the pendulum's gravity from the data with
# the marginal likelihood linearised at the MAP path (`IteratedSmootherDistribution`,
# gradients by implicit differentiation), against a bootstrap particle filter's estimate of
# the same likelihood, by L-BFGS and by NUTS.
#
# Environment: `PROBDYN_SMOKE=1` (tiny sizes), `PROBDYN_OUT` (figure folder),
# `PROBDYN_METRICS=path.json` (key numbers as JSON).
# Time: the full run takes 118 s on 2 CPU cores (measured 2026-12-07); it prints the time of each section.
# `PROBDYN_LARGE=1` scores 100 data sets instead of 20 (not timed). A GPU runs the parallel
# schedule in O(log T) depth; the series here are short (400 steps) and it changes little.

# %%
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import numpyro  # noqa: E402
import scipy.optimize  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from probdyn import plotting  # noqa: E402
from probdyn.inference import gaussian_filters as gf  # noqa: E402
from probdyn.tutorials import Sections  # noqa: E402

sections = Sections()  # wall time per section, printed and written to the metrics
SMOKE = os.environ.get("PROBDYN_SMOKE", "0") == "1"
LARGE = os.environ.get("PROBDYN_LARGE", "0") == "1" and not SMOKE  # the larger setting (top of the file)
OUT = os.environ.get("PROBDYN_OUT", os.path.join("probdyn-out", "tutorials", "iterated_smoothers"))
os.makedirs(OUT, exist_ok=True)
T = 120 if SMOKE else 400
NUM_DATASETS = 3 if SMOKE else (100 if LARGE else 20)
NUM_PARTICLES, PF_SEEDS = (500, 2) if SMOKE else (4000, 8)
NUTS_SIZES = dict(num_warmup=30, num_samples=30) if SMOKE else dict(num_warmup=300, num_samples=500)
metrics = {"smoke": SMOKE, "T": T, "num_datasets": NUM_DATASETS}

# %% [markdown]
# ## 1. A pendulum seen through `sin`, with a poor prior
# State `x = (angle, rate)`, an Euler step of `angle'' = -g sin(angle)` with white-noise
# acceleration (spectral density `q`), observed as `y_k = sin(angle_k) + N(0, r)` every
# `dt = 0.0125`. The pendulum swings to 1.5 rad, where `sin` is flat and its slope says
# little; the observations are precise (`r = 1e-3`) and the prior is poor: the pendulum is
# released from rest (rate sd 0.3 rad/s) at an angle known only roughly (prior mean 0.5,
# sd 1; the truth is 1.5). We score each smoother on `NUM_DATASETS` simulated data sets by the angle's
# RMSE against the truth and by the mean **NEES**, `e_k^T P_k^{-1} e_k` with `e_k` the error
# of the smoothed mean: it averages 2 (the state dimension) when the covariances are honest.

# %%
sections.start("Smoothing")
DT, Q_SHAPE = 0.0125, np.array([[0.0125**3 / 3, 0.0125**2 / 2], [0.0125**2 / 2, 0.0125]])
G_TRUE, Q_TRUE, R_TRUE = 9.81, 0.3, 1e-3
M0, P0 = np.array([0.5, 0.0]), np.diag([1.0, 0.1])


def pendulum(g):
    """The transition f(x, k) for gravity g."""
    return lambda x, k: jnp.stack([x[0] + DT * x[1], x[1] - g * jnp.sin(x[0]) * DT])


def observe(x, k):
    return jnp.sin(x[:1])


Q, R = Q_TRUE * Q_SHAPE, np.array([[R_TRUE]])
f_true = pendulum(G_TRUE)


def simulate(seed):
    rng = np.random.default_rng(seed)
    x = np.zeros((T, 2))
    x[0] = [1.5, 0.0]
    L = np.linalg.cholesky(Q)
    for k in range(T - 1):
        x[k + 1] = np.asarray(f_true(x[k], k)) + L @ rng.normal(size=2)
    return x, np.sin(x[:, :1]) + np.sqrt(R_TRUE) * rng.normal(size=(T, 1))


SMOOTHERS = {
    "EKS (one pass)": lambda y: gf.iterated_smoother(f_true, Q, observe, R, y, M0, P0, num_iters=0),
    "IEKS": lambda y: gf.iterated_smoother(f_true, Q, observe, R, y, M0, P0, num_iters=100),
    "IPLS (cubature)": lambda y: gf.iterated_posterior_linearisation_smoother(f_true, Q, observe, R, y, M0, P0),
}
scores = {name: {"rmse": [], "nees": [], "iters": []} for name in SMOOTHERS}
example = {}
for seed in range(NUM_DATASETS):
    x_true, y = simulate(seed)
    for name, run in SMOOTHERS.items():
        res = run(y)
        e = np.asarray(res.mean) - x_true
        scores[name]["rmse"].append(float(np.sqrt(np.mean(e[:, 0] ** 2))))
        scores[name]["nees"].append(float(np.mean(np.einsum("ti,tij,tj->t", e, np.linalg.inv(res.cov), e))))
        steps = len(res.objective) - 1 if hasattr(res, "objective") else len(res.change)
        scores[name]["iters"].append(steps)
        if seed == 0:
            example[name] = (np.asarray(res.mean), np.sqrt(np.asarray(res.cov)[:, 0, 0]))
    if seed == 0:
        example["truth"], example["y"] = x_true, y

print(f"{NUM_DATASETS} data sets, T = {T}:    angle RMSE (median)   mean NEES (median; honest: 2)   iterations")
for name, s in scores.items():
    print(f"  {name:16s}  {np.median(s['rmse']):18.4f}  {np.median(s['nees']):26.2f}  {np.median(s['iters']):12.0f}")
metrics["rmse_median"] = {k: float(np.median(v["rmse"])) for k, v in scores.items()}
metrics["nees_median"] = {k: float(np.median(v["nees"])) for k, v in scores.items()}
metrics["iterations_median"] = {k: float(np.median(v["iters"])) for k, v in scores.items()}

# %% [markdown]
# The figure shows the first data set: the angle with ±2 sd bands (top) and the error of
# each smoother in units of its own standard deviation (bottom), where an honest smoother
# stays inside ±2 most of the time. The IEKS and IPLS lines lie on top of each other.

# %%
t = DT * np.arange(T)
fig, axes = plotting.new_figure(2, 1, panel=(9.0, 3.0), sharex=True)
ax = axes[0, 0]
ax.plot(t, example["truth"][:, 0], color="black", lw=1.2, label="true angle")
colors = {"EKS (one pass)": "C3", "IEKS": "C0", "IPLS (cubature)": "C2"}
for name in ("EKS (one pass)", "IEKS"):
    plotting.band(ax, t, example[name][0][:, 0], example[name][1], color=colors[name], label=name, band_label=None)
ax.set_ylabel("angle (rad)")
ax.legend(fontsize=8, loc="lower left")
ax.set_title("pendulum observed through sin(angle), r = 1e-3, poor prior (mean 0.5 rad): ±2 sd bands", fontsize=9)
ax = axes[1, 0]
for name in SMOOTHERS:
    z = (example[name][0][:, 0] - example["truth"][:, 0]) / example[name][1]
    ax.plot(t, z, color=colors[name], lw=1, label=name)
ax.axhspan(-2, 2, color="gray", alpha=0.15, lw=0, label="±2")
ax.set_ylabel("error / sd")
ax.set_xlabel("time (s)")
ax.legend(fontsize=8, ncol=4, loc="upper right")
plotting.save(fig, os.path.join(OUT, "smoothers.png"))

# %% [markdown]
# ## 2. Parallel in time, same numbers
# Every iteration is a linear-Gaussian smoothing problem, so the engine's parallel schedule
# (associative scans: Yaghoobi, Corenflos, Hassan & Särkkä 2021/2022) runs it in O(log T)
# depth on a GPU. On a CPU it only has to give the same path.

# %%
sections.start("Parallel schedule")
y0 = example["y"]
seq = gf.iterated_smoother(f_true, Q, observe, R, y0, M0, P0, parallel=False)
par = gf.iterated_smoother(f_true, Q, observe, R, y0, M0, P0, parallel=True)
metrics["seq_par_max_abs_diff"] = float(np.max(np.abs(np.asarray(seq.mean) - np.asarray(par.mean))))
print(f"IEKS sequential vs parallel: largest difference of the MAP path {metrics['seq_par_max_abs_diff']:.1e}")

# %% [markdown]
# ## 3. Learning gravity with the linearised likelihood
# `gf.linearised_log_likelihood` is the exact marginal likelihood of the model linearised at
# the MAP path (the Gauss–Newton Laplace approximation of `log p(y | g)`); its gradient
# comes from implicit differentiation at the smoother's fixed point. We compare its profile
# over `g` with a bootstrap particle filter's estimate of `log p(y | g)` (mean ± 2 se over
# independent seeds), then fit `g` by L-BFGS and sample it by NUTS with
# `gf.IteratedSmootherDistribution` as the numpyro likelihood (prior `g ~ N(10, 2)`).
#
# The value is only as good as the minimum of the MAP objective the smoother reaches. Started
# at the one-pass EKS (the default), at small `g` the start lies in another basin and the
# likelihood drops off a cliff (the red crosses, off the bottom of the panel); warm-started at
# the MAP path for `g = 10` (`init=`), it stays on the right branch everywhere on the grid.

# %%
sections.start("Learning gravity")


X_WARM = np.asarray(gf.iterated_smoother(pendulum(10.0), Q, observe, R, y0, M0, P0).mean)  # MAP path at g = 10


@jax.jit
def lin_ll(g):
    """Linearised log-likelihood, the smoother warm-started at the MAP path for g = 10."""
    return gf.linearised_log_likelihood(pendulum(g), Q, observe, R, y0, M0, P0, init=X_WARM)


@jax.jit
def lin_ll_cold(g):
    """The same, the smoother started at the single-pass EKS (the default)."""
    return gf.linearised_log_likelihood(pendulum(g), Q, observe, R, y0, M0, P0)


gaussian_obs = gf.LogDensity(
    lambda y, x: -0.5 * (y - jnp.sin(x[:1])) ** 2 / R_TRUE - 0.5 * jnp.log(2 * jnp.pi * R_TRUE), obs_dim=1
)


@jax.jit
def pf_ll(g, key):
    return gf.particle_filter((pendulum(g), Q), gaussian_obs, None, y0, M0, P0, key, num_particles=NUM_PARTICLES)


grid = np.linspace(8.6, 11.0, 9 if SMOKE else 17)
lin = np.array([float(lin_ll(g)) for g in grid])
lin_cold = np.array([float(lin_ll_cold(g)) for g in grid])
keys = jax.random.split(jax.random.PRNGKey(0), PF_SEEDS)
pf = np.array([[float(pf_ll(g, k)) for k in keys] for g in grid])
pf_mean, pf_se = pf.mean(1), pf.std(1, ddof=1) / np.sqrt(PF_SEEDS)
shift = np.max(lin)  # plot relative to the linearised maximum
metrics["lin_minus_pf_max_abs"] = float(np.max(np.abs(lin - pf_mean)))
metrics["pf_se_median"] = float(np.median(pf_se))
metrics["cold_start_max_drop"] = float(np.max(lin - lin_cold))
print(f"largest |linearised - particle| over the grid: {metrics['lin_minus_pf_max_abs']:.2f} nats")
print(f"started at the one-pass EKS instead: up to {metrics['cold_start_max_drop']:.1f} nats lower")
print(f"(particle filter: {NUM_PARTICLES} particles, median se {metrics['pf_se_median']:.2f} nats)")

lin_ll_and_grad = jax.jit(jax.value_and_grad(lin_ll))  # compiled once for every L-BFGS step
opt = scipy.optimize.minimize(
    lambda g: tuple(-np.asarray(v, float) for v in lin_ll_and_grad(g[0])),
    x0=np.array([10.0]),
    jac=True,
    method="L-BFGS-B",
)
g_map = float(opt.x[0])
h = 1e-3
curv = -(float(lin_ll(g_map + h)) - 2 * float(lin_ll(g_map)) + float(lin_ll(g_map - h))) / h**2
metrics["g_map"], metrics["g_laplace_sd"] = g_map, float(1 / np.sqrt(curv))
print(f"L-BFGS (implicit gradients): g = {g_map:.3f} (Laplace sd {metrics['g_laplace_sd']:.3f}; truth {G_TRUE})")


def model(y):
    g = numpyro.sample("g", numpyro.distributions.Normal(10.0, 2.0))
    lik = gf.IteratedSmootherDistribution(pendulum(g), Q, observe, R, M0, P0, num_timesteps=T, init=X_WARM)
    numpyro.sample("y", lik, obs=y)


mcmc = MCMC(NUTS(model), **NUTS_SIZES, progress_bar=False)
mcmc.run(jax.random.PRNGKey(1), jnp.asarray(y0))
g_draws = np.asarray(mcmc.get_samples()["g"])
metrics["g_nuts_mean"], metrics["g_nuts_sd"] = float(g_draws.mean()), float(g_draws.std())
print(f"NUTS: g = {g_draws.mean():.3f} ± {g_draws.std():.3f} ({g_draws.size} draws)")

fig, axes = plotting.new_figure(1, 2, panel=(4.6, 3.3))
ax = axes[0, 0]
ax.plot(grid, lin - shift, "o-", color="C0", ms=3, label="linearised at the MAP path")
ax.plot(grid, lin_cold - shift, "x--", color="C3", ms=4, lw=0.8, label="same, smoother started at the EKS")
ax.errorbar(grid, pf_mean - shift, yerr=2 * pf_se, fmt="s", color="C1", ms=3, capsize=2, label="particle filter ± 2 se")
ax.axvline(G_TRUE, color="black", lw=0.8, ls="--", label="true g")
ax.set_xlabel("gravity g")
ax.set_ylabel("log p(y | g) - max (nats)")
ax.set_ylim(np.min(lin - shift) - 3, 3)
ax.legend(fontsize=7)
ax.set_title("log-likelihood profile", fontsize=9)
ax = axes[0, 1]
ax.hist(g_draws, bins=20, density=True, color="C0", alpha=0.6, label="NUTS draws")
gg = np.linspace(g_map - 4 * metrics["g_laplace_sd"], g_map + 4 * metrics["g_laplace_sd"], 200)
lap = np.exp(-0.5 * ((gg - g_map) / metrics["g_laplace_sd"]) ** 2) / (metrics["g_laplace_sd"] * np.sqrt(2 * np.pi))
ax.plot(gg, lap, color="C3", label="Laplace at the L-BFGS fit")
ax.axvline(G_TRUE, color="black", lw=0.8, ls="--")
ax.set_xlabel("gravity g")
ax.set_ylabel("density")
ax.legend(fontsize=7)
ax.set_title("posterior of g", fontsize=9)
plotting.save(fig, os.path.join(OUT, "learning_gravity.png"))

# %% [markdown]
# ## What we saw
# With a poor prior and precise observations through a flat `sin`, the one-pass EKS starts
# from the wrong linearisation and does not recover from it over the first swing: in the full
# run (20 data sets, T = 400) its median angle RMSE is 0.037 rad against 0.018 for the IEKS
# and 0.017 for the IPLS, and its mean NEES 4.3 against the honest 2 (1.98 and 1.97): the
# first steps are 8 sd off. The iterated smoothers get there in 8 and 12 iterations, and the
# parallel schedule gives the same path (2e-14). The likelihood linearised at the MAP path
# tracks the particle filter's (4000 particles, 8 seeds) within 1.7 nats over the grid, and
# lies a little above it near the top, as it should: a particle filter's log-likelihood
# estimate is biased low by about half its variance. It is smooth in `g`, so L-BFGS
# (g = 9.44, Laplace sd 0.33) and NUTS (9.46 ± 0.34) can use its implicit gradient. Started
# at the one-pass EKS instead of the warm path, it fell 252 nats for g <= 9.2 (another basin).
#
# **Where iterating does not help.** `sin(angle) = sin(pi - angle)`: with a vague prior on the
# rate as well (say variance 1), some data sets are explained about as well by a pendulum that
# swings over the top, and every Gaussian smoother here, iterated or not, settles on that other
# mode (an error of hundreds of standard deviations). Iterations fix a wrong linearisation,
# not a wrong mode: a multimodal posterior needs a particle smoother or a better prior.

# %%
print(json.dumps(metrics, indent=1, default=float))
metrics["section_seconds"] = sections.stop()
if os.environ.get("PROBDYN_METRICS"):
    with open(os.environ["PROBDYN_METRICS"], "w") as f:
        json.dump(metrics, f, indent=1, default=float)
