r"""Observation models ``p(y_t | x_t)`` for the Gaussian filters of nonlinear state-space models.

Every model is an equinox Module with

* ``log_prob(y (p,), x (d,)) -> ()`` — the exact log density; NaN entries of ``y`` are missing
  and contribute nothing (a fully missing row gives 0);
* ``update(m (d,), S (d, d), y (p,), method) -> (m', S', ll)`` — the Gaussian measurement update
  used by :mod:`probdyn.inference.gaussian_filters`: prior ``N(m, S S^T)``, posterior
  ``N(m', S' S'^T)`` and ``ll`` the (approximate) predictive log density ``log p(y | y_{<t})``;
* ``sample(key, x) -> y`` and ``check_data(y)`` (clear errors for impossible data).

Updates:

* :class:`LinearGaussian` ``y = H x + r, r ~ N(0, R)`` and :class:`LogNormal`
  ``log y = H x + r, r ~ N(0, diag(sigma^2))`` are exact (one square-root Kalman update,
  :func:`probdyn.inference.kalman.update`; for the log-normal the Jacobian ``-sum(log y)`` is
  added to ``ll``).
* :class:`Poisson` and :class:`LogDensity` use the **Laplace approximation**: the posterior
  mode of ``log p(y | x) + log N(x | m, P)`` is found by damped Newton iterations in whitened
  coordinates ``x = m + S u``,

  .. math:: u \leftarrow u + \alpha B^{-1}(S^T g - u),\quad B = I + S^T W S,\quad
            g = \nabla_x \log p(y|x),\ W = -\nabla_x^2 \log p(y|x),

  (step ``alpha`` halved until the objective does not decrease), the posterior covariance is
  ``S B^{-1} S^T`` at the mode and the log marginal is the Laplace estimate
  ``log p(y | x*) - |u*|^2 / 2 - log|B|/2``. It needs no inverse of ``P`` (``P`` may be
  singular). It is exact for Gaussian likelihoods and accurate when ``log p(y|x)`` is close to
  quadratic over the prior (large counts / informative priors); ``W`` must keep ``B`` positive
  definite (true for log-concave likelihoods such as the Poisson). The filter ``method`` does
  not change these updates: it only selects how moments are propagated between observations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import override

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probdyn._checks import check_observations, is_concrete
from probdyn._typing import ArrayInput, Key
from probdyn.inference import kalman
from probdyn.linalg import psd_cholesky, solve_lower, solve_upper_t, symmetrize, tria

__all__ = ["ObservationModel", "LinearGaussian", "LogNormal", "Poisson", "LogDensity", "laplace_update"]

_LOG2PI = math.log(2 * math.pi)


def _float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _matrix_H(H, name="H") -> Array:
    H = _float(H)
    if H.ndim != 2:
        raise ValueError(f"{name} must be a (p, d) matrix, got shape {H.shape}")
    if is_concrete(H) and not np.all(np.isfinite(np.asarray(H))):
        raise ValueError(f"{name} must be finite")
    return H


class ObservationModel(eqx.Module):
    """Base class: ``p(y | x)`` with ``y`` of shape (p,), ``x`` of shape (d,)."""

    def obs_dim_for(self, state_dim: int) -> int:
        """p for a state of dimension ``state_dim`` (checks that the two fit)."""
        raise NotImplementedError

    def log_prob(self, y: Float[Array, " p"], x: Float[Array, " d"]) -> Float[Array, ""]:
        """``log p(y | x)`` for ``y`` (p,) and ``x`` (d,); NaN entries of ``y`` are missing."""
        raise NotImplementedError

    def update(self, m, S, y, method: str = "ekf"):
        """Gaussian update of ``N(m, S S^T)`` by ``y`` -> ``(m', S', ll)`` (see module doc)."""
        raise NotImplementedError

    def sample(self, key: Key, x: Float[Array, " d"]) -> Float[Array, " p"]:
        """A draw ``y ~ p(y | x)``, shape (p,)."""
        raise NotImplementedError(f"{type(self).__name__} cannot draw samples")

    def check_data(self, y) -> None:
        """Raise ``ValueError`` for concrete data the model cannot have produced."""
        check_observations(y)


def _check_H_state(H, d: int):
    if H.shape[1] != d:
        raise ValueError(f"observation matrix H has shape {H.shape}, but the state dimension is {d}")
    return H.shape[0]


class LinearGaussian(ObservationModel):
    """``y = H x + r``, ``r ~ N(0, R)``: exact square-root Kalman update.

    Args:
        H: (p, d) observation matrix (partial observation: p < d or any rank).
        R: (p, p) covariance, (p,) variances, or a scalar variance.
    """

    H: Float[Array, "p d"]
    R: Float[Array, "p p"]

    def __init__(self, H: ArrayInput, R: ArrayInput):
        H = _matrix_H(H)
        p = H.shape[0]
        R = _float(R)
        if R.ndim == 0:
            R = R * jnp.eye(p, dtype=R.dtype)
        elif R.ndim == 1:
            if R.shape[0] != p:
                raise ValueError(f"R variances must have shape ({p},), got {R.shape}")
            R = jnp.diag(R)
        if R.shape != (p, p):
            raise ValueError(f"R must be ({p}, {p}), ({p},) or scalar, got {R.shape}")
        if is_concrete(R):
            Rn = np.asarray(R)
            if not np.all(np.isfinite(Rn)) or np.any(np.linalg.eigvalsh(0.5 * (Rn + Rn.T)) <= 0):
                raise ValueError("R must be a finite, symmetric positive-definite covariance")
        self.H, self.R = H, R

    @override
    def obs_dim_for(self, state_dim: int) -> int:
        return _check_H_state(self.H, state_dim)

    def _SR(self, dtype):
        return psd_cholesky(self.R.astype(dtype))

    @override
    def log_prob(self, y, x):
        x = jnp.asarray(x)
        dtype = jnp.result_type(x, y, self.H)
        zero = jnp.zeros((x.shape[0], x.shape[0]), dtype)
        return kalman.update(x.astype(dtype), zero, self.H.astype(dtype), self._SR(dtype), jnp.asarray(y, dtype))[2]

    @override
    def update(self, m, S, y, method: str = "ekf"):
        return kalman.update(m, S, self.H.astype(m.dtype), self._SR(m.dtype), y.astype(m.dtype))

    @override
    def sample(self, key, x):
        x = jnp.asarray(x)
        eps = jax.random.normal(key, (self.H.shape[0],), x.dtype)
        return self.H.astype(x.dtype) @ x + self._SR(x.dtype) @ eps


class LogNormal(ObservationModel):
    """``y = exp(H x + r)``, ``r ~ N(0, diag(sigma^2))``: exact update on ``log y``.

    ``log p(y | x) = log N(log y | H x, diag sigma^2) - sum(log y)`` over observed entries.

    Args:
        H: (p, d) matrix, or ``None`` for the identity (then p = d).
        sigma: (p,) log-scale noise standard deviations, or a scalar.
    """

    H: Float[Array, "p d"] | None
    sigma: Float[Array, " p"]

    def __init__(self, H: ArrayInput | None = None, sigma: ArrayInput = 0.1):
        self.H = None if H is None else _matrix_H(H)
        sigma = _float(sigma)
        if sigma.ndim > 1:
            raise ValueError(f"sigma must be a scalar or (p,), got shape {sigma.shape}")
        if self.H is not None and sigma.ndim == 1 and sigma.shape[0] != self.H.shape[0]:
            raise ValueError(f"sigma must have shape ({self.H.shape[0]},), got {sigma.shape}")
        if is_concrete(sigma) and not np.all(np.asarray(sigma) > 0):
            raise ValueError("sigma must be positive")
        self.sigma = sigma

    @override
    def obs_dim_for(self, state_dim: int) -> int:
        if self.H is not None:
            return _check_H_state(self.H, state_dim)
        if self.sigma.ndim == 1 and self.sigma.shape[0] != state_dim:
            raise ValueError(
                f"LogNormal with H=None observes the whole state: sigma must have shape "
                f"({state_dim},), got {self.sigma.shape}"
            )
        return state_dim

    def _parts(self, d, dtype):
        H = jnp.eye(d, dtype=dtype) if self.H is None else self.H.astype(dtype)
        p = H.shape[0]
        return H, jnp.diag(jnp.broadcast_to(self.sigma.astype(dtype), (p,)))

    def _logy(self, y):
        obs = ~jnp.isnan(y)
        ly = jnp.log(jnp.where(obs & (y > 0), y, 1.0))
        ly = jnp.where(obs & ~(y > 0), -jnp.inf, ly)  # impossible value
        return jnp.where(obs, ly, jnp.nan), jnp.sum(jnp.where(obs, ly, 0.0))

    @override
    def log_prob(self, y, x):
        x = jnp.asarray(x)
        dtype = jnp.result_type(x, y, float)
        H, SR = self._parts(x.shape[0], dtype)
        ly, jac = self._logy(jnp.asarray(y, dtype))
        zero = jnp.zeros((x.shape[0], x.shape[0]), dtype)
        return kalman.update(x.astype(dtype), zero, H, SR, ly)[2] - jac

    @override
    def update(self, m, S, y, method: str = "ekf"):
        H, SR = self._parts(m.shape[0], m.dtype)
        ly, jac = self._logy(y.astype(m.dtype))
        mn, Sn, ll = kalman.update(m, S, H, SR, ly)
        return mn, Sn, ll - jac

    @override
    def sample(self, key, x):
        x = jnp.asarray(x)
        H, SR = self._parts(x.shape[0], x.dtype)
        return jnp.exp(H @ x + SR @ jax.random.normal(key, (H.shape[0],), x.dtype))

    @override
    def check_data(self, y):
        super().check_data(y)
        if is_concrete(y):
            yn = np.asarray(y)
            if np.any(yn[~np.isnan(yn)] <= 0):
                raise ValueError("LogNormal observations must be positive (NaN = missing)")


# ----------------------------------------------------------------------------------
# Laplace update (non-Gaussian likelihoods)
# ----------------------------------------------------------------------------------
_STEPS = tuple(0.5**k for k in range(8))


def laplace_update(loglik: Callable, m, S, num_iter: int = 10):
    """Laplace-approximate Gaussian update of ``N(m, S S^T)`` by the likelihood ``loglik(x)``.

    Damped Newton in whitened coordinates ``x = m + S u`` (module docstring). Returns
    ``(m', S', ll)`` with ``ll = log p(y | x*) - |u*|^2/2 - log|B(x*)|/2`` the Laplace
    estimate of ``log ∫ p(y | x) N(x | m, S S^T) dx``.
    """
    d = m.shape[0]
    eye = jnp.eye(d, dtype=m.dtype)
    steps = jnp.asarray(_STEPS, m.dtype)
    user_loglik = loglik
    loglik = lambda x: jnp.asarray(user_loglik(x)).astype(m.dtype)  # noqa: E731

    def psi(u):
        v = loglik(m + S @ u) - 0.5 * jnp.sum(u * u)
        return jnp.where(jnp.isnan(v), -jnp.inf, v)

    def factor(u):
        x = m + S @ u
        g = jax.grad(loglik)(x)
        W = -symmetrize(jax.hessian(loglik)(x))
        LB = psd_cholesky(symmetrize(eye + S.T @ W @ S))
        return g, LB

    def newton(i, carry):
        u, _ = carry
        g, LB = factor(u)
        delta = solve_upper_t(LB, solve_lower(LB, S.T @ g - u))
        cand = jax.vmap(lambda a: psi(u + a * delta))(steps)
        ok = cand >= psi(u)
        a = jnp.where(jnp.any(ok) & (i < num_iter), steps[jnp.argmax(ok)], 0.0)
        return u + a * delta, LB

    # the last pass takes no step, so LB is the factor at the returned mode
    u, LB = jax.lax.fori_loop(0, int(num_iter) + 1, newton, (jnp.zeros_like(m), eye))
    m_new = m + S @ u
    S_new = tria(solve_lower(LB, S.T).T)  # (S LB^{-T}) (S LB^{-T})^T = S B^{-1} S^T
    ll = loglik(m_new) - 0.5 * jnp.sum(u * u) - jnp.sum(jnp.log(jnp.diag(LB)))
    return m_new, S_new, ll


class _LaplaceModel(ObservationModel):
    """Shared Laplace ``update`` for likelihoods without a closed-form Gaussian update."""

    num_iter: eqx.AbstractVar[int]

    def _fill(self, y):
        return y

    def update(self, m, S, y, method: str = "ekf"):
        y = y.astype(m.dtype)
        missing = jnp.all(jnp.isnan(y))
        ys = jnp.where(missing, self._fill(jnp.zeros_like(y)), y)  # keep gradients finite
        mn, Sn, ll = laplace_update(lambda x: self.log_prob(ys, x), m, S, self.num_iter)
        return (jnp.where(missing, m, mn), jnp.where(missing, S, Sn), jnp.where(missing, 0.0, ll))


class Poisson(_LaplaceModel):
    """``y_i ~ Poisson(lambda_i)``, ``lambda = link(H x)``; Laplace-approximate update.

    Args:
        H: (p, d) matrix, or ``None`` for the identity (then p = d).
        link: ``"exp"`` (log link) or ``"softplus"``.
        num_iter: Newton iterations of the Laplace update.
    """

    H: Float[Array, "p d"] | None
    link: str = eqx.field(static=True)
    num_iter: int = eqx.field(static=True)

    def __init__(self, H: ArrayInput | None = None, link: str = "exp", num_iter: int = 10):
        if link not in ("exp", "softplus"):
            raise ValueError(f"link must be 'exp' or 'softplus', got {link!r}")
        if int(num_iter) < 1:
            raise ValueError(f"num_iter must be >= 1, got {num_iter}")
        self.H, self.link, self.num_iter = None if H is None else _matrix_H(H), link, int(num_iter)

    @override
    def obs_dim_for(self, state_dim: int) -> int:
        return state_dim if self.H is None else _check_H_state(self.H, state_dim)

    def _eta(self, x):
        return x if self.H is None else self.H.astype(x.dtype) @ x

    def rate(self, x: Float[Array, " d"]) -> Float[Array, " p"]:
        """The Poisson rates ``link(H x)``, shape (p,)."""
        eta = self._eta(x)
        return jnp.exp(eta) if self.link == "exp" else jax.nn.softplus(eta)

    @override
    def log_prob(self, y, x):
        x = jnp.asarray(x)
        y = jnp.asarray(y, jnp.result_type(x, float))
        obs = ~jnp.isnan(y)
        y0 = jnp.where(obs, y, 0.0)
        eta = self._eta(x)
        loglam = eta if self.link == "exp" else jnp.log(jax.nn.softplus(eta))
        lam = jnp.exp(eta) if self.link == "exp" else jax.nn.softplus(eta)
        terms = y0 * loglam - lam - jax.scipy.special.gammaln(y0 + 1.0)
        return jnp.sum(jnp.where(obs, terms, 0.0))

    @override
    def sample(self, key, x):
        x = jnp.asarray(x)
        return jax.random.poisson(key, self.rate(x)).astype(x.dtype)

    @override
    def check_data(self, y):
        super().check_data(y)
        if is_concrete(y):
            yn = np.asarray(y)
            yo = yn[~np.isnan(yn)]
            if np.any(yo < 0) or np.any(yo != np.round(yo)):
                raise ValueError("Poisson observations must be non-negative integers (NaN = missing)")


class LogDensity(_LaplaceModel):
    """User-defined likelihood ``log p(y | x)``; Laplace-approximate update.

    Args:
        log_prob: ``(y (p,), x (d,)) -> ()`` or ``-> (p,)`` per-entry log densities. With
            per-entry output, NaN entries of ``y`` are masked here (they are replaced by
            ``fill_value`` before the call, so the function never sees NaN). A scalar-valued
            function receives NaN entries as they are and must ignore them itself (use
            ``jnp.where(jnp.isnan(y), fill, y)`` before any arithmetic so gradients stay
            finite); fully missing rows are skipped in the filter either way.
        obs_dim: p.
        state_dim: d (optional; checked against the filter's state when given).
        sample_fn: optional ``(key, x) -> y`` simulator for ``sample``.
        fill_value: stand-in for missing entries (must give a finite log density).
        num_iter: Newton iterations of the Laplace update.
    """

    fn: Callable
    obs_dim: int = eqx.field(static=True)
    state_dim: int | None = eqx.field(static=True)
    sample_fn: Callable | None
    fill_value: float = eqx.field(static=True)
    num_iter: int = eqx.field(static=True)

    def __init__(
        self,
        log_prob: Callable,
        obs_dim: int,
        state_dim: int | None = None,
        sample_fn=None,
        fill_value: float = 0.0,
        num_iter: int = 10,
    ):
        if not callable(log_prob):
            raise TypeError("log_prob must be callable as log_prob(y (p,), x (d,))")
        if int(obs_dim) < 1:
            raise ValueError(f"obs_dim must be >= 1, got {obs_dim}")
        if int(num_iter) < 1:
            raise ValueError(f"num_iter must be >= 1, got {num_iter}")
        self.fn, self.obs_dim, self.sample_fn = log_prob, int(obs_dim), sample_fn
        self.state_dim = None if state_dim is None else int(state_dim)
        self.fill_value, self.num_iter = float(fill_value), int(num_iter)

    def _fill(self, y):
        return jnp.full_like(y, self.fill_value)

    @override
    def obs_dim_for(self, state_dim: int) -> int:
        if self.state_dim is not None and self.state_dim != state_dim:
            raise ValueError(f"LogDensity was declared for state_dim={self.state_dim}, got {state_dim}")
        dt = jnp.result_type(float)
        try:
            out = jax.eval_shape(
                self.fn, jax.ShapeDtypeStruct((self.obs_dim,), dt), jax.ShapeDtypeStruct((state_dim,), dt)
            )
        except Exception as e:  # noqa: BLE001 - re-raise with context
            raise ValueError(f"log_prob(y ({self.obs_dim},), x ({state_dim},)) failed: {e}") from e
        if tuple(out.shape) not in ((), (self.obs_dim,)):
            raise ValueError(f"log_prob(y, x) must return a scalar or shape ({self.obs_dim},), got {out.shape}")
        return self.obs_dim

    @override
    def log_prob(self, y, x):
        x = jnp.asarray(x)
        y = jnp.asarray(y, jnp.result_type(x, float))
        obs = ~jnp.isnan(y)
        if jax.eval_shape(self.fn, y, x).shape == (self.obs_dim,):
            return jnp.sum(jnp.where(obs, self.fn(jnp.where(obs, y, self.fill_value), x), 0.0))
        # scalar output: NaN entries are passed through (documented); a fully missing row gives 0
        none = jnp.all(~obs)
        return jnp.where(none, 0.0, self.fn(jnp.where(none, self.fill_value, y), x))

    @override
    def sample(self, key, x):
        if self.sample_fn is None:
            raise NotImplementedError("LogDensity.sample needs sample_fn=(key, x) -> y")
        return self.sample_fn(key, x)
