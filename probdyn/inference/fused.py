r"""Fused square-root Kalman step: the sequential schedule's fast path for small models.

On CPU, XLA runs a ``lax.scan`` body as a sequence of kernels; for the tiny matrices of a
Kalman step the per-kernel dispatch (about 1 µs per LAPACK QR, tens of ns per small fused
kernel) costs far more than the arithmetic. Here one predict+update step is written on Python
lists of scalars (static zeros skipped), the filter state ``(m, lower(S), loglik)`` and the
per-step inputs are packed into one vector each, and XLA compiles the whole step into a
single kernel (measured: 20.8 ms -> 1.1 ms for 10^4 steps of a 2-state model, float64).

One triangularisation per step does both the prediction and the update (square-root form):

.. math::
    \begin{bmatrix} \tilde S_R & \tilde H A S_{t-1} & \tilde H S_Q \\
                    0 & A S_{t-1} & S_Q \end{bmatrix}
    \;\xrightarrow{\text{LQ}}\;
    \begin{bmatrix} S_y & 0 \\ \bar K & S_t \end{bmatrix},
    \qquad
    m_t = A m_{t-1} + \bar K S_y^{-1} (y_t - H A m_{t-1}),

with the log density ``-|S_y^{-1} e|^2/2 - sum log diag S_y - (n_obs/2) log 2 pi``. Missing
entries of ``y_t`` (NaN) get a zero row in ``H~`` and a unit, uncorrelated noise row in
``S_R~`` (as in :func:`probdyn.inference.kalman.update`). The LQ factorisation is row-wise
modified Gram–Schmidt, which gives the same triangular factor as Householder QR up to
rounding (Björck & Paige, SIAM J. Matrix Anal. Appl. 1992), so the step keeps the precision
of a square-root filter in float32.

The RTS smoother and the backward sampling pass are fused the same way. Every fused scan
goes through :func:`fused_scan`, whose custom reverse-mode rule stores only the packed
states and recomputes each step's vector-Jacobian product in a reverse scan (value+gradient
of a 10^4-step log-likelihood: 68 ms -> 8 ms; memory O(T) states instead of every
intermediate). It supports ``jax.grad``/``vjp`` and Hessians by forward-over-reverse
(``jax.hessian``), not pure forward mode (``jax.jvp``/``jacfwd``); for those, run the
matrix form (set ``FUSED_MAX_DIM = 0``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from probdyn.linalg import list_dot as _dot
from probdyn.linalg import mgs_lower, neg_half_log, safe_rsqrt

__all__ = [
    "Layout", "pack_state", "unpack_states", "pack_inputs", "first_state", "fused_scan",
    "filter_states", "smooth_scan", "sample_scan", "finite_guard", "FUSED_MAX_DIM",
]

FUSED_MAX_DIM = 4
"""Largest ``state_dim + obs_dim`` that uses the fused step. Larger models use the matrix
form with LAPACK triangularisations: the unrolled step's size grows like ``(d+p)^3`` and the
compile time of its gradient with it (measured, value+grad compile: 1.2 s for d+p = 3, 3.9 s
for 4, 12 s for 5, 80 s for 6; the matrix form compiles in about 3 s at any size)."""

_HALF_LOG2PI = 0.5 * math.log(2 * math.pi)


class _One:
    """A structural one (multiplying by it is free)."""


_ONE = _One()


def _mul(a, b):
    if a is None or b is None:
        return None
    if a is _ONE:
        return b
    if b is _ONE:
        return a
    return a * b


# ----------------------------------------------------------------------------------
# Packed layouts
# ----------------------------------------------------------------------------------
class Layout(NamedTuple):
    """Sizes of the packed state ``[m (d), lower(S) (d(d+1)/2), loglik]`` and step input
    ``[A (d*d), lower(SQ), y (p), H (p*d), lower(SR)]``.

    ``H`` is ``None`` (the emission matrix is part of each step's input) or a constant
    emission matrix as nested tuples of Python floats, compiled into the step (its zeros
    and ones cost nothing) and left out of the input.
    """

    d: int
    p: int
    H: tuple | None = None

    @property
    def tri(self):
        return [(i, j) for i in range(self.d) for j in range(i + 1)]

    @property
    def tri_p(self):
        return [(i, j) for i in range(self.p) for j in range(i + 1)]

    @property
    def state_size(self) -> int:
        return self.d + len(self.tri) + 1

    @property
    def input_size(self) -> int:
        nH = 0 if self.H is not None else self.p * self.d
        return self.d * self.d + len(self.tri) + self.p + nH + len(self.tri_p)


def pack_state(lay: Layout, m, S, ll):
    """(d,), (d, d) lower, () -> packed state (state_size,)."""
    return jnp.concatenate([m, jnp.stack([S[i, j] for i, j in lay.tri]), jnp.reshape(ll, (1,))])


def unpack_states(lay: Layout, s):
    """Packed states (T, state_size) -> means (T, d), lower factors (T, d, d), logliks (T,)."""
    d = lay.d
    T = s.shape[0]
    S = jnp.zeros((T, d, d), s.dtype)
    ii = jnp.array([i for i, _ in lay.tri])
    jj = jnp.array([j for _, j in lay.tri])
    S = S.at[:, ii, jj].set(s[:, d : d + len(lay.tri)])
    return s[:, :d], S, s[:, -1]


def pack_inputs(lay: Layout, A, SQ, y, H, SR):
    """Per-step inputs (n, ...) -> (n, input_size). ``SQ``, ``SR`` lower triangular."""
    n = y.shape[0]
    low = lambda M, idx: jnp.stack([M[:, i, j] for i, j in idx], axis=1)  # noqa: E731
    Hs = [] if lay.H is not None else [H.reshape(n, lay.p * lay.d)]
    return jnp.concatenate([A.reshape(n, lay.d * lay.d), low(SQ, lay.tri), y, *Hs, low(SR, lay.tri_p)], axis=1)


# ----------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------
def _step_lists(lay: Layout, s: list, x: list, predict: bool = True) -> list:
    """One predict+update step on lists of scalars (see the module docstring)."""
    d, p = lay.d, lay.p
    nt = len(lay.tri)
    m = s[:d]
    S = [[None] * d for _ in range(d)]
    for k, (i, j) in enumerate(lay.tri):
        S[i][j] = s[d + k]
    ll = s[d + nt]
    o = 0
    A = [[x[o + i * d + j] for j in range(d)] for i in range(d)]
    o += d * d
    SQ = [[None] * d for _ in range(d)]
    for k, (i, j) in enumerate(lay.tri):
        SQ[i][j] = x[o + k]
    o += nt
    y = x[o : o + p]
    o += p
    if lay.H is None:
        H = [[x[o + i * d + j] for j in range(d)] for i in range(p)]
        o += p * d
    else:
        H = [[None if v == 0 else (_ONE if v == 1 else v) for v in row] for row in lay.H]
    SR = [[None] * p for _ in range(p)]
    for k, (i, j) in enumerate(lay.tri_p):
        SR[i][j] = x[o + k]

    obs = [yi == yi for yi in y]  # False where NaN
    of = [jnp.where(b, 1.0, 0.0).astype(yi.dtype) for b, yi in zip(obs, y)]
    if predict:
        mp = [_dot(A[i], m) for i in range(d)]
        AS = [[_dot(A[i], [S[k][j] for k in range(d)]) for j in range(d)] for i in range(d)]
        Q = SQ
    else:
        mp, AS, Q = list(m), [list(r) for r in S], [[None] * d for _ in range(d)]
    Hm = [[_mul(H[i][j], of[i]) for j in range(d)] for i in range(p)]
    HAS = [[_dot(Hm[i], [AS[k][j] for k in range(d)]) for j in range(d)] for i in range(p)]
    HQ = [[_dot(Hm[i], [Q[k][j] for k in range(d)]) for j in range(d)] for i in range(p)]
    if p == 1:  # missing: the noise row becomes a unit row
        noise = [[jnp.where(obs[0], SR[0][0], 1.0)]]
        zeros = [None]
    else:
        noise = [[_mul(SR[i][j], of[i]) for j in range(p)] + [1.0 - of[i] if j == i else None for j in range(p)]
                 for i in range(p)]
        zeros = [None] * (2 * p)
    rows = [noise[i] + HAS[i] + HQ[i] for i in range(p)]
    rows += [zeros + AS[i] + Q[i] for i in range(d)]
    L, ss = mgs_lower(rows)

    # innovation e = y - H m_p (observed entries), z = Sy^{-1} e by forward substitution
    z = []
    lterm = None
    for i in range(p):
        pred = _dot(Hm[i], mp)
        e = jnp.where(obs[i], y[i], 0.0) - (0.0 if pred is None else pred)
        acc = e
        for j in range(i):
            if L[i][j] is not None:
                acc = acc - L[i][j] * z[j]
        zi = acc * safe_rsqrt(ss[i])
        z.append(zi)
        li = -0.5 * zi * zi + jnp.where(obs[i], neg_half_log(jnp.where(obs[i], ss[i], 1.0)) - _HALF_LOG2PI, 0.0)
        lterm = li if lterm is None else lterm + li
    mn = []
    for i in range(d):
        v = mp[i]
        for j in range(p):
            if L[p + i][j] is not None:
                v = L[p + i][j] * z[j] if v is None else v + L[p + i][j] * z[j]
        mn.append(v)
    Sn = [L[p + i][p + j] for i, j in lay.tri]
    out = mn + Sn + [ll + lterm]
    ref = y[0]
    return [jnp.zeros_like(ref) if v is None else v for v in out]


def _step(lay: Layout, s, x, predict: bool = True):
    """Packed step: state (state_size,), input (input_size,) -> state."""
    out = _step_lists(lay, [s[i] for i in range(s.shape[0])], [x[i] for i in range(x.shape[0])], predict)
    return jnp.stack(out)


def first_state(lay: Layout, m0, S0, x0):
    """Filtered state at t = 0 (update only), packed."""
    s = pack_state(lay, m0, S0, jnp.zeros((), m0.dtype))
    return _step(lay, s, x0, predict=False)


# ----------------------------------------------------------------------------------
# One scan with a custom reverse-mode rule, for every fused recursion
# ----------------------------------------------------------------------------------
def _packed(step):
    def run(c, x):
        out = step([c[i] for i in range(c.shape[0])], [x[i] for i in range(x.shape[0])])
        return jnp.stack([jnp.zeros_like(c[0]) if v is None else v for v in out])

    return run


def fused_scan(step, s0, X, reverse: bool = False, guard=None):
    """All states of ``s_k = step(s_{k-1}, X[k-1])``: (n + 1, state_size) with ``s0`` first
    (``reverse=True``: ``s_t = step(s_{t+1}, X[t])``, ``s0`` last).

    ``step`` maps lists of scalars to a list; each step compiles to one fused kernel. The
    reverse pass (custom VJP) stores only the states and recomputes each step's
    vector-Jacobian product, so ``jax.grad`` costs a few forward passes instead of a scan
    over all of the step's intermediates. Pure forward-mode differentiation is not
    available (``jax.jvp`` of a custom-VJP function).

    ``guard``: an optional boolean scalar that is true for valid inputs and that
    ``jax.vmap`` does not batch (e.g. "the observations contain no inf", when chains or
    parameters are vmapped over shared data); the reverse pass then stays a conditional
    under ``vmap``, which XLA:CPU runs faster than the select it becomes otherwise.
    """
    return _fused_scan(step, reverse, s0, X, guard)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_scan(step, reverse, s0, X, guard):
    return _fused_scan_fwd(step, reverse, s0, X, guard)[0]


def _fused_scan_fwd(step, reverse, s0, X, guard):
    run = _packed(step)

    def body(c, x):
        return run(c, x), c  # emit the incoming state: the step kernel has one consumer

    sN, prev = jax.lax.scan(body, s0, X, reverse=reverse)
    states = jnp.concatenate([sN[None], prev] if reverse else [prev, sN[None]], axis=0)
    return states, (states, X, guard)


def _fused_scan_bwd(step, reverse, res, g):
    states, X, guard = res
    ns, nx = states.shape[1], X.shape[1]

    def vjp_step(gc, c, x):
        _, pull = jax.vjp(lambda a, b: step(a, b), [c[i] for i in range(ns)], [x[i] for i in range(nx)])
        gcs, gxs = pull([gc[i] for i in range(ns)])
        z = jnp.zeros_like(gc[0])
        return jnp.stack([z if v is None else v for v in gcs + gxs])

    def nan_step(gc, c, x):
        return jnp.full((ns + nx,), jnp.nan, gc.dtype)

    # The conditional gives each reverse step its own kernel sequence over small buffers,
    # which XLA:CPU runs without its dataflow scheduler (measured 2x faster). Its predicate
    # must not fold at compile time: ``guard``, or else "the first input entry is not NaN"
    # (when it is, the outputs and hence the gradients are NaN anyway).
    def body(gc, inp):
        c, x, gnext = inp
        ok = (x[0] == x[0]) if guard is None else guard
        out = jax.lax.cond(ok, vjp_step, nan_step, gc, c, x)
        return out[:ns] + gnext, out[ns:]

    if reverse:  # s_t = step(s_{t+1}, X[t]): accumulate from t = 0 upwards
        g0, gX = jax.lax.scan(body, g[0], (states[1:], X, g[1:]))
    else:
        g0, gX = jax.lax.scan(body, g[-1], (states[:-1], X, g[:-1]), reverse=True)
    return g0, gX, None


_fused_scan.defvjp(_fused_scan_fwd, _fused_scan_bwd)


def finite_guard(y) -> jax.Array:
    """``guard`` for :func:`fused_scan` from observations: true unless ``y`` holds an inf.

    The optimisation barrier keeps XLA from folding the predicate when ``y`` is a
    compile-time constant (data closed over by a jitted function): a folded predicate
    removes the conditional and makes the reverse pass ~7x slower on CPU."""
    return jax.lax.optimization_barrier(~jnp.any(jnp.isinf(y)))


def filter_states(lay: Layout, s0, X, guard=None):
    """Packed filtered states for t = 0..T-1, (T, state_size), from the t = 0 state and the
    packed inputs (T-1, input_size) of t = 1..T-1. The log-likelihood is ``[-1, -1]``."""
    return fused_scan(partial(_step_lists, lay), s0, X, False, guard)


# ----------------------------------------------------------------------------------
# The RTS pass and the backward sampling pass
# ----------------------------------------------------------------------------------
def _smooth_lists(d: int, s: list, x: list) -> list:
    """RTS step: state [m, lower(S)], input [G, g, lower(D)] -> ``(G m + g, tria([D, G S]))``."""
    tri = [(i, j) for i in range(d) for j in range(i + 1)]
    m = s[:d]
    S = [[None] * d for _ in range(d)]
    D = [[None] * d for _ in range(d)]
    for k, (i, j) in enumerate(tri):
        S[i][j] = s[d + k]
        D[i][j] = x[d * d + d + k]
    G = [[x[i * d + j] for j in range(d)] for i in range(d)]
    mn = [x[d * d + i] + _dot(G[i], m) for i in range(d)]
    GS = [[_dot(G[i], [S[k][j] for k in range(d)]) for j in range(d)] for i in range(d)]
    L, _ = mgs_lower([D[i] + GS[i] for i in range(d)])
    return mn + [L[i][j] for i, j in tri]


def smooth_scan(G, g, D, mT, ST, guard=None):
    """Smoothed means (T, d) and lower factors (T, d, d) from the backward kernels
    (T-1, ...) and the last filtered marginal, by a reverse fused scan."""
    d = mT.shape[0]
    tri = [(i, j) for i in range(d) for j in range(i + 1)]
    low = lambda M: jnp.stack([M[..., i, j] for i, j in tri], -1)  # noqa: E731
    X = jnp.concatenate([G.reshape(G.shape[0], d * d), g, low(D)], axis=1)
    states = fused_scan(partial(_smooth_lists, d), jnp.concatenate([mT, low(ST)]), X, True, guard)
    S = jnp.zeros(states.shape[:1] + (d, d), states.dtype)
    S = S.at[:, jnp.array([i for i, _ in tri]), jnp.array([j for _, j in tri])].set(states[:, d:])
    return states[:, :d], S


def _sample_lists(d: int, s: list, x: list) -> list:
    """Backward sampling step ``x_t = G_t x_{t+1} + h_t``: input [G (d*d), h (d)]."""
    return [x[d * d + i] + _dot(x[i * d : (i + 1) * d], s) for i in range(d)]


def sample_scan(G, h, xT, guard=None):
    """Backward sampling pass ``x_t = G_t x_{t+1} + h_t``, vectorised over samples.

    Shapes: G (T-1, d, d), h (S, T-1, d), xT (S, d) -> paths (S, T, d).
    """
    d = xT.shape[-1]
    Gf = G.reshape(G.shape[0], d * d)

    def one(hs, x):
        return fused_scan(partial(_sample_lists, d), x, jnp.concatenate([Gf, hs], axis=1), True, guard)

    return jax.vmap(one)(h, xT)
