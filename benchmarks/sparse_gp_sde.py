"""Benchmarks for probdyn.models.sde_posteriors.

1. vgpdp data (Verma, Adam & Solin, AISTATS 2024; the folder given by --data): test NLPD and RMSE over
   the 5 splits (mean ± sd) for
   (a) the Gauss–Markov CVI posterior with the data set's SDE: drift parameters from the file
       (double well: c = 1, see the data note; Van der Pol: a, b from a regression on the
       simulated latent path), diffusion Q from the file;
   (b) the same with the drift parameters learned by variational EM from the training data
       (OU decay from 2.5, double-well c from 0.5, Van der Pol (a, b) from (5, 1));
   (c) Markov-GP regression with a Matérn-3/2 kernel per output (lengthscale, variance and
       noise by maximum marginal likelihood with Adam, through the Kalman engine);
   (d) the Archambeau et al. (2007) VGPA baseline (:mod:`probdyn.models.sde_posteriors.vgpa`) with the same
       SDE, grid, noise and initial prior as (a) (smoothing iterations to convergence).
   Real data (Apple log price, GPS track): (a) is an SDE with a learned drift (Apple: cubic
   polynomial; GPS: 2-D linear), learned diagonal diffusion and noise, fitted by variational EM;
   VGPA runs the same variational EM (same model, grid, initial values and number of steps)
   with its smoothing iterations as E-step.
   Also the ELBO gain of the path (Girsanov) sites over q = linearised prior x data sites.
2. Cost: seconds per natural-gradient iteration (one compiled CVI step + ELBO) vs the number
   of grid points N (dense variant) and vs the number of inducing times M (sparse, N = 1e5).
   ``--timing-only`` runs just this table (written to ``sparse_gp_sde_results_timing.md``).

Run: ``PYTHONPATH=. nice -n 15 python benchmarks/sparse_gp_sde.py --data DIR [--quick] [--only NAME]
[--skip-timing] [--no-vgpa]`` (``DIR``: the vgpdp benchmark folder, or ``PROBDYN_VGPDP_DIR``);
writes ``benchmarks/sparse_gp_sde_results.md`` (and prints it).
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
from probdyn.models import sde_posteriors as sg  # noqa: E402
from probdyn.models.sde_posteriors import vgpa  # noqa: E402
from probdyn.sde.base import SDE  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The benchmark's data folder (its layout: linear/15/0.npz ..., apple_stock/0_data.npz ...):
# --data DIR or PROBDYN_VGPDP_DIR. Only four splits ship with probdyn (probdyn.datasets.vgpdp).
DATA = os.environ.get("PROBDYN_VGPDP_DIR", "")
SYNTH = {
    "OU": "linear/15",
    "double well": "dw/3",
    "Beneš": "benes/7",
    "sine": "sine/69",
    "sqrt": "sqrt/53",
    "Van der Pol": "vanderpol/33",
}
VDP_AB = (10.0, 2.6)  # regression of the latent path's increments on the Liénard form (see README note)


def drift_for(name, f):
    if name == "ou":
        return sg.OUDrift(jnp.asarray(float(f["decay"])))
    if name == "dw":  # the file's `decay` is not the well parameter: the latent path has 4x(1 - x^2)
        return sg.DoubleWellDrift(jnp.asarray(1.0))
    if name == "vanderpol":
        return sg.VanDerPolDrift(jnp.asarray(VDP_AB[0]), jnp.asarray(VDP_AB[1]))
    return {"benes": sg.BenesDrift, "sine": sg.SineDrift, "sqrt": sg.SqrtDrift}[name]()


LEARN_INIT = {
    "ou": lambda d: eqx.tree_at(lambda m: m.decay, d, jnp.asarray(2.5)),
    "dw": lambda d: eqx.tree_at(lambda m: m.c, d, jnp.asarray(0.5)),
    "vanderpol": lambda d: sg.VanDerPolDrift(jnp.asarray(5.0), jnp.asarray(1.0)),
}


def scores(model, st, tt, yt):
    lp = np.asarray(model.predictive_log_density(st, tt, yt))
    mu, _ = model.marginals(st, tt)
    yt = yt.reshape(len(tt), -1)
    mz = np.asarray(mu) @ np.asarray(model.obs_matrix).T
    return float(-np.mean(lp)), float(np.sqrt(np.mean((mz - yt) ** 2)))


def _synthetic_setup(f, dt, extra_times):
    """SDE, training data, test data and model keywords of a vgpdp synthetic split."""
    name = str(f["sde"])
    t, y = f["observation_grid"], f["observations"]
    d = y.shape[1]
    x0 = np.asarray(f["x0"], float).reshape(d)
    Q = np.asarray(f["Q"], float).reshape(d, d) if np.size(f["Q"]) == d * d else float(f["Q"]) * np.eye(d)
    # one grid per data set (union of all splits' times), so the 5 splits share one compilation
    inc = np.concatenate([t, f["test_grid"], np.asarray(extra_times)])
    grid = sg.make_grid(0.0, float(inc.max()), dt, include=inc)
    kw = dict(obs_noise=float(f["sigma"]) ** 2, grid=grid, initial_mean=x0, initial_cov=0.01 * np.eye(d))
    return name, np.linalg.cholesky(Q), d, t, y, kw


def run_cvi(f, dt, iters, extra_times=(), learn=False, em_steps=30):
    name, L, d, t, y, kw = _synthetic_setup(f, dt, extra_times)
    tt, yt = f["test_grid"], f["test_observations"]
    drift = drift_for(name, f)
    if learn:
        drift = LEARN_INIT[name](drift)
    sde = SDE(drift, L, d)
    m = sg.SparseGPSDE(sde, t, y, **kw)
    out = {}
    if learn:
        m, st, tr = m.fit(jax.random.PRNGKey(0), num_steps=em_steps, progress_bar=False)
        out["learned"] = [float(v) for v in jax.tree_util.tree_leaves(m.sde.drift)]
    else:
        st, tr = m.fit_posterior(num_iters=iters, rho=1.0, grow=2.0, atol=1e-8)
        if name != "ou":
            m0 = sg.SparseGPSDE(sde, t, y, path_sites=False, **kw)
            s0, _ = m0.fit_posterior(num_iters=iters, rho=1.0, grow=2.0, atol=1e-8)
            out["path_gain"] = float(tr.elbo[-1] - m.elbo(s0))
    out["nlpd"], out["rmse"] = scores(m, st, tt, yt)
    return out


def run_vgpa(f, dt, iters, extra_times=()):
    """Archambeau et al. VGPA with the known drift: same SDE, grid, noise and prior as ``run_cvi``;
    damped smoothing iterations (omega from 1/2, doubled after accepted steps, halved on an ELBO
    decrease) until the ELBO gains less than 1e-8."""
    name, L, d, t, y, kw = _synthetic_setup(f, dt, extra_times)
    m = vgpa.VGPA(SDE(drift_for(name, f), L, d), t, y, **kw)
    st, tr = m.fit_posterior(num_iters=iters, omega=0.5, grow=2.0, atol=1e-8)
    nlpd, rmse = scores(m, st, f["test_grid"], f["test_observations"])
    return {"nlpd": nlpd, "rmse": rmse, "elbo": float(tr.elbo[-1]), "iters": len(tr.rho)}


class _GPParams(eqx.Module):
    log_ell: jax.Array
    log_var: jax.Array
    log_noise: jax.Array


def run_gp(t, y, tt, yt, steps=300):
    """Matérn-3/2 Markov GP per output column (ML hyperparameters); summed NLPD per test point."""
    y, yt = y.reshape(len(t), -1), yt.reshape(len(tt), -1)
    lps, sq = np.zeros(len(tt)), []
    for j in range(y.shape[1]):
        yj, mean = y[:, j], float(np.mean(y[:, j]))

        def gp_of(p):
            k = kernels.Matern32(lengthscale=jnp.exp(p.log_ell), variance=jnp.exp(p.log_var))
            return MarkovGP(k, t, noise=jnp.exp(p.log_noise), mean=mean)

        span = float(t[-1] - t[0])
        p0 = _GPParams(
            jnp.asarray(np.log(span / 20)),
            jnp.asarray(np.log(np.var(yj) + 1e-3)),
            jnp.asarray(np.log(0.05 * np.var(yj) + 1e-4)),
        )
        res = fit(
            lambda p, k, b: -gp_of(p).log_likelihood(jnp.asarray(yj)) / len(t),
            p0,
            jax.random.PRNGKey(0),
            steps,
            optimizer=0.05,
            progress_bar=False,
        )
        mu, var = gp_of(res.params).predict(jnp.asarray(yj), tt)
        v = np.asarray(var) + float(jnp.exp(res.params.log_noise))
        lps += -0.5 * (np.log(2 * np.pi * v) + (yt[:, j] - np.asarray(mu)) ** 2 / v)
        sq.append((np.asarray(mu) - yt[:, j]) ** 2)
    return float(-np.mean(lps)), float(np.sqrt(np.mean(np.concatenate(sq))))


def fmt(a):
    a = np.asarray(a, float)
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if a.size > 1 else f"{a.mean():.3f}"


def synthetic(splits, dt, iters, only=None, with_vgpa=True, vgpa_iters=300, summary=None):
    lines = [
        f"## vgpdp synthetic data: test NLPD / RMSE over {splits} splits (mean ± sd), grid dt = {dt}",
        "",
        "| data | CVI NLPD (known drift) | CVI + VEM NLPD (learned drift) | GP Matérn-3/2 NLPD | "
        "VGPA NLPD (known drift) | CVI RMSE | CVI + VEM RMSE | GP RMSE | VGPA RMSE | "
        "ELBO gain of path sites | learned drift parameters | VGPA iterations |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, folder in SYNTH.items():
        if only and only.lower() not in label.lower():
            continue
        t0 = time.perf_counter()
        fs = [np.load(os.path.join(DATA, folder, f"{s}.npz")) for s in range(splits)]
        allt = np.concatenate([np.concatenate([f["observation_grid"], f["test_grid"]]) for f in fs])
        name = str(fs[0]["sde"])
        c, vem, g, vg, gain, learned, vit = [], [], [], [], [], [], []
        for f in fs:
            r = run_cvi(f, dt, iters, allt)
            c.append((r["nlpd"], r["rmse"]))
            gain.append(r.get("path_gain", np.nan))
            if name in LEARN_INIT:
                r2 = run_cvi(f, dt, iters, allt, learn=True)
                vem.append((r2["nlpd"], r2["rmse"]))
                learned.append(r2["learned"])
            g.append(run_gp(f["observation_grid"], f["observations"], f["test_grid"], f["test_observations"]))
            if with_vgpa:
                r3 = run_vgpa(f, dt, vgpa_iters, allt)
                vg.append((r3["nlpd"], r3["rmse"]))
                vit.append(r3["iters"])
        c, g = np.asarray(c), np.asarray(g)
        vem = np.asarray(vem) if vem else np.full_like(c, np.nan)
        vg = np.asarray(vg) if vg else np.full_like(c, np.nan)
        lp = "" if not learned else "; ".join(fmt(v) for v in np.asarray(learned).T)
        gs = "—" if name == "ou" else fmt(gain)
        vs = (lambda j: fmt(vg[:, j])) if with_vgpa else (lambda j: "—")
        vi = f"{min(vit)}-{max(vit)}" if vit else "—"
        if summary is not None:
            summary.append((label, c, g, vg if with_vgpa else None))
        vem0 = fmt(vem[:, 0]) if learned else "—"
        lines.append(
            f"| {label} | {fmt(c[:, 0])} | {vem0} | {fmt(g[:, 0])} | {vs(0)} | "
            f"{fmt(c[:, 1])} | {fmt(vem[:, 1]) if learned else '—'} | {fmt(g[:, 1])} | {vs(1)} | {gs} | "
            f"{lp or '—'} | {vi} |"
        )
        print(lines[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return lines


def _real_model(t, y, grid, drift, d, cls=sg.SparseGPSDE):
    yv = y.reshape(len(t), -1)
    v = np.var(np.diff(yv, axis=0), axis=0) / np.median(np.diff(t))  # increment variance per unit time
    sde = SDE(drift, np.diag(np.sqrt(v)), d)
    return cls(
        sde,
        t,
        yv,
        obs_noise=0.01 * np.var(yv, axis=0),
        grid=grid,
        initial_mean=yv[0],
        initial_cov=np.diag(np.var(yv, axis=0)),
    )


def _real_split(label, s):
    """Sorted train / test times and values of split ``s``, the initial drift and the state dimension."""
    if label == "Apple stock":
        f = np.load(os.path.join(DATA, "apple_stock", f"{s}_data.npz"))
        t, y = f["train_data"][:, 2], f["train_data"][:, 1]
        tt, yt = f["test_data"][:, 2], f["test_data"][:, 1]
        drift, d = sg.PolynomialDrift(jnp.zeros(4)), 1
    else:
        f = np.load(os.path.join(DATA, "gps", f"{s}_data.npz"))
        t = f["train_data_t"][:, 0]
        y = np.stack([f["train_data_x"][:, 0], f["train_data_y"][:, 0]], 1)
        tt = f["test_data_t"][:, 0]
        yt = np.stack([f["test_data_x"][:, 0], f["test_data_y"][:, 0]], 1)
        drift, d = sg.LinearDrift(jnp.zeros((2, 2)), jnp.zeros(2)), 2
    o, ot = np.argsort(t), np.argsort(tt)
    return t[o], y[o], tt[ot], yt[ot], drift, d


def real(splits, em_steps, only=None, with_vgpa=True, summary=None):
    lines = [
        "",
        f"## real data: test NLPD / RMSE over {splits} splits (mean ± sd)",
        "",
        "| data | SDE + CVI (learned drift, diffusion, noise) NLPD | GP Matérn-3/2 NLPD | "
        "SDE + VGPA (learned drift, diffusion, noise) NLPD | SDE + CVI RMSE | GP RMSE | SDE + VGPA RMSE | "
        "N grid | fit time per split (s): CVI / VGPA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in ("Apple stock", "GPS"):
        if only and only.lower() not in label.lower():
            continue
        c, g, vg, times, vtimes = [], [], [], [], []
        for s in range(splits):
            t, y, tt, yt, drift, d = _real_split(label, s)
            step = float(np.median(np.diff(np.sort(np.concatenate([t, tt])))))
            grid = sg.make_grid(min(t[0], tt[0]), max(t[-1], tt[-1]), step, include=np.concatenate([t, tt]))
            t0 = time.perf_counter()
            m = _real_model(t, y, grid, drift, d)
            m, st, tr = m.fit(
                jax.random.PRNGKey(0), num_steps=em_steps, learn_diffusion=True, learn_noise=True, progress_bar=False
            )
            c.append(scores(m, st, tt, yt))
            times.append(time.perf_counter() - t0)
            g.append(run_gp(t, y, tt, yt))
            if with_vgpa:
                t0 = time.perf_counter()
                mv = _real_model(t, y, grid, drift, d, cls=vgpa.VGPA)
                mv, sv, _ = mv.fit(
                    jax.random.PRNGKey(0),
                    num_steps=em_steps,
                    learn_diffusion=True,
                    learn_noise=True,
                    progress_bar=False,
                )
                vg.append(scores(mv, sv, tt, yt))
                vtimes.append(time.perf_counter() - t0)
            print(label, s, c[-1], g[-1], vg[-1] if vg else "", f"{times[-1]:.0f} s", flush=True)
        c, g = np.asarray(c), np.asarray(g)
        vg = np.asarray(vg) if vg else np.full_like(c, np.nan)
        vs = (lambda j: fmt(vg[:, j])) if with_vgpa else (lambda j: "—")
        vt = f"{np.mean(vtimes):.0f}" if vtimes else "—"
        if summary is not None:
            summary.append((label, c, g, vg if with_vgpa else None))
        lines.append(
            f"| {label} | {fmt(c[:, 0])} | {fmt(g[:, 0])} | {vs(0)} | {fmt(c[:, 1])} | {fmt(g[:, 1])} | "
            f"{vs(1)} | {len(grid)} | {np.mean(times):.0f} / {vt} |"
        )
        print(lines[-1], flush=True)
    return lines


def summary_table(rows, splits):
    """The issue's table: per data set (a) CVI, (b) Matérn GP, (c) VGPA, NLPD and RMSE side by side."""
    out = [
        f"## summary: test NLPD / RMSE over {splits} splits (mean ± sd)",
        "",
        "(a) Gauss–Markov CVI posterior (synthetic: the data set's SDE, known drift; real: SDE with "
        "learned drift, diffusion and noise), (b) Matérn-3/2 GP, (c) Archambeau et al. VGPA with the "
        "same SDE, grid and learning as (a). Details in the tables below.",
        "",
        "| data | (a) CVI NLPD | (b) GP NLPD | (c) VGPA NLPD | (a) CVI RMSE | (b) GP RMSE | (c) VGPA RMSE |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, c, g, vg in rows:
        v = (lambda j: "—") if vg is None else (lambda j: fmt(vg[:, j]))
        out.append(f"| {label} | {fmt(c[:, 0])} | {fmt(g[:, 0])} | {v(0)} | {fmt(c[:, 1])} | {fmt(g[:, 1])} | {v(1)} |")
    return out


def timing(Ns, Ms, reps=5):
    rows = []
    rng = np.random.default_rng(0)
    sde = SDE(sg.DoubleWellDrift(jnp.asarray(1.0)), np.ones(1), 1)
    for N, M in [(n, None) for n in Ns] + [(Ns[-1], m) for m in Ms]:
        grid = np.linspace(0.0, N * 0.01, N)
        obs = grid[:: max(N // 1000, 1)]
        y = np.sign(np.sin(obs)) + 0.3 * rng.standard_normal(obs.size)
        ind = None if M is None else np.linspace(0.0, grid[-1], M)
        m = sg.SparseGPSDE(
            sde, obs, y, obs_noise=0.09, grid=grid, initial_mean=[1.0], initial_cov=[[0.1]], inducing_times=ind
        )
        st = m.init_state()
        r = jnp.asarray(0.5)
        t0 = time.perf_counter()
        out = sg._jit_call("_cvi_step", m, st, r)
        jax.block_until_ready(out)
        tc = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(reps):
            out = sg._jit_call("_cvi_step", m, st, r)
            jax.block_until_ready(out)
        rows.append((N, M, (time.perf_counter() - t0) / reps, tc, y.size))
        print(rows[-1], flush=True)
    return rows


HEADER = """# Sparse-GP SDE benchmarks (`benchmarks/sparse_gp_sde.py`)

Run with `PYTHONPATH=. nice -n 15 python benchmarks/sparse_gp_sde.py` on the shared 2-core CPU
VM (float64; other jobs running). Dense variant (every grid node an inducing state) in the
accuracy tables. "known drift": the data set's SDE with its drift parameters (double well
c = 1, see the data note in `docs/api/sparse_gp_sde.md`; Van der Pol in Liénard form
`(a (x1 - x1^3/3 - x2), b x1)` with (a, b) = (10, 2.6) from a regression of the simulated
latent path, the files do not name them). "CVI + VEM": drift parameters learned by variational
EM from the training split (OU decay from 2.5, c from 0.5, (a, b) from (5, 1)); the learned
values are in the last column. "ELBO gain of path sites": ELBO at the converged q minus the
ELBO of q = linearised prior x data sites (no Girsanov sites). GP: Matérn-3/2 Markov GP per
output, hyperparameters and noise by maximum marginal likelihood (Adam, 300 steps). Real data:
Apple = log price, 5 contiguous test blocks (block cross-validation; blocks 0 and 4 are
extrapolation), SDE drift cubic polynomial; GPS = 2-D track, splits 0-4 of 10, test = bins of
30 points, SDE drift 2-D linear; both with learned diagonal diffusion and noise (40 VEM steps).

VGPA: the Archambeau et al. (2007) baseline (`probdyn.models.sde_posteriors.vgpa`) with the same SDE, grid,
noise, initial prior N(x0, 0.01 I) and (real data) the same variational EM (L-BFGS, 40 steps,
learned drift, diagonal diffusion and noise, same initial values) as CVI; its E-step is the
damped forward-backward smoothing fixed point (omega from 1/2, doubled after an accepted step,
halved when the ELBO drops; synthetic: at most 300 iterations, stopped at an ELBO gain < 1e-8;
"VGPA iterations" = accepted iterations, min-max over the splits). VGPA's posterior is an
Euler–Maruyama chain whose step variance is the prior's `dt Sigma`, so on a grid with
`dt Sigma` above the posterior variance at the observations (double well, sine, sqrt:
sigma^2 = 1e-4 vs dt Sigma = 0.01) it cannot shrink to the data there (O(dt) bias); CVI's
linear part is discretised exactly and has no such floor.

"""


def main():
    global DATA
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 splits, fewer steps, smaller timing table")
    ap.add_argument("--only", default=None, help="run only the data sets whose name contains this")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--no-vgpa", action="store_true", help="leave out the Archambeau et al. VGPA baseline")
    ap.add_argument("--data", default=DATA, help="the vgpdp benchmark folder (default: $PROBDYN_VGPDP_DIR)")
    a = ap.parse_args()
    if not a.timing_only and not os.path.isdir(os.path.join(a.data, "dw")):
        ap.error(f"--data {a.data!r}: not the vgpdp benchmark folder (expected dw/, linear/, gps/, ... inside)")
    DATA = a.data
    splits = 2 if a.quick else 5
    lines = []
    if not a.timing_only:
        summ = []
        body = synthetic(splits, 0.01, 60, a.only, with_vgpa=not a.no_vgpa, summary=summ)
        body += real(splits, 15 if a.quick else 40, a.only, with_vgpa=not a.no_vgpa, summary=summ)
        lines += summary_table(summ, splits) + [""] + body
    if not a.skip_timing:
        Ns = [1000, 10000] if a.quick else [1000, 10000, 100000]
        Ms = [10, 100, 1000] if a.quick else [10, 100, 1000, 10000]
        rows = timing(Ns, Ms)
        lines += [
            "",
            "## seconds per CVI iteration (one natural-gradient step + ELBO; double well, d = 1, "
            "float64, CPU; after compilation; sparse: N = 1e5 grid, 1000 observations, "
            "8 Gauss–Legendre points per cell)",
            "",
            "| N grid | variant | M (chain length) | s / iteration | compile (s) | observations |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {N} | {'dense' if M is None else 'sparse'} | {N if M is None else M} | {t:.4f} | {tc:.1f} | {n} |"
            for N, M, t, tc, n in rows
        ]
    text = HEADER + "\n".join(lines)
    print(text)
    suffix = "" if not (a.quick or a.only or a.timing_only) else ("_timing" if a.timing_only else "_partial")
    with open(os.path.join(ROOT, "benchmarks", f"sparse_gp_sde_results{suffix}.md"), "w") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
