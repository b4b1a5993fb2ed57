"""Benchmarks of the MA-fBM neural SDE (probdyn.models.fractional_sde).

Prints markdown tables:

1. relative integrated MSE of the MA-fBM covariance vs the exact fBM covariance over H, K
   (``relative_integrated_mse``, type I, gamma_max = 20, T = 1);
2. training-step time (value + gradient of the ELBO, jitted) against K and against the
   number of Euler steps, and the cost relative to the Brownian model (K = 0) of the same size;
3. Hurst ML estimates (exact Kalman likelihood under MA-fBM) on exact fBM samples.

Usage: ``python benchmarks/fractional_sde.py [--quick]``.
"""

import argparse
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from probdyn.inference.optimize import fit
from probdyn.models import fractional_sde as fs
from probdyn.sde import fractional as fr


def mse_table(Hs, Ks):
    print("\n## Relative integrated MSE of the covariance (type I, gamma_max=20, T=1)\n")
    print("| H | " + " | ".join(f"K={K}" for K in Ks) + " |")
    print("|---|" + "---|" * len(Ks))
    for H in Hs:
        row = [float(fr.relative_integrated_mse(H, K, 20.0, 1.0, "type1", num_points=61)) for K in Ks]
        print(f"| {H} | " + " | ".join(f"{e:.2e}" for e in row) + " |")


def _step_time(K, n_steps, d=4, batch=16, reps=20):
    times = jnp.linspace(0.0, 1.0, 11)
    key = jax.random.PRNGKey(0)
    drift = eqx.nn.MLP(d, d, 32, 2, activation=jax.nn.softplus, key=key)
    ctrl = fs.MLPControl(d, d * K, 0, key, width=32)
    lik = fs.GaussianLikelihood(jnp.zeros(d))
    model = fs.FractionalSDE(_Drift(drift), ctrl, lik, d, num_components=K, hurst=0.3)
    y = jnp.zeros((11, d))
    nsub = max(n_steps // 10, 1)
    f = eqx.filter_jit(eqx.filter_value_and_grad(
        lambda m, k: -fs.elbo(m, k, times, y, num_samples=batch, num_substeps=nsub)))
    v, _ = f(model, key)
    jax.block_until_ready(v)
    t0 = time.perf_counter()
    for i in range(reps):
        v, g = f(model, jax.random.PRNGKey(i))
    jax.block_until_ready((v, g))
    return (time.perf_counter() - t0) / reps * 1e3


class _Drift(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, x, t):
        return self.mlp(x)


def timing_tables(Ks, steps):
    print("\n## ELBO value+grad time (ms), d=4, 16 paths, MLP drift/control (width 32)\n")
    base = _step_time(0, 100)
    print("| K | Euler steps | ms/step | ratio vs Brownian (K=0) |")
    print("|---|---|---|---|")
    print(f"| 0 | 100 | {base:.2f} | 1.00 |")
    for K in Ks:
        ms = _step_time(K, 100)
        print(f"| {K} | 100 | {ms:.2f} | {ms / base:.2f} |")
    for n in steps:
        ms = _step_time(5, n)
        print(f"| 5 | {n} | {ms:.2f} | |")


def hurst_table(Hs, steps=150):
    t = jnp.linspace(0.0, 1.0, 101)
    g = fr.gamma_grid(8, 200.0)

    def loss(p, k, ys):
        ll = jax.vmap(lambda y: fs.fou_log_likelihood(0.0, jnp.exp(p[1]), jax.nn.sigmoid(p[0]), t, y, g, 1.0,
                                                      noise_std=1e-3))(ys)
        return -jnp.sum(ll) / ys.size

    opt = optax.adam(optax.exponential_decay(0.1, steps, 0.1))
    print("\n## Hurst ML (exact Kalman likelihood, MA-fBM K=8 on [1/200, 200]), 4 exact fBM paths x 101 points\n")
    print("| H true | H estimated | error |")
    print("|---|---|---|")
    for H in Hs:
        ys = fr.sample_fbm(jax.random.PRNGKey(int(100 * H)), t, H, 4)
        r = fit(loss, jnp.zeros(2), jax.random.PRNGKey(0), steps, opt, batches=lambda k, i: ys, progress_bar=False)
        h = float(jax.nn.sigmoid(r.params[0]))
        print(f"| {H} | {h:.3f} | {h - H:+.3f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    print(f"# fractional SDE benchmarks ({platform.machine()}, {jax.default_backend()}, jax {jax.__version__})")
    mse_table([0.2, 0.35, 0.5, 0.65, 0.8], [2, 4, 8, 16])
    jax.config.update("jax_enable_x64", False)
    timing_tables([1, 3, 5, 10] if not args.quick else [5], [50, 100, 200, 400] if not args.quick else [200])
    jax.config.update("jax_enable_x64", True)
    hurst_table([0.2, 0.35, 0.5, 0.65, 0.8])
