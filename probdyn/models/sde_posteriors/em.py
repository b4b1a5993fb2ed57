r"""Variational EM for the Gauss–Markov SDE posteriors (shared by the CVI and VGPA models).

Learning the drift parameters ``theta`` (and optionally the diffusion and the observation
noise) by gradient steps on the ELBO: each step is one optimiser step on ``-ELBO / n`` w.r.t.
the learned parameters at fixed ``q`` (M-step), followed by the model's own posterior
iterations, warm started (E-step). With the E-step run to convergence the M-step gradient is
the gradient of the collapsed objective ``max_q ELBO`` (envelope theorem), so a quasi-Newton
method applies (L-BFGS without line search, each update clipped to a trust region).

A model plugs in by providing (besides the fields ``sde``, ``obs_log_std`` and ``y``)
``_fit_aux(state, num_iters, rho=, atol=, grow=) -> (state, aux, NatGradTrace)`` (posterior
iterations with step-size back-off; ``aux`` is whatever the ELBO needs at fixed ``q``) and
``_elbo_aux(aux) -> ()`` (the ELBO at fixed ``q`` as a differentiable function of the model's
parameters). :func:`variational_em` never branches on the model family.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

__all__ = ["FitTrace", "variational_em"]


class FitTrace(NamedTuple):
    """Variational-EM trace: ELBO after each E-step (num_steps + 1,), the learned parameters
    after each step (a list of pytrees), posterior iterations per E-step, the step size the
    E-steps started from and the wall time."""

    elbo: np.ndarray
    params: list
    cvi_iters: np.ndarray
    rho: float
    time_s: float


def variational_em(
    model: Any,
    key: PRNGKeyArray,
    state: Any = None,
    num_steps: int = 50,
    optimizer="lbfgs",
    learning_rate: float | None = None,
    max_step: float = 0.5,
    e_iters: int = 20,
    e_atol: float = 1e-6,
    rho: float = 1.0,
    learn_drift: bool = True,
    learn_diffusion: bool = False,
    learn_noise: bool = False,
    log_space: bool = True,
    progress_bar: bool = True,
    desc: str = "variational EM",
    **fit_kwargs,
):
    """Variational EM (see module doc); returns ``(fitted model, state, FitTrace)``.

    Args:
        model: a model with ``_fit_aux``/``_elbo_aux`` (e.g.
            :class:`probdyn.models.sde_posteriors.sparse_gp.SparseGPSDE`,
            :class:`probdyn.models.sde_posteriors.vgpa.VGPA`).
        state: the variational state to start the first E-step from (``None``: the model's prior state).
        num_steps: M-steps. e_iters: posterior iterations per E-step at most (stopped when
            the ELBO gains less than ``e_atol * n``); rho: their initial step size.
        optimizer: ``"lbfgs"`` (optax L-BFGS without line search, learning rate 1; default),
            ``"adam"`` (learning rate 0.05) or an optax transformation; every update is clipped
            to global norm ``max_step`` (in the unconstrained parameters).
        learn_drift / learn_diffusion / learn_noise: learn the drift's inexact-array leaves, the
            diffusion matrix, the observation log-sd.
        log_space: optimise positive *scalar* leaves (e.g. an OU decay) as logarithms and a
            positive diagonal diffusion matrix as the log of its diagonal (off-diagonal zeros
            stay zero); vector and matrix leaves (network weights, polynomial coefficients,
            the log-sd) stay unconstrained.
        fit_kwargs: passed to :func:`probdyn.inference.optimize.fit` (clipping, checkpoints).
    """
    from probdyn.inference.optimize import fit as _fit

    t0 = time.perf_counter()
    spec = jax.tree_util.tree_map(lambda _: False, model)
    if learn_drift:
        spec = eqx.tree_at(lambda m: m.sde.drift, spec, jax.tree_util.tree_map(eqx.is_inexact_array, model.sde.drift))
    if learn_diffusion:
        spec = eqx.tree_at(lambda m: m.sde.diffusion, spec, True)
    if learn_noise:
        spec = eqx.tree_at(lambda m: m.obs_log_std, spec, True)
    params, static = eqx.partition(model, spec)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if not leaves:
        raise ValueError("nothing to learn: the drift has no array parameters and learn_diffusion/learn_noise are off")
    modes = tuple(_leaf_mode(v, log_space) for v in leaves)
    raw = [_to_raw(v, mo) for v, mo in zip(leaves, modes)]
    n = float(model.y.shape[0])
    e_kw = dict(rho=rho, atol=float(e_atol) * n, grow=2.0)
    fit_kwargs["optimizer"] = _em_optimizer(optimizer, learning_rate, float(max_step))
    state, aux, tr = model._fit_aux(state, e_iters, **e_kw)
    holder = {"state": state, "aux": aux}
    elbos, iters, ptrace = [float(tr.elbo[-1])], [len(tr.rho)], [jax.tree_util.tree_unflatten(treedef, leaves)]

    def callback(i, p, loss):
        leaves_ = [_from_raw(v, mo) for v, mo in zip(p, modes)]
        mdl = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves_), static)
        st, ax, t = mdl._fit_aux(holder["state"], e_iters, **e_kw)
        holder["state"], holder["aux"] = st, ax
        elbos.append(float(t.elbo[-1]))
        iters.append(len(t.rho))
        ptrace.append(jax.tree_util.tree_unflatten(treedef, leaves_))

    res = _fit(
        _em_loss,
        raw,
        key,
        num_steps,
        batches=lambda k, i: (holder["aux"], (treedef, modes), static, n),
        callback=callback,
        progress_bar=progress_bar,
        desc=desc,
        **fit_kwargs,
    )
    leaves_ = [_from_raw(v, mo) for v, mo in zip(res.params, modes)]
    fitted = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves_), static)
    return (
        fitted,
        holder["state"],
        FitTrace(np.asarray(elbos), ptrace, np.asarray(iters), float(rho), time.perf_counter() - t0),
    )


# module level, so that the compiled M-step is reused across fits
def _leaf_mode(v, log_space: bool) -> str:
    a = np.asarray(v)
    if not log_space:
        return "raw"
    if a.ndim == 0 and a > 0:
        return "log"
    if a.ndim == 2 and a.shape[0] == a.shape[1] and np.all(a == np.diag(np.diag(a))) and np.all(np.diag(a) > 0):
        return "logdiag"
    return "raw"


def _to_raw(v, mode):
    if mode == "log":
        return jnp.log(v)
    if mode == "logdiag":
        return jnp.log(jnp.diag(v))
    return v


def _from_raw(v, mode):
    if mode == "log":
        return jnp.exp(v)
    if mode == "logdiag":
        return jnp.diag(jnp.exp(v))
    return v


@functools.lru_cache(maxsize=16)
def _em_cached(kind: str, lr: float, max_step: float):
    import optax

    opt = optax.lbfgs(learning_rate=lr, linesearch=None) if kind == "lbfgs" else optax.adam(lr)
    return optax.chain(opt, optax.clip_by_global_norm(max_step))


def _em_optimizer(optimizer, learning_rate, max_step):
    """The M-step optimiser (cached, so repeated fits reuse the compiled step)."""
    if isinstance(optimizer, str):
        kind = optimizer.lower()
        if kind not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs', 'adam' or an optax transformation, got {optimizer!r}")
        lr = (1.0 if kind == "lbfgs" else 0.05) if learning_rate is None else float(learning_rate)
        return _em_cached(kind, lr, max_step)
    import optax

    return _em_cached_custom(optimizer, max_step) if isinstance(optimizer, optax.GradientTransformation) else optimizer


@functools.lru_cache(maxsize=16)
def _em_cached_custom(optimizer, max_step):
    import optax

    return optax.chain(optimizer, optax.clip_by_global_norm(max_step))


def _em_loss(raw, key, batch):
    aux, (treedef, modes), static, n = batch
    leaves = [_from_raw(v, mo) for v, mo in zip(raw, modes)]
    model = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)
    return -model._elbo_aux(aux) / n
