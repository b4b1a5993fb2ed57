r"""Markov (state-space) Gaussian-process kernels as linear time-invariant SDEs.

Every kernel is an ``equinox.Module`` with

* ``k(tau)``: the analytic covariance function (used by :meth:`Kernel.covariance`);
* ``k.sde()``: the LTI SDE whose output ``f = H x`` has exactly that covariance
  (an :class:`~probdyn.ssm.LTISDE` with ``F, L, Qc, H`` and stationary covariance ``Pinf``);
* ``k.transition(dt)``/``k.process_cov(dt)``: the exact discretisation
  ``A = expm(F dt)``, ``Q = Pinf - A Pinf A^T``, with closed forms where they are cheaper
  and more accurate.

States are *balanced*: derivative coordinates are scaled by the kernel's rate (e.g.
``(f, f'/lambda)`` for Matérn-3/2) so that every state has unit-order variance. This keeps
the square-root filter accurate in float32 even for very long lengthscales.

Kernels compose: ``k1 + k2`` (block-diagonal state), ``k1 * k2`` (Kronecker-product
state) and ``c * k`` (positive scalar).

Length: one concept (the kernel library and its composition rules), kept in one module
although it runs past 600 lines.
"""

from __future__ import annotations

import math
from typing import ClassVar, override

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from probdyn._typing import Cov, ScalarLike
from probdyn.linalg import block_diag, kron, symmetrize
from probdyn.ssm import LTISDE, LinearGaussianSSM, TransitionBasis

__all__ = [
    "Kernel",
    "Matern12",
    "Matern32",
    "Matern52",
    "SHO",
    "Periodic",
    "Constant",
    "Celerite",
    "Cosine",
    "Sum",
    "Product",
    "Scaled",
    "from_tinygp",
]


def _param(x, name: str, positive: bool = True, allow_zero: bool = False):
    """Convert a parameter to an array, checking concrete Python/NumPy values."""
    if isinstance(x, (int, float, np.floating, np.integer, np.ndarray)):
        v = np.asarray(x, dtype=float)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be finite, got {x!r}")
        if positive and (np.any(v < 0) if allow_zero else np.any(v <= 0)):
            raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {x!r}")
        if v.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
        return jnp.asarray(x, dtype=jnp.result_type(float))
    return jnp.asarray(x)


class Kernel(eqx.Module):
    """Base class of stationary Markov kernels (see the module docstring)."""

    # --- to implement -------------------------------------------------------------
    def __call__(self, tau: Float[Array, ...]) -> Float[Array, ...]:
        """Analytic covariance ``k(tau)`` for lags ``tau`` (any shape)."""
        raise NotImplementedError

    def feedback(self) -> Float[Array, "d d"]:
        """Drift matrix ``F``."""
        raise NotImplementedError

    def stationary_cov(self) -> Cov:
        """The stationary state covariance ``Pinf``, shape (d, d)."""
        raise NotImplementedError

    def observation(self) -> np.ndarray:
        """Output matrix ``H`` (1, d), a constant NumPy array (in the parameters' dtype), so
        that the Kalman engine can compile its structure into the filter step."""
        raise NotImplementedError

    # --- generic ------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        """The state dimension d of the kernel's state-space form."""
        return self.observation().shape[-1]

    def sde(self) -> LTISDE:
        """The LTI SDE ``dx = F x dt + L dbeta`` with ``L = I`` and ``Qc = -(F P + P F^T)``."""
        F, P = self.feedback(), self.stationary_cov()
        Qc = symmetrize(-(F @ P + P @ F.T))
        return LTISDE(F, jnp.eye(F.shape[0], dtype=F.dtype), Qc, self.observation(), P)

    def transition(self, dt: ScalarLike) -> Float[Array, "d d"]:
        """The transition matrix ``A = expm(F dt)`` over a step ``dt``, shape (d, d)."""
        return jax.scipy.linalg.expm(self.feedback() * dt)

    def process_cov(self, dt: ScalarLike) -> Cov:
        """The process-noise covariance ``Q = Pinf - A Pinf A^T`` over a step ``dt``, shape (d, d)."""
        A, P = self.transition(dt), self.stationary_cov()
        return symmetrize(P - A @ P @ A.T)

    def discretise(self, dts: Float[Array, " n"]) -> tuple[Float[Array, "n d d"], Float[Array, "n d d"]]:
        """``(A_k, Q_k)`` for each step size in ``dts``."""
        return jax.vmap(self.transition)(dts), jax.vmap(self.process_cov)(dts)

    def transition_basis(self, dts: Float[Array, " n"]) -> TransitionBasis | None:
        """``(A_k, Q_k)`` in coefficient form (:class:`probdyn.ssm.TransitionBasis`) where
        the kernel has one (the Matérn family), else ``None``."""
        return None

    def to_ssm(
        self, times: Float[ArrayLike, " N"], noise: Float[ArrayLike, "*n"] = 0.0, transition_basis: bool = False
    ) -> LinearGaussianSSM:
        """The exact state-space model of ``y_n = f(times[n]) + N(0, noise_n)``, ``f ~ GP(0, k)``.

        ``times`` (N,) sorted (not checked here: callers validate); ``noise`` a scalar or (N,)
        variance. The initial state has the stationary covariance; ``A_k, Q_k`` are the exact
        discretisation over ``diff(times)``. ``transition_basis=True`` also attaches the
        coefficient form of the transitions (:class:`probdyn.ssm.TransitionBasis`, Matérn
        kernels), which the sequential filter reads instead of the dense arrays.
        """
        times, noise = jnp.asarray(times), jnp.asarray(noise)
        P = self.stationary_cov()
        dtype = jnp.result_type(P, times)
        dts = jnp.diff(times)
        basis = self.transition_basis(dts) if transition_basis else None
        A, Q = self.discretise(dts) if basis is None else basis.dense()
        R = noise.reshape(-1, 1, 1) if noise.ndim == 1 else noise.reshape(1, 1)
        d = P.shape[0]
        return LinearGaussianSSM(jnp.zeros(d, dtype), P, A, Q, self.observation(), R.astype(dtype), basis)

    def covariance(self, t1: Float[ArrayLike, " n"], t2: Float[ArrayLike, " m"] | None = None) -> Float[Array, "n m"]:
        """Dense Gram matrix ``K[i, j] = k(|t1[i] - t2[j]|)`` (for checks and small N)."""
        t1 = jnp.asarray(t1)
        t2 = t1 if t2 is None else jnp.asarray(t2)
        return self(jnp.abs(t1[:, None] - t2[None, :]))

    def __add__(self, other: Kernel) -> Kernel:
        if not isinstance(other, Kernel):
            return NotImplemented
        return Sum(self, other)

    def __mul__(self, other) -> Kernel:
        if isinstance(other, Kernel):
            return Product(self, other)
        return Scaled(self, _param(other, "scale"))

    __rmul__ = __mul__


# ----------------------------------------------------------------------------------
# Matérn family (half-integer orders) with closed-form discretisation
# ----------------------------------------------------------------------------------
def _nilpotent(p: int) -> np.ndarray:
    """``N`` with balanced ``F = lam (N - I)`` for Matérn nu = p + 1/2 (N^{p+1} = 0)."""
    d = p + 1
    coeffs = [math.comb(d, k) for k in range(d)]  # char. poly (s+1)^d = sum comb(d,k) s^k
    Fn = np.zeros((d, d))
    Fn[:-1, 1:] = np.eye(d - 1)
    Fn[-1, :] = -np.asarray(coeffs, float)
    return Fn + np.eye(d)


def _lower_gamma_regs(nmax: int, z, ez=None):
    """Regularised lower incomplete gammas ``[P(1, z), ..., P(nmax, z)]`` (integer orders),
    accurate for small ``z`` too; all orders share one set of Poisson terms.

    ``P(n, z) = sum_{j>=n} t_j`` with ``t_j = e^{-z} z^j / j!``: for ``z < 1`` the tail of
    ``P(nmax, z)`` by a 16-term Horner series (remainder below 1/17! relative) and the lower
    orders by adding ``t_n`` (positive terms only), else ``1 - sum_{j<n} t_j`` (no
    cancellation beyond ``P(n, 1) >= 1e-4`` for ``n <= 6``). One exponential for both
    (``ez = exp(-z)`` when the caller has it); the exponential and the series are
    materialised once (see :func:`_materialised`), so each output costs a few products.
    """
    small = z < 1.0
    ez = _materialised(jnp.exp(-z) if ez is None else ez, z)
    zs = jnp.where(small, z, 1.0)  # the series only where it is used (no overflow elsewhere)
    h = jnp.ones_like(zs)
    for j in range(nmax + 16, nmax, -1):
        h = 1.0 + h * (zs * (1.0 / j))
    h = _materialised(h, z)
    t = [ez]
    for j in range(1, nmax + 1):
        t.append(t[-1] * (z * (1.0 / j)))
    tails: list = [None] * (nmax + 1)
    tails[nmax] = t[nmax] * h
    for n in range(nmax - 1, 0, -1):
        tails[n] = tails[n + 1] + t[n]
    out, head = [], jnp.zeros_like(z)
    for n in range(1, nmax + 1):
        head = head + t[n - 1]
        out.append(jnp.where(small, tails[n], 1.0 - head))
    return out


def _materialised(v, ref):
    """``v`` unchanged, ending in a division by one (exact; ``ref`` only keeps the divisor
    from being folded at compile time): XLA:CPU does not fuse an expensive operation into
    a consumer that reads its elements repeatedly (a broadcast), so ``v`` is computed once
    instead of once per use."""
    return v / jnp.where(ref == ref, 1.0, 2.0).astype(v.dtype)


class _Matern(Kernel):
    lengthscale: Float[Array, ""]
    variance: Float[Array, ""]

    def __init__(self, lengthscale: ArrayLike = 1.0, variance: ArrayLike = 1.0):
        self.lengthscale = _param(lengthscale, "lengthscale")
        self.variance = _param(variance, "variance")

    order: eqx.AbstractClassVar[int]

    @property
    def rate(self):
        return math.sqrt(2 * self.order + 1) / self.lengthscale

    def _N(self):
        return jnp.asarray(_nilpotent(self.order), dtype=self.lengthscale.dtype)

    def feedback(self):
        d = self.order + 1
        return self.rate * (self._N() - jnp.eye(d, dtype=self._N().dtype))

    def stationary_cov(self):
        d = self.order + 1
        Fn = np.asarray(_nilpotent(self.order)) - np.eye(d)
        B = np.zeros((d, d))
        B[-1, -1] = 1.0
        P = _solve_lyap_np(Fn, B)
        P = P / P[0, 0]
        return self.variance * jnp.asarray(P, dtype=self.lengthscale.dtype)

    def observation(self):
        H = np.zeros((1, self.order + 1), self.lengthscale.dtype)
        H[0, 0] = 1.0
        return H

    def _coefficients(self):
        """NumPy constants: ``A = e^{-x} sum_k x^k Ak[k]`` and ``Q = s2 sum_n P(n+1, 2x) Qn[n]``
        (``x = lam dt``), i.e. ``Q = (b/lam) sum_{j,k} c_j c_k^T (j+k)!/2^{j+k+1} P(j+k+1, 2x)``
        grouped by ``n = j + k`` (no cancellation for small ``dt``)."""
        d = self.order + 1
        Nn = _nilpotent(self.order)
        Ak = [np.linalg.matrix_power(Nn, k) / math.factorial(k) for k in range(d)]
        Fn = Nn - np.eye(d)
        # Unit-rate Lyapunov solution; B = -(F P + P F^T) = variance * rate / Pu[0,0] e_d e_d^T.
        Pu = _solve_lyap_np(Fn, _unit(d))
        b = 1.0 / Pu[0, 0]
        cs = [np.linalg.matrix_power(Nn, k)[:, -1] / math.factorial(k) for k in range(d)]
        Qn = [np.zeros((d, d)) for _ in range(2 * d - 1)]
        for j in range(d):
            for k in range(d):
                n = j + k
                Qn[n] = Qn[n] + b * np.outer(cs[j], cs[k]) * math.factorial(n) / 2.0 ** (n + 1)
        return Ak, [0.5 * (q + q.T) for q in Qn]

    def transition(self, dt):
        return self.discretise(jnp.reshape(dt, (1,)))[0][0]

    def process_cov(self, dt):
        return self.discretise(jnp.reshape(dt, (1,)))[1][0]

    def transition_basis(self, dts: Float[Array, " n"]) -> TransitionBasis:
        """The closed forms of ``(A_k, Q_k)`` (see :meth:`_coefficients`) as a
        :class:`probdyn.ssm.TransitionBasis`: coefficients ``x^k e^{-x}`` and
        ``variance * P(n+1, 2x)`` (``x = lam dt``) of constant matrices."""
        Ak, Qn = self._coefficients()
        dtype = jnp.result_type(self.lengthscale, dts)
        x = (self.rate * jnp.asarray(dts)).astype(dtype)
        e = _materialised(jnp.exp(-x), x)
        cA = [e]
        for _ in range(1, len(Ak)):
            cA.append(cA[-1] * x)
        cQ = [self.variance * g for g in _lower_gamma_regs(len(Qn), 2.0 * x, e * e)]
        static = lambda M: tuple(tuple(float(v) for v in row) for row in M)  # noqa: E731
        return TransitionBasis(tuple(cA), tuple(cQ), tuple(map(static, Ak)), tuple(map(static, Qn)))

    def discretise(self, dts):
        """Closed forms of ``(A_k, Q_k)`` for a vector of steps, elementwise (see
        :meth:`_coefficients`)."""
        return self.transition_basis(dts).dense()


def _unit(d):
    B = np.zeros((d, d))
    B[-1, -1] = 1.0
    return B


def _solve_lyap_np(F, B):
    """Solve ``F P + P F^T + B = 0`` (NumPy, small d)."""
    d = F.shape[0]
    K = np.kron(np.eye(d), F) + np.kron(F, np.eye(d))
    P = np.linalg.solve(K, -B.reshape(-1)).reshape(d, d)
    return 0.5 * (P + P.T)


class Matern12(_Matern):
    r"""Matérn-1/2 (exponential / Ornstein–Uhlenbeck): ``k = s2 exp(-tau/l)``; state dim 1."""

    order: ClassVar[int] = 0
    __init__ = _Matern.__init__  # eqx keeps the parent's __init__; this tells type checkers

    @override
    def __call__(self, tau):
        return self.variance * jnp.exp(-jnp.abs(tau) / self.lengthscale)


class Matern32(_Matern):
    r"""Matérn-3/2: ``k = s2 (1 + r) exp(-r)``, ``r = sqrt(3) tau / l``; state ``(f, f'/lam)``."""

    order: ClassVar[int] = 1
    __init__ = _Matern.__init__  # eqx keeps the parent's __init__; this tells type checkers

    @override
    def __call__(self, tau):
        r = math.sqrt(3.0) * jnp.abs(tau) / self.lengthscale
        return self.variance * (1 + r) * jnp.exp(-r)


class Matern52(_Matern):
    r"""Matérn-5/2: ``k = s2 (1 + r + r^2/3) exp(-r)``, ``r = sqrt(5) tau / l``; state dim 3."""

    order: ClassVar[int] = 2
    __init__ = _Matern.__init__  # eqx keeps the parent's __init__; this tells type checkers

    @override
    def __call__(self, tau):
        r = math.sqrt(5.0) * jnp.abs(tau) / self.lengthscale
        return self.variance * (1 + r + r**2 / 3) * jnp.exp(-r)


# ----------------------------------------------------------------------------------
def _expm2(M):
    """Closed-form exponential of a real 2x2 matrix (batched over nothing)."""
    a, b, c, d = M[0, 0], M[0, 1], M[1, 0], M[1, 1]
    mu = 0.5 * (a + d)
    delta = (0.5 * (a - d)) ** 2 + b * c
    pos = delta >= 0
    s = jnp.sqrt(jnp.where(pos, delta, -delta))
    small = s < 1e-4
    ss = jnp.where(small, 1.0, s)
    # hyperbolic branch, written to avoid overflow of cosh when mu << 0
    ep, em = jnp.exp(mu + s), jnp.exp(mu - s)
    ch = 0.5 * (ep + em)
    sh_over_s = jnp.where(small, jnp.exp(mu) * (1 + s**2 / 6), 0.5 * (ep - em) / ss)
    # trigonometric branch
    co = jnp.exp(mu) * jnp.cos(s)
    si_over_s = jnp.where(small, jnp.exp(mu) * (1 - s**2 / 6), jnp.exp(mu) * jnp.sin(ss) / ss)
    c0 = jnp.where(pos, ch, co)
    c1 = jnp.where(pos, sh_over_s, si_over_s)
    eye = jnp.eye(2, dtype=M.dtype)
    return c0 * eye + c1 * (M - mu * eye)


class SHO(Kernel):
    r"""Stochastic harmonic oscillator ``f'' + (w/Q) f' + w^2 f = white noise``.

    ``k(0) = variance``; for ``Q > 1/2``, ``eta = sqrt(1 - 1/(4Q^2))``:
    ``k = s2 exp(-w tau/(2Q)) [cos(eta w tau) + sin(eta w tau)/(2 eta Q)]`` (the celerite /
    tinygp SHO with ``sigma^2 = variance``). State ``(f, f'/w)``.
    """

    omega: Float[Array, ""]
    quality: Float[Array, ""]
    variance: Float[Array, ""]

    def __init__(self, omega: ArrayLike = 1.0, quality: ArrayLike = 1.0, variance: ArrayLike = 1.0):
        self.omega = _param(omega, "omega")
        self.quality = _param(quality, "quality")
        self.variance = _param(variance, "variance")

    @override
    def __call__(self, tau):
        tau = jnp.abs(tau)
        w, Q = self.omega, self.quality
        f = jnp.exp(-w * tau / (2 * Q))
        e2 = 1 - 1 / (4 * Q**2)
        under = e2 > 0
        eta = jnp.sqrt(jnp.abs(e2))
        etas = jnp.where(eta > 1e-6, eta, 1.0)
        arg = eta * w * tau
        k_under = jnp.cos(arg) + jnp.sin(arg) / (2 * etas * Q)
        k_over = jnp.cosh(arg) + jnp.sinh(arg) / (2 * etas * Q)
        k_crit = 1 + w * tau
        k = jnp.where(eta > 1e-6, jnp.where(under, k_under, k_over), k_crit)
        return self.variance * f * k

    @override
    def feedback(self):
        w, Q = self.omega, self.quality
        return w * jnp.array([[0.0, 1.0], [-1.0, -1.0 / Q]], dtype=jnp.result_type(w, Q))

    @override
    def stationary_cov(self):
        return self.variance * jnp.eye(2, dtype=self.variance.dtype)

    @override
    def observation(self):
        return np.array([[1.0, 0.0]], dtype=self.variance.dtype)

    @override
    def transition(self, dt):
        return _expm2(self.feedback() * dt)


class Celerite(Kernel):
    r"""Celerite term ``k = exp(-c tau) [a cos(d tau) + b sin(d tau)]`` (needs ``a c > b d``).

    Valid (positive definite) when ``|b d| <= a c``. State-space form:
    ``F = [[-c, -d], [d, -c]]``, ``H = [1, 0]``, ``Pinf = [[a, -b], [-b, a (1 + 2 c^2 / d^2)]]``;
    the last entry maximises ``det(-(F P + P F^T))``, which is then non-negative for every
    valid parameter set.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]
    c: Float[Array, ""]
    d: Float[Array, ""]

    def __init__(self, a: ArrayLike, b: ArrayLike, c: ArrayLike, d: ArrayLike):
        self.a = _param(a, "a")
        self.b = _param(b, "b", positive=False)
        self.c = _param(c, "c", allow_zero=True)
        self.d = _param(d, "d", positive=False)

    @override
    def __call__(self, tau):
        tau = jnp.abs(tau)
        return jnp.exp(-self.c * tau) * (self.a * jnp.cos(self.d * tau) + self.b * jnp.sin(self.d * tau))

    @override
    def feedback(self):
        return jnp.array([[-self.c, -self.d], [self.d, -self.c]])

    @override
    def stationary_cov(self):
        dd = jnp.where(self.d == 0, 1.0, self.d)
        p22 = self.a * (1.0 + jnp.where(self.d == 0, 0.0, 2 * self.c**2 / dd**2))
        return jnp.array([[self.a, -self.b], [-self.b, p22]])

    @override
    def observation(self):
        return np.array([[1.0, 0.0]], dtype=jnp.result_type(self.a))

    @override
    def transition(self, dt):
        co, si = jnp.cos(self.d * dt), jnp.sin(self.d * dt)
        return jnp.exp(-self.c * dt) * jnp.array([[co, -si], [si, co]])


class Cosine(Kernel):
    r"""``k = variance cos(2 pi tau / period)`` (a deterministic rotation; ``Q = 0``)."""

    period: Float[Array, ""]
    variance: Float[Array, ""]

    def __init__(self, period: ArrayLike = 1.0, variance: ArrayLike = 1.0):
        self.period = _param(period, "period")
        self.variance = _param(variance, "variance")

    @override
    def __call__(self, tau):
        return self.variance * jnp.cos(2 * jnp.pi * tau / self.period)

    @override
    def feedback(self):
        f = 2 * jnp.pi / self.period
        return jnp.array([[0.0, -f], [f, 0.0]])

    @override
    def stationary_cov(self):
        return self.variance * jnp.eye(2, dtype=self.variance.dtype)

    @override
    def observation(self):
        return np.array([[1.0, 0.0]], dtype=self.variance.dtype)

    @override
    def transition(self, dt):
        f = 2 * jnp.pi / self.period
        co, si = jnp.cos(f * dt), jnp.sin(f * dt)
        return jnp.array([[co, -si], [si, co]])

    @override
    def process_cov(self, dt):
        return jnp.zeros((2, 2), self.variance.dtype)


def _log_ive_coeffs(z, J: int, terms: int = 256):
    """``log(exp(-z) I_j(z))`` for j = 0..J by the power series in log space."""
    m = jnp.arange(terms, dtype=z.dtype)
    js = jnp.arange(J + 1, dtype=z.dtype)[:, None]
    logt = (2 * m + js) * jnp.log(z / 2) - jax.scipy.special.gammaln(m + 1) - jax.scipy.special.gammaln(m + js + 1)
    return jax.scipy.special.logsumexp(logt, axis=1) - z


class Periodic(Kernel):
    r"""Periodic kernel ``k = s2 exp(-2 sin^2(pi tau / period) / l^2)``, state-space approximation.

    Uses the exact expansion ``exp(cos(w tau)/l^2) = I_0(l^-2) + 2 sum_j I_j(l^-2) cos(j w tau)``
    (Solin & Särkkä 2014) truncated at ``order`` harmonics, each a deterministic rotation,
    so ``k(tau)`` (``__call__``) is the *truncated* series that the state-space model
    represents exactly; :meth:`exact` is the untruncated kernel. The truncation error is
    below ``2 s2 sum_{j>order} exp(-z) I_j(z)``, ``z = l^-2`` (e.g. < 1.3e-6 s2 for l = 1,
    order = 6; < 1e-7 s2 for order = 7). State dim ``2 * order + 1``. Requires ``lengthscale >~ 0.1``.
    """

    period: Float[Array, ""]
    lengthscale: Float[Array, ""]
    variance: Float[Array, ""]
    order: int = eqx.field(static=True)

    def __init__(
        self, period: ArrayLike = 1.0, lengthscale: ArrayLike = 1.0, variance: ArrayLike = 1.0, order: int = 6
    ):
        self.period = _param(period, "period")
        self.lengthscale = _param(lengthscale, "lengthscale")
        self.variance = _param(variance, "variance")
        if int(order) < 0:
            raise ValueError("order must be >= 0")
        self.order = int(order)

    def _coeffs(self):
        z = 1.0 / self.lengthscale**2
        c = jnp.exp(_log_ive_coeffs(z, self.order))
        return self.variance * c * jnp.where(jnp.arange(self.order + 1) == 0, 1.0, 2.0)

    @override
    def __call__(self, tau):
        w = 2 * jnp.pi / self.period
        q = self._coeffs()
        j = jnp.arange(self.order + 1, dtype=q.dtype)
        return jnp.sum(q * jnp.cos(j * w * jnp.asarray(tau)[..., None]), axis=-1)

    def exact(self, tau):
        """The exact periodic covariance at lags ``tau`` (the state-space form truncates its series)."""
        return self.variance * jnp.exp(-2 * jnp.sin(jnp.pi * tau / self.period) ** 2 / self.lengthscale**2)

    def _blocks(self, fn):
        return block_diag(*[fn(j) for j in range(self.order + 1)])

    @override
    def feedback(self):
        w = 2 * jnp.pi / self.period

        def blk(j):
            if j == 0:
                return jnp.zeros((1, 1), w.dtype)
            return j * w * jnp.array([[0.0, -1.0], [1.0, 0.0]], dtype=w.dtype)

        return self._blocks(blk)

    @override
    def stationary_cov(self):
        q = self._coeffs()
        return jnp.diag(jnp.concatenate([q[:1], jnp.repeat(q[1:], 2)]))

    @override
    def observation(self):
        h = np.zeros((1, 2 * self.order + 1))
        h[0, 0] = 1.0
        h[0, 1::2] = 1.0
        return h.astype(self.variance.dtype)

    @override
    def transition(self, dt):
        w = 2 * jnp.pi / self.period

        def blk(j):
            if j == 0:
                return jnp.ones((1, 1), w.dtype)
            co, si = jnp.cos(j * w * dt), jnp.sin(j * w * dt)
            return jnp.array([[co, -si], [si, co]])

        return self._blocks(blk)

    @override
    def process_cov(self, dt):
        d = 2 * self.order + 1
        return jnp.zeros((d, d), self.variance.dtype)


class Constant(Kernel):
    """``k = variance`` (a random constant offset); state dim 1, ``Q = 0``."""

    variance: Float[Array, ""]

    def __init__(self, variance: ArrayLike = 1.0):
        self.variance = _param(variance, "variance")

    @override
    def __call__(self, tau):
        return self.variance * jnp.ones_like(jnp.asarray(tau, dtype=self.variance.dtype))

    @override
    def feedback(self):
        return jnp.zeros((1, 1), self.variance.dtype)

    @override
    def stationary_cov(self):
        return self.variance.reshape(1, 1)

    @override
    def observation(self):
        return np.ones((1, 1), self.variance.dtype)

    @override
    def transition(self, dt):
        return jnp.ones((1, 1), self.variance.dtype)

    @override
    def process_cov(self, dt):
        return jnp.zeros((1, 1), self.variance.dtype)


# ----------------------------------------------------------------------------------
class Sum(Kernel):
    """``k1 + k2``: block-diagonal state, ``H = [H1, H2]``."""

    k1: Kernel
    k2: Kernel

    @override
    def __call__(self, tau):
        return self.k1(tau) + self.k2(tau)

    @override
    def feedback(self):
        return block_diag(self.k1.feedback(), self.k2.feedback())

    @override
    def stationary_cov(self):
        return block_diag(self.k1.stationary_cov(), self.k2.stationary_cov())

    @override
    def observation(self):
        return np.concatenate([self.k1.observation(), self.k2.observation()], axis=1)

    @override
    def transition(self, dt):
        return block_diag(self.k1.transition(dt), self.k2.transition(dt))

    @override
    def process_cov(self, dt):
        return block_diag(self.k1.process_cov(dt), self.k2.process_cov(dt))


class Product(Kernel):
    """``k1 * k2``: Kronecker state, ``F = F1 (+) F2``, ``A = A1 (x) A2``, ``P = P1 (x) P2``."""

    k1: Kernel
    k2: Kernel

    @override
    def __call__(self, tau):
        return self.k1(tau) * self.k2(tau)

    @override
    def feedback(self):
        F1, F2 = self.k1.feedback(), self.k2.feedback()
        I1, I2 = jnp.eye(F1.shape[0], dtype=F1.dtype), jnp.eye(F2.shape[0], dtype=F2.dtype)
        return kron(F1, I2) + kron(I1, F2)

    @override
    def stationary_cov(self):
        return kron(self.k1.stationary_cov(), self.k2.stationary_cov())

    @override
    def observation(self):
        return np.kron(self.k1.observation(), self.k2.observation())

    @override
    def transition(self, dt):
        return kron(self.k1.transition(dt), self.k2.transition(dt))

    def process_cov(self, dt):
        """``Q = Q1 (x) P2 + (A1 P1 A1^T) (x) Q2``: equal to ``P - A P A^T`` in exact
        arithmetic, but a sum of two positive semi-definite terms built from the factors'
        own (accurate) process noise, so short steps do not lose it to cancellation against
        ``P`` (which leaves ``Q`` indefinite by ~``eps |P|`` in float64, and is all rounding
        error in float32 for ``dt <~ 1e-4``). ``dt = 0``: exactly 0 when the factors' are."""
        A1, P1 = self.k1.transition(dt), self.k1.stationary_cov()
        M1 = symmetrize(A1 @ P1 @ A1.T)
        return symmetrize(kron(self.k1.process_cov(dt), self.k2.stationary_cov()) + kron(M1, self.k2.process_cov(dt)))


class Scaled(Kernel):
    """``scale * k`` for a positive scalar ``scale``."""

    kernel: Kernel
    scale: Float[Array, ""]

    @override
    def __call__(self, tau):
        return self.scale * self.kernel(tau)

    @override
    def feedback(self):
        return self.kernel.feedback()

    @override
    def stationary_cov(self):
        return self.scale * self.kernel.stationary_cov()

    @override
    def observation(self):
        return self.kernel.observation()

    @override
    def transition(self, dt):
        return self.kernel.transition(dt)

    @override
    def process_cov(self, dt):
        return self.scale * self.kernel.process_cov(dt)


# ----------------------------------------------------------------------------------
def from_tinygp(kernel) -> Kernel:
    """Build the equivalent probdyn kernel from a ``tinygp.kernels.quasisep`` kernel.

    Supported: ``Matern32``, ``Matern52``, ``Exp`` (-> :class:`Matern12`), ``SHO``,
    ``Celerite``, ``Cosine``, ``Scale``, ``Sum``, ``Product`` (recursively).
    tinygp keeps the amplitude ``sigma`` in the observation model and uses the transpose
    of the physical transition matrix; probdyn kernels put ``sigma^2`` in the stationary
    covariance and use the physical ``A = expm(F dt)``. Only the covariance function is
    carried over, which is what both libraries define.
    """
    from tinygp.kernels import quasisep as qs

    def s2(k):
        return jnp.asarray(k.sigma) ** 2

    if isinstance(kernel, qs.Matern32):
        return Matern32(kernel.scale, s2(kernel))
    if isinstance(kernel, qs.Matern52):
        return Matern52(kernel.scale, s2(kernel))
    if isinstance(kernel, qs.Exp):
        return Matern12(kernel.scale, s2(kernel))
    if isinstance(kernel, qs.SHO):
        return SHO(kernel.omega, kernel.quality, s2(kernel))
    if isinstance(kernel, qs.Celerite):
        return Celerite(kernel.a, kernel.b, kernel.c, kernel.d)
    if isinstance(kernel, qs.Cosine):
        return Cosine(kernel.scale, s2(kernel))
    if isinstance(kernel, qs.Scale):
        return Scaled(from_tinygp(kernel.kernel), jnp.asarray(kernel.scale))
    if isinstance(kernel, qs.Sum):
        return Sum(from_tinygp(kernel.kernel1), from_tinygp(kernel.kernel2))
    if isinstance(kernel, qs.Product):
        return Product(from_tinygp(kernel.kernel1), from_tinygp(kernel.kernel2))
    raise TypeError(f"cannot convert tinygp kernel of type {type(kernel).__name__} to probdyn")
