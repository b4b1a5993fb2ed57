"""probdyn.sharding: sharded batches equal single-device results (4 simulated CPU devices).

The reference is a plain Python loop of single-series calls on one device in the *same*
subprocess (numbers must agree to round-off), and a dense-Gram-matrix log-likelihood.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    from probdyn import MarkovGP, kernels
    from probdyn.sharding import batch_map, shard_batch, sum_over_batch, batch_mesh
    from probdyn.inference.optimize import fit

    rng = np.random.default_rng(0)
    B, T = 10, 40   # 10 is not a multiple of 4: exercises padding
    t = np.sort(rng.uniform(0, 10, (B, T)), axis=1)
    y = np.sin(t) + 0.3 * rng.normal(size=(B, T))
    ell = rng.uniform(0.5, 2.0, B)

    def ll(ell_i, t_i, y_i):
        return MarkovGP(kernels.Matern32(lengthscale=ell_i, variance=1.0), t_i, noise=0.09).log_likelihood(y_i)

    sharded = batch_map(ll, jnp.asarray(ell), jnp.asarray(t), jnp.asarray(y))
    chunked = batch_map(ll, jnp.asarray(ell), jnp.asarray(t), jnp.asarray(y), chunk_size=1)
    loop = np.array([float(ll(ell[i], t[i], y[i])) for i in range(B)])

    def dense(i):
        K = np.asarray(kernels.Matern32(lengthscale=ell[i], variance=1.0).covariance(t[i], t[i])) + 0.09 * np.eye(T)
        L = np.linalg.cholesky(K); a = np.linalg.solve(L, y[i])
        return -0.5 * a @ a - np.log(np.diag(L)).sum() - 0.5 * T * np.log(2 * np.pi)
    ref = np.array([dense(i) for i in range(B)])
    out = {"shard_vs_loop": float(np.max(np.abs(np.asarray(sharded) - loop))),
           "chunk_vs_loop": float(np.max(np.abs(np.asarray(chunked) - loop))),
           "loop_vs_dense": float(np.max(np.abs(loop - ref))),
           "n_shards": len(sharded.sharding.device_set) if hasattr(sharded, "sharding") else 0}

    # many independent fits = one Adam run on the summed loss, data sharded over devices
    Bf = 8
    data = shard_batch((jnp.asarray(t[:Bf]), jnp.asarray(y[:Bf])))
    def nll(log_ell, d):
        return -ll(jnp.exp(log_ell), d[0], d[1])
    total = sum_over_batch(nll)
    res = fit(
        lambda p, k, b: total(p, data), jnp.zeros(Bf), jax.random.PRNGKey(0), 150, optax.adam(0.05), progress_bar=False
    )
    singles, check = [], [0, 5, 7]
    for i in check:
        r = fit(
            lambda p, k, b: nll(p, (jnp.asarray(t[i]), jnp.asarray(y[i]))),  # noqa: B023 - called in this iteration
            jnp.zeros(()),
            jax.random.PRNGKey(0),
            150,
            optax.adam(0.05),
            progress_bar=False,
        )
        singles.append(float(r.params))
    out["fit_vs_single"] = float(np.max(np.abs(np.asarray(res.params)[check] - np.asarray(singles))))
    import json; print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_sharded_batch_equals_single_device():
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT") :])
    assert out["n_shards"] == 4
    assert out["loop_vs_dense"] < 1e-8
    assert out["shard_vs_loop"] < 1e-10
    assert out["chunk_vs_loop"] < 1e-10
    assert out["fit_vs_single"] < 1e-8


MULTIPROCESS = textwrap.dedent(
    """
    import sys, json
    import jax
    pid, port = int(sys.argv[1]), sys.argv[2]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    from probdyn import MarkovGP, kernels
    from probdyn.sharding import batch_map

    assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
    rng = np.random.default_rng(0)
    B, T = 5, 30   # odd: padded to the 2 global devices
    t = np.sort(rng.uniform(0, 10, (B, T)), axis=1)
    y = np.sin(t) + 0.3 * rng.normal(size=(B, T))
    ell = rng.uniform(0.5, 2.0, B)

    def ll(ell_i, t_i, y_i):
        return MarkovGP(kernels.Matern32(lengthscale=ell_i, variance=1.0), t_i, noise=0.09).log_likelihood(y_i)

    out = batch_map(ll, jnp.asarray(ell), jnp.asarray(t), jnp.asarray(y))   # the same call as on one host
    full = np.asarray(multihost_utils.process_allgather(out, tiled=True))
    print("RESULT" + json.dumps({"pid": pid, "values": full.tolist()}))
    """
)


def test_multi_process_batch_map_equals_single_process():
    """Two processes joined by ``jax.distributed.initialize`` (the multi-host set-up, here on
    one machine with CPU collectives): ``batch_map`` runs unchanged over the global devices
    and gives the single-process numbers."""
    import json
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTIPROCESS, str(i), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-3000:]
    vals = [json.loads([ln for ln in so.splitlines() if ln.startswith("RESULT")][-1][6:])["values"] for so, _ in outs]

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from probdyn import MarkovGP, kernels

    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, (5, 30)), axis=1)
    y = np.sin(t) + 0.3 * rng.normal(size=(5, 30))
    ell = rng.uniform(0.5, 2.0, 5)
    ref = [
        float(
            MarkovGP(kernels.Matern32(lengthscale=ell[i], variance=1.0), jnp.asarray(t[i]), noise=0.09).log_likelihood(
                jnp.asarray(y[i])
            )
        )
        for i in range(5)
    ]
    for v in vals:
        np.testing.assert_allclose(v, ref, rtol=1e-10)
