"""Benchmark: time per MGPVAE training step (ELBO value + gradient) vs sequence length T.

MarkovGPVAE (Kalman smoother per latent channel, O(T)) vs GPVAE (dense Gram matrix and
Cholesky, O(T^3)), same MLP encoder/decoder, one sequence of 12-dim frames at irregular times
with 50% missing frames, L latent Matern-3/2 channels, float64 on CPU. The dense model is
skipped where its T x T matrices would not fit comfortably (``--dense-max``). Prints medians
(ms) and the Markov/dense ratio at T = 1000.

    python benchmarks/mgpvae.py [--sizes 100 1000 10000] [--latent 4] [--repeats 5] [--dense-max 1000]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from probdyn.models import mgpvae as mg  # noqa: E402

D = 12


def median_ms(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))  # compile + warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


@eqx.filter_jit
def train_step(model, key, times, frames, mask):
    """Value and gradient of the per-frame negative ELBO (what one training step computes)."""
    loss = lambda m: -m.elbo(key, times, frames, mask) / jnp.sum(mask)  # noqa: E731
    return eqx.filter_value_and_grad(loss)(model)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--latent", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dense-max", type=int, default=1000)
    ap.add_argument("--dense-repeats", type=int, default=1)
    args = ap.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {platform.processor() or platform.machine()}, "
          f"L={args.latent}, D={D}, float64")
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(0)
    base = mg.make_model(mg.MarkovGPVAE, (D,), args.latent, key, width=64, parallel=False)
    rows = {}
    print(f"{'T':>7} {'MarkovGPVAE ms':>15} {'GPVAE (dense) ms':>17} {'dense/Markov':>13}")
    for T in args.sizes:
        times = jnp.asarray(np.cumsum(rng.uniform(0.05, 0.15, T)))
        mask = jnp.asarray(rng.uniform(size=T) > 0.5)
        frames = jnp.asarray(rng.normal(size=(T, D)))
        tm = median_ms(train_step, base, key, times, frames, mask, repeats=args.repeats)
        td = None
        if T <= args.dense_max:
            td = median_ms(train_step, base.to(mg.GPVAE), key, times, frames, mask, repeats=args.dense_repeats)
        rows[T] = (tm, td)
        dense = f"{td:17.1f}" if td is not None else f"{'skipped (O(T^3))':>17}"
        ratio = f"{td / tm:13.1f}" if td is not None else f"{'-':>13}"
        print(f"{T:7d} {tm:15.1f} {dense} {ratio}", flush=True)
    if 1000 in rows and rows[1000][1] is not None:
        print(f"ratio dense/Markov at T=1000: {rows[1000][1] / rows[1000][0]:.1f}x")
    ts = sorted(t for t in rows if rows[t][1] is not None)
    if len(ts) >= 2:
        a, b = ts[0], ts[-1]
        print(f"growth exponents between T={a} and T={b}: Markov "
              f"{np.log(rows[b][0] / rows[a][0]) / np.log(b / a):.2f}, dense "
              f"{np.log(rows[b][1] / rows[a][1]) / np.log(b / a):.2f}")


if __name__ == "__main__":
    main()
