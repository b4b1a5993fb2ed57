r"""Nonlinear SDE definitions and simulators.

An :class:`SDE` is the Itô equation

.. math::
    dx = f_\theta(x, t)\,dt + L_\theta(x, t)\,dW,\qquad W \text{ standard Brownian motion in } R^m,

held as an equinox Module, so its parameters (mechanistic constants, an equinox MLP, or both)
are pytree leaves that ``jax.grad``/``jax.vmap`` see. Everything that simulates, filters or
variationally fits an SDE in probdyn (system identification, sparse-GP SDEs, fractional
SDEs) takes one of these.

Simulators:

* :func:`euler_maruyama` — fixed-step Itô Euler–Maruyama ``lax.scan`` with ``num_substeps``
  steps between consecutive output times (irregular output grids are fine); fast, and the
  discretisation the discrete-time models mirror.
* :func:`simulate_diffrax` — diffrax with a virtual Brownian tree (adaptive or high-order
  solvers; Itô or Stratonovich).

ODEs (the drift alone, ``L = 0``) are solved by :func:`probdyn.sde.solve_ode` (:mod:`probdyn.sde.ode`).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn._checks import is_concrete
from probdyn.ssm import check_times

__all__ = ["SDE", "euler_maruyama", "euler_maruyama_interval", "simulate_diffrax", "check_drift"]


class SDE(eqx.Module):
    """``dx = drift(x, t) dt + diffusion(x, t) dW``.

    Args:
        drift: callable ``(x (d,), t ()) -> (d,)``; may be an equinox Module with parameters.
        diffusion: a constant array (d, m) or (d,) (diagonal), or a callable
            ``(x, t) -> (d, m)``.
        state_dim: d.

    ``drift_fn``/``diffusion_fn`` always return ``(d,)`` and ``(d, m)``.
    """

    drift: Callable
    diffusion: Callable | Float[Array, "d m"]
    state_dim: int = eqx.field(static=True)

    def __init__(self, drift: Callable, diffusion, state_dim: int):
        if not callable(drift):
            raise TypeError("drift must be callable as drift(x, t) -> (d,)")
        if int(state_dim) < 1:
            raise ValueError(f"state_dim must be >= 1, got {state_dim}")
        self.drift = drift
        if not callable(diffusion):
            diffusion = jnp.asarray(diffusion)
            if diffusion.ndim == 0:
                diffusion = diffusion * jnp.ones(int(state_dim))
            if diffusion.ndim == 1:
                diffusion = jnp.diag(diffusion)
            if diffusion.ndim != 2 or diffusion.shape[0] != int(state_dim):
                raise ValueError(f"diffusion must be (d,) or (d, m) with d={state_dim}, got {diffusion.shape}")
        self.diffusion = diffusion
        self.state_dim = int(state_dim)

    def drift_fn(self, x: Float[Array, " d"], t) -> Float[Array, " d"]:
        """The drift ``f(x, t)``, shape (d,)."""
        return self.drift(x, t)

    def diffusion_fn(self, x: Float[Array, " d"], t) -> Float[Array, "d m"]:
        """The diffusion ``L(x, t)``, shape (d, m) (a diagonal from a (d,) vector)."""
        if callable(self.diffusion):
            return self.diffusion(x, t)
        return self.diffusion

    @property
    def noise_dim(self) -> int:
        """The dimension m of the driving Brownian motion."""
        if callable(self.diffusion):
            x = jax.ShapeDtypeStruct((self.state_dim,), jnp.float32)
            # callable() narrows the union, but pyright keeps Array (a subclass could be callable)
            out = jax.eval_shape(lambda z: self.diffusion(z, 0.0), x)  # pyright: ignore[reportCallIssue]
            return out.shape[-1]
        return self.diffusion.shape[1]

    def check(self, dtype=jnp.float32) -> SDE:
        """Raise a clear ``ValueError`` if drift/diffusion return the wrong shapes."""
        check_drift(self.drift, self.state_dim, dtype)
        if callable(self.diffusion):
            x = jax.ShapeDtypeStruct((self.state_dim,), dtype)
            out = jax.eval_shape(lambda z: self.diffusion(z, jnp.zeros((), dtype)), x)  # pyright: ignore[reportCallIssue]
            if len(out.shape) != 2 or out.shape[0] != self.state_dim:
                raise ValueError(f"diffusion(x, t) must return shape ({self.state_dim}, m), got {out.shape}")
        return self


def check_drift(drift: Callable, state_dim: int, dtype=jnp.float32) -> None:
    """Raise ``ValueError`` unless ``drift(x (d,), t)`` returns shape ``(d,)``."""
    x = jax.ShapeDtypeStruct((state_dim,), dtype)
    try:
        out = jax.eval_shape(lambda z: drift(z, jnp.zeros((), dtype)), x)
    except Exception as e:  # noqa: BLE001 - re-raise with context
        raise ValueError(f"drift(x, t) failed for x of shape ({state_dim},): {e}") from e
    if tuple(out.shape) != (state_dim,):
        raise ValueError(f"drift(x, t) must return shape ({state_dim},), got {tuple(out.shape)}")


def _check_x0(sde: SDE, x0):
    x0 = jnp.asarray(x0)
    if x0.shape != (sde.state_dim,):
        raise ValueError(f"x0 must have shape ({sde.state_dim},), got {x0.shape}")
    return x0


def euler_maruyama_interval(
    sde: SDE,
    x: Float[Array, "... d"],
    t0: Float[ArrayLike, ""],
    t1: Float[ArrayLike, ""],
    dW: Float[Array, "... n m"],
) -> Float[Array, "... d"]:
    """Itô Euler–Maruyama over ``[t0, t1]`` in ``n = dW.shape[-2]`` equal steps ``h = (t1 - t0) / n``:
    ``x <- x + f(x, t) h + L(x, t) dW_j``, driven by the Brownian increments ``dW`` (each
    ``N(0, h I_m)``, drawn by the caller).

    ``x`` (d,) with ``dW`` (n, m) is one path; ``x`` (P, d) with ``dW`` (P, n, m) a particle
    batch (vmapped). The one Euler–Maruyama step of probdyn: :func:`euler_maruyama`, the
    particle filter and the time-aware discrete models all call it.
    """
    if x.ndim == 2:
        return jax.vmap(lambda xi, dwi: euler_maruyama_interval(sde, xi, t0, t1, dwi))(x, dW)
    n = dW.shape[0]
    t0, t1 = jnp.asarray(t0), jnp.asarray(t1)  # a Python float stays weakly typed
    h = (t1 - t0) / n

    def step(x, j):
        t = t0 + j * h
        f = sde.drift_fn(x, t).astype(x.dtype)
        return x + f * h + jnp.asarray(sde.diffusion_fn(x, t)).astype(x.dtype) @ dW[j], None

    return jax.lax.scan(step, x, jnp.arange(n))[0]


def euler_maruyama(
    sde: SDE,
    x0: Float[Array, " d"],
    times: Float[Array, " T"],
    key: PRNGKeyArray,
    num_substeps: int = 1,
) -> Float[Array, "T d"]:
    """Itô Euler–Maruyama path at ``times`` (``x[0] = x0`` at ``times[0]``).

    Each interval ``[t_k, t_{k+1}]`` is split into ``num_substeps`` equal steps
    (:func:`euler_maruyama_interval`). Cost O(T * num_substeps); one ``lax.scan``.
    """
    times = jnp.asarray(check_times(times))
    x0 = _check_x0(sde, x0)
    n = int(num_substeps)
    if n < 1:
        raise ValueError(f"num_substeps must be >= 1, got {num_substeps}")
    m = sde.noise_dim
    dtype = jnp.result_type(x0, times)
    x0 = x0.astype(dtype)
    keys = jax.random.split(key, times.shape[0] - 1)

    def interval(x, inp):
        t0, t1, k = inp
        dW = jax.random.normal(k, (n, m), dtype) * jnp.sqrt((t1 - t0) / n)
        x = euler_maruyama_interval(sde, x, t0, t1, dW)
        return x, x

    _, xs = jax.lax.scan(interval, x0, (times[:-1], times[1:], keys))
    return jnp.concatenate([x0[None], xs], axis=0)


def simulate_diffrax(
    sde: SDE,
    x0: Float[Array, " d"],
    times: Float[Array, " T"],
    key: PRNGKeyArray,
    solver=None,
    dt0: float | None = None,
    stratonovich: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
    brownian_tol: float | None = None,
) -> Float[Array, "T d"]:
    """Simulate with diffrax and a virtual Brownian tree.

    Default solver: Euler (Itô) or Heun (``stratonovich=True``) with fixed ``dt0``
    (default: smallest output spacing / 10). Pass ``rtol``/``atol`` with an adaptive-capable
    solver (e.g. ``diffrax.Heun()``) for adaptive steps. ``stratonovich=True`` interprets the
    equation in the Stratonovich sense (the same ``drift``; no Itô correction is added).
    """
    import diffrax

    times = jnp.asarray(check_times(times))
    x0 = _check_x0(sde, x0)
    dtype = jnp.result_type(x0, times)
    span = float(np.min(np.diff(np.asarray(times)))) if is_concrete(times) else None
    if dt0 is None:
        dt0 = (span if span is not None else 1e-2) / 10
    tol = brownian_tol if brownian_tol is not None else dt0 / 10
    bm = diffrax.VirtualBrownianTree(times[0], times[-1], tol=tol, shape=(sde.noise_dim,), key=key)
    if solver is None:
        solver = diffrax.Heun() if stratonovich else diffrax.Euler()
    drift = diffrax.ODETerm(lambda t, x, args: sde.drift_fn(x, t))
    diff = diffrax.ControlTerm(lambda t, x, args: sde.diffusion_fn(x, t), bm)
    terms = diffrax.MultiTerm(drift, diff)
    controller = (
        diffrax.ConstantStepSize()
        if rtol is None
        else diffrax.PIDController(rtol=rtol, atol=atol if atol is not None else rtol)
    )
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        times[0],
        times[-1],
        dt0,
        x0.astype(dtype),
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=controller,
        max_steps=max_steps,
    )
    return sol.ys  # pyright: ignore[reportReturnType]  (SaveAt(ts=...) always saves: never None)
