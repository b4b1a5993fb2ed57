"""Array aliases (jaxtyping) for probdyn's signatures.

A named dimension (``d``, the state dimension) must agree across the arguments of one call.
The test suite runs the jaxtyping import hook with beartype over ``probdyn``, so an
annotation that disagrees with what a function receives fails a test.

Two kinds of aliases:

* **inputs** (``ArrayInput``, ``ScalarLike``, ``KeyInput``): what a user may pass to a
  public entry point: NumPy or JAX arrays and Python scalars (``ArrayLike``). Entry points
  that check an input themselves, with a ``ValueError`` that names the problem
  (observations that may be ``(T,)`` or ``(T, p)``, times that must increase), annotate it
  loosely (:data:`ArrayInput`) so that their own check, not the annotation, reports a
  wrong shape.
* **validated values**: JAX arrays of a known shape (``Cov``) and keys (``Key``), as the
  engine passes them on.
"""

from __future__ import annotations

from collections.abc import Sequence

from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

__all__ = [
    "ArrayInput",
    "ScalarLike",
    "Cov",
    "Key",
    "KeyInput",
]

ArrayInput = ArrayLike | Sequence
"""Anything ``jnp.asarray`` takes (arrays, scalars, nested lists); the callee checks its shape."""

ScalarLike = Float[ArrayLike, ""]
"""A real scalar: a Python float or a 0-d array."""

Cov = Float[Array, "d d"]
"""A state covariance (d, d)."""

Key = PRNGKeyArray
"""A ``jax.random`` key."""

KeyInput = ArrayLike
"""A ``jax.random`` key at an entry point that checks it (a clear error for an int seed)."""
