# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Markovian GP-VAE on rotating digits with missing frames
#
# Each sequence is a scikit-learn digit (upsampled to 16x16) rotating at a random speed,
# filmed at irregular times; half of the frames are missing. The Markovian GP-VAE
# (Zhu, Balsells Rodas & Li, ICML 2023; `probdyn.models.mgpvae`) gives every latent channel a
# Matern-3/2 GP prior, turns each observed frame into Gaussian *sites* with a CNN encoder and
# computes the latent posterior with the Kalman smoother in O(T). We compare its imputations
# of the missing frames with per-pixel linear interpolation in time and with a VAE that has
# the same encoder/decoder but an i.i.d. N(0, I) prior per frame (no temporal information,
# so a missing frame is imputed by the decoded prior).
#
# Environment: `PROBDYN_SMOKE=1` (tiny sizes), `PROBDYN_OUT` (figure folder),
# `PROBDYN_METRICS=path.json` (key numbers as JSON).
# Time: the full run takes 1.7 min on 2 CPU cores (measured 2026-12-07); it prints the time of each section.
# `PROBDYN_LARGE=1` trains on 2000 videos for 8000 steps instead of 500 for 2000 (not
# timed; roughly 16x the training time). A GPU speeds up the encoder/decoder batches most;
# not timed here.

# %%
import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # float64 for the exactness check; training is float32

from probdyn import kernels, plotting  # noqa: E402
from probdyn.tutorials import Sections  # noqa: E402

sections = Sections()  # wall time per section, printed and written to the metrics
from probdyn.datasets import rotating_digits  # noqa: E402
from probdyn.models import mgpvae as mg  # noqa: E402

SMOKE = os.environ.get("PROBDYN_SMOKE", "0") == "1"
LARGE = os.environ.get("PROBDYN_LARGE", "0") == "1" and not SMOKE  # the larger setting (top of the file)
OUT = os.environ.get("PROBDYN_OUT", os.path.join("probdyn-out", "tutorials", "mgpvae_digits"))
os.makedirs(OUT, exist_ok=True)
N_TRAIN, N_TEST, T = (32, 8, 10) if SMOKE else ((2000, 200, 20) if LARGE else (500, 100, 20))
STEPS = 60 if SMOKE else (8000 if LARGE else 2000)
LATENT = 4 if SMOKE else 8
WIDTH = 64 if SMOKE else 256
t_start = time.perf_counter()

# %% [markdown]
# ## Data: rotating digits, irregular times, 50% of frames missing

# %%
sections.start("Data")
train = rotating_digits(N_TRAIN, T, missing_rate=0.5, seed=0)
test = rotating_digits(N_TEST, T, missing_rate=0.5, seed=1)
print(f"train {train.frames.shape}, observed fraction {train.mask.mean():.2f}; test {test.frames.shape}")

# %% [markdown]
# ## Models: same CNN encoder / MLP decoder, Markov-GP prior vs i.i.d. prior
# Pixel intensities are in [0, 1]; we use a Bernoulli likelihood (continuous targets) and
# Matern-3/2 channels whose lengthscales start spread out and are learned. The encoder is a
# small CNN; `make_model(..., decoder="cnn")` would give a transposed-convolution decoder,
# which at these sizes trained about 2x slower without imputing better, so we keep the MLP.
# Training runs in float32 (the exactness check below is float64).

# %%
sections.start("Models")
key = jax.random.PRNGKey(0)
k_model, k_fit, k_eval = jax.random.split(key, 3)
chan = [kernels.Matern32(ls, 1.0) for ls in np.geomspace(1.0, 30.0, LATENT)]
mgp = mg.make_model(mg.MarkovGPVAE, (16, 16), LATENT, k_model, kernel=chan, likelihood="bernoulli", width=WIDTH)
iid = mgp.to(mg.IIDVAE)
mgp, iid = mgp.astype(jnp.float32), iid.astype(jnp.float32)

fits = {}
for name, model in [("mgpvae", mgp), ("iid_vae", iid)]:
    t0 = time.perf_counter()
    fits[name] = mg.fit(
        model,
        train.times,
        train.frames,
        train.mask,
        k_fit,
        STEPS,
        batch_size=16,
        learning_rate=2e-3,
        clip_norm=10.0,
        progress_bar=not SMOKE,
        checkpoint=None if SMOKE else os.path.join(OUT, f"{name}.eqx"),
        checkpoint_every=250,
    )
    print(
        f"{name}: {STEPS} steps in {time.perf_counter() - t0:.1f} s, "
        f"loss {fits[name].losses[:10].mean():.1f} -> {fits[name].losses[-10:].mean():.1f}, "
        f"{mg.skipped_steps(fits[name])} steps skipped (non-finite gradient)"
    )
mgp, iid = fits["mgpvae"].params, fits["iid_vae"].params
print("learned lengthscales:", np.round(np.asarray(mgp.kernel.lengthscale), 2))

# %% [markdown]
# ## Exactness: Kalman ELBO vs dense-GP ELBO (float64, same parameters and noise draws)

# %%
sections.start("Exactness")
m64 = mgp.astype(jnp.float64)
tt, yy, mm = mg.check_data(m64, test.times[:4], test.frames[:4], test.mask[:4])
eps = jax.random.normal(k_eval, (4, 2, T, LATENT), jnp.float64)


@eqx.filter_jit
def both_elbos(model, tt, yy, mm, eps):
    one = lambda m: jax.vmap(lambda *a: m.elbo_terms(*a)["elbo"])(tt, yy, mm, eps)  # noqa: E731
    return one(model), one(model.to(mg.GPVAE))


a, b = both_elbos(m64, tt, yy, mm, eps)
elbo_rel = float(jnp.max(jnp.abs(a - b) / jnp.abs(b)))
print(f"max relative |ELBO_kalman - ELBO_dense| = {elbo_rel:.2e}")

# %% [markdown]
# ## Imputation of the missing test frames

# %%
sections.start("Imputation of the missing test frames")
S = 8 if SMOKE else 64
imp_mgp = np.asarray(mg.impute_batch(mgp, k_eval, test.times, test.frames, test.mask, num_samples=S))
imp_iid = np.asarray(mg.impute_batch(iid, k_eval, test.times, test.frames, test.mask, num_samples=S))
imp_lin = mg.interpolate_linear(test.times, np.nan_to_num(test.frames), test.mask)
rmse = {
    "mgpvae": mg.rmse_missing(imp_mgp, test.clean, test.mask),
    "linear_interp": mg.rmse_missing(imp_lin, test.clean, test.mask),
    "iid_vae": mg.rmse_missing(imp_iid, test.clean, test.mask),
}
for k, v in rmse.items():
    print(f"imputation RMSE (missing frames) {k:14s} {v:.4f}")

iw = {
    name: float(np.mean(mg.iw_log_likelihood_batch(m, k_eval, test.times, test.frames, test.mask, num_samples=S)))
    for name, m in [("mgpvae", mgp), ("iid_vae", iid)]
}
print("importance-weighted test log-likelihood per sequence:", {k: round(v, 1) for k, v in iw.items()})

# %% [markdown]
# ## Image grid: truth, observed, imputations

# %%
sections.start("Image grid")
i = 0
rows = [
    ("truth", test.clean[i]),
    ("observed", np.where(test.mask[i][:, None, None], test.clean[i], np.nan)),
    ("MGPVAE", imp_mgp[i]),
    ("linear interp.", imp_lin[i]),
    ("i.i.d. VAE", imp_iid[i]),
]
fig, axes = plotting.new_figure(len(rows), T, panel=(0.9, 1.0))
for r, (label, imgs) in enumerate(rows):
    for t in range(T):
        ax = axes[r, t]
        ax.imshow(imgs[t], cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if not test.mask[i, t]:
            for s in ax.spines.values():
                s.set_color("red")
        if t == 0:
            ax.set_ylabel(label, fontsize=7)
        if r == 0:
            ax.set_title(f"t={test.times[i, t]:.1f}", fontsize=6)
fig.suptitle("missing frames outlined in red", fontsize=9)
plotting.save(fig, os.path.join(OUT, "imputations.png"))

fig, ax = plotting.new_figure(panel=(5.0, 3.0))
for name, f in fits.items():
    ax[0, 0].plot(f.losses, label=name, lw=0.8)
ax[0, 0].set(xlabel="training step", ylabel="-ELBO per observed frame (nats)")
ax[0, 0].legend()
plotting.save(fig, os.path.join(OUT, "training.png"))

# %% [markdown]
# ## Metrics

# %%
sections.start("Metrics")
metrics = {
    "smoke": SMOKE,
    "num_train": N_TRAIN,
    "num_frames": T,
    "steps": STEPS,
    "impute_rmse_mgpvae": rmse["mgpvae"],
    "impute_rmse_linear_interp": rmse["linear_interp"],
    "impute_rmse_iid_vae": rmse["iid_vae"],
    "elbo_kalman_vs_dense_rel_diff": elbo_rel,
    "iw_loglik_mgpvae": iw["mgpvae"],
    "iw_loglik_iid_vae": iw["iid_vae"],
    "skipped_steps_mgpvae": mg.skipped_steps(fits["mgpvae"]),
    "loss_first": float(fits["mgpvae"].losses[:10].mean()),
    "loss_last": float(fits["mgpvae"].losses[-10:].mean()),
    "wall_time_s": time.perf_counter() - t_start,
}
print(json.dumps(metrics, indent=1))
metrics["section_seconds"] = sections.stop()
if os.environ.get("PROBDYN_METRICS"):
    with open(os.environ["PROBDYN_METRICS"], "w") as f:
        json.dump(metrics, f, indent=1)
