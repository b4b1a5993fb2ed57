r"""Markov-approximate fractional Brownian motion (MA-fBM).

After Daems, Opper, Crevecoeur & Birdal, "Variational inference for SDEs driven by
fractional noise" (ICLR 2024), building on Carmona & Coutin (1998) and Harms &
Stefanovits (2019): fractional Brownian motion is approximated by a weighted sum of
Ornstein–Uhlenbeck (OU) processes that are all driven by **one** Brownian motion ``W``,

.. math::

    \hat B^H(t) = \sum_{k=1}^K \omega_k \, Z_k(t),

so that ``(Z_1, ..., Z_K)`` is a K-dimensional linear SDE that augments the state of a
Markovian model (see :func:`ma_fbm_lti`).

Normalisation ("paper normalisation")
-------------------------------------
With :math:`a = H + 1/2` and :math:`\alpha = H - 1/2`, the two targets are

* **type II** (Riemann–Liouville),
  :math:`B^H(t) = \frac{1}{\Gamma(a)} \int_0^t (t-s)^{\alpha}\, dW_s`, with
  :math:`\mathrm{Var}\, B^H(t) = t^{2H} / (2H\,\Gamma(a)^2)`, approximated by
  :math:`Z_k(t) = Y_k(t) = \int_0^t e^{-\gamma_k (t-s)} dW_s` (OU started at 0);
* **type I** (Mandelbrot–van Ness),
  :math:`B^H(t) = \frac{1}{\Gamma(a)} \int_{-\infty}^t \big[(t-s)_+^{\alpha} - (-s)_+^{\alpha}\big] dW_s`,
  with :math:`\mathrm{Var}\, B^H(t) = t^{2H} / (\Gamma(2H+1)\sin(\pi H))`, approximated by
  :math:`Z_k(t) = Y_k(t) - Y_k(0)` with the *stationary* OU processes
  :math:`Y_k(t) = \int_{-\infty}^t e^{-\gamma_k (t-s)} dW_s` that share the infinite past of
  ``W`` (so :math:`\mathrm{Cov}(Y_i(0), Y_j(0)) = 1/(\gamma_i + \gamma_j)`).

Both use the prefactor :math:`1/\Gamma(H+1/2)` of the paper (it makes the Laplace
representation :math:`u^{\alpha}/\Gamma(a) = \int_0^\infty e^{-\gamma u}
\gamma^{-a}/(\Gamma(a)\Gamma(-\alpha))\,d\gamma` clean). The *standard* normalisation has
:math:`\mathrm{Var}\, B^H(t) = t^{2H}` for both kinds (type I covariance
:math:`\tfrac12(t^{2H} + s^{2H} - |t-s|^{2H})`); the ratio of standard deviations is
:func:`fbm_scale`. :func:`optimal_weights` returns weights in the paper normalisation
unless ``normalize=True``; :func:`fbm_covariance` and :func:`sample_fbm` default to the
standard normalisation and accept ``normalization="paper"``.

Precision: every function computes in float64 when JAX's 64-bit mode is on and in the
input dtype (float32) otherwise, and returns the input dtype. Nothing here flips global
JAX configuration.

Length: one concept (MA-fBM: exact fBM, the Markov approximation, its optimal weights and
its LTI form), kept in one module although it runs past 600 lines.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple, SupportsInt

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from jax.typing import ArrayLike

from probdyn._checks import check_int

__all__ = [
    "MAFBMLTI",
    "MAFBMSystem",
    "fbm_covariance",
    "fbm_scale",
    "fbm_variance",
    "gamma_grid",
    "gamma_grid_for",
    "ma_fbm_covariance",
    "ma_fbm_initial_cov",
    "ma_fbm_linear_sde",
    "ma_fbm_lti",
    "ma_fbm_system",
    "ma_fbm_weights",
    "optimal_weights",
    "relative_integrated_mse",
    "sample_fbm",
    "check_fbm_params",
]


# ----------------------------------------------------------------------------- helpers


def check_fbm_params(hurst=None, **nonnegative) -> None:
    """``ValueError`` naming the argument for a concrete ``hurst`` outside the open interval
    (0, 1) (fBM is defined there; ``H = 0`` and ``H = 1`` are degenerate) or a concrete
    negative value of any keyword (e.g. ``theta=...``, ``noise_std=...``). Traced values are
    not checked (the engine's NaN contract applies to them)."""
    checks = (
        [] if hurst is None else [("hurst", hurst, lambda v: np.all((v > 0) & (v < 1)), "in the open interval (0, 1)")]
    )
    checks += [(k, v, lambda v: np.all(v >= 0), ">= 0") for k, v in nonnegative.items()]
    for name, value, ok, what in checks:
        if isinstance(value, jax.core.Tracer):
            continue
        v = np.asarray(value, float)
        if not np.all(np.isfinite(v)) or not ok(v):
            raise ValueError(f"{name} must be finite and {what}, got {value}")


def _check_kind(kind: str) -> None:
    if kind not in ("type1", "type2"):
        raise ValueError(f"kind must be 'type1' or 'type2', got {kind!r}")


def _check_normalization(normalization: str) -> None:
    if normalization not in ("standard", "paper"):
        raise ValueError(f"normalization must be 'standard' or 'paper', got {normalization!r}")


def _dtypes(*xs):
    """(output dtype, compute dtype) for the given inputs (see module docstring)."""
    out = jnp.result_type(*xs)
    if not jnp.issubdtype(out, jnp.floating):
        out = jnp.result_type(float)
    comp = jnp.float64 if jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64 else out
    return out, comp


def _where_split(cond, x, fill):
    """``x`` where ``cond`` else ``fill`` (the "double-where" guard for gradients)."""
    return jnp.where(cond, x, fill)


def _phi(x):
    r""":math:`\varphi(x) = 1 - (1 - e^{-x})/x`, stable for all ``x >= 0``."""
    small = x < 1e-2
    xs = _where_split(small, x, 1e-2)
    xl = _where_split(small, 1.0, x)
    # series: sum_{n>=1} (-1)^{n+1} x^n / (n+1)!
    series = xs * (1 / 2 - xs * (1 / 6 - xs * (1 / 24 - xs * (1 / 120 - xs * (1 / 720 - xs / 5040)))))
    direct = 1.0 + jnp.expm1(-xl) / xl
    return jnp.where(small, series, direct)


_SMALL_X = 2.0  # below: power series; above: continued fraction
_N_SERIES = 32
_N_CF = 56


def _exp_q(a, x):
    r""":math:`e^{x} Q(a, x) = e^x \Gamma(a, x)/\Gamma(a)` for ``x >= 2`` without overflow.

    Legendre continued fraction :math:`e^x\Gamma(a,x) = x^a h(a,x)` evaluated by the modified
    Lentz method with a fixed number (56) of steps (relative error ~1e-13 for ``x >= 2``
    and ``a`` in (0.5, 1.5); faster for larger ``x``). Never forms ``e^x`` or ``Q``.
    """
    tiny = jnp.asarray(1e-30, x.dtype)
    b = x + 1.0 - a
    c = jnp.full_like(b, 1.0 / tiny)
    d = 1.0 / b
    h = d

    def body(i, state):
        b, c, d, h = state
        an = -i * (i - a)
        b = b + 2.0
        d = an * d + b
        d = jnp.where(jnp.abs(d) < tiny, tiny, d)
        c = b + an / c
        c = jnp.where(jnp.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        return b, c, d, h * d * c

    *_, h = jax.lax.fori_loop(1, _N_CF + 1, body, (b, c, d, h))
    return jnp.exp(a * jnp.log(x) - gammaln(a)) * h


def _b_type1_bracket(a, x):
    r""":math:`2x + e^{-x} - e^{x}Q(a,x) - x^a/\Gamma(a+1)` for ``x >= 0``, stably.

    For ``x < 2`` uses :math:`e^xP(a,x) = \frac{x^a}{\Gamma(a+1)}\,{}_1F_1(1; a+1; x)`, i.e.
    :math:`\frac{x^a}{\Gamma(a+1)}\sum_{n\ge1}\frac{x^n}{(a+1)_n} - 2(\sinh x - x)` (no
    cancellation as ``x -> 0``); for ``x >= 2`` the continued fraction :func:`_exp_q`.
    """
    small = x < _SMALL_X
    xs = _where_split(small, x, 0.5 * _SMALL_X)
    xl = _where_split(small, _SMALL_X, x)

    def series(n, state):
        term, s, t, sh = state
        term = term * xs / (a + n)
        t = t * xs * xs / ((2 * n) * (2 * n + 1))
        return term, s + term, t, sh + t

    one = jnp.ones_like(xs * a)
    _, s, _, sinh_minus_x = jax.lax.fori_loop(
        1, _N_SERIES + 1, series, (one, jnp.zeros_like(one), xs * one, jnp.zeros_like(one))
    )
    small_val = jnp.exp(a * jnp.log(xs) - gammaln(a + 1.0)) * s - 2.0 * sinh_minus_x
    large_val = 2.0 * xl + jnp.exp(-xl) - _exp_q(a, xl) - jnp.exp(a * jnp.log(xl) - gammaln(a + 1.0))
    return jnp.where(small, small_val, large_val)


def _b_type2_bracket(a, x):
    r""":math:`xP(a,x) - aP(a+1,x) = (x-a)P(a,x) + x^ae^{-x}/\Gamma(a)` for ``x >= 0``, stably.

    For ``x < 2`` the Kummer series
    :math:`\frac{x^{a+1}e^{-x}}{\Gamma(a+1)}\sum_{n\ge0}\frac{(n+1)x^n}{(a+1)_{n+1}}` (all terms
    positive); for ``x >= 2``, :math:`P = 1 - e^{-x}\,[e^xQ(a,x)]` with :func:`_exp_q`.
    """
    small = x < _SMALL_X
    xs = _where_split(small, x, 0.5 * _SMALL_X)
    xl = _where_split(small, _SMALL_X, x)

    def series(n, state):
        term, s = state  # term = x^n / (a+1)_{n+1}
        term = term * xs / (a + n + 1)
        return term, s + (n + 1) * term

    first = jnp.ones_like(xs * a) / (a + 1)
    _, s = jax.lax.fori_loop(1, _N_SERIES + 1, series, (first, first))
    small_val = jnp.exp((a + 1) * jnp.log(xs) - xs - gammaln(a + 1.0)) * s
    p = 1.0 - jnp.exp(-xl) * _exp_q(a, xl)
    large_val = (xl - a) * p + jnp.exp(a * jnp.log(xl) - xl - gammaln(a))
    return jnp.where(small, small_val, large_val)


# ------------------------------------------------------------------------ public API


def gamma_grid(num_components: SupportsInt, gamma_max: ArrayLike = 20.0) -> jax.Array:
    r"""Geometric grid of OU speeds, symmetric in log-space on ``[1/gamma_max, gamma_max]``.

    :math:`\gamma_k = \gamma_{\max}^{-1 + 2(k-1)/(K-1)}`, ``k = 1..K`` (``K = 1`` gives ``[1]``).
    ``gamma_grid(5, 20) = [0.05, 0.2236, 1, 4.472, 20]``. Returns shape ``(K,)``.
    """
    check_int(num_components, "num_components", 1)
    if isinstance(gamma_max, (int, float)) and gamma_max <= 0:
        raise ValueError(f"gamma_max must be positive, got {gamma_max}")
    out, comp = _dtypes(gamma_max)
    K = int(num_components)
    if K == 1:
        return jnp.ones((1,), out)
    expo = jnp.linspace(-1.0, 1.0, K, dtype=comp)
    return jnp.power(jnp.asarray(gamma_max, comp), expo).astype(out)


def gamma_grid_for(
    sampling_interval: float,
    horizon: float,
    per_decade: float = 1.5,
    slow: float = 0.005,
    fast: float = 5.0,
) -> jax.Array:
    r"""OU speeds chosen from the time scales of the data (for likelihoods and estimating H).

    Geometric grid on :math:`[\text{slow}/T,\ \text{fast}/\Delta]` (``T = horizon``,
    :math:`\Delta` = ``sampling_interval``) with ``K = ceil(per_decade * decades) + 1``
    points. The rule: the fastest OU process must resolve the sampling interval
    (:math:`\gamma_{\max}\Delta \ge 2`; at :math:`\gamma_{\max}\Delta = 0.5` the estimate of
    ``H = 0.2`` is biased by -0.06 to -0.09) and the slowest must be far slower than the
    horizon (:math:`\gamma_{\min}T \le 0.02`; long-memory paths, ``H = 0.8``, are biased
    by -0.05 to -0.08 at :math:`\gamma_{\min}T = 0.1` with 300 points); about 1.5
    speeds per decade suffice (denser grids do not reduce the bias, because the optimal
    weights minimise the path MSE, not the likelihood). With the defaults the asymptotic
    (infinite-data) bias of the MA-fBM maximum-likelihood estimate of ``H`` on exact fBM
    is at most 0.013 for ``H`` in [0.2, 0.8] and 30 to 1000 equally spaced points
    (``benchmarks/fractional_sde.py``, "pseudo-true H"). For ``Delta = 0.01, T = 1`` this
    gives ``K = 9`` speeds on ``[0.005, 500]``.

    Args:
        sampling_interval: ``Delta > 0``, the (typical) spacing of the observation times.
        horizon: ``T > Delta``, the length of the observed interval.
        per_decade: grid density (speeds per factor 10).
        slow, fast: ``gamma_min T`` and ``gamma_max Delta``.

    Returns:
        ``(K,)`` increasing speeds (default float dtype).
    """
    dt, T = float(sampling_interval), float(horizon)
    if not (dt > 0 and T > dt):
        raise ValueError(f"need 0 < sampling_interval < horizon, got {sampling_interval}, {horizon}")
    if not (per_decade > 0 and slow > 0 and fast > 0):
        raise ValueError("per_decade, slow and fast must be positive")
    lo, hi = slow / T, fast / dt
    if hi <= lo:
        raise ValueError(f"empty range [{lo}, {hi}]: increase fast or decrease slow")
    K = int(np.ceil(per_decade * np.log10(hi / lo) - 1e-9)) + 1
    return jnp.asarray(np.geomspace(lo, hi, K), jnp.result_type(float))


def fbm_scale(hurst, kind: str = "type1") -> jax.Array:
    r"""Standard deviation of the paper-normalised :math:`B^H(1)`.

    Paper-normalised fBM = ``fbm_scale * standard`` fBM (whose variance is ``t^{2H}``):
    type I :math:`(\Gamma(2H+1)\sin\pi H)^{-1/2}`, type II :math:`(2H)^{-1/2}/\Gamma(H+1/2)`.
    """
    _check_kind(kind)
    out, comp = _dtypes(hurst)
    H = jnp.asarray(hurst, comp)
    if kind == "type1":
        log_var = -gammaln(2 * H + 1) - jnp.log(jnp.sin(jnp.pi * H))
    else:
        log_var = -jnp.log(2 * H) - 2 * gammaln(H + 0.5)
    return jnp.exp(0.5 * log_var).astype(out)


def fbm_variance(times, hurst, kind: str = "type1", normalization: str = "standard") -> jax.Array:
    """``Var B^H(t)`` at ``times`` (any shape): ``t^{2H}`` times ``fbm_scale**2`` if ``"paper"``."""
    _check_kind(kind)
    _check_normalization(normalization)
    out, comp = _dtypes(times, hurst)
    t = jnp.asarray(times, comp)
    H = jnp.asarray(hurst, comp)
    v = jnp.where(t > 0, jnp.abs(_where_split(t > 0, t, 1.0)) ** (2 * H), 0.0)
    if normalization == "paper":
        v = v * fbm_scale(H, kind) ** 2
    return v.astype(out)


class MAFBMSystem(NamedTuple):
    r"""Normal equations of the MA-fBM fit on ``[0, T]`` (paper normalisation).

    ``A`` (K, K): :math:`A_{ij} = \int_0^T E[Z_i(t) Z_j(t)]\,dt`; ``b`` (K,):
    :math:`b_k = \int_0^T E[B^H(t) Z_k(t)]\,dt`; ``c`` (): :math:`\int_0^T E[B^H(t)^2]\,dt`.
    The integrated MSE of weights ``w`` is ``w @ A @ w - 2 w @ b + c``.
    """

    A: jax.Array
    b: jax.Array
    c: jax.Array


@functools.partial(jax.jit, static_argnames="kind")
def _system(H, g, T, kind):
    """Closed-form A, b, c in the compute dtype (see :func:`ma_fbm_system`)."""
    a = H + 0.5
    gi = g[:, None]
    gj = g[None, :]
    gsum = gi + gj
    x = g * T
    if kind == "type2":
        A = T * _phi(gsum * T) / gsum
        # b_k = g^{-a-1} [x P(a, x) - a P(a+1, x)]
        b = jnp.exp(-(a + 1) * jnp.log(g)) * _b_type2_bracket(a, x)
        c = T ** (2 * H + 1) / ((2 * H + 1) * 2 * H * jnp.exp(2 * gammaln(a)))
    else:
        ph = T * _phi(x)
        A = (ph[:, None] + ph[None, :]) / gsum
        b = jnp.exp(-(a + 1) * jnp.log(g)) * _b_type1_bracket(a, x)
        c = T ** (2 * H + 1) / ((2 * H + 1) * jnp.exp(gammaln(2 * H + 1)) * jnp.sin(jnp.pi * H))
    return A, b, c


def ma_fbm_system(hurst, gammas, horizon, kind: str = "type1") -> MAFBMSystem:
    r"""Closed-form normal equations ``A w = b`` of the optimal MA-fBM weights.

    Derivation (paper normalisation, :math:`a = H+1/2`, :math:`x_k = \gamma_k T`,
    :math:`P, Q` the regularised lower/upper incomplete gamma functions,
    :math:`\varphi(x) = 1 - (1-e^{-x})/x`):

    *Type II.* :math:`E[Y_i(t)Y_j(t)] = (1 - e^{-(\gamma_i+\gamma_j)t})/(\gamma_i+\gamma_j)`, so
    :math:`A_{ij} = T\varphi((\gamma_i+\gamma_j)T)/(\gamma_i+\gamma_j)`.
    :math:`E[B^H(t)Y_k(t)] = \frac{1}{\Gamma(a)}\int_0^t u^{\alpha}e^{-\gamma_k u}du
    = \gamma_k^{-a}P(a,\gamma_k t)`, and with :math:`\int_0^X P(a,x)dx = XP(a,X) - aP(a+1,X)`,
    :math:`b_k = \gamma_k^{-a-1}\,[x_k P(a,x_k) - a P(a+1,x_k)]`;
    :math:`c = T^{2H+1}/((2H+1)\,2H\,\Gamma(a)^2)`.

    *Type I.* :math:`E[Z_i(t)Z_j(t)] = (2 - e^{-\gamma_i t} - e^{-\gamma_j t})/(\gamma_i+\gamma_j)`, so
    :math:`A_{ij} = T(\varphi(x_i) + \varphi(x_j))/(\gamma_i+\gamma_j)`. Writing
    :math:`Z_k(t) = \int_0^t e^{-\gamma_k(t-s)}dW_s + (e^{-\gamma_k t}-1)Y_k(0)`, the future part
    gives the type-II term and the infinite past adds
    :math:`\frac{e^{-\gamma t}-1}{\Gamma(a)}\int_0^\infty [(t+u)^\alpha - u^\alpha] e^{-\gamma u}du
    = (e^{-\gamma t}-1)\,\gamma^{-a}[e^{\gamma t}Q(a,\gamma t) - 1]`, in total
    :math:`E[B^H(t)Z_k(t)] = \gamma_k^{-a}[2 - e^{-\gamma_k t} - e^{\gamma_k t}Q(a,\gamma_k t)]`.
    With :math:`\int_0^X e^xQ(a,x)dx = e^XQ(a,X) - 1 + X^a/\Gamma(a+1)`,
    :math:`b_k = \gamma_k^{-a-1}[2x_k + e^{-x_k} - e^{x_k}Q(a,x_k) - x_k^a/\Gamma(a+1)]`;
    :math:`c = T^{2H+1}/((2H+1)\Gamma(2H+1)\sin\pi H)`.

    Stability: :math:`e^{x}Q(a,x)` is evaluated as a continued fraction for ``x >= 2`` (no
    ``exp`` overflow, no underflowing ``Q``), the type-I bracket uses a Kummer series for
    ``x < 2`` (no cancellation), :math:`\varphi` a Taylor series for small ``x``; branches are guarded so
    that gradients (also w.r.t. ``H``) stay finite.

    Args: ``hurst`` scalar in (0, 1); ``gammas`` (K,) positive; ``horizon`` T > 0.
    """
    _check_kind(kind)
    out, comp = _dtypes(hurst, gammas, horizon)
    H = jnp.asarray(hurst, comp)
    g = jnp.asarray(gammas, comp)
    T = jnp.asarray(horizon, comp)
    if g.ndim != 1:
        raise ValueError(f"gammas must have shape (K,), got {g.shape}")
    A, b, c = _system(H, g, T, kind)
    return MAFBMSystem(A.astype(out), b.astype(out), c.astype(out))


def _endpoint_cov(g, T, kind):
    """(K, K) covariance of Z(T)."""
    gsum = g[:, None] + g[None, :]
    if kind == "type2":
        return -jnp.expm1(-gsum * T) / gsum
    e = -jnp.expm1(-g * T)
    return (e[:, None] + e[None, :]) / gsum


def _solve_spd(A, b):
    """Solve the (ill-conditioned) SPD system with symmetric diagonal equilibration."""
    d = 1.0 / jnp.sqrt(jnp.diag(A))
    As = A * d[:, None] * d[None, :]
    return d * jnp.linalg.solve(As, d * b)


def optimal_weights(hurst, gammas, horizon, kind: str = "type1", normalize: bool = False) -> jax.Array:
    r"""Optimal MA-fBM weights :math:`\omega` (shape (K,)) for speeds ``gammas`` (K,).

    :math:`\omega = A^{-1} b` minimises :math:`E\int_0^T (B^H(t) - \sum_k\omega_k Z_k(t))^2dt`
    (Daems et al. 2024, Prop. "optimal approximation"); ``A, b`` in closed form, see
    :func:`ma_fbm_system`. The target is in the **paper normalisation** (prefactor
    :math:`1/\Gamma(H+1/2)`, see the module docstring).

    ``normalize=True`` ("unit-variance option") returns :math:`c\,\omega` with the scalar
    :math:`c > 0` such that :math:`\mathrm{Var}\,\hat B^H(T) = T^{2H}`, i.e. ``\hat B^H``
    then approximates fBM in the *standard* normalisation (``Var B^H(t) = t^{2H}``; type I
    covariance ``0.5 (t^2H + s^2H - |t-s|^2H)``, type II the RL process times
    :math:`\sqrt{2H}\,\Gamma(H+1/2)`) and matches its variance exactly at the horizon.
    (``c`` is close to ``1/fbm_scale(hurst, kind)``, up to the approximation error at T.)

    Differentiable in ``hurst``, ``gammas`` and ``horizon``.
    """
    _check_kind(kind)
    out, comp = _dtypes(hurst, gammas, horizon)
    H = jnp.asarray(hurst, comp)
    g = jnp.asarray(gammas, comp)
    T = jnp.asarray(horizon, comp)
    if g.ndim != 1:
        raise ValueError(f"gammas must have shape (K,), got {g.shape}")
    return _weights(H, g, T, kind, bool(normalize)).astype(out)


@functools.partial(jax.jit, static_argnames=("kind", "normalize"))
def _weights(H, g, T, kind, normalize):
    A, b, _ = _system(H, g, T, kind)
    w = _solve_spd(A, b)
    if normalize:
        S = _endpoint_cov(g, T, kind)
        w = w * jnp.sqrt(T ** (2 * H) / (w @ S @ w))
    return w


class MAFBMLTI(NamedTuple):
    r"""Augmented linear SDE of MA-fBM: ``dY = F Y dt + L dW``, ``B_hat = H_ (Y - Y(0))``.

    ``F`` (K, K) ``= -diag(gammas)``; ``L`` (K, 1) ones; ``H`` (1, K) ``= omegas``; ``P0``
    (K, K) the covariance of ``Y(0)``: the stationary :math:`1/(\gamma_i+\gamma_j)` for type I
    (then :math:`\hat B^H(t) = H(Y(t) - Y(0))`), zeros for type II (``Y(0) = 0``, so
    :math:`\hat B^H(t) = H\,Y(t)`). The diffusion is unit (``Qc = 1``).
    """

    F: jax.Array
    L: jax.Array
    H: jax.Array
    P0: jax.Array


def ma_fbm_lti(hurst, gammas, omegas, kind: str = "type1") -> MAFBMLTI:
    """Matrices ``(F, L, H, P0)`` of the MA-fBM state space (``hurst`` only sets the dtype)."""
    _check_kind(kind)
    out, _ = _dtypes(hurst, gammas, omegas)
    g = jnp.asarray(gammas, out)
    w = jnp.asarray(omegas, out)
    if g.ndim != 1 or w.shape != g.shape:
        raise ValueError(f"gammas and omegas must both have shape (K,), got {g.shape}, {w.shape}")
    K = g.shape[0]
    if kind == "type1":
        P0 = 1.0 / (g[:, None] + g[None, :])
    else:
        P0 = jnp.zeros((K, K), out)
    return MAFBMLTI(-jnp.diag(g), jnp.ones((K, 1), out), w[None, :], P0)


def ma_fbm_covariance(times, hurst, gammas, omegas, kind: str = "type1") -> jax.Array:
    r"""Exact covariance (N, N) of :math:`\hat B^H = \sum_k \omega_k Z_k` at ``times`` (N,).

    Type II (:math:`t \ge s`): :math:`\mathrm{Cov}(Y_i(t), Y_j(s)) =
    e^{-\gamma_i(t-s)}(1 - e^{-(\gamma_i+\gamma_j)s})/(\gamma_i+\gamma_j)`.
    Type I: with :math:`E_{ij}(t,s) = e^{-\gamma_i(t-s)}` for :math:`t\ge s` and
    :math:`e^{-\gamma_j(s-t)}` otherwise,
    :math:`\mathrm{Cov}(Z_i(t), Z_j(s)) = [E_{ij}(t,s) - e^{-\gamma_i t} - e^{-\gamma_j s} + 1]
    /(\gamma_i+\gamma_j)` (evaluated with ``expm1``). Times must be ``>= 0``.
    ``hurst`` does not enter (the weights carry it); it only sets the dtype.
    """
    _check_kind(kind)
    out, comp = _dtypes(times, hurst, gammas, omegas)
    t = jnp.asarray(times, comp)
    g = jnp.asarray(gammas, comp)
    w = jnp.asarray(omegas, comp)
    if t.ndim != 1:
        raise ValueError(f"times must have shape (N,), got {t.shape}")
    return _ma_cov(t, g, w, kind).astype(out)


@functools.partial(jax.jit, static_argnames="kind")
def _ma_cov(t, g, w, kind):
    ti = t[:, None, None, None]
    sj = t[None, :, None, None]
    gi = g[None, None, :, None]
    gj = g[None, None, None, :]
    gsum = gi + gj
    d = ti - sj
    later = d >= 0
    # exp(-g_i (t - s)) if t >= s else exp(-g_j (s - t)), as expm1 for accuracy
    em1 = jnp.where(later, jnp.expm1(-gi * jnp.where(later, d, 0.0)), jnp.expm1(gj * jnp.where(later, 0.0, d)))
    if kind == "type2":
        smin = jnp.minimum(ti, sj)
        cov = (em1 + 1.0) * (-jnp.expm1(-gsum * smin)) / gsum
    else:
        cov = (em1 - jnp.expm1(-gi * ti) - jnp.expm1(-gj * sj)) / gsum
    return jnp.einsum("nmij,i,j->nm", cov, w, w)


# Composite Gauss–Legendre rule in log-time for the Riemann–Liouville covariance.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(12)
_RL_PANELS = 16
_RL_SPAN = 64.0  # log-range of the substitution v = s e^{-l}, l in [0, 64]


def _rl_cross(t, s, H):
    r""":math:`\int_0^{s}v^{\alpha}(d+v)^{\alpha}dv`, ``d = t - s >= 0``, by quadrature in log v.

    With :math:`v = s e^{-l}` the integrand :math:`s^{a} e^{-a l}(d + s e^{-l})^{\alpha}` is
    analytic in ``l`` with singularities at distance :math:`\pi` from the real axis, so a
    composite Gauss–Legendre rule (16 panels x 12 nodes on ``l in [0, 64]``) converges
    exponentially (relative error ~1e-12); the cut tail is below :math:`e^{-32}`.
    """
    a = H + 0.5
    al = H - 0.5
    edges = np.linspace(0.0, _RL_SPAN, _RL_PANELS + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    mid = 0.5 * (edges[1:] + edges[:-1])
    nodes = (mid[:, None] + half[:, None] * _GL_X[None, :]).ravel()
    weights = (half[:, None] * _GL_W[None, :]).ravel()
    nodes = jnp.asarray(nodes, t.dtype)
    weights = jnp.asarray(weights, t.dtype)
    d = (t - s)[..., None]
    v_over_s = jnp.exp(-nodes)
    sv = s[..., None]
    integrand = jnp.exp(-a * nodes) * (d + sv * v_over_s) ** al
    return s**a * jnp.sum(weights * integrand, axis=-1)


def fbm_covariance(times, hurst, kind: str = "type1", normalization: str = "standard") -> jax.Array:
    r"""Exact fBM covariance (N, N) at ``times`` (N,), ``times >= 0``.

    Type I (standard): :math:`\tfrac12(t^{2H} + s^{2H} - |t-s|^{2H})`.
    Type II (paper): :math:`\frac{1}{\Gamma(a)^2}\int_0^{\min(t,s)}(t-u)^{\alpha}(s-u)^{\alpha}du`
    (:math:`= t^{\alpha}s^{a}\,{}_2F_1(-\alpha,1;a+1;s/t)/(a\Gamma(a)^2)` for ``s <= t``),
    computed by **numerical quadrature** (composite Gauss–Legendre in log-time, relative
    error ~1e-12 in float64, exact on the diagonal ``t^{2H}/(2H\Gamma(a)^2)``); the
    hypergeometric form is avoided because it converges slowly at ``s/t -> 1``.
    ``normalization="standard"`` scales both kinds to ``Var B^H(t) = t^{2H}``; ``"paper"``
    uses the :math:`1/\Gamma(H+1/2)` prefactor (see :func:`fbm_scale`).
    """
    _check_kind(kind)
    _check_normalization(normalization)
    out, comp = _dtypes(times, hurst)
    t = jnp.asarray(times, comp)
    H = jnp.asarray(hurst, comp)
    if t.ndim != 1:
        raise ValueError(f"times must have shape (N,), got {t.shape}")
    return _fbm_cov(t, H, kind, normalization).astype(out)


@functools.partial(jax.jit, static_argnames=("kind", "normalization"))
def _fbm_cov(t, H, kind, normalization):
    ti = t[:, None]
    sj = t[None, :]
    if kind == "type1":

        def pw(x):
            pos = x > 0
            return jnp.where(pos, _where_split(pos, x, 1.0) ** (2 * H), 0.0)

        C = 0.5 * (pw(ti) + pw(sj) - pw(jnp.abs(ti - sj)))
        if normalization == "paper":
            C = C * fbm_scale(H, "type1") ** 2
    else:
        hi = jnp.maximum(ti, sj)
        lo = jnp.minimum(ti, sj)
        pos = lo > 0
        lo_s = _where_split(pos, lo, 1.0)
        hi_s = _where_split(pos, hi, 1.0)
        off = _rl_cross(hi_s, lo_s, H)
        diag = lo_s ** (2 * H) / (2 * H)
        C = jnp.where(pos, jnp.where(hi_s == lo_s, diag, off), 0.0)
        # C is now Gamma(a)^2 x (paper covariance)
        if normalization == "paper":
            C = C * jnp.exp(-2 * gammaln(H + 0.5))
        else:
            C = C * 2 * H
    return C


def _regular_grid(times: np.ndarray):
    """``(n, dt, starts_at_zero)`` if ``times`` is ``0, dt, ..`` or ``dt, 2dt, ..``; else None."""
    if times.ndim != 1 or times.size < 2:
        return None
    dt = times[1] - times[0]
    if dt <= 0:
        return None
    start0 = abs(times[0]) <= 1e-12 * dt
    offset = 0 if start0 else 1
    k = np.arange(times.size) + offset
    if not np.allclose(times, k * dt, rtol=1e-9, atol=1e-12 * dt):
        return None
    return times.size, dt, start0


def _davies_harte(key, n_inc, dt, H, num_samples, dtype):
    """(num_samples, n_inc) standard fBM at ``dt * (1..n_inc)`` by circulant embedding."""
    k = jnp.arange(n_inc + 1, dtype=dtype)
    ac = 0.5 * (jnp.abs(k + 1) ** (2 * H) - 2 * jnp.abs(k) ** (2 * H) + jnp.abs(k - 1) ** (2 * H))
    row = jnp.concatenate([ac, ac[-2:0:-1]])  # length M = 2 n_inc
    M = row.shape[0]
    lam = jnp.maximum(jnp.real(jnp.fft.fft(row)), 0.0)  # >= 0 for all H (Craigmile 2003)
    k1, k2 = jax.random.split(key)
    z = jax.random.normal(k1, (num_samples, M), dtype) + 1j * jax.random.normal(k2, (num_samples, M), dtype)
    y = jnp.fft.fft(jnp.sqrt(lam / M) * z, axis=-1)[:, :n_inc]
    fgn = jnp.real(y)  # real and imaginary parts are independent exact draws; use the real
    return dt**H * jnp.cumsum(fgn, axis=-1)


def sample_fbm(
    key,
    times,
    hurst,
    num_samples: SupportsInt,
    kind: str = "type1",
    normalization: str = "standard",
    method: Literal["auto", "cholesky", "davies-harte"] = "auto",
) -> jax.Array:
    """Exact fBM samples, shape ``(num_samples, N)``, at ``times`` (N,) with ``times >= 0``.

    ``method="cholesky"`` works on any grid (Cholesky of :func:`fbm_covariance` with a
    relative jitter of ``1e-12`` (float64) / ``1e-6`` (float32) of the mean variance; zero
    times give exactly 0). ``"davies-harte"`` (circulant embedding, O(N log N)) needs type I
    and a regular grid ``0, dt, 2dt, ..`` or ``dt, 2dt, ..`` with concrete ``times``.
    ``"auto"`` uses Davies–Harte when it applies, else Cholesky.
    """
    _check_kind(kind)
    _check_normalization(normalization)
    if method not in ("auto", "cholesky", "davies-harte"):
        raise ValueError(f"unknown method {method!r}")
    check_fbm_params(hurst)
    num_samples = check_int(num_samples, "num_samples", 1)
    out, comp = _dtypes(times, hurst)
    grid = None
    if kind == "type1" and method != "cholesky":
        try:
            grid = _regular_grid(np.asarray(times, dtype=np.float64))
        except jax.errors.TracerArrayConversionError:
            grid = None
    if method == "davies-harte" and grid is None:
        raise ValueError("davies-harte needs kind='type1' and a concrete regular grid starting at 0 or dt")
    H = jnp.asarray(hurst, comp)
    if grid is not None:
        n, dt, start0 = grid
        n_inc = n - 1 if start0 else n
        x = _davies_harte(key, n_inc, jnp.asarray(dt, comp), H, num_samples, comp)
        if start0:
            x = jnp.concatenate([jnp.zeros((num_samples, 1), comp), x], axis=1)
        if normalization == "paper":
            x = x * fbm_scale(H, "type1")
        return x.astype(out)
    t = jnp.asarray(times, comp)
    C = fbm_covariance(t, H, kind, normalization)
    zero = t <= 0
    keep = ~(zero[:, None] | zero[None, :])
    C = jnp.where(keep, C, 0.0) + jnp.diag(zero.astype(comp))
    jitter = (1e-12 if comp == jnp.float64 else 1e-6) * jnp.mean(jnp.diag(C))
    L = jnp.linalg.cholesky(C + jitter * jnp.eye(t.shape[0], dtype=comp))
    z = jax.random.normal(key, (num_samples, t.shape[0]), comp)
    x = jnp.where(zero[None, :], 0.0, z @ L.T)
    return x.astype(out)


def relative_integrated_mse(
    hurst,
    num_components: SupportsInt,
    gamma_max: float,
    horizon,
    kind: str = "type1",
    metric: Literal["covariance", "variance", "path"] = "covariance",
    num_points: int = 121,
) -> jax.Array:
    r"""Relative error of the optimal MA-fBM (``gamma_grid(K, gamma_max)``, paper normalisation).

    * ``"covariance"`` (default): :math:`\iint_{[0,T]^2}(\hat C - C)^2 / \iint C^2` for the
      exact covariances :func:`ma_fbm_covariance` and :func:`fbm_covariance` on a uniform
      grid of ``num_points`` times (2-D trapezoid rule);
    * ``"variance"``: :math:`\int_0^T(\hat v - v)^2dt/\int_0^T v^2dt` for the variance
      functions on the same grid;
    * ``"path"``: the paper's objective, :math:`E\int_0^T(B^H - \hat B^H)^2dt /
      \int_0^T E[(B^H)^2]dt = (c - \omega^\top b)/c` in closed form.

    All three are invariant to the normalisation of the target (weights scale with it).
    """
    _check_kind(kind)
    out, comp = _dtypes(hurst, gamma_max, horizon)
    H = jnp.asarray(hurst, comp)
    T = jnp.asarray(horizon, comp)
    g = gamma_grid(num_components, jnp.asarray(gamma_max, comp))
    w = optimal_weights(H, g, T, kind)
    if metric == "path":
        A, b, c = _system(H, g, T, kind)
        err = w @ A @ w - 2 * w @ b + c
        return (err / c).astype(out)
    if metric not in ("covariance", "variance"):
        raise ValueError(f"unknown metric {metric!r}")
    t = jnp.linspace(0.0, 1.0, num_points, dtype=comp) * T
    C = fbm_covariance(t, H, kind, "paper")
    Ch = ma_fbm_covariance(t, H, g, w, kind)
    q = jnp.ones(num_points, comp).at[0].set(0.5).at[-1].set(0.5)
    if metric == "variance":
        v, vh = jnp.diag(C), jnp.diag(Ch)
        return (jnp.sum(q * (vh - v) ** 2) / jnp.sum(q * v**2)).astype(out)
    Q = q[:, None] * q[None, :]
    return (jnp.sum(Q * (Ch - C) ** 2) / jnp.sum(Q * C**2)).astype(out)


# ------------------------------------------------------- linear SDEs with MA-fBM noise


def ma_fbm_weights(hurst, gammas, horizon, kind: str = "type1", normalization: str = "standard") -> jax.Array:
    """Optimal weights (K,) for ``B^H`` in the given normalisation (differentiable in ``hurst``).

    ``"standard"`` (``Var B^H(t) ~ t^{2H}``) divides the paper-normalised optimum
    :func:`optimal_weights` by :func:`fbm_scale`; ``"paper"`` returns it unchanged.
    """
    _check_normalization(normalization)
    w = optimal_weights(hurst, gammas, horizon, kind)
    if normalization == "standard":
        w = w / fbm_scale(hurst, kind).astype(w.dtype)
    return w


def ma_fbm_linear_sde(
    drift_matrix,
    sigma,
    hurst,
    gammas,
    horizon,
    kind: str = "type1",
    output_matrix=None,
    normalization: str = "standard",
):
    r"""Linear SDE with additive MA-fBM noise as an :class:`probdyn.LTISDE`.

    Model (``d`` coordinates, each driven by its own fBM, all with the same ``H``):

    .. math:: dX = A X\,dt + \mathrm{diag}(\sigma)\,d\hat B^H,\qquad
              \hat B^H_i = \sum_k \omega_k (Y_{ik} - Y_{ik}(0)),\quad
              dY_{ik} = -\gamma_k Y_{ik}\,dt + dW_i .

    Substituting :math:`d\hat B^H_i = \sum_k\omega_k(-\gamma_k Y_{ik}dt + dW_i)`, the augmented
    state :math:`z = (X, Y_{11..1K}, \dots, Y_{d1..dK})` (``d + dK``) is the LTI SDE
    ``dz = F z dt + L dW`` with

    * ``F = [[A, -diag(sigma) kron (omega * gamma)^T], [0, -I_d kron diag(gamma)]]``,
    * ``L = [[diag(sigma) * sum(omega)], [I_d kron 1_K]]`` (``(d + dK, d)``), ``Qc = I_d``,
    * ``H = output_matrix @ [I_d, 0]`` (default: observe ``X``).

    The fractional OU :math:`dX = -\theta X dt + \sigma dB^H` is ``drift_matrix = [[-theta]]``.
    ``Pinf`` is left ``None`` (the initial law is not stationary: use
    :func:`ma_fbm_initial_cov`); ``probdyn.discretise`` then uses Van Loan's method, so
    ``theta = 0`` (plain scaled fBM) is fine. ``K = 0`` (empty ``gammas``) gives the
    Brownian SDE ``dX = A X dt + diag(sigma) dW``.

    Args: ``drift_matrix`` (d, d); ``sigma`` scalar or (d,); ``hurst`` scalar in (0, 1);
    ``gammas`` (K,); ``horizon`` the interval length the weights are fitted on.
    """
    from probdyn.ssm import LTISDE

    _check_kind(kind)
    out, _ = _dtypes(drift_matrix, sigma, hurst, gammas, horizon)
    A = jnp.asarray(drift_matrix, out)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"drift_matrix must have shape (d, d), got {A.shape}")
    d = A.shape[0]
    s = jnp.broadcast_to(jnp.asarray(sigma, out), (d,))
    g = jnp.asarray(gammas, out)
    if g.ndim != 1:
        raise ValueError(f"gammas must have shape (K,), got {g.shape}")
    K = g.shape[0]
    eye = jnp.eye(d, dtype=out)
    if K == 0:  # Brownian motion: dX = A X dt + diag(sigma) dW
        C = eye if output_matrix is None else jnp.asarray(output_matrix, out)
        return LTISDE(F=A, L=jnp.diag(s), Qc=eye, H=C)
    w = ma_fbm_weights(jnp.asarray(hurst, out), g, jnp.asarray(horizon, out), kind, normalization)
    F = jnp.block(
        [
            [A, -jnp.kron(jnp.diag(s), (w * g)[None, :])],
            [jnp.zeros((d * K, d), out), -jnp.kron(eye, jnp.diag(g))],
        ]
    )
    L = jnp.concatenate([jnp.diag(s * jnp.sum(w)), jnp.kron(eye, jnp.ones((K, 1), out))], axis=0)
    Hx = jnp.concatenate([eye, jnp.zeros((d, d * K), out)], axis=1)
    if output_matrix is not None:
        C = jnp.asarray(output_matrix, out)
        if C.ndim != 2 or C.shape[1] != d:
            raise ValueError(f"output_matrix must have shape (m, {d}), got {C.shape}")
        Hx = C @ Hx
    return LTISDE(F=F, L=L, Qc=eye, H=Hx)


def ma_fbm_initial_cov(x0_cov, gammas, kind: str = "type1") -> jax.Array:
    """Initial covariance ``(d + dK, d + dK)`` of the augmented state of :func:`ma_fbm_linear_sde`.

    ``blockdiag(x0_cov, I_d kron P0)`` with ``P0`` the covariance of ``Y(0)``: stationary
    ``1/(gamma_i + gamma_j)`` (type I) or zero (type II). ``x0_cov`` is (d, d).
    """
    _check_kind(kind)
    out, _ = _dtypes(x0_cov, gammas)
    P = jnp.asarray(x0_cov, out)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"x0_cov must have shape (d, d), got {P.shape}")
    g = jnp.asarray(gammas, out)
    d, K = P.shape[0], g.shape[0]
    P0 = 1.0 / (g[:, None] + g[None, :]) if kind == "type1" else jnp.zeros((K, K), out)
    PY = jnp.kron(jnp.eye(d, dtype=out), P0)
    return jnp.block([[P, jnp.zeros((d, d * K), out)], [jnp.zeros((d * K, d), out), PY]])
