"""Many series on many devices: ``vmap`` over a batch axis sharded with ``jax.sharding``.

probdyn scales on JAX's own runtime, not a home-made scheduler. A batch of independent
series (or of per-series parameters) is a pytree whose leaves share a leading batch axis;
:func:`batch_map` vmaps a function over it and places the batch axis on a ``Mesh`` of all
visible devices (``jax.devices()``), so the same code runs on one CPU, several GPUs, or
several hosts after ``jax.distributed.initialize()`` (in which case ``jax.devices()`` is the
global device list and each process feeds the same global arrays; CPU-only processes also
need ``jax.config.update("jax_cpu_collectives_implementation", "gloo")`` before it). The
two-process case is tested (``tests/test_sharding.py``).

Fitting many independent series is one optax run on the *sum* of their losses (Adam is
elementwise, so this equals independent fits; see :func:`sum_over_batch`), and series
that share hyperparameters are a numpyro plate over series with a probdyn distribution
whose batch shape is the number of series (``MarkovGPDistribution`` broadcasts).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["batch_mesh", "shard_batch", "batch_map", "sum_over_batch"]


def batch_mesh(devices=None, axis: str = "batch") -> Mesh:
    """A 1-D ``Mesh`` named ``axis`` over ``devices`` (default: all of ``jax.devices()``)."""
    devs = jax.devices() if devices is None else list(devices)
    if not devs:
        raise ValueError("no devices given")
    return Mesh(np.asarray(devs), (axis,))


def _batch_size(tree) -> int:
    sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(tree) if jnp.ndim(x) > 0}
    if len(sizes) != 1:
        raise ValueError(f"all batched leaves must share the leading batch axis, got sizes {sorted(sizes)}")
    return sizes.pop()


def shard_batch(tree: Any, mesh: Mesh | None = None) -> Any:
    """Place the leading axis of every array leaf across ``mesh`` (sizes must divide)."""
    mesh = batch_mesh() if mesh is None else mesh
    n = mesh.devices.size
    b = _batch_size(tree)
    if b % n:
        raise ValueError(f"batch size {b} is not a multiple of the {n} devices; use batch_map (pads)")
    sh = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return jax.tree.map(lambda x: jax.device_put(x, sh), tree)


def _pad(tree, to: int):
    def one(x):
        x = jnp.asarray(x)
        extra = to - x.shape[0]
        if extra == 0:
            return x
        # repeat the first element: padded rows compute something finite and are dropped
        return jnp.concatenate([x, jnp.broadcast_to(x[:1], (extra,) + x.shape[1:])], axis=0)

    return jax.tree.map(one, tree)


def batch_map(fn: Callable, *batched: Any, mesh: Mesh | None = None, chunk_size: int | None = None) -> Any:
    """``vmap(fn)(*batched)`` with the batch axis sharded over ``mesh``.

    Args:
        fn: function of one series' arguments (no batch axis).
        batched: pytrees whose array leaves have a common leading batch axis B.
        mesh: 1-D device mesh (default: all devices, :func:`batch_mesh`).
        chunk_size: evaluate at most this many series per device at once (``lax.map``
            over chunks), bounding memory for very large batches.

    The batch is padded to a multiple of the device count (padding is dropped from the
    result). Returns fn's outputs with a leading axis B.
    """
    mesh = batch_mesh() if mesh is None else mesh
    n = mesh.devices.size
    B = _batch_size(batched)
    per = -(-B // n)
    if chunk_size is not None and per > chunk_size:
        per = -(-per // chunk_size) * chunk_size
    padded = _pad(batched, per * n)
    sh = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    padded = jax.tree.map(lambda x: jax.device_put(x, sh), padded)
    chunk = chunk_size if (chunk_size is not None and per > chunk_size) else None
    out = _compiled(fn, n, per, chunk, sh)(*padded)
    return jax.tree.map(lambda x: x[:B], out)


@functools.lru_cache(maxsize=64)
def _compiled(fn, n: int, per: int, chunk: int | None, sh):
    """jit of the (chunked) vmap, cached so repeated calls do not retrace."""
    vf = jax.vmap(fn)
    if chunk is not None:
        inner = vf

        def vf(*args):  # (n*per, ...) -> lax.map over chunks of `chunk` series per device
            k = per // chunk
            resh = jax.tree.map(lambda x: x.reshape((n, k, chunk) + x.shape[1:]).swapaxes(0, 1), args)
            out = jax.lax.map(lambda a: jax.vmap(inner)(*a), resh)
            return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape((n * per,) + x.shape[3:]), out)

    return jax.jit(vf, out_shardings=sh)


def sum_over_batch(loss: Callable) -> Callable:
    """Turn a per-series loss ``loss(params_i, data_i)`` into ``total(params, data)``.

    ``params``/``data`` carry a leading batch axis. Minimising the total with an
    elementwise optimiser (Adam, SGD) is the same as fitting every series on its own
    (gradients are block-separable); pass the result to :func:`probdyn.inference.optimize.fit`
    with inputs placed by :func:`shard_batch` to spread the work over devices.
    """

    def total(params, data):
        return jnp.sum(jax.vmap(loss)(params, data))

    return total
