"""Effective samples per second of NUTS for a Matern-3/2 + noise GP on irregular times.

Contenders (same model, priors and data; numpyro programs):
  probdyn-numpyro   MarkovGP.numpyro_dist() likelihood, probdyn.inference.mcmc backend="numpyro"
  probdyn-blackjax  same program, backend="blackjax"
  tinygp-qs         tinygp.GaussianProcess(Matern32, ...) quasiseparable solver, numpyro NUTS
  dense             numpyro MultivariateNormal with the dense Gram matrix (N <= --dense-max)

ESS/s = bulk ESS of the slowest parameter / wall time (warm-up + sampling); compile time is
reported separately. All runs go through probdyn.inference.mcmc.sample so timing is uniform.
The ratio column is ESS/s relative to the tinygp route (the target is >= 1).

    python benchmarks/mcmc.py --n 1000 10000 --chains 2 --warmup 500 --samples 500
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

# One BLAS thread for the dense baseline: on a small machine OpenBLAS's threads fight XLA's
# own pool (see benchmarks/kalman.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probdyn import MarkovGP, kernels  # noqa: E402
from probdyn.inference import mcmc  # noqa: E402


def priors():
    ell = numpyro.sample("ell", dist.LogNormal(0.0, 1.0))
    amp = numpyro.sample("amp", dist.HalfNormal(2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    return ell, amp, sigma


def model_probdyn(t, y=None):
    ell, amp, sigma = priors()
    numpyro.sample("y", MarkovGP(kernels.Matern32(ell, amp**2), t, sigma**2).numpyro_dist(), obs=y)


def model_tinygp(t, y=None):
    import tinygp

    ell, amp, sigma = priors()
    gp = tinygp.GaussianProcess(amp**2 * tinygp.kernels.quasisep.Matern32(scale=ell), t, diag=sigma**2)
    numpyro.sample("y", gp.numpyro_dist(), obs=y)


def model_dense(t, y=None):
    ell, amp, sigma = priors()
    K = kernels.Matern32(ell, amp**2).covariance(t) + sigma**2 * jnp.eye(t.shape[0])
    numpyro.sample("y", dist.MultivariateNormal(jnp.zeros(t.shape[0]), covariance_matrix=K), obs=y)


def simulate(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.uniform(0.02, 0.18, n))  # ~10 points per unit time, irregular, distinct in float32
    y = MarkovGP(kernels.Matern32(2.0, 1.0), t, 0.3**2).numpyro_dist().sample(jax.random.PRNGKey(seed))
    return t, np.asarray(y)


def run_one(name, model, backend, t, y, args):
    idata = mcmc.sample(
        model,
        jax.random.PRNGKey(1),
        t,
        y=y,
        backend=backend,
        num_warmup=args.warmup,
        num_samples=args.samples,
        num_chains=args.chains,
        progress_bar=False,
        report=False,
        log_likelihood=False,
    )
    tab = mcmc.diagnostics(idata, var_names=["ell", "amp", "sigma"])
    a = idata.attrs
    wall = a["warmup_time_s"] + a["sampling_time_s"]
    ess = float(tab["ess_bulk"].min())
    return dict(
        name=name,
        ess=ess,
        wall=wall,
        compile=a["compile_time_s"] + a["init_time_s"],
        ess_s=ess / wall,
        rhat=float(tab["r_hat"].max()),
        div=int(a["num_divergences"]),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--dense-max", type=int, default=3000, help="largest N for the dense GP")
    p.add_argument("--x64", action="store_true", help="run in float64")
    p.add_argument("--skip", nargs="*", default=[], help="contenders to skip")
    args = p.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    warnings.simplefilter("ignore", mcmc.ConvergenceWarning)
    contenders = [
        ("probdyn-numpyro", model_probdyn, "numpyro"),
        ("probdyn-blackjax", model_probdyn, "blackjax"),
        ("tinygp-qs", model_tinygp, "numpyro"),
        ("dense", model_dense, "numpyro"),
    ]
    rows = []
    for n in args.n:
        t, y = simulate(n)
        for name, model, backend in contenders:
            if name in args.skip or (name == "dense" and n > args.dense_max):
                continue
            t0 = time.perf_counter()
            r = run_one(name, model, backend, t, y, args)
            r.update(n=n, total=time.perf_counter() - t0)
            rows.append(r)
            print(f"[N={n}] {name}: {r}", flush=True)
    print(
        f"\ndevice: {jax.devices()[0].platform}, chains={args.chains}, warmup={args.warmup}, "
        f"samples={args.samples}, x64={args.x64}\n"
    )
    print(
        "| N | method | min bulk ESS | wall (warmup+sampling) s | compile+init s | ESS/s | ratio vs tinygp-qs "
        "| max R-hat | divergences |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.n:
        ref = next((r["ess_s"] for r in rows if r["n"] == n and r["name"] == "tinygp-qs"), None)
        for r in (r for r in rows if r["n"] == n):
            ratio = f"{r['ess_s'] / ref:.2f}" if ref else "-"
            print(
                f"| {n} | {r['name']} | {r['ess']:.0f} | {r['wall']:.2f} | {r['compile']:.1f} | {r['ess_s']:.1f} | "
                f"{ratio} | {r['rhat']:.3f} | {r['div']} |"
            )
    return rows


if __name__ == "__main__":
    main()
