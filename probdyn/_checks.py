"""Argument checks and call helpers shared across probdyn (one copy of each).

* :func:`is_concrete` / :func:`concrete`: whether a value can be checked eagerly (not a JAX
  tracer) and its NumPy value if so — eager checks of user input skip traced values;
* :func:`check_int`: a Python/NumPy integer ``>= minimum`` (bools refused);
* :func:`check_observations`: observations without infinities (NaN marks a missing entry):
  a ``ValueError`` for concrete data; for traced data ``equinox.error_if`` when
  :func:`check_traced` (``PROBDYN_CHECK_TRACED=1``);
* :func:`as_key`: a raw ``uint32[2]`` PRNG key from a raw or typed JAX key;
* :func:`fix_lazy_numpyro`: repairs numpyro after arviz-base imported it lazily;
* :func:`jit_method`: ``getattr(obj, name)(*args)`` through one ``eqx.filter_jit``, compiled
  once per structure of ``obj`` and the arguments.
"""

from __future__ import annotations

import os

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete",
    "concrete",
    "check_int",
    "check_traced",
    "check_observations",
    "as_key",
    "fix_lazy_numpyro",
    "jit_method",
]


def is_concrete(x) -> bool:
    """``True`` unless ``x`` is a JAX tracer (inside ``jit``/``vmap``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def concrete(x) -> np.ndarray | None:
    """``np.asarray(x)`` for a concrete value, ``None`` for a tracer."""
    return np.asarray(x) if is_concrete(x) else None


def check_int(x, name: str, minimum: int) -> int:
    """``x`` as a Python int ``>= minimum``; ``ValueError`` naming ``name`` otherwise (bools too)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


def check_traced() -> bool:
    """Whether traced data is checked at run time: ``PROBDYN_CHECK_TRACED=1`` in the
    environment when the program is traced (off by default, like ``jax_debug_nans``; set it
    before the first call, or call ``jax.clear_caches()``: compiled programs are cached)."""
    return os.environ.get("PROBDYN_CHECK_TRACED", "0") == "1"


def check_observations(y, name: str = "y"):
    """``y`` after checking it holds no infinity (NaN marks a missing entry); callers use the
    returned array.

    A concrete ``y`` with an infinity raises ``ValueError`` naming ``name`` at once. A traced
    ``y`` (inside ``jit``/``vmap``/``grad``) is returned unchecked, and an infinity in it makes
    the log-likelihood NaN (docs/numerics.md), unless :func:`check_traced`: then it is wrapped
    in ``equinox.error_if`` and the compiled program raises the same message at run time.

    Off by default because the host callback of ``error_if`` slows compiled CPU programs even
    when it never fires. Measured (jax 0.12.1, equinox 0.13.8, 2-core CPU,
    ``benchmarks/kalman.py --sizes 10000``, sequential Matern-3/2 value+gradient): 6.3-7.7 ms
    without, 12.2-13.1 ms with the check (two runs without, three with), 6.7 ms with it compiled as a ``where``
    (``EQX_ON_ERROR=nan``). Only data is checked, never parameters: a NaN from a bad
    parameter proposal lets NUTS reject it, where an error would stop the chain."""
    msg = f"{name} contains infinite values (use NaN for missing observations)"
    yc = concrete(y)
    if yc is None:
        return eqx.error_if(y, jnp.any(jnp.isinf(y)), msg) if check_traced() else y
    if np.any(np.isinf(yc)):
        raise ValueError(msg)
    return y


def as_key(key) -> jax.Array:
    """A raw ``uint32[2]`` key (a typed key is unwrapped; a batch of typed keys is kept);
    ``TypeError`` for anything else."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key) if key.ndim == 0 else key
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise TypeError(f"key must be a jax PRNG key (jax.random.PRNGKey/key), got {key.dtype}{key.shape}")
    return key


def fix_lazy_numpyro() -> None:
    """Give ``numpyro.distributions`` its ``distribution`` attribute when it lacks it.

    arviz-base imports numpyro through ``lazy_loader``. When the first real import is of a
    numpyro submodule (``from numpyro.distributions import ...``), the package runs while that
    submodule is being imported and ``numpyro.distributions.distribution`` is never set as an
    attribute; ``numpyro.factor`` reads it and fails with ``AttributeError``. Called by the
    modules that import numpyro, after their imports."""
    import importlib
    import sys

    d = sys.modules.get("numpyro.distributions")
    if d is not None and "distribution" not in vars(d):
        # a module attribute, set on purpose
        d.distribution = importlib.import_module("numpyro.distributions.distribution")  # pyright: ignore[reportAttributeAccessIssue]


@eqx.filter_jit
def _call(name: str, obj, *args):
    return getattr(obj, name)(*args)


def jit_method(name: str, obj, *args):
    """``getattr(obj, name)(*args)`` compiled with ``eqx.filter_jit`` (``obj`` an equinox
    Module or numpyro distribution; static fields and the method name are part of the cache
    key, array leaves are traced), so eager calls of a model's methods run one program."""
    return _call(name, obj, *args)
