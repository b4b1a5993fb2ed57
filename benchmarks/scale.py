"""Scale benchmark: long series and many series.

(a) Log-likelihood and value+gradient time and peak memory against T (Matern-5/2 Markov GP,
    irregular times, float64), sequential schedule on CPU; on GPU both schedules.
    Peak memory: XLA's compiled temp-buffer size and the process's max RSS (each T runs in
    its own subprocess so RSS is not shared).
(b) Throughput (series per second) of the batched log-likelihood of B series of length N
    against the number of devices (``--xla_force_host_platform_device_count`` on CPU;
    real devices on GPU hosts), with the batch sharded by :func:`probdyn.sharding.batch_map`.

    python benchmarks/scale.py                    # full: T up to 1e6, B = 1e4 series of 1e3
    python benchmarks/scale.py --quick            # small sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker_long(T: int, parallel: bool, repeats: int):
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from probdyn import MarkovGP, kernels

    rng = np.random.default_rng(0)
    t = jnp.asarray(np.cumsum(rng.uniform(0.5, 1.5, T)))
    y = jnp.asarray(np.sin(0.1 * np.asarray(t)) + 0.3 * rng.normal(size=T))

    def ll(p):
        k = kernels.Matern52(lengthscale=jnp.exp(p[0]), variance=jnp.exp(p[1]))
        return MarkovGP(k, t, noise=jnp.exp(p[2])).log_likelihood(y, parallel=parallel)

    p = jnp.array([1.0, 0.0, -2.0])
    out = {"T": T, "schedule": "parallel" if parallel else "sequential", "device": str(jax.devices()[0].platform)}
    for name, f in (("ll", ll), ("vg", jax.value_and_grad(ll))):
        c = jax.jit(f).lower(p).compile()
        ma = c.memory_analysis()
        out[f"{name}_temp_MB"] = None if ma is None else ma.temp_size_in_bytes / 1e6
        jax.block_until_ready(c(p))
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(c(p))
            ts.append(time.perf_counter() - t0)
        out[f"{name}_ms"] = 1e3 * float(np.median(ts))
    out["max_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print("RESULT" + json.dumps(out))


def _worker_batch(B: int, N: int, repeats: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from probdyn import MarkovGP, kernels
    from probdyn.sharding import batch_map

    rng = np.random.default_rng(0)
    t = jnp.asarray(np.cumsum(rng.uniform(0.5, 1.5, (B, N)), axis=1))
    y = jnp.asarray(rng.normal(size=(B, N)))
    ell = jnp.asarray(rng.uniform(1.0, 3.0, B))

    def ll(e, ti, yi):
        return MarkovGP(kernels.Matern32(lengthscale=e, variance=1.0), ti, noise=0.1).log_likelihood(yi)

    jax.block_until_ready(batch_map(ll, ell, t, y))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(batch_map(ll, ell, t, y))
        ts.append(time.perf_counter() - t0)
    med = float(np.median(ts))
    print("RESULT" + json.dumps({"devices": jax.device_count(), "B": B, "N": N, "s": med, "series_per_s": B / med}))


def _run(args, env_extra=None, timeout=1800):
    env = {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}
    r = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    if r.returncode != 0 or not lines:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(lines[-1][len("RESULT") :])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*")
    ap.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--length", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=["long", "batch"])
    ap.add_argument("--T", type=int)
    ap.add_argument("--parallel", action="store_true")
    a = ap.parse_args()
    if a.worker == "long":
        return _worker_long(a.T, a.parallel, a.repeats)
    if a.worker == "batch":
        return _worker_batch(a.batch, a.length, a.repeats)

    import jax

    gpu = jax.default_backend() != "cpu"
    sizes = a.sizes or ([1000, 10000] if a.quick else [1000, 10_000, 100_000, 1_000_000])
    print(f"# (a) long series, Matern-5/2, float64, backend={jax.default_backend()}, cpu_count={os.cpu_count()}")
    print("| T | schedule | loglik ms | value+grad ms | loglik temp MB | v+g temp MB | max RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for T in sizes:
        for par in [False, True] if gpu else [False]:
            r = _run(["--worker", "long", "--T", str(T), "--repeats", str(a.repeats)] + (["--parallel"] if par else []))
            if "error" in r:
                print(f"| {T} | {'parallel' if par else 'sequential'} | error: {r['error']} |||||")
                continue
            print(
                f"| {T} | {r['schedule']} | {r['ll_ms']:.1f} | {r['vg_ms']:.1f} | {r['ll_temp_MB']:.0f} | "
                f"{r['vg_temp_MB']:.0f} | {r['max_rss_MB']:.0f} |",
                flush=True,
            )

    B = a.batch or (1000 if a.quick else 10_000)
    N = a.length or (200 if a.quick else 1000)
    print(f"\n# (b) many series: B={B} series x N={N}, Matern-3/2 log-likelihood, sharded batch_map")
    print("| devices | seconds | series / s | speed-up |")
    print("|---|---|---|---|")
    base = None
    for n in a.devices:
        extra = {} if gpu else {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        r = _run(["--worker", "batch", "--batch", str(B), "--length", str(N), "--repeats", str(a.repeats)], extra)
        if "error" in r:
            print(f"| {n} | error: {r['error']} |||")
            continue
        base = base or r["series_per_s"]
        print(
            f"| {r['devices']} | {r['s']:.2f} | {r['series_per_s']:.0f} | {r['series_per_s'] / base:.2f}x |", flush=True
        )


if __name__ == "__main__":
    main()
