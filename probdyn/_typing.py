"""Array aliases (jaxtyping) for probdyn's signatures.

The names of the dimensions are shared within one call: ``T`` time points, ``p`` observed
coordinates, ``d`` state dimension, ``n`` a batch. The test suite runs the jaxtyping import
hook with beartype over ``probdyn``, so an annotation that disagrees with what a function
receives fails a test.

Two kinds of aliases:

* **inputs** (``...Like``): what a user may pass to a public entry point: NumPy or JAX arrays
  and Python scalars (``ArrayLike``). Entry points that check an input themselves, with a
  ``ValueError`` that names the problem (observations that may be ``(T,)`` or ``(T, p)``,
  times that must increase), annotate it loosely (:data:`ArrayInput`) so that their own
  check, not the annotation, reports a wrong shape.
* **validated arrays**: JAX arrays of a known shape, as the engine passes them on.
"""

from __future__ import annotations

from collections.abc import Sequence

from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

__all__ = [
    "ArrayInput",
    "ScalarLike",
    "TimesLike",
    "Times",
    "Observations",
    "Mean",
    "Cov",
    "CovRoot",
    "Key",
    "KeyInput",
]

ArrayInput = ArrayLike | Sequence
"""Anything ``jnp.asarray`` takes (arrays, scalars, nested lists); the callee checks its shape."""

ScalarLike = Float[ArrayLike, ""]
"""A real scalar: a Python float or a 0-d array."""

TimesLike = Float[ArrayLike, " T"]
"""Time points (T,), NumPy or JAX."""

Times = Float[Array, " T"]
"""Validated time points (T,)."""

Observations = Float[Array, "T p"]
"""Validated observations (T, p); NaN marks a missing value."""

Mean = Float[Array, " d"]
"""A state mean (d,)."""

Cov = Float[Array, "d d"]
"""A state covariance (d, d)."""

CovRoot = Float[Array, "d d"]
"""A lower square root ``L`` of a covariance ``L L^T`` (d, d)."""

Key = PRNGKeyArray
"""A ``jax.random`` key."""

KeyInput = ArrayLike
"""A ``jax.random`` key at an entry point that checks it (a clear error for an int seed)."""
