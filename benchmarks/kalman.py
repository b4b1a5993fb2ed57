"""Benchmark: Matern-3/2 (or -5/2) Markov-GP log-likelihood (and value+gradient) on irregular times.

probdyn (sequential factored filter; parallel associative scan) vs tinygp's
quasiseparable GaussianProcess, dynamax's ``lgssm_filter`` and a dense Cholesky GP
(N <= 5000), float64 on CPU. Prints medians (ms) of interleaved rounds and ratios from one run.

    python benchmarks/kalman.py [--sizes 1000 10000 100000] [--repeats 11] [--kernel Matern52]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

# One BLAS thread: on a small machine OpenBLAS's threads fight XLA's own thread pool (a
# 1000x1000 Cholesky: 342 ms with default threads vs 13 ms with one, on 2 cores), which
# would make the dense baseline look worse than it is.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from probdyn import MarkovGP, kernels  # noqa: E402


def interleaved_median_ms(fns: dict, *args, repeats=11) -> dict:
    """Median wall time (ms) of each compiled function, timed in interleaved rounds (each
    round calls every function once), so that a noisy stretch of a shared machine hits all
    implementations alike instead of one of them."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))  # compile + warm up
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts[k].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in ts.items()}


def make_fns(t, y, kname="Matern32"):
    import tinygp
    from tinygp.kernels import quasisep as qs

    def pd(parallel):
        def ll(p):
            k = getattr(kernels, kname)(jnp.exp(p[0]), jnp.exp(p[1]))
            return MarkovGP(k, t, noise=jnp.exp(p[2])).log_likelihood(y, parallel=parallel)

        return ll

    def tg(p):
        k = getattr(qs, kname)(scale=jnp.exp(p[0]), sigma=jnp.exp(0.5 * p[1]))
        return tinygp.GaussianProcess(k, t, diag=jnp.exp(p[2])).log_probability(y)

    def dense(p):
        k = getattr(kernels, kname)(jnp.exp(p[0]), jnp.exp(p[1]))
        K = k.covariance(t) + jnp.exp(p[2]) * jnp.eye(t.shape[0])
        L = jnp.linalg.cholesky(K)
        z = jax.scipy.linalg.solve_triangular(L, y, lower=True)
        return -0.5 * z @ z - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * t.shape[0] * jnp.log(2 * jnp.pi)

    def dyn(p):
        from dynamax.linear_gaussian_ssm.inference import ParamsLGSSM, lgssm_filter

        k = getattr(kernels, kname)(jnp.exp(p[0]), jnp.exp(p[1]))
        A, Q = k.discretise(jnp.diff(t))
        # dynamax's filter predicts z_t from z_{t-1} with dynamics[t]; index 0 is unused.
        A = jnp.concatenate([A[:1], A])
        Q = jnp.concatenate([Q[:1], Q])
        from dynamax.linear_gaussian_ssm.inference import (
            ParamsLGSSMDynamics,
            ParamsLGSSMEmissions,
            ParamsLGSSMInitial,
        )

        d = k.stationary_cov().shape[0]
        params = ParamsLGSSM(
            initial=ParamsLGSSMInitial(mean=jnp.zeros(d), cov=k.stationary_cov()),
            dynamics=ParamsLGSSMDynamics(weights=A, bias=jnp.zeros(d), input_weights=jnp.zeros((d, 0)), cov=Q),
            emissions=ParamsLGSSMEmissions(
                weights=k.observation(),
                bias=jnp.zeros(1),
                input_weights=jnp.zeros((1, 0)),
                cov=jnp.exp(p[2]) * jnp.eye(1),
            ),
        )
        return lgssm_filter(params, y[:, None]).marginal_loglik

    return {
        "probdyn (seq)": pd(False),
        "probdyn (par)": pd(True),
        "tinygp quasisep": tg,
        "dynamax": dyn,
        "dense": dense,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--dense-max", type=int, default=5000)
    ap.add_argument("--kernel", default="Matern32", choices=["Matern32", "Matern52"])
    ap.add_argument(
        "--par-max",
        type=int,
        default=10000,
        help="largest N for the parallel schedule (its reverse pass at 1e5 exhausts 24 GB here)",
    )
    args = ap.parse_args()
    print(
        f"# {args.kernel} MarkovGP, float64, {jax.default_backend()} ({platform.processor() or platform.machine()}, "
        f"{jax.device_count()} device(s), jax {jax.__version__})"
    )
    rng = np.random.default_rng(0)
    p = jnp.array([0.3, 0.0, -2.0])
    rows = []
    for N in args.sizes:
        t = jnp.asarray(np.sort(rng.uniform(0, N / 10, N)))
        y = jnp.asarray(np.sin(np.asarray(t)) + 0.1 * rng.normal(size=N))
        fns = make_fns(t, y, args.kernel)
        ref = float(jax.jit(fns["tinygp quasisep"])(p))
        fns = {
            k: f
            for k, f in fns.items()
            if not ((k == "dense" and N > args.dense_max) or (k == "probdyn (par)" and N > args.par_max))
        }
        lls = interleaved_median_ms({k: jax.jit(f) for k, f in fns.items()}, p, repeats=args.repeats)
        print(f"  done N={N} log-likelihoods", flush=True)
        vgs = interleaved_median_ms(
            {k: jax.jit(jax.value_and_grad(f)) for k, f in fns.items()}, p, repeats=args.repeats
        )
        print(f"  done N={N} values+gradients", flush=True)
        for name, fn in fns.items():
            val = float(jax.jit(fn)(p))
            rows.append((N, name, lls[name], vgs[name], abs(val - ref) / abs(ref)))
    base = {(r[0]): (r[2], r[3]) for r in rows if r[1] == "tinygp quasisep"}
    print(
        "\n| N | implementation | loglik (ms) | ratio vs tinygp | value+grad (ms) | ratio vs tinygp "
        "| rel. diff of loglik |"
    )
    print("|---|---|---|---|---|---|---|")
    for N, name, ll, vg, diff in rows:
        b = base[N]
        print(f"| {N} | {name} | {ll:.2f} | {ll / b[0]:.2f}x | {vg:.2f} | {vg / b[1]:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
