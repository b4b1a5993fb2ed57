# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Gauss–Markov variational posteriors for a double-well SDE (natural gradients)
#
# We observe a double-well diffusion $dx = 4x(c - x^2)\,dt + dW$ at 32 sparse times with
# noise sd 0.01 (split 0 of the `dw` benchmark of Verma, Adam & Solin, AISTATS 2024) and
# approximate the path posterior by a Gauss–Markov process: the linearised prior (re-linearised
# along the posterior) times data sites and path ("Girsanov") sites, fitted by natural-gradient
# (CVI) steps (`probdyn.models.sde_posteriors`). We check (1) that for a linear SDE one
# $\rho=1$ step gives the exact Markov-GP posterior, (2) the double-well posterior against an
# independent particle smoother on the same grid, and the gain from the path sites, and (3)
# learn $c$ by variational EM from a wrong start.
#
# Environment: `PROBDYN_SMOKE=1` (tiny sizes), `PROBDYN_OUT` (figure folder),
# `PROBDYN_METRICS=path.json` (key numbers as JSON).
# Time: the full run takes 62 s on 2 CPU cores (measured 2026-12-07); it prints the time of each section.
# `PROBDYN_LARGE=1` uses a 4x finer grid (dt = 0.005) and a 10000-particle reference with 8
# repeats (not timed). On a GPU the particle smoother's propagation is the part that gains;
# not timed here.

# %%
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from probdyn import MarkovGP, kernels, plotting  # noqa: E402
from probdyn.tutorials import Sections  # noqa: E402

sections = Sections()  # wall time per section, printed and written to the metrics
from probdyn.datasets import vgpdp_split  # noqa: E402
from probdyn.inference.gaussian_filters import particle_smoother_scalar  # noqa: E402
from probdyn.models import sde_posteriors as sg  # noqa: E402
from probdyn.sde.base import SDE  # noqa: E402

SMOKE = os.environ.get("PROBDYN_SMOKE", "0") == "1"
LARGE = os.environ.get("PROBDYN_LARGE", "0") == "1" and not SMOKE  # the larger setting (top of the file)
OUT = os.environ.get("PROBDYN_OUT", os.path.join("probdyn-out", "tutorials", "sparse_gp_sde_double_well"))
os.makedirs(OUT, exist_ok=True)
DT = 0.1 if SMOKE else (0.005 if LARGE else 0.02)
PARTICLES, REPS = (300, 2) if SMOKE else ((10000, 8) if LARGE else (2000, 4))
EM_STEPS = 8 if SMOKE else 30
metrics = {"smoke": SMOKE, "dt": DT}
t_start = time.perf_counter()

# %% [markdown]
# ## 1. Linear check: Ornstein–Uhlenbeck
# For $dx = -\theta x\,dt + dW$ statistical linearisation is exact and there are no path sites,
# so one natural-gradient step with $\rho = 1$ from the prior must reproduce the GP posterior
# with the OU (Matérn-1/2) kernel computed by `MarkovGP`.

# %%
sections.start("Linear check")
ou = vgpdp_split("linear", 0)
theta, q_ou, s_ou = float(ou["decay"]), float(ou["Q"]), float(ou["sigma"])
t_ou, y_ou = ou["observation_grid"], ou["observations"][:, 0]
var_ou = q_ou / (2 * theta)
ou_model = sg.SparseGPSDE(
    SDE(sg.OUDrift(jnp.asarray(theta)), np.sqrt(q_ou) * np.ones(1), 1),
    t_ou,
    y_ou,
    obs_noise=s_ou**2,
    dt=0.05,
    t_span=(0.0, 10.0),
    initial_cov=[[var_ou]],
)
st_ou, _ = ou_model.fit_posterior(num_iters=1, rho=1.0)
post_ou = ou_model.posterior(st_ou)
gp = MarkovGP(kernels.Matern12(lengthscale=1 / theta, variance=var_ou), t_ou, noise=s_ou**2)
mu_gp, var_gp = gp.predict(jnp.asarray(y_ou), np.asarray(ou_model.grid))
metrics["ou_one_step_max_abs_diff"] = float(
    max(np.max(np.abs(post_ou.mean[:, 0] - mu_gp)), np.max(np.abs(post_ou.cov[:, 0, 0] - var_gp)))
)
print("OU: max |one CVI step - exact GP posterior| =", metrics["ou_one_step_max_abs_diff"])

# %% [markdown]
# ## 2. Double well: variational posterior vs a particle smoother
# The reference is a bootstrap particle filter with forward-filter backward-smoothing (FFBSm)
# marginals on the same Euler grid, repeated with independent seeds for its Monte Carlo error.

# %%
sections.start("Double well")
dw = vgpdp_split("dw", 0)
q_dw, s_dw, x0 = float(dw["Q"]), float(dw["sigma"]), float(dw["x0"])
# The file's `decay` field (0.5) is *not* the well parameter: regressing the increments of the
# simulated fine-grid latent path on (x, x^3) gives 4.16 x - 4.06 x^3, i.e. 4 x (1 - x^2).
_x, _t = dw["latent_process"][:, 0], dw["time_grid"]
_coef = np.linalg.lstsq(np.stack([_x[:-1], _x[:-1] ** 3], 1), np.diff(_x) / np.diff(_t), rcond=None)[0]
metrics["dw_drift_regression_coefficients"] = [float(v) for v in _coef]
c_true = 1.0
t_obs, y_obs = dw["observation_grid"], dw["observations"][:, 0]
t_test, y_test = dw["test_grid"], dw["test_observations"][:, 0]
T_END = float(max(t_obs[-1], t_test[-1]))
grid = sg.make_grid(0.0, T_END, DT, include=np.concatenate([t_obs, t_test]))
sde = SDE(sg.DoubleWellDrift(jnp.asarray(c_true)), np.sqrt(q_dw) * np.ones(1), 1)
P0 = 0.01
model = sg.SparseGPSDE(sde, t_obs, y_obs, obs_noise=s_dw**2, grid=grid, initial_mean=[x0], initial_cov=[[P0]])
t0 = time.perf_counter()
state, trace = model.fit_posterior(num_iters=60, rho=1.0, grow=2.0, atol=1e-8)
metrics["cvi_time_s"] = time.perf_counter() - t0
metrics["cvi_iters"] = int(len(trace.rho))
metrics["cvi_backoffs"] = int(trace.num_backoffs)
metrics["elbo"] = float(trace.elbo[-1])
# the same family without the path sites (q = linearised prior x data sites, a fixed-point scheme)
nopath = sg.SparseGPSDE(
    sde, t_obs, y_obs, obs_noise=s_dw**2, grid=grid, initial_mean=[x0], initial_cov=[[P0]], path_sites=False
)
st_np, tr_np = nopath.fit_posterior(num_iters=60, rho=1.0, grow=2.0, atol=1e-8)
metrics["elbo_without_path_sites"] = float(model.elbo(st_np))  # the same ELBO, evaluated at that q
post = model.posterior(state)
lp = model.predictive_log_density(state, t_test, y_test)
mt, _ = model.marginals(state, t_test)
metrics["dw_test_nlpd"] = float(-np.mean(lp))
metrics["dw_test_rmse"] = float(np.sqrt(np.mean((np.asarray(mt[:, 0]) - y_test) ** 2)))
print("CVI:", metrics["dw_test_nlpd"], metrics["dw_test_rmse"], "ELBO", trace.elbo[-1])

# %% [markdown]
# The reference: `gaussian_filters.particle_smoother_scalar` (bootstrap PF + FFBSm on the same grid).

# %%
g = jnp.asarray(grid)
obs_idx = jnp.asarray(np.searchsorted(grid, t_obs))
test_idx = np.searchsorted(grid, t_test)
drift_np = lambda x: 4 * x * (c_true - x**2)  # noqa: E731
run_pf = jax.jit(
    lambda k: particle_smoother_scalar(k, drift_np, q_dw, s_dw, g, obs_idx, jnp.asarray(y_obs), x0, P0, PARTICLES)
)
t0 = time.perf_counter()
ref_m, ref_v, ref_nlpd = [], [], []
for r in range(REPS):
    X, W = run_pf(jax.random.PRNGKey(100 + r))
    m_r = jnp.sum(W * X, 1)
    ref_m.append(np.asarray(m_r))
    ref_v.append(np.asarray(jnp.sum(W * X**2, 1) - m_r**2))
    lpk = jax.scipy.special.logsumexp(
        jnp.log(W[test_idx] + 1e-300) - 0.5 * (y_test[:, None] - X[test_idx]) ** 2 / s_dw**2, axis=1
    ) - 0.5 * np.log(2 * np.pi * s_dw**2)
    ref_nlpd.append(float(-jnp.mean(lpk)))
metrics["reference_time_s"] = time.perf_counter() - t0
ref_m, ref_v = np.stack(ref_m), np.stack(ref_v)
se_m = ref_m.std(0, ddof=1) / np.sqrt(REPS)
metrics["dw_reference_test_nlpd"] = float(np.mean(ref_nlpd))
metrics["dw_reference_test_nlpd_mc_se"] = float(np.std(ref_nlpd, ddof=1) / np.sqrt(REPS))
metrics["dw_mean_abs_diff_max"] = float(np.max(np.abs(post.mean[:, 0] - ref_m.mean(0))))
metrics["dw_mean_abs_diff_median"] = float(np.median(np.abs(post.mean[:, 0] - ref_m.mean(0))))
metrics["dw_reference_mean_mc_se_max"] = float(se_m.max())
metrics["dw_sd_ratio_median"] = float(np.median(np.sqrt(post.cov[:, 0, 0] / np.maximum(ref_v.mean(0), 1e-12))))
print({k: metrics[k] for k in metrics if k.startswith("dw")})

# %%
fig, ax = plotting.new_figure(panel=(10.0, 4.0))
ax = ax[0, 0]
plotting.band(ax, grid, np.asarray(post.mean[:, 0]), np.sqrt(np.asarray(post.cov[:, 0, 0])), label="CVI mean")
rs = np.sqrt(ref_v.mean(0))
ax.plot(grid, ref_m.mean(0), "k--", lw=1, label="particle smoother mean")
ax.plot(grid, ref_m.mean(0) + 2 * rs, "k:", lw=0.8, label="particle smoother ±2 sd")
ax.plot(grid, ref_m.mean(0) - 2 * rs, "k:", lw=0.8)
ax.plot(dw["time_grid"], dw["latent_process"][:, 0], color="gray", lw=0.5, label="latent path")
ax.plot(t_obs, y_obs, "r.", label="train")
ax.plot(t_test, y_test, "gx", label="test")
fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=7, fontsize=8)
ax.set(xlabel="time t", ylabel="state x(t)", title="double well: CVI Gauss-Markov posterior vs particle smoother")
plotting.save(fig, os.path.join(OUT, "posterior_vs_reference.png"))

# %% [markdown]
# ### Is CVI at the best posterior of its family?
# CVI spends most of its iterations backing off its step, so one may ask whether it stops short.
# `fit_posterior_direct` maximises the *same* ELBO by a route that shares nothing with CVI's
# updates: L-BFGS over the chain's forward factors, to a gradient of 1e-9, here warm-started at
# CVI's end point (a cold start from the prior reaches the same ELBO in ~11500 iterations,
# 32 s; `benchmarks/cvi_optimum.py`). A gain of rounding size means that CVI is at a
# stationary point, and the remaining gap to the particle smoother is the Gaussian family's.

# %%
st_direct, res_direct = model.fit_posterior_direct(state)
metrics["direct_elbo_gain"] = float(-res_direct.value - trace.elbo[-1])
metrics["direct_lbfgs_iters"] = int(res_direct.num_iters)
metrics["direct_test_nlpd"] = float(-np.mean(model.predictive_log_density(st_direct, t_test, y_test)))
print(
    f"L-BFGS from CVI: ELBO gain {metrics['direct_elbo_gain']:.1e} in {res_direct.num_iters} iterations;"
    f" test NLPD {metrics['direct_test_nlpd']:.3f} (CVI {metrics['dw_test_nlpd']:.3f},"
    f" particle smoother {metrics['dw_reference_test_nlpd']:.3f})"
)

# %% [markdown]
# In the full run the gain is 3.9e-7 nats in 366 L-BFGS iterations (CVI stopped at its cap of 60
# iterations; run to convergence, 86 iterations, it is 1.4e-9), and the same holds on a double-well split whose
# posterior is strongly bimodal and on a Beneš split whose posterior is nearly Gaussian
# (`benchmarks/cvi_optimum_results.md`). So the test NLPD of 0.48 against 0.31 ± 0.04 for the
# particle smoother (marginal sd ratio 0.84) is the limit of a Gauss–Markov posterior on this
# path, not the optimiser's: a Gaussian cannot put mass in both wells. The VGPA baseline on the
# same grid gives 0.41 (sd ratio 0.89); its ELBO is of a different (Euler–Maruyama) model.

# %% [markdown]
# ## 3. Learning the double-well parameter by variational EM
# Start at $c = 0.5$ (the truth is $c = 1$, see above). Each step is an M-step (an L-BFGS
# step on $-\mathrm{ELBO}$ in $\log c$ at fixed $q$) followed by an E-step (CVI to
# convergence, warm started), i.e. quasi-Newton ascent on the collapsed objective
# $\max_q \mathrm{ELBO}(c)$. Its curvature at the optimum gives a Laplace standard error.

# %%
sections.start("Learning the double-well parameter by variational EM")
c_init = 0.5
model0 = sg.SparseGPSDE(
    SDE(sg.DoubleWellDrift(jnp.asarray(c_init)), np.sqrt(q_dw) * np.ones(1), 1),
    t_obs,
    y_obs,
    obs_noise=s_dw**2,
    grid=grid,
    initial_mean=[x0],
    initial_cov=[[P0]],
)
t0 = time.perf_counter()
fitted, st_fit, em = model0.fit(jax.random.PRNGKey(0), num_steps=EM_STEPS, progress_bar=not SMOKE)
metrics["em_time_s"] = time.perf_counter() - t0
c_hat = float(fitted.sde.drift.c)
metrics["learned_parameter"] = c_hat
metrics["true_parameter"] = c_true
metrics["initial_parameter"] = c_init
metrics["elbo_first_last"] = [float(em.elbo[0]), float(em.elbo[-1])]
metrics["em_parameter_trace"] = [float(p.sde.drift.c) for p in em.params]
if not SMOKE:
    import equinox as eqx

    def collapsed(c):
        m = eqx.tree_at(lambda mm: mm.sde.drift.c, fitted, jnp.asarray(c))
        return m.fit_posterior(st_fit, 60, grow=2.0, atol=1e-10)[1].elbo[-1]

    h = 0.02
    F = [collapsed(c_hat - h), collapsed(c_hat), collapsed(c_hat + h)]
    metrics["learned_parameter_laplace_sd"] = float(1.0 / np.sqrt(-(F[0] - 2 * F[1] + F[2]) / h**2))
print("learned c =", c_hat, "true c =", c_true, "Laplace sd", metrics.get("learned_parameter_laplace_sd"))

fig, axs = plotting.new_figure(1, 2, panel=(5.0, 3.5))
axs = axs[0]
xx = np.linspace(-1.5, 1.5, 200)
axs[0].plot(xx, 4 * xx * (c_true - xx**2), "k", label=f"true drift (c={c_true})")
axs[0].plot(
    xx, 4 * xx * (metrics["learned_parameter"] - xx**2), "C1--", label=f"learned (c={metrics['learned_parameter']:.3f})"
)
axs[0].plot(xx, 4 * xx * (c_init - xx**2), "C2:", label=f"initial (c={c_init})")
axs[0].legend(fontsize=8)
axs[0].set(xlabel="state x", ylabel="drift f(x) = 4x(c - x²)")
axs[1].plot(em.elbo)
axs[1].set(xlabel="variational-EM step", ylabel="ELBO (after the E-step)")
plotting.save(fig, os.path.join(OUT, "learned_drift.png"))

# %%
metrics["wall_time_s"] = time.perf_counter() - t_start
metrics["section_seconds"] = sections.stop()
if os.environ.get("PROBDYN_METRICS"):
    with open(os.environ["PROBDYN_METRICS"], "w") as f:
        json.dump(metrics, f, indent=1)
print(json.dumps(metrics, indent=1))
