"""The training loops: the one optax loop (progress bar, gradient clipping, checkpoints,
resume) and the one damped-ascent loop with back-off (natural-gradient site updates, Newton
fits).

Every model family that is fitted by gradient steps (MGPVAE, fractional SDEs, the
hyperparameters of sparse-GP SDEs, MAP fits of system-identification models) calls
:func:`fit` with a loss ``loss_fn(params, key, batch) -> scalar`` over an equinox pytree.

Iterations that propose a damped step and accept it only if the objective does not get
worse (CVI natural-gradient steps with step size ``rho``, damped Newton steps with a
Levenberg–Marquardt ``lambda``) call :func:`backoff_ascent`, which keeps the trace, the
back-off and the progress bar.

Reference optima (e.g. the best member of a variational family, to check that a
natural-gradient scheme reaches it) use :func:`lbfgs_minimize`: scipy's L-BFGS-B on a jitted
value-and-gradient, run to a tight gradient tolerance.

Checkpoints are written atomically (temp file + rename) every ``checkpoint_every`` steps
and at the end; with ``resume=True`` (default) an existing checkpoint at the same path is
loaded and training continues from its step, so an interrupted run loses at most
``checkpoint_every`` steps. A checkpoint holds the parameters and optimiser state
(equinox serialisation), the step count and the loss trace.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

__all__ = [
    "FitResult",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
    "AscentTrace",
    "backoff_ascent",
    "MinimizeResult",
    "lbfgs_minimize",
]


class FitResult(NamedTuple):
    """Output of :func:`fit`: trained params, loss trace (num_steps,), optimiser state."""

    params: Any
    losses: np.ndarray
    opt_state: Any
    num_steps: int
    time_s: float


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(path, params, opt_state, step: int, losses) -> None:
    """Write ``path`` (equinox leaves) and ``path.json`` (step, losses) atomically."""
    path = Path(path)
    _atomic_write(path, lambda f: eqx.tree_serialise_leaves(f, (params, opt_state)))
    meta = {"step": int(step), "losses": [float(v) for v in np.asarray(losses)]}
    _atomic_write(path.with_name(path.name + ".json"), lambda f: json.dump(meta, f), "w")


def load_checkpoint(path, params, opt_state):
    """Load a checkpoint written by :func:`save_checkpoint` into templates of the same structure.

    Returns ``(params, opt_state, step, losses)``.
    """
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    if not path.exists() or not meta_path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    params, opt_state = eqx.tree_deserialise_leaves(path, (params, opt_state))
    meta = json.loads(meta_path.read_text())
    return params, opt_state, int(meta["step"]), list(meta["losses"])


@functools.lru_cache(maxsize=32)
def _make_optimizer(optimizer, clip_norm):
    """Cached so that equal requests give the *same* object (and reuse compiled steps)."""
    if isinstance(optimizer, (int, float)):
        optimizer = optax.adam(float(optimizer))
    if clip_norm is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)
    return optimizer


@eqx.filter_jit
def _step(loss_fn, optimizer, params, opt_state, k, batch):
    """One optimiser step; compiled once per (loss_fn, optimizer, shapes): both are static
    (hashed by identity), so repeated :func:`fit` calls with the same objects reuse it."""
    loss, grads = eqx.filter_value_and_grad(loss_fn)(params, k, batch)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(params, eqx.is_inexact_array))
    params = eqx.apply_updates(params, updates)
    return params, opt_state, loss


def fit(
    loss_fn: Callable[[Any, PRNGKeyArray, Any], jax.Array],
    params: Any,
    key: PRNGKeyArray,
    num_steps: int,
    optimizer: optax.GradientTransformation | float = 1e-3,
    batches: Callable[[PRNGKeyArray, int], Any] | None = None,
    clip_norm: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = True,
    progress_bar: bool = True,
    desc: str = "fit",
    callback: Callable[[int, Any, float], None] | None = None,
) -> FitResult:
    """Minimise ``loss_fn(params, key, batch)`` with optax.

    Args:
        loss_fn: scalar loss; gradients are taken w.r.t. the inexact-array leaves of
            ``params`` (``eqx.filter_value_and_grad``), other leaves are left alone.
        params: equinox Module / pytree of initial parameters.
        key: PRNG key; step ``i`` uses ``fold_in(key, i)`` (so a resumed run draws the same
            keys as an uninterrupted one).
        num_steps: total number of steps (including those already done in a checkpoint).
        optimizer: an optax transformation, or a float learning rate for Adam.
        batches: ``batches(key, step) -> batch`` (e.g. a random minibatch); ``None`` passes
            ``batch=None``.
        clip_norm: clip the global gradient norm to this value.
        checkpoint: file path; saved every ``checkpoint_every`` steps and at the end.
        resume: continue from an existing checkpoint at ``checkpoint``.
        callback: ``callback(step, params, loss)`` called on the host every step.

    Non-finite losses raise ``FloatingPointError`` naming the step (the last checkpoint is
    kept), never silently continue.
    """
    num_steps = int(num_steps)
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    optimizer = _make_optimizer(optimizer, None if clip_norm is None else float(clip_norm))
    opt_state = optimizer.init(eqx.filter(params, eqx.is_inexact_array))
    start, losses = 0, []
    if checkpoint is not None and resume and Path(checkpoint).exists():
        params, opt_state, start, losses = load_checkpoint(checkpoint, params, opt_state)

    def step(params, opt_state, k, batch):
        return _step(loss_fn, optimizer, params, opt_state, k, batch)

    bar = None
    if progress_bar and num_steps > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=start, desc=desc, leave=False)
    t0 = time.perf_counter()
    try:
        for i in range(start, num_steps):
            ki = jax.random.fold_in(key, i)
            kb, kl = jax.random.split(ki)
            batch = batches(kb, i) if batches is not None else None
            new_params, new_state, loss = step(params, opt_state, kl, batch)
            lv = float(loss)
            if not np.isfinite(lv):
                raise FloatingPointError(
                    f"{desc}: loss became {lv} at step {i}; parameters of step {i - 1} kept"
                    + (f" (checkpoint {checkpoint})" if checkpoint is not None else "")
                )
            params, opt_state = new_params, new_state
            losses.append(lv)
            if callback is not None:
                callback(i, params, lv)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{lv:.4g}")
            if checkpoint is not None and (i + 1) % int(checkpoint_every) == 0:
                save_checkpoint(checkpoint, params, opt_state, i + 1, losses)
    finally:
        if bar is not None:
            bar.close()
    if checkpoint is not None and num_steps > start:
        save_checkpoint(checkpoint, params, opt_state, num_steps, losses)
    return FitResult(params, np.asarray(losses), opt_state, max(num_steps, start), time.perf_counter() - t0)


class AscentTrace(NamedTuple):
    """Output trace of :func:`backoff_ascent`: the objective at the start and after each
    accepted step (n + 1,), the damping each accepted step used (n,), the number of rejected
    proposals and of proposals in all."""

    values: np.ndarray
    dampings: np.ndarray
    num_rejected: int
    num_attempts: int


def backoff_ascent(
    propose: Callable[[Any, Any], tuple[Any, Any]],
    state: Any,
    value: float,
    num_iters: int,
    damping: float,
    accept: Callable[[float, float], bool],
    adapt: Callable[[bool, float, float, float], tuple[float, bool]],
    *,
    retry: bool = True,
    converged: Callable[[Any], bool] | None = None,
    progress_bar: bool = False,
    desc: str = "ascent",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: bool = True,
) -> tuple[Any, float, AscentTrace]:
    """Maximise an objective by damped steps, rejecting those that make it worse.

    Each proposal is ``(candidate, new) = propose(state, damping)`` (``new`` the objective at
    ``candidate``); it is accepted when ``new`` is finite and ``accept(cur, new)``. Then
    ``adapt(accepted, damping, cur, new) -> (damping, stop)`` gives the next damping and
    whether to stop. With ``retry=True`` an iteration ends at an accepted step (rejected
    proposals are retried with the adapted damping); with ``retry=False`` every proposal is
    one iteration. ``converged(state)`` (optional) is checked before each iteration.
    ``value`` is the objective at ``state``; non-finite raises ``FloatingPointError``.

    ``checkpoint``: a file path; the state (an array pytree; equinox serialisation) and the
    trace are written atomically every ``checkpoint_every`` iterations and at the end, and
    with ``resume=True`` an existing checkpoint is loaded and the run continues from its
    iteration (``num_iters`` counts the iterations done before). A run that stopped before
    ``num_iters`` (``adapt`` said stop) is not continued.

    Returns:
        ``(state, value, AscentTrace)`` at the last accepted step.
    """
    cur = float(value)
    if not np.isfinite(cur):
        raise FloatingPointError(f"{desc}: the initial objective is {cur}")
    values, dampings, rejected, attempts, start, stop = [cur], [], 0, 0, 0, False
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state, meta = _load_ascent(checkpoint, state)
        values, dampings, rejected, attempts = meta["values"], meta["dampings"], meta["rejected"], meta["attempts"]
        start, stop, damping, cur = meta["iteration"], meta["stopped"], meta["damping"], meta["values"][-1]

    def save(i):
        if checkpoint is not None:
            _save_ascent(
                checkpoint,
                state,
                dict(
                    values=values,
                    dampings=dampings,
                    rejected=rejected,
                    attempts=attempts,
                    iteration=i,
                    stopped=stop,
                    damping=damping,
                ),
            )

    bar = None
    if progress_bar and not stop:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(num_iters), initial=start, desc=desc, leave=False)
    done = start  # completed iterations
    try:
        while done < int(num_iters) and not stop:
            if converged is not None and converged(state):
                break
            while True:
                cand, new = propose(state, damping)
                new = float(new)
                attempts += 1
                ok = bool(np.isfinite(new)) and bool(accept(cur, new))
                used = damping
                damping, stop = adapt(ok, damping, cur, new)
                if ok:
                    state, cur = cand, new
                    values.append(cur)
                    dampings.append(used)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(value=f"{cur:.5g}", damping=f"{damping:.3g}")
                    break
                rejected += 1
                if stop or not retry:
                    break
            done += 1
            if not stop and done % int(checkpoint_every) == 0:
                save(done)
    finally:
        if bar is not None:
            bar.close()
    save(done)
    return state, cur, AscentTrace(np.asarray(values), np.asarray(dampings), rejected, attempts)


def _save_ascent(path, state, meta: dict) -> None:
    path = Path(path)
    _atomic_write(path, lambda f: eqx.tree_serialise_leaves(f, state))
    meta = {k: ([float(x) for x in v] if isinstance(v, list) else v) for k, v in meta.items()}
    meta = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in meta.items()}
    _atomic_write(path.with_name(path.name + ".json"), lambda f: json.dump(meta, f), "w")


def _load_ascent(path, template):
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    if not meta_path.exists():
        raise FileNotFoundError(f"no checkpoint metadata at {meta_path}")
    return eqx.tree_deserialise_leaves(path, template), json.loads(meta_path.read_text())


class MinimizeResult(NamedTuple):
    """Output of :func:`lbfgs_minimize`: the minimiser (a pytree like ``x0``), the value there,
    L-BFGS iterations and function evaluations, the largest absolute gradient entry, whether
    scipy reported convergence, its message and the wall time in seconds."""

    x: Any
    value: float
    num_iters: int
    num_evals: int
    max_abs_grad: float
    converged: bool
    message: str
    time_s: float


def lbfgs_minimize(
    value_and_grad: Callable[[Any], tuple[Any, Any]],
    x0: Any,
    gtol: float = 1e-9,
    max_iters: int = 50_000,
    history: int = 50,
) -> MinimizeResult:
    """Minimise a smooth function of a pytree with scipy's L-BFGS-B (float64 on the host).

    ``value_and_grad(x) -> (value, grad pytree)`` should be jitted by the caller. Stops when the
    largest projected gradient entry is below ``gtol``, when the relative decrease of the value
    falls below 1e-15 (rounding level), or after ``max_iters`` iterations; ``history`` is the number of
    stored correction pairs. A non-finite value or gradient at ``x0`` raises ``ValueError``.
    """
    import scipy.optimize
    from jax.flatten_util import ravel_pytree

    flat0, unravel = ravel_pytree(x0)
    dtype = flat0.dtype

    def fun(v):
        val, g = value_and_grad(unravel(jax.numpy.asarray(v, dtype)))
        return float(val), np.asarray(ravel_pytree(g)[0], np.float64)

    v0 = np.asarray(flat0, np.float64)
    f0, g0 = fun(v0)
    if not (np.isfinite(f0) and np.all(np.isfinite(g0))):
        raise ValueError(f"lbfgs_minimize: the objective or its gradient is not finite at the start (value {f0})")
    t0 = time.perf_counter()
    res = scipy.optimize.minimize(
        fun,
        v0,
        jac=True,
        method="L-BFGS-B",
        options=dict(maxiter=int(max_iters), maxfun=4 * int(max_iters), gtol=gtol, ftol=1e-15, maxcor=int(history)),
    )
    return MinimizeResult(
        unravel(jax.numpy.asarray(res.x, dtype)),
        float(res.fun),
        int(res.nit),
        int(res.nfev),
        float(np.max(np.abs(res.jac))),
        bool(res.success),
        str(res.message),
        time.perf_counter() - t0,
    )
