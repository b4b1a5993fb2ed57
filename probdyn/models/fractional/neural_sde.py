r"""Neural SDEs driven by Markov-approximate fractional Brownian motion (MA-fBM).

After Daems, Opper, Crevecoeur & Birdal, "Variational inference for SDEs driven by
fractional noise" (ICLR 2024). The prior

.. math:: dX = b_\theta(X, t)\,dt + \sigma_\theta(X, t)\,d\hat B^H,\qquad
          \hat B^H_i = \sum_k \omega_k(H)\,(Y_{ik} - Y_{ik}(0)),\quad dY_{ik} = -\gamma_k Y_{ik}\,dt + dW_i

(``X`` in ``R^d`` with diagonal ``sigma``; one fBM per coordinate, all with the same ``H``;
:math:`\omega(H)` the optimal weights of :mod:`probdyn.sde.fractional` in the standard
normalisation ``Var B^H(t) ~ t^{2H}``) is Markov in the augmented state ``(X, Y)``:

.. math:: dX = \big[b - \sigma\odot(Y(\omega\odot\gamma))\big]dt + \sigma\,\bar\omega\,dW,
          \qquad \bar\omega = \textstyle\sum_k\omega_k .

The posterior changes the drift of the *shared* Brownian motion, ``dW -> dW + u dt``, with a
control :math:`u_\phi(t, X, Y, \text{context})` (Girsanov), so that

.. math:: \mathrm{ELBO} = E_q\Big[\sum_i \log p(o_i\mid X_{t_i})\Big]
          - \mathrm{KL}(q(z_0)\,\|\,p(z_0)) - E_q\int \tfrac12\|u\|^2 dt ,

where ``z_0 = (X_0, Y_0)`` (``Y_0`` stationary for type I, zero for type II). The path KL is
accumulated as an extra state coordinate, so the posterior is a plain
:class:`probdyn.sde.SDE` simulated by :func:`probdyn.sde.euler_maruyama` (Itô scan, fast) or
:func:`probdyn.sde.simulate_diffrax` (any diffrax solver; ``stratonovich=True`` solves the
Stratonovich form of the *same* Itô model, with the drift correction
:math:`-\tfrac12\sum_j (\partial g_j/\partial z) g_j` added). ``H = sigmoid(hurst_logit)`` is
learnable; ``num_components=0`` gives the Brownian SDE (``H = 1/2``) exactly.


The exact likelihood of the linear case (fractional OU) is :mod:`probdyn.models.fractional.fou`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn.sde.base import SDE, euler_maruyama, simulate_diffrax
from probdyn.sde.fractional import (
    gamma_grid,
    ma_fbm_initial_cov,
    ma_fbm_linear_sde,
    ma_fbm_weights,
)
from probdyn.ssm import LinearGaussianSSM, check_times

__all__ = [
    "FractionalSDE",
    "MLPControl",
    "AffineControl",
    "GaussianLikelihood",
    "elbo",
    "simulate_augmented",
    "sample_posterior",
    "sample_prior",
    "fit_elbo",
    "euler_lgssm",
]

# ------------------------------------------------------------------------- components


class GaussianLikelihood(eqx.Module):
    """``o_i ~ N(C x_i, diag(exp(2 log_std)))``; NaN entries of ``o`` are missing.

    ``C`` (m, d) (default identity). ``__call__(xs (T, d), ys (T, m)) -> sum of log densities``.
    """

    log_std: Float[Array, " m"]
    C: Float[Array, "m d"] | None = None
    learn_noise: bool = eqx.field(static=True, default=True)

    def __call__(self, xs, ys):
        """``log p(ys | xs)`` summed over time: Gaussian observations of ``C x``."""
        f = xs if self.C is None else xs @ self.C.T
        log_std = self.log_std if self.learn_noise else jax.lax.stop_gradient(self.log_std)
        miss = jnp.isnan(ys)
        z = (jnp.where(miss, 0.0, ys) - f) * jnp.exp(-log_std)
        lp = -0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)
        return jnp.sum(jnp.where(miss, 0.0, lp))


class MLPControl(eqx.Module):
    """``u(t, x, y, ctx) = MLP([x, y.ravel(), ctx, t])`` with a zero-initialised output layer.

    ``ctx`` is ``None``, a vector (c,), or ``(ctx_times (M,), ctx_values (M, c))``; in the last
    case the row of the first context time strictly after ``t`` is used (latest row at the
    end) — the convention of a backward-in-time encoder (Li et al. 2020).
    """

    mlp: eqx.nn.MLP

    def __init__(
        self,
        state_dim: int,
        aug_dim: int,
        context_dim: int,
        key: PRNGKeyArray,
        width: int = 64,
        depth: int = 2,
        dtype=None,
    ):
        dtype = jnp.float32 if dtype is None else dtype
        mlp = eqx.nn.MLP(
            state_dim + aug_dim + context_dim + 1,
            state_dim,
            width,
            depth,
            activation=jax.nn.softplus,
            key=key,
            dtype=dtype,
        )
        last = mlp.layers[-1]
        # the MLP has biases (use_bias defaults to True): last.bias is never None
        zeros = (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias))  # pyright: ignore[reportArgumentType]
        last = eqx.tree_at(lambda l: (l.weight, l.bias), last, zeros)
        self.mlp = eqx.tree_at(lambda m: m.layers[-1], mlp, last)

    def __call__(self, t, x, y, ctx):
        """The control ``u(t, x, y, ctx)`` (d,) from an MLP of the state, the MA-fBM factors, time and context."""
        c = _select_context(ctx, t)
        parts = [x, y.ravel(), jnp.reshape(t, (1,)).astype(x.dtype)]
        if c is not None:
            parts.insert(2, c.astype(x.dtype))
        return self.mlp(jnp.concatenate(parts))


def _select_context(ctx, t):
    if ctx is None:
        return None
    if isinstance(ctx, tuple):
        ct, cv = ctx
        i = jnp.clip(jnp.searchsorted(ct, t, side="right"), 0, ct.shape[0] - 1)
        return cv[i]
    return ctx


class AffineControl(eqx.Module):
    r"""``u(t, z) = a(t) + C(t) z``, ``a, C`` linear in ``t`` on each interval of ``knots`` (M,).

    ``z = (x, y.ravel())``. The coefficients are linear within ``[knots[i], knots[i+1])`` and
    may jump at the knots (put the observation times among the knots: the optimal control
    jumps there). For a linear prior with Gaussian observations the optimal (posterior)
    control is exactly affine in the state, so this family contains the true posterior up
    to the linear-in-time interpolation. With ``num_paths = P`` each of ``P`` independent
    sequences has its own table and ``ctx`` is the integer sequence index. Zero-initialised.
    ``state_scale`` (n,) divides ``z`` before ``C`` (a preconditioner: pass the prior standard
    deviations, e.g. ``1/sqrt(2 gamma_k)`` for the ``Y_k``, so that all gains have one scale).

    ``shared_gain=True`` (with ``num_paths``) keeps one gain table ``C`` for all sequences
    and a per-sequence offset ``a``: the structure of the exact posterior control of a linear
    prior, :math:`u^* = L^\top(\eta_p(t) - \Lambda(t) z)`, whose backward information
    matrix :math:`\Lambda(t)` depends only on the observation times and noise, not on the
    data (sequences observed at the same times share it). Fewer parameters, and every
    sequence trains the gains.
    """

    knots: Float[Array, " M"]
    a: Array
    C: Array
    state_scale: Array
    batched: bool = eqx.field(static=True)
    shared_gain: bool = eqx.field(static=True)

    def __init__(
        self,
        knots,
        state_dim: int,
        aug_dim: int,
        num_paths: int | None = None,
        dtype=None,
        state_scale=None,
        shared_gain: bool = False,
    ):
        knots = jnp.asarray(check_times(knots, "knots"))
        if knots.shape[0] < 2:
            raise ValueError("AffineControl needs at least two knots")
        dtype = knots.dtype if dtype is None else dtype
        M, n = knots.shape[0], state_dim + aug_dim
        lead = () if num_paths is None else (int(num_paths),)
        self.knots = knots.astype(dtype)
        self.a = jnp.zeros(lead + (M - 1, 2, state_dim), dtype)
        if shared_gain and num_paths is None:
            raise ValueError("shared_gain=True needs num_paths")
        self.shared_gain = bool(shared_gain)
        self.C = jnp.zeros((() if shared_gain else lead) + (M - 1, 2, state_dim, n), dtype)
        self.batched = num_paths is not None
        self.state_scale = (
            jnp.ones(n, dtype) if state_scale is None else jnp.broadcast_to(jnp.asarray(state_scale, dtype), (n,))
        )

    def __call__(self, t, x, y, ctx):
        """The control ``u(t, x, y, ctx)`` (d,), affine in the state and the MA-fBM factors."""
        a = self.a[ctx] if self.batched else self.a
        C = self.C[ctx] if self.batched and not self.shared_gain else self.C
        kn = jax.lax.stop_gradient(self.knots)
        i = jnp.clip(jnp.searchsorted(kn, t, side="right") - 1, 0, kn.shape[0] - 2)
        lam = jnp.clip((t - kn[i]) / (kn[i + 1] - kn[i]), 0.0, 1.0)
        ai = (1 - lam) * a[i, 0] + lam * a[i, 1]
        Ci = (1 - lam) * C[i, 0] + lam * C[i, 1]
        z = jnp.concatenate([x, y.ravel()]) / jax.lax.stop_gradient(self.state_scale)
        return ai + Ci @ z


# ------------------------------------------------------------------------------ model


class FractionalSDE(eqx.Module):
    r"""Prior, variational posterior and likelihood of a neural SDE with MA-fBM noise.

    Args:
        drift: ``b(x (d,), t) -> (d,)`` (an equinox Module for learnable drifts).
        control: ``u(t, x (d,), y (d, K), ctx) -> (d,)`` (e.g. :class:`MLPControl`,
            :class:`AffineControl`); its output should start at zero.
        likelihood: ``likelihood(xs (T, d), obs) -> scalar`` (e.g. :class:`GaussianLikelihood`).
        state_dim: ``d``.
        hurst: initial ``H`` in (0, 1) (stored as a logit); ignored if ``num_components=0``.
        num_components: ``K`` (0: Brownian SDE, ``H = 1/2`` exactly).
        gamma_max: OU speeds :func:`~probdyn.sde.fractional.gamma_grid` ``(K, gamma_max)``, or
            pass ``gammas`` (K,) directly.
        horizon: length of the interval the MA-fBM weights are fitted on.
        sigma: initial constant diffusion (scalar or (d,)), learnable as ``log_sigma``;
            ``sigma_fn(x, t) -> (d,)`` (positive) replaces it when given.
        sigma_scale_time: ``Delta > 0`` or ``None`` (default). When given, the learnable
            scale is the one **at the time scale** ``Delta`` (e.g. the sampling interval):
            ``log_sigma = log(sigma Delta^H)``, the log standard deviation of an increment of
            ``sigma B^H`` over ``Delta``, and ``sigma = exp(log_sigma) Delta^(-H)``. The data
            pin down this scale, so it is nearly uncorrelated with ``H``; with ``Delta = None``
            ``log sigma`` and ``H`` lie on a narrow ridge (they trade off through
            ``2 H log Delta``) along which gradient fits of ``H`` crawl.
        kind: ``"type1"`` (Mandelbrot–van Ness, stationary ``Y_0``) or ``"type2"``.
        x0_mean, x0_std: prior ``p(x_0) = N(x0_mean, diag(x0_std^2))``.
        learn_hurst: whether gradients flow into ``hurst_logit``.
        learn_x0_prior: whether gradients flow into the prior ``p(x_0)`` (default fixed).

    The variational initial law ``q(z_0) = N(q0_mean, q0_chol q0_chol^T)`` covers ``(x_0, Y_0)``
    for type I (dimension ``d + dK``) and ``x_0`` only for type II (``Y_0 = 0``).
    With ``num_paths = P`` there is one ``q(z_0)`` per sequence (``q0_mean`` (P, n0),
    ``q0_chol`` (P, n0, n0)) for batched fits (:func:`fit_elbo` with ``batched=True`` picks
    sequence ``p`` with :meth:`for_path`): the posterior of ``Y_0`` (the past of the driving
    noise) depends on the sequence, most for long-memory ``H > 1/2``, and one shared
    ``q(z_0)`` leaves an H-dependent gap in the ELBO.
    """

    drift: Callable
    control: Callable
    likelihood: Callable
    log_sigma: Float[Array, " d"]
    sigma_fn: Callable | None
    hurst_logit: Float[Array, ""]
    gammas: Float[Array, " K"]
    x0_mean: Float[Array, " d"]
    x0_log_std: Float[Array, " d"]
    q0_mean: Float[Array, " n0"]
    q0_chol: Float[Array, "n0 n0"]
    state_dim: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    horizon: float = eqx.field(static=True)
    learn_hurst: bool = eqx.field(static=True)
    learn_x0_prior: bool = eqx.field(static=True)
    sigma_scale_time: float | None = eqx.field(static=True)

    def __init__(
        self,
        drift,
        control,
        likelihood,
        state_dim: int,
        hurst: float = 0.5,
        num_components: int = 5,
        gamma_max: float = 20.0,
        gammas=None,
        horizon: float = 1.0,
        sigma=1.0,
        sigma_fn=None,
        kind: str = "type1",
        x0_mean=None,
        x0_std=1.0,
        learn_hurst: bool = True,
        learn_x0_prior: bool = False,
        dtype=None,
        sigma_scale_time: float | None = None,
        num_paths: int | None = None,
    ):
        if kind not in ("type1", "type2"):
            raise ValueError(f"kind must be 'type1' or 'type2', got {kind!r}")
        if not 0.0 < float(hurst) < 1.0:
            raise ValueError(f"hurst must lie in (0, 1), got {hurst}")
        if float(horizon) <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        d = int(state_dim)
        if d < 1:
            raise ValueError(f"state_dim must be >= 1, got {state_dim}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        if gammas is None:
            gammas = (
                jnp.zeros((0,), dtype)
                if int(num_components) == 0
                else gamma_grid(int(num_components), gamma_max).astype(dtype)
            )
        gammas = jnp.asarray(gammas, dtype)
        if gammas.ndim != 1:
            raise ValueError(f"gammas must have shape (K,), got {gammas.shape}")
        if np.any(np.asarray(gammas) <= 0):
            raise ValueError("gammas must be positive")
        sig = np.broadcast_to(np.asarray(sigma, float), (d,))
        if np.any(sig <= 0):
            raise ValueError("sigma must be positive")
        self.drift, self.control, self.likelihood = drift, control, likelihood
        if sigma_scale_time is not None and not float(sigma_scale_time) > 0:
            raise ValueError(f"sigma_scale_time must be positive or None, got {sigma_scale_time}")
        self.sigma_scale_time = None if sigma_scale_time is None else float(sigma_scale_time)
        h0 = 0.5 if int(jnp.shape(gammas)[0]) == 0 else float(hurst)
        shift = 0.0 if sigma_scale_time is None else h0 * np.log(float(sigma_scale_time))
        self.log_sigma = jnp.log(jnp.asarray(sig, dtype)) + jnp.asarray(shift, dtype)
        self.sigma_fn = sigma_fn
        self.hurst_logit = jnp.asarray(np.log(hurst / (1 - hurst)), dtype)
        self.gammas = gammas
        self.x0_mean = jnp.zeros(d, dtype) if x0_mean is None else jnp.broadcast_to(jnp.asarray(x0_mean, dtype), (d,))
        self.x0_log_std = jnp.log(jnp.broadcast_to(jnp.asarray(x0_std, dtype), (d,)))
        self.state_dim, self.kind, self.horizon = d, kind, float(horizon)
        self.learn_hurst = bool(learn_hurst)
        self.learn_x0_prior = bool(learn_x0_prior)
        P0 = np.asarray(self.prior_initial_cov())
        n0 = P0.shape[0]
        self.q0_mean = jnp.zeros(n0, dtype).at[:d].set(self.x0_mean)
        self.q0_chol = jnp.asarray(np.linalg.cholesky(P0 + 1e-9 * np.eye(n0)), dtype)
        if num_paths is not None and int(num_paths) < 1:
            raise ValueError(f"num_paths must be >= 1 or None, got {num_paths}")
        if num_paths is not None:
            P = int(num_paths)
            self.q0_mean = jnp.broadcast_to(self.q0_mean, (P, n0))
            self.q0_chol = jnp.broadcast_to(self.q0_chol, (P, n0, n0))

    @property
    def num_paths(self) -> int | None:
        """Number of per-sequence ``q(z_0)`` (``None``: one shared ``q(z_0)``)."""
        return None if self.q0_mean.ndim == 1 else self.q0_mean.shape[0]

    def for_path(self, p) -> FractionalSDE:
        """The model with sequence ``p``'s ``q(z_0)`` (needs ``num_paths``; ``p`` may be traced)."""
        if self.num_paths is None:
            raise ValueError("for_path needs a model built with num_paths")
        return eqx.tree_at(lambda s: (s.q0_mean, s.q0_chol), self, (self.q0_mean[p], self.q0_chol[p]))

    def _check_single(self):
        if self.num_paths is not None:
            raise ValueError(
                "this model has one q(z_0) per sequence (num_paths); select one with "
                "model.for_path(p) (fit_elbo(batched=True) does)"
            )

    # -- prior quantities ------------------------------------------------------------
    @property
    def num_components(self) -> int:
        """Number K of OU components of the Markov-approximate fBM."""
        return self.gammas.shape[0]

    @property
    def hurst(self) -> Float[Array, ""]:
        """The Hurst index H (0.5 without fractional components)."""
        if self.num_components == 0:
            return jnp.asarray(0.5, self.log_sigma.dtype)
        h = jax.nn.sigmoid(self.hurst_logit)
        return h if self.learn_hurst else jax.lax.stop_gradient(h)

    def weights(self) -> Float[Array, " K"]:
        """MA-fBM weights ``omega(H)`` (standard normalisation)."""
        g = jax.lax.stop_gradient(self.gammas)
        return ma_fbm_weights(self.hurst, g, self.horizon, self.kind).astype(self.log_sigma.dtype)

    def sigma(self, x, t) -> Float[Array, " d"]:
        """The diffusion scale at ``(x, t)``, shape (d,)."""
        return self.constant_sigma() if self.sigma_fn is None else self.sigma_fn(x, t)

    def constant_sigma(self) -> Float[Array, " d"]:
        """The constant diffusion ``sigma`` (d,) (``exp(log_sigma) Delta^(-H)`` with ``sigma_scale_time``)."""
        sig = jnp.exp(self.log_sigma)
        if self.sigma_scale_time is None:
            return sig
        return sig * jnp.asarray(self.sigma_scale_time, sig.dtype) ** (-self.hurst)

    def prior_initial_cov(self) -> Float[Array, "n0 n0"]:
        """Covariance of ``z_0`` under the prior: ``(d + dK)`` for type I, ``d`` otherwise."""
        Px = jnp.diag(jnp.exp(2 * self._x0_prior()[1]))
        if self.kind == "type2" or self.num_components == 0:
            return Px
        return ma_fbm_initial_cov(Px, jax.lax.stop_gradient(self.gammas), self.kind)

    def _x0_prior(self):
        p = (self.x0_mean, self.x0_log_std)
        return p if self.learn_x0_prior else jax.lax.stop_gradient(p)

    def initial_kl(self) -> Float[Array, ""]:
        """``KL(q(z_0) || p(z_0))`` for Gaussians (Cholesky form)."""
        self._check_single()
        d = self.state_dim
        n0 = self.q0_mean.shape[0]
        mp = jnp.zeros(n0, self.q0_mean.dtype).at[:d].set(self._x0_prior()[0])
        Lp = jnp.linalg.cholesky(self.prior_initial_cov())
        Lq = jnp.tril(self.q0_chol)
        M = jax.scipy.linalg.solve_triangular(Lp, Lq, lower=True)
        v = jax.scipy.linalg.solve_triangular(Lp, self.q0_mean - mp, lower=True)
        logdet = 2 * (jnp.sum(jnp.log(jnp.abs(jnp.diag(Lp)))) - jnp.sum(jnp.log(jnp.abs(jnp.diag(Lq)))))
        return 0.5 * (jnp.sum(M**2) + jnp.sum(v**2) - n0 + logdet)

    @property
    def aug_dim(self) -> int:
        """Dimension of the simulated state ``(x, Y, kl)``: ``d + dK + 1``."""
        return self.state_dim * (1 + self.num_components) + 1

    def _split(self, s):
        d, K = self.state_dim, self.num_components
        return s[:d], s[d : d + d * K].reshape(d, K)

    def augmented_sde(self, ctx=None, controlled: bool = True, stratonovich: bool = False) -> SDE:
        """The (posterior if ``controlled``) augmented SDE on ``(x, Y, kl)`` as a :class:`SDE`."""
        drift = _AugDrift(self, ctx, controlled, self.weights(), stratonovich)
        return SDE(drift, _AugDiffusion(self, self.weights()), self.aug_dim)

    def sample_initial(self, key, num_samples: int | None = None, posterior: bool = True):
        """Draws of ``(x_0, Y_0.ravel(), 0)`` (``aug_dim``,) from ``q(z_0)`` or ``p(z_0)``."""
        if posterior:
            self._check_single()
        d, K = self.state_dim, self.num_components
        n0 = self.q0_mean.shape[0]
        shape = () if num_samples is None else (int(num_samples),)
        eps = jax.random.normal(key, shape + (n0,), self.q0_mean.dtype)
        if posterior:
            z = self.q0_mean + eps @ jnp.tril(self.q0_chol).T
        else:
            z = eps @ jnp.linalg.cholesky(self.prior_initial_cov()).T
            z = z.at[..., :d].add(self._x0_prior()[0])
        pad = jnp.zeros(shape + (d + d * K + 1 - n0,), z.dtype)
        return jnp.concatenate([z, pad], axis=-1)


class _AugDrift(eqx.Module):
    model: FractionalSDE
    ctx: Any
    controlled: bool = eqx.field(static=True)
    w: Array
    stratonovich: bool = eqx.field(static=True)

    def ito(self, s, t):
        m = self.model
        x, y = m._split(s)
        sig = m.sigma(x, t)
        g = jax.lax.stop_gradient(m.gammas)
        u = m.control(t, x, y, self.ctx) if self.controlled else jnp.zeros_like(x)
        if m.num_components == 0:
            dx = m.drift(x, t) + sig * u
            dy = jnp.zeros((0,), s.dtype)
        else:
            wbar = jnp.sum(self.w)
            dx = m.drift(x, t) - sig * (y @ (self.w * g)) + sig * wbar * u
            dy = (-g[None, :] * y + u[:, None]).ravel()
        return jnp.concatenate([dx, dy, 0.5 * jnp.sum(u**2, keepdims=True)])

    def __call__(self, s, t):
        f = self.ito(s, t)
        if not self.stratonovich:
            return f
        diff = _AugDiffusion(self.model, self.w)
        G = diff(s, t)
        # Stratonovich drift of the same Itô SDE: f - 1/2 sum_j (dG_j/ds) G_j, where
        # (dG/ds) G_j is the directional derivative of G along column j (jvp), column j kept
        dG = jax.vmap(lambda gj: jax.jvp(lambda z: diff(z, t), (s,), (gj,))[1], in_axes=1)(G)  # (m, D, m)
        m = G.shape[1]
        return f - 0.5 * jnp.sum(dG[jnp.arange(m), :, jnp.arange(m)], axis=0)


class _AugDiffusion(eqx.Module):
    model: FractionalSDE
    w: Array

    def __call__(self, s, t):
        m = self.model
        d, K = m.state_dim, m.num_components
        x, _ = m._split(s)
        sig = m.sigma(x, t)
        wbar = jnp.sum(self.w) if K > 0 else jnp.ones((), s.dtype)
        top = jnp.diag(sig * wbar)
        ys = jnp.kron(jnp.eye(d, dtype=s.dtype), jnp.ones((K, 1), s.dtype))
        return jnp.concatenate([top, ys, jnp.zeros((1, d), s.dtype)], axis=0)


# ------------------------------------------------------------------ simulation, ELBO


def simulate_augmented(model, s0, times, key, ctx, controlled, solver, num_substeps, stratonovich, dt0):
    """Paths (T, D) of ``model``'s augmented SDE (state + MA-fBM OU components) from ``s0`` (D,)
    at ``times`` (T,): ``solver="euler"`` is the Itô scan (:func:`probdyn.sde.euler_maruyama`,
    ``num_substeps`` per interval); ``"diffrax"`` or a diffrax solver instance a virtual
    Brownian tree with step ``dt0`` (Stratonovich if ``stratonovich``). ``controlled`` adds
    the posterior control (given the context ``ctx``)."""
    if solver == "euler":
        if stratonovich:
            raise ValueError("solver='euler' is the Itô scan; use solver='diffrax' for Stratonovich")
        return euler_maruyama(model.augmented_sde(ctx, controlled), s0, times, key, num_substeps)
    if solver == "diffrax" or not isinstance(solver, str):
        sde = model.augmented_sde(ctx, controlled, stratonovich=stratonovich)
        return simulate_diffrax(
            sde, s0, times, key, solver=None if isinstance(solver, str) else solver, dt0=dt0, stratonovich=stratonovich
        )
    raise ValueError(f"unknown solver {solver!r}; use 'euler', 'diffrax' or a diffrax solver")


def _check_obs(times, obs):
    times = jnp.asarray(check_times(times))
    lead = jax.tree.leaves(obs)[0].shape[0] if jax.tree.leaves(obs) else None
    if lead is not None and lead != times.shape[0]:
        raise ValueError(f"observations have {lead} time steps, times has {times.shape[0]}")
    return times


def elbo(
    model: FractionalSDE,
    key: PRNGKeyArray,
    times: Float[Array, " T"],
    obs,
    ctx=None,
    num_samples: int = 8,
    num_substeps: int = 1,
    solver="euler",
    stratonovich: bool = False,
    dt0: float | None = None,
) -> Float[Array, ""]:
    """Monte-Carlo ELBO of one sequence ``obs`` (leading axis ``T``) observed at ``times`` (T,).

    ``E_q[likelihood(X_{times}, obs)] - KL(q(z_0)||p(z_0)) - E_q int u^2/2 dt`` with
    ``num_samples`` reparameterised posterior paths; ``solver="euler"`` is the Itô scan with
    ``num_substeps`` steps per interval, ``"diffrax"`` (or a diffrax solver instance) uses a
    virtual Brownian tree with step ``dt0``. Batch several sequences with ``jax.vmap``.
    """
    times = _check_obs(times, obs)
    k0, k1 = jax.random.split(key)
    s0 = model.sample_initial(k0, num_samples)

    def one(s, k):
        path = simulate_augmented(model, s, times, k, ctx, True, solver, num_substeps, stratonovich, dt0)
        return model.likelihood(path[:, : model.state_dim], obs) - path[-1, -1]

    vals = jax.vmap(one)(s0, jax.random.split(k1, num_samples))
    return jnp.mean(vals) - model.initial_kl()


def sample_posterior(
    model: FractionalSDE,
    key: PRNGKeyArray,
    times,
    ctx=None,
    num_samples: int = 100,
    num_substeps: int = 1,
    solver="euler",
    stratonovich: bool = False,
    dt0=None,
    return_augmented: bool = False,
):
    """Posterior paths ``(num_samples, T, d)`` (or ``(.., aug_dim)`` with ``return_augmented``)."""
    times = jnp.asarray(check_times(times))
    k0, k1 = jax.random.split(key)
    s0 = model.sample_initial(k0, num_samples)
    paths = jax.vmap(
        lambda s, k: simulate_augmented(model, s, times, k, ctx, True, solver, num_substeps, stratonovich, dt0)
    )(s0, jax.random.split(k1, num_samples))
    return paths if return_augmented else paths[..., : model.state_dim]


def sample_prior(
    model: FractionalSDE,
    key: PRNGKeyArray,
    times,
    num_samples: int = 100,
    num_substeps: int = 1,
    solver="euler",
    stratonovich: bool = False,
    dt0=None,
):
    """Prior paths ``(num_samples, T, d)`` (control switched off, ``z_0 ~ p(z_0)``)."""
    times = jnp.asarray(check_times(times))
    k0, k1 = jax.random.split(key)
    s0 = model.sample_initial(k0, num_samples, posterior=False)
    paths = jax.vmap(
        lambda s, k: simulate_augmented(model, s, times, k, None, False, solver, num_substeps, stratonovich, dt0)
    )(s0, jax.random.split(k1, num_samples))
    return paths[..., : model.state_dim]


def fit_elbo(
    model: FractionalSDE,
    key: PRNGKeyArray,
    times,
    obs,
    num_steps: int,
    optimizer=1e-2,
    num_samples: int = 8,
    num_substeps: int = 1,
    ctx=None,
    batched: bool = False,
    freeze: tuple[str, ...] = (),
    **fit_kwargs,
):
    """Maximise :func:`elbo` with :func:`probdyn.inference.optimize.fit` (returns its FitResult).

    With ``batched=True`` ``obs`` has a leading sequence axis ``(P, T, ...)``, the loss is the
    mean negative ELBO over sequences and sequence ``p`` gets ``ctx = p`` (for
    :class:`AffineControl` with ``num_paths=P``) unless ``ctx`` is given per sequence, and,
    for a model built with ``num_paths=P``, its own ``q(z_0)`` (:meth:`FractionalSDE.for_path`).
    The loss is normalised by the number of time steps. ``freeze`` names attributes (dotted
    paths, e.g. ``("log_sigma", "likelihood.log_std")``) held fixed (gradients stopped).
    """
    from probdyn.inference.optimize import fit

    times = jnp.asarray(check_times(times))
    T = times.shape[0]
    for name in freeze:
        _get_attr(model, name)  # raises a clear error for unknown names

    def loss(m, k, batch):
        for name in freeze:
            m = eqx.tree_at(lambda mm, n=name: _get_attr(mm, n), m, jax.lax.stop_gradient(_get_attr(m, name)))
        if not batched:
            return -elbo(m, k, times, obs, ctx, num_samples, num_substeps) / T
        P = jax.tree.leaves(obs)[0].shape[0]
        cs = jnp.arange(P) if ctx is None else ctx
        paths = jnp.arange(P)
        pick = (lambda p: m.for_path(p)) if m.num_paths is not None else (lambda p: m)
        vals = jax.vmap(lambda o, c, p, kk: elbo(pick(p), kk, times, o, c, num_samples, num_substeps))(
            obs, cs, paths, jax.random.split(k, P)
        )
        return -jnp.mean(vals) / T

    fit_kwargs.setdefault("progress_bar", False)
    return fit(loss, model, key, num_steps, optimizer, **fit_kwargs)


def _get_attr(obj, dotted: str):
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"cannot freeze {dotted!r}: no attribute {part!r} on {type(obj).__name__}")
        obj = getattr(obj, part)
    return obj


def euler_lgssm(model: FractionalSDE, times, num_substeps: int, noise_std, drift_matrix):
    """Linear-Gaussian SSM of the Euler–Maruyama scheme of a *linear* FractionalSDE prior.

    For ``b(x) = drift_matrix @ x`` and constant ``sigma`` the scan of :func:`elbo` is
    ``z_{n+1} = (I + F h) z_n + L dW`` on the fine grid (``num_substeps`` per interval);
    this returns that LGSSM (observing ``x`` at ``times``, NaN elsewhere is handled by the
    caller) and the indices of ``times`` in the fine grid. Used as the exact reference of
    the discretised prior's conditional (:func:`probdyn.inference.kalman.smoother`).
    """

    times = np.asarray(check_times(times), float)
    n = int(num_substeps)
    sde = ma_fbm_linear_sde(drift_matrix, model.constant_sigma(), model.hurst, model.gammas, model.horizon, model.kind)
    dtype = sde.F.dtype
    fine = np.concatenate([np.linspace(a, b, n, endpoint=False) for a, b in zip(times[:-1], times[1:])] + [times[-1:]])
    h = jnp.asarray(np.diff(fine), dtype)
    D = sde.F.shape[0]
    A = jnp.eye(D, dtype=dtype)[None] + h[:, None, None] * sde.F[None]
    LL = sde.L @ sde.L.T
    Q = h[:, None, None] * LL[None] + 1e-12 * jnp.eye(D, dtype=dtype)
    P0 = model.prior_initial_cov()
    if P0.shape[0] < D:  # type II: Y_0 = 0
        P0 = jax.scipy.linalg.block_diag(P0, 1e-12 * jnp.eye(D - P0.shape[0], dtype=dtype))
    m0 = jnp.zeros(D, dtype).at[: model.state_dim].set(model.x0_mean)
    R = jnp.diag(jnp.broadcast_to(jnp.asarray(noise_std, dtype) ** 2, (model.state_dim,)))
    ssm = LinearGaussianSSM(m0, P0, A, Q, sde.H, R)
    return ssm, np.arange(0, fine.size, n)
