r"""The linear-Gaussian state-space engine: filter, RTS smoother, sampler, log-likelihood.

Everything in probdyn that needs a Kalman recursion calls this module. Model (see
:class:`probdyn.ssm.LinearGaussianSSM`)

.. math::
    x_0 \sim N(\mu_0, P_0),\quad x_t = A_t x_{t-1} + q_t,\quad y_t = H_t x_t + r_t .

Two schedules give the same numbers:

* **sequential** (``lax.scan``), entirely in square-root (Cholesky) form: the filter
  propagates ``(m, S)`` with ``P = S S^T`` via :func:`predict`/:func:`update`, which only
  ever triangularise stacked square roots (:func:`probdyn.linalg.tria`);
* **parallel-in-time** (``lax.associative_scan``; Särkkä & García-Fernández, IEEE TAC 2021):
  the filter composes the paper's elements in square-root form ``(A, b, U, eta, Z)``,
  ``C = U U^T``, ``J = Z Z^T`` (Yaghoobi, Corenflos, Hassan & Särkkä 2022), so its factors
  keep the sequential filter's relative precision; the smoother composes the
  Bryson–Frazier adjoint recursion (:func:`_adjoint_elements`: products of closed-loop
  filter transitions, which contract, where products of RTS gains can grow geometrically),
  and the sampler the same square-root backward kernels as the sequential path.

``parallel=None`` picks the parallel schedule on GPU/TPU and the sequential one on CPU.

Missing data are NaN: a NaN row skips the update; NaN entries of a multivariate
observation are dropped from that update (the observed part is used). The trick is
applied once, in :func:`update`: missing entries get a zero row in ``H``, zero correlation
and unit variance, and the constant they would add to the log-likelihood is removed.

The backward kernel ``x_t | x_{t+1}, y_{0:t} ~ N(G_t x_{t+1} + g_t, D_t D_t^T)`` is computed
once from the filter output (:func:`backward_kernels`); the RTS smoother and the
forward-filter backward-sampler are two ways of composing it.

Length: one concept (the linear-Gaussian engine, sequential and parallel-in-time), kept in
one module although it runs past 600 lines.
"""

from __future__ import annotations

import math
from typing import NamedTuple, SupportsInt

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probdyn._checks import check_observations, is_concrete
from probdyn._typing import ArrayInput, Key
from probdyn.inference import fused
from probdyn.linalg import psd_cholesky, psd_ldl, solve_lower, solve_upper_t, symmetrize, tria, tria_batched
from probdyn.ssm import LinearGaussianSSM, TransitionBasis, check_positive_int

__all__ = [
    "FilterResult",
    "SmootherResult",
    "filter",
    "smoother",
    "sample",
    "log_likelihood",
    "pointwise_log_likelihood",
    "predict",
    "update",
    "backward_kernels",
    "rts_smooth",
    "use_parallel",
    "schedule",
    "FORMS",
    "simulate_chain",
    "static_emission",
]

_LOG2PI = math.log(2 * math.pi)


class FilterResult(NamedTuple):
    """Filtered marginals ``p(x_t | y_{0:t})``: mean (T, d), cov (T, d, d), chol (T, d, d)."""

    mean: Float[Array, "T d"]
    cov: Float[Array, "T d d"]
    log_likelihood: Float[Array, ""]
    chol: Float[Array, "T d d"]


class SmootherResult(NamedTuple):
    """Smoothed marginals ``p(x_t | y_{0:T-1})``: mean (T, d), cov (T, d, d)."""

    mean: Float[Array, "T d"]
    cov: Float[Array, "T d d"]
    log_likelihood: Float[Array, ""]
    filtered: FilterResult


# ----------------------------------------------------------------------------------
# Primitives (square-root form); also used by the nonlinear Gaussian filters
# ----------------------------------------------------------------------------------
def predict(m, S, A, SQ, b=None):
    """Square-root prediction: ``m' = A m + b``, ``S' = tria([A S, SQ])``.

    Shapes: m (d,), S (d, d) lower, A (d, d), SQ (d, q) any square root of Q, b (d,).
    """
    mp = A @ m if b is None else A @ m + b
    return mp, tria(jnp.concatenate([A @ S, SQ], axis=1))


def simulate_chain(
    x0: Float[Array, " d"],
    transition,
    noise_chol: Float[Array, "... d m"],
    eps: Float[Array, "K m"],
) -> Float[Array, "K1 d"]:
    """Forward simulation of a Markov chain with additive Gaussian noise,
    ``x_{k+1} = f_k(x_k) + L_k eps_k``, from ``x0`` (d,) for ``K = eps.shape[0]`` steps.

    ``transition`` is ``(F (K, d, d), g (K, d))`` for the Gauss–Markov chain
    ``f_k(x) = F_k x + g_k``, or a callable ``f(x (d,), k) -> (d,)``; ``noise_chol`` ``L`` is
    (d, m) or (K, d, m); ``eps`` (K, m) standard-normal draws (the caller's keys, so each
    caller keeps its random stream). Returns the path (K + 1, d) including ``x0``. The one
    forward sampler of probdyn's chains (SDE posteriors, discrete filter distributions);
    ``vmap`` it over draws.
    """
    x0 = jnp.asarray(x0)
    L = jnp.asarray(noise_chol, x0.dtype)
    K = eps.shape[0]
    if callable(transition):
        f = transition
    else:
        F, g = transition

        def f(x, k):
            return F[k] @ x + g[k]

    def step(x, inp):
        k, e = inp
        Lk = L[k] if L.ndim == 3 else L
        xn = f(x, k).astype(x0.dtype) + Lk @ e
        return xn, xn

    _, xs = jax.lax.scan(step, x0, (jnp.arange(K), eps.astype(x0.dtype)))
    return jnp.concatenate([x0[None], xs])


def _update_stack(S, H, SR, y):
    """The stacked square roots an update triangularises, and the masked observation.

    ``[[Hm S, SR_m, I_miss], [S, 0, 0]]`` (p + d, d + 2p), where NaN entries of ``y`` get a
    zero row ``Hm`` of ``H``, a zero row of ``SR`` and a unit innovation factor. Its
    triangularisation ``[[Sy, 0], [Kb, S_new]]`` gives the innovation factor ``Sy``
    (``Sy Sy^T = H P H^T + R``), ``Kb = P H^T Sy^{-T}`` and the updated factor. Returns
    (Phi, Hm (p, d), y0 (p,) with zeros at NaNs, mask (p,)).
    """
    p, d = H.shape
    mask = ~jnp.isnan(y)
    mf = mask.astype(S.dtype)
    Hm = H * mf[:, None]
    top = jnp.concatenate([Hm @ S, SR * mf[:, None], jnp.diag(1.0 - mf)], axis=1)
    bot = jnp.concatenate([S, jnp.zeros((d, 2 * p), S.dtype)], axis=1)
    return jnp.concatenate([top, bot], axis=0), Hm, jnp.where(mask, y, 0.0), mask


def update(m, S, H, SR, y, offset=None):
    """Square-root measurement update with NaN-missing entries.

    Shapes: m (d,), S (d, d), H (p, d), SR (p, p) lower square root of R, y (p,), offset
    (p,) added to ``H m``. Returns ``(m_new, S_new, log N(y | H m + offset, H P H^T + R))``
    where the log density only counts observed entries. An observed entry with a zero
    pivot of the innovation factor (zero predictive variance) is a point mass at its
    prediction: it adds 0 if the residual it leaves is exactly 0, else the log density is
    ``-inf`` (never the ``+inf`` of ``-log 0``).
    """
    p = H.shape[0]
    Phi, Hm, y0, mask = _update_stack(S, H, SR, y)
    maskf = mask.astype(m.dtype)
    pred = Hm @ m if offset is None else Hm @ m + jnp.where(mask, offset, 0.0)
    Psi = tria(Phi)
    Sy, Kb, S_new = Psi[:p, :p], Psi[p:, :p], Psi[p:, p:]
    e = y0 - pred
    z = solve_lower(Sy, e)
    m_new = m + Kb @ z
    dg = jnp.abs(jnp.diag(Sy))
    point = mask & (dg == 0)  # zero pivots: solve_lower gave z = 0 there
    r = jnp.where(point, e - Sy @ z, 0.0)  # what the zero pivots leave unexplained
    logdet = jnp.sum(jnp.log(jnp.where(point, 1.0, dg)))
    ll = -0.5 * jnp.sum(z * z) - logdet - 0.5 * jnp.sum(jnp.where(point, 0.0, maskf)) * _LOG2PI
    # -inf for a nonzero remainder; 0 * max|r| keeps a NaN residual NaN
    return m_new, S_new, jnp.where(jnp.any(r != 0), -jnp.inf, ll) + 0 * jnp.max(jnp.abs(r))


# ----------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------
def use_parallel(parallel: bool | None) -> bool:
    """Resolve ``parallel=None`` to the backend default (parallel on GPU/TPU)."""
    if parallel is None:
        return jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")
    return bool(parallel)


FORMS = ("auto", "fused", "matrix", "parallel")


def schedule(form: str = "auto", parallel: bool | None = None) -> str:
    """The schedule of the Kalman entry points, resolved from their ``form`` and ``parallel``.

    * ``"parallel"``: square-root associative scans (parallel in time; O(log T) depth);
    * ``"fused"``: the sequential scan with the fused small-state step (:mod:`fused`), which
      needs ``d + p <= FUSED_MAX_DIM`` and a full-rank ``transition_cov`` factor
      (``ValueError`` otherwise);
    * ``"matrix"``: the sequential scan with the generic square-root step (any size);
    * ``"auto"`` (default): ``parallel`` decides (``None``: parallel on GPU/TPU), and a
      sequential run uses the fused step where it applies, else the matrix step.

    ``parallel=True``/``False`` is the shorthand of the default form; with an explicit
    ``form`` it must agree (``ValueError``). Returns ``"parallel"``, ``"fused"``,
    ``"matrix"`` or ``"sequential"`` (sequential, fused where it applies)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "auto":
        return "parallel" if use_parallel(parallel) else "sequential"
    if parallel is not None and bool(parallel) != (form == "parallel"):
        raise ValueError(f"form={form!r} contradicts parallel={parallel}; give one of them")
    return form


def _prepare(ssm: LinearGaussianSSM, y):
    if not isinstance(ssm, LinearGaussianSSM):
        raise TypeError(f"expected a LinearGaussianSSM, got {type(ssm).__name__}")
    y = jnp.asarray(y)
    if y.ndim == 1 and ssm.obs_dim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != ssm.obs_dim:
        raise ValueError(f"y must have shape (T, {ssm.obs_dim}) (time leading), got {y.shape}")
    if y.shape[0] < 1:
        raise ValueError("y must contain at least one time step")
    y = check_observations(y)
    dtype = jnp.result_type(ssm.initial_mean, ssm.transition_matrix, ssm.emission_matrix, y)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    covs = [ssm.initial_cov, ssm.emission_cov] + ([ssm.transition_cov] if ssm.transition_basis is None else [])
    if not all(is_concrete(c) for c in covs):
        # The NaN contract of traced inputs (see filter): the semi-definite factorisations'
        # pivot rule would drop a NaN pivot silently, so a non-finite covariance entry makes
        # the initial mean, hence every mean and log-likelihood, NaN. 0 * max|C| is 0 for a
        # finite C, NaN otherwise (a max, not a sum: no overflow). Concrete arrays were
        # checked when the model was built.
        z = jnp.asarray(sum(0 * jnp.max(jnp.abs(jnp.asarray(c)), initial=0) for c in covs))
        ssm = eqx.tree_at(lambda s: s.initial_mean, ssm, jnp.asarray(ssm.initial_mean, dtype) + z.astype(dtype))
    return ssm, y.astype(dtype), dtype


class _Arrays(NamedTuple):
    m0: Array
    S0: Array
    A: Array  # (T-1, d, d) or (d, d)
    SQ: Array
    H: Array  # (T, p, d) or (p, d)
    SR: Array
    tv_trans: bool
    tv_emis: bool
    H_static: tuple | None = None  # a constant emission matrix, compiled into the fused step
    Q: Array | None = None  # the covariances themselves (the fused filter factorises them as L D L^T)
    R: Array | None = None
    basis: TransitionBasis | None = None  # (A, Q) in coefficient form, read by the fused filter


def static_emission(ssm: LinearGaussianSSM):
    """The emission matrix as nested tuples of floats when it is a concrete, time-invariant,
    small array (e.g. a kernel's ``H``), else ``None``."""
    H = ssm.emission_matrix
    if not is_concrete(H) or np.ndim(H) != 2 or np.size(H) > 64:
        return None
    return tuple(tuple(float(v) for v in row) for row in np.asarray(H))


def _arrays(ssm: LinearGaussianSSM, T: int, dtype, H_static=None) -> _Arrays:
    c = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    A, Q, H, R = c(ssm.transition_matrix), c(ssm.transition_cov), c(ssm.emission_matrix), c(ssm.emission_cov)
    tv_t, tv_e = A.ndim == 3 or Q.ndim == 3, H.ndim == 3 or R.ndim == 3
    if tv_t:
        A = jnp.broadcast_to(A, (T - 1,) + A.shape[-2:]) if A.ndim == 2 else A
        Q = jnp.broadcast_to(Q, (T - 1,) + Q.shape[-2:]) if Q.ndim == 2 else Q
        if A.shape[0] != T - 1 or Q.shape[0] != T - 1:
            raise ValueError(f"time-varying transition arrays need leading axis T-1={T - 1}, got {A.shape}, {Q.shape}")
        SQ = jax.vmap(psd_cholesky)(Q)
    else:
        SQ = psd_cholesky(Q)
    if tv_e:
        H = jnp.broadcast_to(H, (T,) + H.shape[-2:]) if H.ndim == 2 else H
        R = jnp.broadcast_to(R, (T,) + R.shape[-2:]) if R.ndim == 2 else R
        if H.shape[0] != T or R.shape[0] != T:
            raise ValueError(f"time-varying emission arrays need leading axis T={T}, got {H.shape}, {R.shape}")
        SR = jax.vmap(psd_cholesky)(R)
    else:
        SR = psd_cholesky(R)
    basis = None if ssm.transition_basis is None else jax.tree.map(c, ssm.transition_basis)
    return _Arrays(
        c(ssm.initial_mean),
        psd_cholesky(c(ssm.initial_cov)),
        A,
        SQ,
        H,
        SR,
        tv_t,
        tv_e,
        None if tv_e else H_static,
        Q,
        R,
        basis,
    )


def _trans(arr: _Arrays, t):
    """Transition pieces mapping x_t -> x_{t+1}, as (A, SQ); t may be an index array."""
    if arr.tv_trans:
        return arr.A[t], arr.SQ[t]
    return arr.A, arr.SQ


def _emis(arr: _Arrays, t):
    if arr.tv_emis:
        return arr.H[t], arr.SR[t]
    return arr.H, arr.SR


# ----------------------------------------------------------------------------------
# Filtering
# ----------------------------------------------------------------------------------
REMAT_MIN_STEPS = 2_000_000
"""Matrix-form sequential scans longer than this run as ``sqrt(T)`` chunks whose bodies are
rematerialised under differentiation (``jax.checkpoint``): the reverse pass of the
log-likelihood gradient then stores O(sqrt(T)) step residuals instead of O(T), at the
cost of one extra forward pass. Forward-only calls are unaffected. Measured (Matern-5/2,
T = 1e6, CPU): XLA temporaries of the gradient 1964 MB with chunking vs 2684 MB without,
but 48 s instead of 16 s, because the per-step inputs (discretised transitions) dominate
memory; hence the high default threshold. The fused form (small models) needs no chunking:
its custom reverse-mode rule stores only the packed states (see :mod:`fused`)."""


def _scan(body, carry, xs):
    """``lax.scan(body, carry, xs)``; long scans are chunked and checkpointed.

    Above :data:`REMAT_MIN_STEPS` steps the scan runs as ``sqrt(T)`` chunks whose bodies
    are rematerialised under differentiation (see there).
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    if n <= REMAT_MIN_STEPS:
        return jax.lax.scan(body, carry, xs)
    C = int(math.ceil(math.sqrt(n)))
    nc = -(-n // C)
    pad = nc * C - n
    live = jnp.arange(nc * C) < n
    xs_p = jax.tree.map(
        lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]).reshape((nc, C) + a.shape[1:]), xs
    )
    live = live.reshape(nc, C)

    def masked(c, inp):  # padded steps leave the carry unchanged
        ok, x = inp
        c2, out = body(c, x)
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), c2, c), out

    @jax.checkpoint
    def chunk(c, inp):
        return jax.lax.scan(masked, c, inp)

    carry, outs = jax.lax.scan(chunk, carry, (live, xs_p))
    if outs is not None:
        outs = jax.tree.map(lambda a: a.reshape((nc * C,) + a.shape[2:])[:n], outs)
    return carry, outs


def _use_fused(arr: _Arrays, form: str = "sequential") -> bool:
    """Whether a sequential run of schedule ``form`` uses the fused step (see :func:`schedule`)."""
    d, p = arr.m0.shape[0], arr.H.shape[-2]
    fits = d + p <= fused.FUSED_MAX_DIM and arr.SQ.shape[-1] == d
    if form == "fused" and not fits:
        raise ValueError(
            f"form='fused' needs state + observation dimension <= {fused.FUSED_MAX_DIM} and a full-rank "
            f"transition_cov factor, got d={d}, p={p}, factor columns {arr.SQ.shape[-1]}; use form='matrix'"
        )
    return fits and form != "matrix"


def _ldl(C, n):
    """``(L, D)`` with ``C = L diag(D) L^T`` for (n, k, k) covariances (or one (k, k),
    broadcast to n)."""
    L, D = psd_ldl(C)
    if L.ndim == 2:
        L, D = jnp.broadcast_to(L, (n,) + L.shape), jnp.broadcast_to(D, (n,) + D.shape)
    return L, D


def _fused_inputs(arr: _Arrays, y):
    """Packed per-step inputs for t = 1..T-1 and the t = 0 state (see :mod:`fused`)."""
    T, d = y.shape[0], arr.m0.shape[0]
    p = y.shape[1]
    b = arr.basis
    lay = fused.Layout(d, p, arr.H_static, None if b is None else (b.basis_a, b.basis_q))
    n = T - 1
    H = arr.H if arr.H.ndim == 3 else jnp.broadcast_to(arr.H, (T,) + arr.H.shape)
    LR, DR = _ldl(arr.R, T)
    if b is None:
        A = arr.A if arr.A.ndim == 3 else jnp.broadcast_to(arr.A, (n,) + arr.A.shape)
        trans = fused.transition_columns(lay, A, *_ldl(arr.Q, n))
    else:
        trans = list(b.a) + list(b.q)
    X = fused.pack_inputs(lay, trans, y[1:], H[1:], LR[1:], DR[1:])
    z = [jnp.zeros((1,), y.dtype)] * lay.transition_size  # t = 0 has no transition
    x0 = [c[0] for c in fused.pack_inputs(lay, z, y[:1], H[:1], LR[:1], DR[:1])]
    return lay, fused.first_state(lay, arr.m0, arr.S0, x0), X


def _filter_sequential(arr: _Arrays, y, keep: bool = True, form: str = "sequential"):
    if _use_fused(arr, form):
        lay, s0, X = _fused_inputs(arr, y)
        if not keep:
            return None, None, fused.filter_last(lay, s0, X, fused.finite_guard(y))[-1]
        ms, Ss, lls = fused.unpack_states(lay, fused.filter_states(lay, s0, X, fused.finite_guard(y)))
        return ms, Ss, lls[-1]
    H0, SR0 = _emis(arr, 0)
    m, S, ll = update(arr.m0, arr.S0, H0, SR0, y[0])

    def step(carry, t):
        m, S, ll = carry
        A, SQ = _trans(arr, t - 1)
        H, SR = _emis(arr, t)
        mp, Sp = predict(m, S, A, SQ)
        mf, Sf, l = update(mp, Sp, H, SR, y[t])
        return (mf, Sf, ll + l), ((mf, Sf) if keep else None)

    (_, _, ll), outs = _scan(step, (m, S, ll), jnp.arange(1, y.shape[0]))
    if not keep:
        return None, None, ll
    ms, Ss = outs  # pyright: ignore[reportGeneralTypeIssues]  (keep=True: the scan stacked them)
    ms = jnp.concatenate([m[None], ms], axis=0)
    Ss = jnp.concatenate([S[None], Ss], axis=0)
    return ms, Ss, ll


def _tria_any(M):
    """:func:`tria` over leading batch axes: batched MGS for small blocks, LAPACK QR else."""
    return tria_batched(M) if M.shape[-2] <= 16 else jnp.vectorize(tria, signature="(n,k)->(n,n)")(M)


def _square_factor(M):
    """A (d, d) factor with the product ``M M^T`` of a (d, k) factor ``M``."""
    d, k = M.shape
    return M if k == d else (jnp.pad(M, ((0, 0), (0, d - k))) if k < d else _tria_any(M))


def _filter_elements(arr: _Arrays, y):
    r"""Square-root filtering elements ``(A, b, U, eta, Z)`` (T, ...), ``C = U U^T``, ``J = Z Z^T``.

    Element t >= 1 is Särkkä & García-Fernández's (2021, Lemma 7) ``p(x_t | x_{t-1}, y_t) =
    N(A x_{t-1} + b, C)`` and ``p(y_t | x_{t-1}) \propto N_I(x_{t-1}; eta, J)``, in the
    square-root form of Yaghoobi et al. (2022): from ``tria([[H SQ, SR], [SQ, 0]]) =
    [[Psi11, 0], [Psi21, Psi22]]`` (``Psi11 Psi11^T = H Q H^T + R``, ``Psi21 = Q H^T
    Psi11^{-T}``), with ``W = Psi11^{-1} H F`` and ``z = Psi11^{-1} y``:
    ``A = F - Psi21 W``, ``b = Psi21 z``, ``U = Psi22``, ``Z = W^T``, ``eta = W^T z``.
    Missing entries get a zero row of ``H`` and a unit innovation factor (as :func:`update`);
    Element 0 is the filtered ``x_0`` itself: ``(0, m_0, S_0, 0, 0)``. Returns the elements
    (A, U, Z (T, d, d); b, eta (T, d)) and a flag: some observed entry at t >= 1 has zero
    variance given ``x_{t-1}`` (a zero pivot of ``Psi11`` up to round-off, e.g. ``R = 0``
    and no process noise along ``H``). Such an observation is an exact constraint on
    ``x_{t-1}`` (infinite ``J``), which the elements cannot represent; the caller then
    runs the sequential filter.
    """
    T, d = y.shape[0], arr.m0.shape[0]
    p = y.shape[1]
    dtype = arr.m0.dtype

    def elem(t):
        F, SQ = _trans(arr, t - 1)
        H, SR = _emis(arr, t)
        Phi, Hm, y0, mask = _update_stack(SQ, H, SR, y[t])
        Psi = _tria_any(Phi)
        P11, P21, P22 = Psi[:p, :p], Psi[p:, :p], Psi[p:, p:]
        W = solve_lower(P11, Hm @ F)  # (p, d)
        z = solve_lower(P11, y0)
        Z = _square_factor(W.T)
        # an observed entry whose innovation pivot is zero up to the round-off of H SQ
        scale = jnp.linalg.norm(H, axis=1) * jnp.linalg.norm(SQ) + jnp.linalg.norm(SR, axis=1)
        exact = mask & (jnp.diagonal(P11) <= 16 * jnp.finfo(dtype).eps * scale)
        return (F - P21 @ W, P21 @ z, P22, W.T @ z, Z), jnp.any(exact)

    els, exact = jax.vmap(elem)(jnp.arange(1, T))
    H0, SR0 = _emis(arr, 0)
    m0, S0, _ = update(arr.m0, arr.S0, H0, SR0, y[0])
    zero = jnp.zeros((1, d, d), dtype)
    first = (zero, m0[None], S0[None], jnp.zeros((1, d), dtype), zero)
    return tuple(jnp.concatenate([f, e], axis=0) for f, e in zip(first, els)), jnp.any(exact)


def _filter_combine(ei, ej):
    r"""Associative combine of square-root filtering elements (``ei`` earlier, ``ej`` later).

    The covariance-form combine (Särkkä & García-Fernández 2021, Lemma 8) with
    ``M = I + C_i J_j`` written through one triangularisation, never forming a covariance:
    ``tria([[Z_j^T U_i, I], [U_i, 0]]) = [[T11, 0], [T21, T22]]`` gives ``T11 T11^T = I +
    Z_j^T C_i Z_j`` (so ``T11`` is well conditioned), ``M^{-1} = I - T21 X`` with ``X =
    T11^{-1} Z_j^T``, ``T22 T22^T = M^{-1} C_i``. Then ``A = A_j M^{-1} A_i``,
    ``b = A_j M^{-1} (b_i + C_i eta_j) + b_j``, ``U = tria([A_j T22, U_j])``,
    ``eta = A_i^T M^{-T} (eta_j - J_j b_i) + eta_i``, ``Z = tria([A_i^T X^T, Z_i])``
    (``J_j M^{-1} = X^T X``). Batched over leading axes.
    """
    Ai, bi, Ui, etai, Zi = ei
    Aj, bj, Uj, etaj, Zj = ej
    d = Ai.shape[-1]
    mT = lambda x: jnp.swapaxes(x, -1, -2)  # noqa: E731
    mv = lambda M, v: jnp.einsum("...ij,...j->...i", M, v)  # noqa: E731
    eye = jnp.broadcast_to(jnp.eye(d, dtype=Ai.dtype), Ai.shape)
    Phi = jnp.concatenate([jnp.concatenate([mT(Zj) @ Ui, eye], -1), jnp.concatenate([Ui, jnp.zeros_like(Ui)], -1)], -2)
    Th = _tria_any(Phi)
    T11, T21, T22 = Th[..., :d, :d], Th[..., d:, :d], Th[..., d:, d:]
    X = jnp.vectorize(solve_lower, signature="(n,n),(n,k)->(n,k)")(T11, mT(Zj))  # T11^{-1} Z_j^T
    AjMinv = Aj - (Aj @ T21) @ X
    Ci_etaj = mv(Ui, mv(mT(Ui), etaj))
    bij = mv(AjMinv, bi + Ci_etaj) + bj
    r = etaj - mv(Zj, mv(mT(Zj), bi))  # eta_j - J_j b_i
    etaij = mv(mT(Ai), r - mv(mT(X), mv(mT(T21), r))) + etai  # M^{-T} = I - X^T T21^T
    # U and Z in one batched triangularisation (half the program of two)
    UZ = _tria_any(jnp.stack([jnp.concatenate([Aj @ T22, Uj], -1), jnp.concatenate([mT(Ai) @ mT(X), Zi], -1)]))
    return AjMinv @ Ai, bij, UZ[0], etaij, UZ[1]


def _predictive_logliks(arr: _Arrays, y, ms, Ss):
    """One-step predictive log densities ``log p(y_t | y_{0:t-1})`` (T,) from filtered
    marginals ``N(ms[t], Ss[t] Ss[t]^T)`` (square-root predict + update, as the sequential
    filter)."""
    T = y.shape[0]
    H0, SR0 = _emis(arr, 0)
    ll0 = update(arr.m0, arr.S0, H0, SR0, y[0])[2]
    if T == 1:
        return ll0[None]

    def one(t):
        A, SQ = _trans(arr, t - 1)
        H, SR = _emis(arr, t)
        mp, Sp = predict(ms[t - 1], Ss[t - 1], A, SQ)
        return update(mp, Sp, H, SR, y[t])[2]

    return jnp.concatenate([ll0[None], jax.vmap(one)(jnp.arange(1, T))])


def _filter_parallel(arr: _Arrays, y):
    """Square-root parallel-in-time filter: returns means (T, d), lower Cholesky factors
    (T, d, d) and the log-likelihood. The scan composes :func:`_filter_elements` with
    :func:`_filter_combine`; the ``U`` factor of each prefix is the filtered square root, a
    :func:`tria` output (lower triangular, non-negative diagonal) like the sequential one."""
    els, exact = _filter_elements(arr, y)
    _, ms, Ss, _, _ = jax.lax.associative_scan(_filter_combine, els)
    ll = jnp.sum(_predictive_logliks(arr, y, ms, Ss))
    # an observation the elements cannot represent (an exact constraint on x_{t-1}, see
    # _filter_elements): the sequential schedule, which handles it (under vmap both run)
    return jax.lax.cond(exact, lambda: _filter_sequential(arr, y), lambda: (ms, Ss, ll))


def _run_filter(ssm, y, form: str, H_static=None):
    ssm, y, dtype = _prepare(ssm, y)
    arr = _arrays(ssm, y.shape[0], dtype, H_static)
    ms, Ss, ll = _filter_parallel(arr, y) if form == "parallel" else _filter_sequential(arr, y, form=form)
    # keep=True (the default): the states are arrays, never None
    return arr, y, FilterResult(ms, Ss @ jnp.swapaxes(Ss, -1, -2), ll, Ss)  # pyright: ignore[reportArgumentType, reportOptionalOperand]


# The public entry points validate their input eagerly (clear errors, no tracing) and then
# run one compiled program (eqx.filter_jit: arrays traced, Python options static), so an
# eager call costs one compilation instead of one per primitive; inside a user's jit,
# grad or vmap the inner jit is inlined.
def _validated(ssm, y):
    _prepare(ssm, y)
    return y


@eqx.filter_jit
def _filter_jit(ssm, y, form: str, Hs=None) -> FilterResult:
    return _run_filter(ssm, y, form, Hs)[2]


def filter(ssm: LinearGaussianSSM, y: ArrayInput, parallel: bool | None = None, form: str = "auto") -> FilterResult:
    """Kalman filter. ``y`` is (T, p) (or (T,) when p = 1), NaN = missing.

    Returns filtered means (T, d), covariances (T, d, d), their Cholesky factors and the
    log marginal likelihood ``log p(y_{0:T-1})``.

    Bad input: concrete model arrays are checked when the :class:`LinearGaussianSSM` is
    built (finite, covariances symmetric and positive semi-definite: ``ValueError``), ``y``
    here (shape, no inf). Traced arrays (inside ``jit``/``vmap``/``grad``) cannot raise;
    instead a NaN or inf in ``initial_cov``, ``transition_cov`` or ``emission_cov`` makes
    the log-likelihood and every mean NaN (non-finite ``initial_mean``, transition or
    emission matrices propagate by themselves; the coefficients of a ``transition_basis``
    are not checked). Traced covariances that are indefinite are not detected: the
    factorisation drops negative pivots (rounding-level indefiniteness is the intended use).

    Degenerate observations: an observed entry whose predictive variance is zero (``R = 0``
    and no uncertainty along ``H``) is deterministic given the past. Its density is taken
    with respect to a point mass at the prediction: it contributes ``0`` to the
    log-likelihood if it equals the prediction exactly, and ``-inf`` (an impossible
    observation) otherwise, never ``+inf``.

    Schedule: ``form`` (``"auto"``, ``"fused"``, ``"matrix"``, ``"parallel"``) and its
    shorthand ``parallel``, see :func:`schedule`; every form gives the same numbers to
    rounding.
    """
    return _filter_jit(ssm, _validated(ssm, y), schedule(form, parallel), static_emission(ssm))


@eqx.filter_jit
def _log_likelihood_jit(ssm, y, form: str, Hs=None):
    if form == "parallel":
        return _run_filter(ssm, y, form)[2].log_likelihood
    ssm, y, dtype = _prepare(ssm, y)
    return _filter_sequential(_arrays(ssm, y.shape[0], dtype, Hs), y, keep=False, form=form)[2]


def log_likelihood(
    ssm: LinearGaussianSSM, y: ArrayInput, parallel: bool | None = None, form: str = "auto"
) -> Float[Array, ""]:
    """Log marginal likelihood ``log p(y_{0:T-1})`` (NaN = missing). Bad input, traced
    (NaN) inputs, zero predictive variances and the schedule (``form``) as in :func:`filter`."""
    return _log_likelihood_jit(ssm, _validated(ssm, y), schedule(form, parallel), static_emission(ssm))


@eqx.filter_jit
def _pointwise_jit(ssm, y, form: str, Hs=None):
    arr, y, f = _run_filter(ssm, y, form, Hs)
    return _predictive_logliks(arr, y, f.mean, f.chol)


def pointwise_log_likelihood(
    ssm: LinearGaussianSSM, y: ArrayInput, parallel: bool | None = None, form: str = "auto"
) -> Float[Array, " T"]:
    """One-step predictive log densities ``log p(y_t | y_{0:t-1})``, shape (T,).

    Sums to :func:`log_likelihood`; fully missing rows contribute 0. ``form`` as in :func:`filter`.
    """
    return _pointwise_jit(ssm, _validated(ssm, y), schedule(form, parallel), static_emission(ssm))


# ----------------------------------------------------------------------------------
# Backward kernels, smoothing and sampling
# ----------------------------------------------------------------------------------
def backward_kernels(arr: _Arrays, ms, Ss):
    """``x_t | x_{t+1}, y_{0:t} ~ N(G_t x_{t+1} + g_t, D_t D_t^T)`` for t = 0..T-2.

    From ``tria([[A S_f, SQ], [S_f, 0]]) = [[Psi11, 0], [Psi21, Psi22]]``:
    ``G = Psi21 Psi11^{-1}``, ``g = m_f - G A m_f``, ``D = Psi22``. Returns (G, g, D).
    The triangularisation zeroes pivots of ``Psi11`` at the rounding level of the
    predicted covariance (``Psi11_ii^2 <= 16 eps (A P_f A^T + Q)_ii``) and skips them in
    ``G``; their cross-covariance moves into ``D`` (``D D^T + G P_pred G^T = P_f`` holds).
    ``arr`` carries the transitions (see :func:`rts_smooth` for the array interface).
    """
    T, d = ms.shape
    n = T - 1
    A = arr.A if arr.tv_trans else jnp.broadcast_to(arr.A, (n,) + arr.A.shape)
    SQ = arr.SQ if arr.tv_trans else jnp.broadcast_to(arr.SQ, (n,) + arr.SQ.shape)
    m, S = ms[:-1], Ss[:-1]
    AS = A @ S
    Phi = jnp.concatenate([jnp.concatenate([AS, SQ], axis=2), jnp.concatenate([S, jnp.zeros_like(SQ)], axis=2)], axis=1)
    # psd_cholesky's pivot rule for the predicted covariance A P_f A^T + Q:
    # a direction whose predicted variance is within 16 eps of its row's is rounding
    # noise, and dividing by it makes G an O(1) gain on rounding errors that the backward
    # pass compounds (exact observations of an invertible ARMA: 1e-3 errors after ~30 steps)
    # (the rows of S_f are left alone: D is what it is, and the rule there loses precision)
    rule = jnp.concatenate([jnp.full(d, 16 * jnp.finfo(Phi.dtype).eps, Phi.dtype), jnp.zeros(d, Phi.dtype)])
    Psi = tria_batched(Phi, rtol=rule)  # batched MGS: SIMD over t
    P11, P21, P22 = Psi[:, :d, :d], Psi[:, d:, :d], Psi[:, d:, d:]
    G = jnp.swapaxes(jax.vmap(solve_upper_t)(P11, jnp.swapaxes(P21, 1, 2)), 1, 2)
    g = m - jnp.einsum("tij,tj->ti", G, jnp.einsum("tij,tj->ti", A, m))
    return G, g, P22


def _smooth_sequential(G, g, D, mT, ST, guard=None, form: str = "sequential"):
    if mT.shape[0] <= fused.FUSED_MAX_DIM and form != "matrix":
        return fused.smooth_scan(G, g, D, mT, ST, guard)

    def step(carry, k):
        m, S = carry
        Gk, gk, Dk = k
        mn = Gk @ m + gk
        Sn = tria(jnp.concatenate([Dk, Gk @ S], axis=1))
        return (mn, Sn), (mn, Sn)

    _, (ms, Ss) = jax.lax.scan(step, (mT, ST), (G, g, D), reverse=True)
    return jnp.concatenate([ms, mT[None]]), jnp.concatenate([Ss, ST[None]])


def _affine_combine(later, earlier):
    """Compose backward maps: apply ``later`` (t+1 side) then ``earlier``, square-root noise."""
    E2, g2, D2 = later
    E1, g1, D1 = earlier
    E = E1 @ E2
    g = (E1 @ g2[..., None])[..., 0] + g1
    M = jnp.concatenate([E1 @ D2, D1], axis=-1)
    D = _tria_any(M)
    return E, g, D


def _adjoint_elements(arr: _Arrays, y, ms, Ss):
    r"""Backward elements ``(Gamma, u, Z)`` (T-1, ...) of the adjoint ``lambda_t``.

    The smoothed moments in Bryson–Frazier form (de Jong 1989; Durbin & Koopman 2012,
    §4.4): ``m^s_t = m_t + P_t A_t^T lambda_t``, ``P^s_t = P_t - P_t A_t^T N_t A_t P_t`` with
    ``lambda_t = u_t + Gamma_t lambda_{t+1}``, ``N_t = Z_t Z_t^T + Gamma_t N_{t+1}
    Gamma_t^T``, ``lambda_{T-1} = 0``, ``N_{T-1} = 0``. From the update at t+1 (the
    triangularisation of :func:`update`: innovation factor ``Sy``, ``Kb = P^p H^T Sy^{-T}``,
    ``W = Sy^{-1} H``, ``z = Sy^{-1} (y - H m^p)``): ``u_t = W^T z``, ``Z_t = W^T`` and
    ``Gamma_t = (I - Kb W)^T A_{t+1}^T`` (the closed-loop filter transition, transposed).
    Products of ``Gamma`` contract as the filter forgets, where products of RTS gains may
    grow geometrically (exact observations of an invertible ARMA: by ``1/theta`` per step)
    and their composition loses precision in proportion. Shapes: Gamma, Z (T-1, d, d), u
    (T-1, d); ``ms`` (T, d), ``Ss`` (T, d, d) are the filtered marginals.
    """
    T, d = ms.shape
    p = y.shape[1]

    def one(t):
        A, SQ = _trans(arr, t)
        H, SR = _emis(arr, t + 1)
        mp, Sp = predict(ms[t], Ss[t], A, SQ)
        Phi, Hm, y0, _ = _update_stack(Sp, H, SR, y[t + 1])
        Psi = _tria_any(Phi)
        Sy, Kb = Psi[:p, :p], Psi[p:, :p]
        W = solve_lower(Sy, Hm)
        z = solve_lower(Sy, y0 - Hm @ mp)
        A_next = _trans(arr, jnp.minimum(t + 1, T - 2))[0]
        Gamma = (jnp.eye(d, dtype=ms.dtype) - Kb @ W).T @ A_next.T
        return jnp.where(t == T - 2, 0.0, Gamma), W.T @ z, _square_factor(W.T)

    return jax.vmap(one)(jnp.arange(T - 1))


def _smooth_adjoint(arr: _Arrays, y, ms, Ss):
    """Parallel-in-time smoothed means (T, d) and covariances (T, d, d) from the filtered
    marginals: :func:`_adjoint_elements` composed by an associative scan."""
    T, d = ms.shape
    _, lam, N = jax.lax.associative_scan(_affine_combine, _adjoint_elements(arr, y, ms, Ss), reverse=True)
    A = arr.A if arr.tv_trans else jnp.broadcast_to(arr.A, (T - 1, d, d))
    S = Ss[:-1]
    ST, AT = jnp.swapaxes(S, 1, 2), jnp.swapaxes(A, 1, 2)
    mean = ms[:-1] + jnp.einsum("tij,tj->ti", S @ (ST @ AT), lam)
    B = ST @ AT @ N  # P^s = S (I - B B^T) S^T
    cov = symmetrize(S @ (jnp.eye(d, dtype=ms.dtype) - B @ jnp.swapaxes(B, 1, 2)) @ ST)
    return jnp.concatenate([mean, ms[-1:]]), jnp.concatenate([cov, (Ss[-1] @ Ss[-1].T)[None]])


def _smooth_parallel(G, g, D, mT, ST):
    d = mT.shape[0]
    E = jnp.concatenate([G, jnp.zeros((1, d, d), G.dtype)])
    gg = jnp.concatenate([g, mT[None]])
    DD = jnp.concatenate([D, ST[None]])
    # reverse scan: element t composed with all later ones
    E, gg, DD = jax.lax.associative_scan(_affine_combine, (E, gg, DD), reverse=True)
    return gg, DD


def smoother(ssm: LinearGaussianSSM, y: ArrayInput, parallel: bool | None = None, form: str = "auto") -> SmootherResult:
    """Rauch–Tung–Striebel smoother (square-root form in every schedule; ``form`` as in
    :func:`filter`)."""
    return _smoother_jit(ssm, _validated(ssm, y), schedule(form, parallel), static_emission(ssm))


@eqx.filter_jit
def _smoother_jit(ssm, y, form: str, Hs=None) -> SmootherResult:
    arr, y, f = _run_filter(ssm, y, form, Hs)
    if y.shape[0] == 1:
        return SmootherResult(f.mean, f.cov, f.log_likelihood, f)
    if form == "parallel":
        return SmootherResult(*_smooth_adjoint(arr, y, f.mean, f.chol), f.log_likelihood, f)
    G, g, D = backward_kernels(arr, f.mean, f.chol)
    ms, Ss = _smooth_sequential(G, g, D, f.mean[-1], f.chol[-1], fused.finite_guard(y), form)
    return SmootherResult(ms, Ss @ jnp.swapaxes(Ss, -1, -2), f.log_likelihood, f)


def rts_smooth(
    ms: Float[Array, "T d"],
    Ss: Float[Array, "T d d"],
    A: Float[Array, "... d d"],
    SQ: Float[Array, "... d d"],
    b: Float[Array, "T-1 d"] | None = None,
    parallel: bool | None = None,
) -> tuple[Float[Array, "T d"], Float[Array, "T d d"]]:
    """RTS smoothing pass over given filtered marginals ``N(ms[t], Ss[t] Ss[t]^T)``.

    Transitions ``x_{t+1} = A_t x_t + b_t + q_t``, ``q_t ~ N(0, SQ_t SQ_t^T)``; ``A``, ``SQ``
    are (T-1, d, d) or (d, d) (``SQ`` lower triangular), ``b`` (T-1, d) or ``None``. This
    is the smoother of the nonlinear Gaussian filters (local linearisations as ``A``, ``b``).
    Returns smoothed means (T, d) and lower Cholesky factors (T, d, d).
    """
    T, d = ms.shape
    if T == 1:
        return ms, Ss
    tv = jnp.ndim(A) == 3 or jnp.ndim(SQ) == 3
    if tv:  # one time-varying array: broadcast the other
        A = jnp.broadcast_to(A, (T - 1, d, d))
        SQ = jnp.broadcast_to(SQ, (T - 1, d, d))
    arr = _Arrays(ms[0], Ss[0], A, SQ, jnp.zeros((1, d), ms.dtype), jnp.zeros((1, 1), ms.dtype), tv, False)
    G, g, D = backward_kernels(arr, ms, Ss)
    if b is not None:  # x_t | x_{t+1}: the mean subtracts G b as well
        g = g - jnp.einsum("kij,kj->ki", G, b)
    run = _smooth_parallel if use_parallel(parallel) else _smooth_sequential
    return run(G, g, D, ms[-1], Ss[-1])


def sample(
    key: Key,
    ssm: LinearGaussianSSM,
    y: ArrayInput,
    num_samples: SupportsInt = 1,
    parallel: bool | None = None,
    form: str = "auto",
) -> Float[Array, "num_samples T d"]:
    """Joint posterior paths ``x_{0:T-1} ~ p(x | y)`` by forward-filter backward-sampling,
    shape (num_samples, T, d). ``num_samples`` is a positive integer (static: one
    compilation per value); else ``ValueError``. ``form`` as in :func:`filter`."""
    k = check_positive_int(num_samples)
    return _sample_jit(key, ssm, _validated(ssm, y), k, schedule(form, parallel), static_emission(ssm))


@eqx.filter_jit
def _sample_jit(key, ssm, y, num_samples: int, form: str, Hs=None):
    arr, y, f = _run_filter(ssm, y, form, Hs)
    T, d = f.mean.shape
    eps = jax.random.normal(key, (num_samples, T, d), f.mean.dtype)
    xT = f.mean[-1] + eps[:, -1] @ f.chol[-1].T
    if T == 1:
        return xT[:, None]
    G, g, D = backward_kernels(arr, f.mean, f.chol)
    h = g[None] + jnp.einsum("tij,stj->sti", D, eps[:, :-1])  # (S, T-1, d)
    if form == "parallel":

        def one(hs, xl):
            E = jnp.concatenate([G, jnp.zeros((1, d, d), G.dtype)])
            hh = jnp.concatenate([hs, xl[None]])

            def comb(later, earlier):
                E2, h2 = later
                E1, h1 = earlier
                return E1 @ E2, (E1 @ h2[..., None])[..., 0] + h1

            return jax.lax.associative_scan(comb, (E, hh), reverse=True)[1]

        return jax.vmap(one)(h, xT)

    if d <= fused.FUSED_MAX_DIM and form != "matrix":
        return fused.sample_scan(G, h, xT, fused.finite_guard(y))

    # all samples in one scan: x_t = x_{t+1} G_t^T + h_t with x of shape (S, d)
    def step(x, k):
        Gk, hk = k
        xn = x @ Gk.T + hk
        return xn, x

    x0, later = jax.lax.scan(step, xT, (G, jnp.swapaxes(h, 0, 1)), reverse=True)
    return jnp.swapaxes(jnp.concatenate([x0[None], later], axis=0), 0, 1)
