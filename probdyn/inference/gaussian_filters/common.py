"""What the Gaussian filters share: result types, sigma-point rules, input checks, and the
SDE's drift/diffusion evaluated in the state's dtype."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probdyn._checks import check_int, check_observations, concrete, is_concrete
from probdyn.inference.gaussian_filters.observations import ObservationModel
from probdyn.sde import SDE
from probdyn.ssm import check_times

__all__ = [
    "GaussianFilterResult",
    "GaussianSmootherResult",
    "METHODS",
    "PROPAGATIONS",
    "sigma_points",
    "SigmaPointRule",
    "sigma_point_rule",
    "check_options",
    "check_step_options",
    "check_inputs",
    "check_sde_inputs",
    "check_transition",
    "drift_at",
    "diffusion_at",
    "filter_scan",
]

METHODS = ("ekf", "ukf", "cubature", "gauss_hermite")
PROPAGATIONS = ("moments", "linearised")


class GaussianFilterResult(NamedTuple):
    """Filtered ``N(mean[k], cov[k])`` (T, d)/(T, d, d) and predicted (before the update at
    ``times[k]``; index 0 is the prior) marginals, the approximate log marginal likelihood and
    its per-time terms ``log p(y_k | y_{<k})`` (T,); ``chol``/``pred_chol`` are square roots."""

    mean: Float[Array, "T d"]
    cov: Float[Array, "T d d"]
    log_likelihood: Float[Array, ""]
    pred_mean: Float[Array, "T d"]
    pred_cov: Float[Array, "T d d"]
    pointwise_log_likelihood: Float[Array, " T"]
    chol: Float[Array, "T d d"]
    pred_chol: Float[Array, "T d d"]


class GaussianSmootherResult(NamedTuple):
    """Smoothed marginals ``p(x(t_k) | y_{0:T-1})``: mean (T, d), cov (T, d, d)."""

    mean: Float[Array, "T d"]
    cov: Float[Array, "T d d"]
    log_likelihood: Float[Array, ""]
    filtered: GaussianFilterResult


def sigma_points(method: str, d: int, ukf_params=(1.0, 0.0, None), gh_order: int = 3):
    """Unit sigma points ``xi`` (n, d) and mean/covariance weights ``wm, wc`` (n,) (numpy).

    ``E[h(x)] ≈ sum_i wm_i h(m + S xi_i)`` for ``x ~ N(m, S S^T)``.

    * ``"ukf"``: ``0, ±sqrt(d + lam) e_i`` with ``lam = alpha^2 (d + kappa) - d``;
      ``ukf_params=(alpha, beta, kappa)``, default ``(1, 0, max(3 - d, 0))`` (keeps the
      weights non-negative, so covariances stay PSD).
    * ``"cubature"``: third-degree spherical-radial rule ``±sqrt(d) e_i``, weights ``1/(2d)``.
    * ``"gauss_hermite"``: tensor product of ``gh_order``-point Gauss–Hermite rules (``order^d``
      points; exact for polynomials of degree ``2 order - 1`` in each coordinate).
    """
    if method == "cubature":
        xi = np.concatenate([np.eye(d), -np.eye(d)]) * np.sqrt(d)
        w = np.full(2 * d, 1.0 / (2 * d))
        return xi, w, w
    if method == "ukf":
        alpha, beta, kappa = ukf_params
        kappa = max(3.0 - d, 0.0) if kappa is None else float(kappa)
        lam = alpha**2 * (d + kappa) - d
        c = d + lam
        if c <= 0:
            raise ValueError(f"UKF parameters give d + lambda = {c} <= 0")
        xi = np.concatenate([np.zeros((1, d)), np.eye(d) * np.sqrt(c), -np.eye(d) * np.sqrt(c)])
        wm = np.concatenate([[lam / c], np.full(2 * d, 0.5 / c)])
        wc = wm.copy()
        wc[0] += 1.0 - alpha**2 + beta
        return xi, wm, wc
    if method == "gauss_hermite":
        order = int(gh_order)
        if order < 1:
            raise ValueError(f"gh_order must be >= 1, got {gh_order}")
        x1, w1 = np.polynomial.hermite_e.hermegauss(order)
        w1 = w1 / w1.sum()
        grids = np.meshgrid(*([x1] * d), indexing="ij")
        xi = np.stack([g.ravel() for g in grids], axis=1)
        wg = np.meshgrid(*([w1] * d), indexing="ij")
        w = np.prod(np.stack([g.ravel() for g in wg], axis=1), axis=1)
        return xi, w, w
    raise ValueError(f"no sigma-point rule for method {method!r}")


class SigmaPointRule(NamedTuple):
    """Unit sigma points ``xi`` (n, d), mean/covariance weights ``wm, wc`` (n,) as arrays."""

    xi: Array
    wm: Array
    wc: Array
    sqrt_ok: bool  # all covariance weights >= 0


def sigma_point_rule(method, d, dtype, ukf_params, gh_order) -> SigmaPointRule | None:
    """The :func:`sigma_points` of ``method`` in ``dtype`` (``None`` for the EKF)."""
    if method == "ekf":
        return None
    xi, wm, wc = sigma_points(method, d, ukf_params, gh_order)
    return SigmaPointRule(jnp.asarray(xi, dtype), jnp.asarray(wm, dtype), jnp.asarray(wc, dtype), bool(np.all(wc >= 0)))


def drift_at(sde: SDE, x, t):
    """``f(x, t)`` (d,) in the dtype of ``x``."""
    return sde.drift_fn(x, t).astype(x.dtype)  # parameters may be float64 with a float32 state


def diffusion_at(sde: SDE, x, t):
    """``L(x, t)`` (d, m) in the dtype of ``x``."""
    return jnp.asarray(sde.diffusion_fn(x, t)).astype(x.dtype)


def check_options(method, propagation, num_substeps, allowed=METHODS) -> None:
    """Filter options (``propagation``/``num_substeps`` ``None`` = not used): clear ``ValueError``."""
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")
    if propagation is not None and propagation not in PROPAGATIONS:
        raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {propagation!r}")
    if num_substeps is not None and (int(num_substeps) != num_substeps or int(num_substeps) < 1):
        raise ValueError(f"num_substeps must be an integer >= 1, got {num_substeps}")


def check_step_options(num_substeps, max_step, max_substeps=None) -> None:
    """The continuous-discrete filters' step options: ``num_substeps`` or ``max_step`` (a
    positive finite number, not traced), ``max_substeps`` an integer >= 1; clear ``ValueError``."""
    if num_substeps is not None and max_step is not None:
        raise ValueError("give num_substeps (steps per interval) or max_step (step size), not both")
    if max_step is not None:
        h = concrete(max_step)
        if h is None or h.ndim != 0 or not np.isfinite(h) or h <= 0:
            raise ValueError(f"max_step must be a positive finite number (not traced), got {max_step!r}")
    if max_substeps is not None:
        check_int(max_substeps, "max_substeps", 1)


def check_inputs(observation, y, m0, P0, d):
    """Validate the observation model, ``y`` (T, p) (or (T,) when p = 1), ``m0`` (d,) and a
    symmetric PSD ``P0`` (d, d); returns ``(m0, P0, y, dtype)`` in one floating dtype."""
    if not isinstance(observation, ObservationModel):
        raise TypeError(
            "observation must be a probdyn.inference.gaussian_filters observation model, "
            f"got {type(observation).__name__}"
        )
    p = observation.obs_dim_for(d)
    m0, P0, y = jnp.asarray(m0), jnp.asarray(P0), jnp.asarray(y)
    if m0.shape != (d,):
        raise ValueError(f"m0 must have shape ({d},) (the state dimension), got {m0.shape}")
    if P0.shape != (d, d):
        raise ValueError(f"P0 must have shape ({d}, {d}), got {P0.shape}")
    if y.ndim == 1 and p == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != p:
        raise ValueError(f"y must have shape (T, {p}) (time leading, {p} observed columns), got {y.shape}")
    if y.shape[0] < 1:
        raise ValueError("y must contain at least one time step")
    for name, a in (("m0", m0), ("P0", P0)):
        if is_concrete(a) and not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"{name} must be finite")
    if is_concrete(P0):
        Pn = np.asarray(P0, dtype=float)
        if not np.allclose(Pn, Pn.T, rtol=1e-6, atol=1e-12 * max(1.0, np.abs(Pn).max())):
            raise ValueError("P0 must be symmetric")
        if np.linalg.eigvalsh(0.5 * (Pn + Pn.T)).min() < -1e-8 * max(1.0, np.abs(Pn).max()):
            raise ValueError("P0 must be positive semi-definite")
    y = check_observations(y)
    observation.check_data(y)
    dtype = jnp.result_type(m0, P0, y if jnp.issubdtype(y.dtype, jnp.floating) else m0)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return m0.astype(dtype), P0.astype(dtype), y.astype(dtype), dtype


def check_sde_inputs(sde, observation, times, y, m0, P0):
    """:func:`check_inputs` plus the SDE and sorted ``times`` (T,); returns ``(times, y, m0, P0, dtype)``."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a probdyn.sde.SDE, got {type(sde).__name__}")
    d = sde.state_dim
    m0, P0, y, dtype = check_inputs(observation, y, m0, P0, d)
    sde.check(dtype)
    times = jnp.asarray(check_times(times))
    if times.shape[0] != y.shape[0]:
        raise ValueError(f"times has {times.shape[0]} entries but y has {y.shape[0]} rows")
    return times.astype(dtype), y, m0, P0, dtype


def check_transition(transition, d, dtype) -> None:
    """``transition(x (d,), k) -> (d,)`` (checked by shape evaluation)."""
    if not callable(transition):
        raise TypeError("transition must be callable as g(x (d,), k) -> (d,)")
    try:
        out = jax.eval_shape(transition, jax.ShapeDtypeStruct((d,), dtype), jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as e:  # noqa: BLE001 - re-raise with context
        raise ValueError(f"transition(x, k) failed for x of shape ({d},): {e}") from e
    if tuple(out.shape) != (d,):
        raise ValueError(f"transition(x, k) must return shape ({d},), got {tuple(out.shape)}")


def filter_scan(predict, observation, y, m0, S0, method):
    """The scan of every Gaussian filter here: ``x_0 ~ N(m0, S0 S0^T)`` is updated by ``y[0]``;
    for ``k >= 1`` ``predict(m, S, k) -> (mp, Sp, extra)`` moves the filtered moments to the
    time of ``y[k]`` and the observation model updates them.

    ``y`` (T, p); ``m0`` (d,), ``S0`` (d, d) lower. Returns the :class:`GaussianFilterResult` and the
    ``extra`` outputs of steps ``1..T-1`` stacked (a pytree; ``None`` for none).
    """

    @jax.checkpoint  # reverse mode keeps each step's inputs and outputs, not its intermediates
    def step(carry, k):
        m, S = carry
        mp, Sp, extra = predict(m, S, k)
        first = k == 0  # the prior itself (no prediction, no re-factorisation)
        mp, Sp = jnp.where(first, m, mp), jnp.where(first, S, Sp)
        mf, Sf, ll = observation.update(mp, Sp, y[k], method)
        return (mf, Sf), (mf, Sf, mp, Sp, ll, extra)

    _, (ms, Ss, mps, Sps, ls, extras) = jax.lax.scan(step, (m0, S0), jnp.arange(y.shape[0]))

    def cov(R):
        return R @ jnp.swapaxes(R, -1, -2)

    res = GaussianFilterResult(ms, cov(Ss), jnp.sum(ls), mps, cov(Sps), ls, Ss, Sps)
    return res, jax.tree.map(lambda a: a[1:], extras)
