"""Benchmark: time per MGPVAE training step (ELBO value + gradient) vs sequence length T.

MarkovGPVAE (Kalman smoother per latent channel, O(T)) vs GPVAE (dense Gram matrix and
Cholesky, O(T^3)), same MLP encoder/decoder and parameters, one sequence of 12-dim frames at
irregular times with 50% missing frames, L latent Matern-3/2 channels, float64 on CPU.
Compilation (``jit(...).lower(...).compile()``) is timed separately from the steady-state
step (median of ``--repeats`` calls of the compiled program). The dense model is skipped
above ``--dense-max`` (its T x T matrices: about 10 of them per channel, 0.8 GB each at
T = 10000, and ~30 min per step). Prints the table, the dense/Markov ratio at T = 1000 and
growth exponents.

OpenBLAS (the LAPACK behind jaxlib's CPU Cholesky) is limited to one thread here, before
numpy/jax load: its own threads fight XLA's intra-op pool, which made a 1000 x 1000 Cholesky
27x slower on a 2-core machine (342 ms vs 12.8 ms). This only helps the dense model (the
Kalman path calls no LAPACK). Set ``OPENBLAS_NUM_THREADS`` yourself to override.

    python benchmarks/mgpvae.py [--sizes 100 300 1000 3000 10000] [--latent 4] [--repeats 5] [--dense-max 3000]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from probdyn.models import mgpvae as mg  # noqa: E402

D = 12


def compile_and_time(model, key, times, frames, mask, repeats):
    """(compile seconds, median step milliseconds) of value-and-gradient of the per-frame
    negative ELBO (what one training step computes, without the optimiser update)."""
    params, static = eqx.partition(model, eqx.is_array)

    def step(params, key, times, frames, mask):
        def loss(p):
            return -eqx.combine(p, static).elbo(key, times, frames, mask) / jnp.sum(mask)

        return jax.value_and_grad(loss)(params)

    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, key, times, frames, mask).compile()
    t_compile = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, key, times, frames, mask))  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, key, times, frames, mask))
        ts.append(time.perf_counter() - t0)
    return t_compile, 1e3 * float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    ap.add_argument("--latent", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dense-max", type=int, default=3000)
    ap.add_argument("--dense-repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
        f"L={args.latent}, D={D}, float64"
    )
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(0)
    base = mg.make_model(mg.MarkovGPVAE, (D,), args.latent, key, width=64, parallel=False)
    rows = {}
    print(
        f"{'T':>6} | {'Markov step ms':>14} {'compile s':>9} | {'dense step ms':>13} {'compile s':>9} | "
        f"{'dense/Markov':>12}"
    )
    for T in args.sizes:
        times = jnp.asarray(np.cumsum(rng.uniform(0.05, 0.15, T)))
        mask = jnp.asarray(rng.uniform(size=T) > 0.5)
        frames = jnp.asarray(rng.normal(size=(T, D)))
        cm, tm = compile_and_time(base, key, times, frames, mask, args.repeats)
        cd = td = None
        if T <= args.dense_max:
            cd, td = compile_and_time(base.to(mg.GPVAE), key, times, frames, mask, args.dense_repeats)
        rows[T] = (tm, td)
        dense = f"{td:13.1f} {cd:9.1f}" if td is not None else f"{'skipped':>13} {'-':>9}"
        ratio = f"{td / tm:12.1f}" if td is not None else f"{'-':>12}"
        print(f"{T:6d} | {tm:14.1f} {cm:9.1f} | {dense} | {ratio}", flush=True)
    if 1000 in rows and rows[1000][1] is not None:
        print(f"ratio dense/Markov at T=1000: {rows[1000][1] / rows[1000][0]:.1f}x (target >= 10x)")

    def exponent(col, a, b):
        return np.log(rows[b][col] / rows[a][col]) / np.log(b / a)

    ts = sorted(rows)
    big = [t for t in ts if t >= 1000]
    if len(big) >= 2:
        print(f"Markov growth exponent T={big[0]}..{big[-1]}: {exponent(0, big[0], big[-1]):.2f} (linear: 1)")
    dts = [t for t in ts if rows[t][1] is not None and t >= 300]
    if len(dts) >= 2:
        print(f"dense growth exponent T={dts[0]}..{dts[-1]}: {exponent(1, dts[0], dts[-1]):.2f} (cubic: 3)")


if __name__ == "__main__":
    main()
