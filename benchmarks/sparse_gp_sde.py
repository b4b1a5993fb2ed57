"""Benchmarks for probdyn.models.sparse_gp_sde.

1. vgpdp data (Verma, Adam & Solin, AISTATS 2024; ../shared/data/vgpdp): test NLPD and RMSE over
   the 5 splits (mean ± sd) for (a) the Gauss–Markov CVI posterior with the data set's SDE
   (drift parameters read from the file) and (b) Markov-GP regression with a Matérn-3/2 kernel
   (hyperparameters and noise by maximum marginal likelihood with Adam, through the core).
2. Cost: seconds per natural-gradient iteration vs the number of grid points N (dense) and vs
   the number of inducing times M (sparse).

Run: ``PYTHONPATH=. python benchmarks/sparse_gp_sde.py [--quick]``; writes
``benchmarks/sparse_gp_sde_results.md`` (and prints it).
"""

from __future__ import annotations

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from probdyn import MarkovGP, kernels  # noqa: E402
from probdyn.inference.optimize import fit  # noqa: E402
from probdyn.models import sparse_gp_sde as sg  # noqa: E402
from probdyn.sde.base import SDE  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "vgpdp")
if not os.path.isdir(DATA):
    DATA = "/work/shared/data/vgpdp"
SETS = {"OU": "linear/15", "double well": "dw/3", "Beneš": "benes/7", "sine": "sine/69", "sqrt": "sqrt/53"}


def drift_for(name, f):
    if name == "ou":
        return sg.OUDrift(jnp.asarray(float(f["decay"])))
    if name == "dw":  # the file's `decay` is not the well parameter: the latent path has 4x(1 - x^2)
        return sg.DoubleWellDrift(jnp.asarray(1.0))
    return {"benes": sg.BenesDrift, "sine": sg.SineDrift, "sqrt": sg.SqrtDrift}[name]()


def run_cvi(f, dt, iters, extra_times=()):
    name = str(f["sde"])
    t, y = f["observation_grid"], f["observations"][:, 0]
    tt, yt = f["test_grid"], f["test_observations"][:, 0]
    x0 = float(np.asarray(f["x0"]).reshape(-1)[0])
    q = float(np.asarray(f["Q"]).reshape(-1)[0])
    # one grid per data set (union of all splits' times), so the 5 splits share one compilation
    inc = np.concatenate([t, tt, np.asarray(extra_times)])
    grid = sg.make_grid(0.0, float(inc.max()), dt, include=inc)
    sde = SDE(drift_for(name, f), np.sqrt(q) * np.ones(1), 1)
    m = sg.SparseGPSDE(sde, t, y, obs_noise=float(f["sigma"]) ** 2, grid=grid, initial_mean=[x0],
                       initial_cov=[[0.01]])
    st, _ = m.fit_posterior(num_iters=iters, rho=1.0, grow=1.5)
    lp = m.predictive_log_density(st, tt, yt)
    mu, _ = m.marginals(st, tt)
    return float(-np.mean(lp)), float(np.sqrt(np.mean((np.asarray(mu[:, 0]) - yt) ** 2)))


class _GPParams(eqx.Module):
    log_ell: jax.Array
    log_var: jax.Array
    log_noise: jax.Array


def run_gp(f, steps):
    t, y = f["observation_grid"], f["observations"][:, 0]
    tt, yt = f["test_grid"], f["test_observations"][:, 0]
    mean = float(np.mean(y))

    def gp_of(p):
        k = kernels.Matern32(lengthscale=jnp.exp(p.log_ell), variance=jnp.exp(p.log_var))
        return MarkovGP(k, t, noise=jnp.exp(p.log_noise), mean=mean)

    p0 = _GPParams(jnp.asarray(0.0), jnp.asarray(np.log(np.var(y) + 1e-3)), jnp.asarray(np.log(0.1 * np.var(y) + 1e-4)))
    res = fit(lambda p, k, b: -gp_of(p).log_likelihood(jnp.asarray(y)), p0, jax.random.PRNGKey(0), steps,
              optimizer=0.05, progress_bar=False)
    g = gp_of(res.params)
    mu, var = g.predict(jnp.asarray(y), tt)
    v = np.asarray(var) + float(jnp.exp(res.params.log_noise))
    lp = -0.5 * (np.log(2 * np.pi * v) + (yt - np.asarray(mu)) ** 2 / v)
    return float(-np.mean(lp)), float(np.sqrt(np.mean((np.asarray(mu) - yt) ** 2)))


def timing(Ns, Ms, reps=3):
    rows = []
    rng = np.random.default_rng(0)
    sde = SDE(sg.DoubleWellDrift(jnp.asarray(1.0)), np.ones(1), 1)
    for N, M in [(n, None) for n in Ns] + [(Ns[-1], m) for m in Ms]:
        grid = np.linspace(0.0, N * 0.01, N)
        obs = grid[:: max(N // 200, 1)]
        y = rng.standard_normal(obs.size) * 0.3 + 1.0
        ind = None if M is None else np.linspace(0.0, grid[-1], M, endpoint=False)
        m = sg.SparseGPSDE(sde, obs, y, obs_noise=0.01, grid=grid, initial_mean=[1.0], initial_cov=[[0.1]],
                           inducing_times=ind)
        st = m.init_state()
        r = jnp.asarray(0.5)
        jax.block_until_ready(sg._jit_call("natural_gradient_step", m, st, r))
        t0 = time.perf_counter()
        for _ in range(reps):
            out = sg._jit_call("natural_gradient_step", m, st, r)
            jax.block_until_ready(out)
        rows.append((N, M, (time.perf_counter() - t0) / reps))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 splits, coarse grid")
    a = ap.parse_args()
    dt, iters, splits = (0.1, 10, 2) if a.quick else (0.1, 15, 5)
    lines = [f"## vgpdp test NLPD / RMSE over {splits} splits (mean ± sd), grid dt = {dt}, 2-core CPU", "",
             "| data | CVI Gauss–Markov NLPD | GP Matérn-3/2 NLPD | CVI RMSE | GP RMSE |", "|---|---|---|---|---|"]
    for label, folder in SETS.items():
        res = {"cvi": [], "gp": []}
        fs = [np.load(os.path.join(DATA, folder, f"{s}.npz")) for s in range(splits)]
        allt = np.concatenate([np.concatenate([f["observation_grid"], f["test_grid"]]) for f in fs])
        for f in fs:
            res["cvi"].append(run_cvi(f, dt, iters, allt))
            res["gp"].append(run_gp(f, 200))
        c, g = np.asarray(res["cvi"]), np.asarray(res["gp"])
        fmt = lambda a, j: f"{a[:, j].mean():.3f} ± {a[:, j].std(ddof=1):.3f}"  # noqa: E731
        lines.append(f"| {label} | {fmt(c, 0)} | {fmt(g, 0)} | {fmt(c, 1)} | {fmt(g, 1)} |")
        print(lines[-1], flush=True)
    Ns = [1000, 10000] if a.quick else [1000, 10000, 100000]
    Ms = [10, 100, 1000] if a.quick else [10, 100, 1000, 10000]
    rows = timing(Ns, Ms)
    lines += ["", "## seconds per natural-gradient iteration (double well, d = 1)", "", "| N grid | M inducing | s/iter |",
              "|---|---|---|"]
    lines += [f"| {N} | {'dense' if M is None else M} | {t:.4f} |" for N, M, t in rows]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(ROOT, "benchmarks", "sparse_gp_sde_results.md"), "w") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
