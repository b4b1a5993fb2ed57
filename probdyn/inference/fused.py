r"""Fused factored (square-root form) Kalman step: the sequential schedule's fast path for small models.

On CPU, XLA runs a ``lax.scan`` body as a sequence of kernels; for the tiny matrices of a
Kalman step the per-kernel dispatch (about 1 µs per LAPACK QR, tens of ns per small fused
kernel) costs far more than the arithmetic. Here one predict+update step is written on Python
lists of scalars (static zeros skipped), the filter state ``(m, L, D, loglik)`` and the
per-step inputs are packed into one vector each, and XLA compiles the whole step into a
single kernel (measured: 20.8 ms -> 1.1 ms for 10^4 steps of a 2-state model, float64).

The filter carries the covariance in square-root-free Cholesky form ``P = L diag(D) L^T``
(``L`` unit lower triangular; ``L diag(sqrt D)`` is the Cholesky factor the public results
report). One weighted triangularisation per step does both the prediction and the update:

.. math::
    W = \begin{bmatrix} \tilde L_R & \tilde H A L_{t-1} & \tilde H L_Q \\
                        0 & A L_{t-1} & L_Q \end{bmatrix},\quad
    w = (D_R, D_{t-1}, D_Q)
    \;\xrightarrow{\text{MWGS}}\;
    W \operatorname{diag}(w) W^T = \begin{bmatrix} L_y & 0 \\ \bar K & L_t \end{bmatrix}
    \operatorname{diag}(D_y, D_t) \begin{bmatrix} L_y & 0 \\ \bar K & L_t \end{bmatrix}^T,

``m_t = A m_{t-1} + \bar K \varepsilon`` with ``L_y \varepsilon = y_t - H A m_{t-1}``, and
the log density ``sum_i (-eps_i^2 / (2 D_y,i) - log(D_y,i)/2) - (n_obs/2) log 2 pi``. The
triangularisation is Thornton & Bierman's modified weighted Gram–Schmidt (MWGS), the
square-root-free counterpart of the QR of the square-root filter, with the same numerical
behaviour (Bierman, *Factorization Methods for Discrete Sequential Estimation*, 1977) and
divisions where the QR form needs square roots: on CPU the recursion is latency-bound, and
a square root followed by a division is its slowest link. Missing entries of ``y_t`` (NaN)
get a zero row in ``H~`` and a unit, uncorrelated noise row (as in
:func:`probdyn.inference.kalman.update`). A scalar observation of the first state
(``H = [h, 0, ..., 0]``, every Matérn/SHO/Periodic kernel alone) takes a shorter route:
the update keeps ``L`` and shrinks the first pivot only (see :func:`_first_state_update`).
Measured on the float32 stress case of the tests (Matérn-5/2, lengthscale 1e3 x the median
spacing, 10^4 points): relative log-likelihood error 1.6e-6 (QR square-root form: 2.1e-6).

The RTS smoother and the backward sampling pass are fused the same way. Every fused scan
goes through :func:`fused_scan`, whose custom reverse-mode rule stores only the packed
states and recomputes each step's vector-Jacobian product in a reverse scan (value+gradient
of a 10^4-step log-likelihood: 68 ms -> 8 ms; memory O(T) states instead of every
intermediate). It supports ``jax.grad``/``vjp`` and Hessians by forward-over-reverse
(``jax.hessian``), not pure forward mode (``jax.jvp``/``jacfwd``); for those, run the
matrix form (set ``FUSED_MAX_DIM = 0``).

When the model carries its transitions in coefficient form
(:class:`probdyn.ssm.TransitionBasis`, e.g. a Matérn Markov GP), the step reads the
coefficients (Matérn-3/2: 2 for ``A`` and 3 for ``Q`` instead of 7 entries of ``A`` and of
the factors of ``Q``) and assembles ``A``, ``Q`` and ``Q = L_Q D_Q L_Q^T`` itself, off the critical path
(:func:`dense_inputs`); the reverse pass applies that assembly to all steps at once
(:class:`Staged`). Measured, Matérn-3/2, 10^5 points, float64, 2-core CPU: log-likelihood
0.75x-0.91x tinygp's time instead of 1.0x-1.05x, value+gradient 52 ms instead of 70 ms.

Length: one concept (the fused step, its packed state and its custom reverse rules), kept in
one module although it runs past 600 lines.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from functools import partial, reduce
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from probdyn.linalg import ldl_from_cholesky, ldl_lists, mgs_lower, neg_half_log, safe_inv, tree_sum

__all__ = [
    "Layout",
    "pack_state",
    "unpack_states",
    "transition_columns",
    "pack_inputs",
    "dense_inputs",
    "Staged",
    "first_state",
    "fused_scan",
    "mwgs_lower",
    "stack_scalars",
    "stack_columns",
    "fused_scan_last",
    "filter_states",
    "filter_last",
    "smooth_scan",
    "sample_scan",
    "finite_guard",
    "FUSED_MAX_DIM",
    "observes_first_state",
]

FUSED_MAX_DIM = 4
"""Largest ``state_dim + obs_dim`` that uses the fused step. Larger models use the matrix
form with LAPACK triangularisations: the unrolled step's size grows like ``(d+p)^3`` and the
compile time of its gradient with it (measured, value+grad compile: 1.2 s for d+p = 3, 3.9 s
for 4, 12 s for 5, 80 s for 6; the matrix form compiles in about 3 s at any size)."""

_HALF_LOG2PI = 0.5 * math.log(2 * math.pi)

_MAX_STACK = 8
"""XLA:CPU fuses a concatenate of at most 8 operands into its producers
(``kMaxConcatenateArguments``); a step whose packed output is one larger stack is split into
a kernel per output, and its loop no longer compiles into a single kernel."""


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
    """Sizes of the packed filter state ``[m (d), strict_lower(L), D (d), loglik]`` (the
    covariance is ``L diag(D) L^T``, ``L`` unit lower triangular) and step input
    ``[transition, y (p), H (p*d), strict_lower(L_R), D_R (p)]`` with the transition
    ``[A (d*d), strict_lower(L_Q), D_Q (d)]``.

    ``H`` is ``None`` (the emission matrix is part of each step's input) or a constant
    emission matrix as nested tuples of Python floats, compiled into the step (its zeros
    and ones cost nothing) and left out of the input.

    ``basis`` is ``None`` or the static ``(basis_a, basis_q)`` of a
    :class:`probdyn.ssm.TransitionBasis`: the transition input is then its coefficients
    ``[a (ka), q (kq)]`` and the step assembles ``A``, ``Q`` and ``Q = L_Q D_Q L_Q^T``
    itself (off the recursion's critical path: the loop is latency-bound).
    """

    d: int
    p: int
    H: tuple | None = None
    basis: tuple | None = None

    @property
    def strict(self):
        """Index pairs ``(i, j)``, ``j < i``, of the strictly lower state factor entries."""
        return [(i, j) for i in range(self.d) for j in range(i)]

    @property
    def strict_p(self):
        """Index pairs ``(i, j)``, ``j < i``, of the strictly lower observation factor entries."""
        return [(i, j) for i in range(self.p) for j in range(i)]

    @property
    def state_size(self) -> int:
        """Length of a packed filter state (mean, factor, log-likelihood)."""
        return 2 * self.d + len(self.strict) + 1

    @property
    def transition_size(self) -> int:
        """Length of a step's packed transition inputs."""
        if self.basis is not None:
            return len(self.basis[0]) + len(self.basis[1])
        return self.d * self.d + len(self.strict) + self.d

    @property
    def input_size(self) -> int:
        """Length of a step's packed inputs (transition, observation, emission, noise)."""
        nH = 0 if self.H is not None else self.p * self.d
        return self.transition_size + self.p + nH + len(self.strict_p) + self.p


def pack_state(lay: Layout, m, L, D, ll):
    """(d,), (d, d) unit lower, (d,), () -> packed state (state_size,)."""
    return jnp.stack(list(m) + [L[i, j] for i, j in lay.strict] + list(D) + [jnp.asarray(ll, m.dtype)])


def unpack_states(lay: Layout, s):
    """Packed states (T, state_size) -> means (T, d), lower Cholesky factors
    ``L diag(sqrt D)`` (T, d, d), logliks (T,)."""
    d, ns = lay.d, len(lay.strict)
    T = s.shape[0]
    L = jnp.broadcast_to(jnp.eye(d, dtype=s.dtype), (T, d, d))
    if ns:
        L = L.at[:, jnp.array([i for i, _ in lay.strict]), jnp.array([j for _, j in lay.strict])].set(s[:, d : d + ns])
    D = jnp.maximum(s[:, d + ns : 2 * d + ns], 0.0)
    return s[:, :d], L * jnp.sqrt(D)[:, None, :], s[:, -1]


def transition_columns(lay: Layout, A, LQ, DQ) -> list:
    """The transition part of the step inputs from (n, d, d) ``A``, unit lower ``LQ`` and
    (n, d) ``DQ``, as (n,) columns (with ``lay.basis`` pass the basis coefficients instead)."""
    d = lay.d
    return (
        [A[:, i, j] for i in range(d) for j in range(d)]
        + [LQ[:, i, j] for i, j in lay.strict]
        + [DQ[:, i] for i in range(d)]
    )


def pack_inputs(lay: Layout, trans: list, y, H, LR, DR) -> tuple:
    """Per-step inputs as a tuple of ``input_size`` (n,) columns, from the transition
    columns (:func:`transition_columns`, or a basis's coefficients), ``y`` (n, p), ``H``
    (n, p, d), unit lower ``LR`` (n, p, p) and ``DR`` (n, p).

    Columns, not one (n, input_size) array: ``lax.scan`` slices each on its own, whereas
    XLA:CPU evaluates a stacked array's columns in one fusion that recomputes every
    column's producers (e.g. the exponential and series of a Matérn discretisation)."""
    d, p = lay.d, lay.p
    cols = list(trans) + [y[:, i] for i in range(p)]
    if lay.H is None:
        cols += [H[:, i, j] for i in range(p) for j in range(d)]
    cols += [LR[:, i, j] for i, j in lay.strict_p] + [DR[:, i] for i in range(p)]
    if len(cols) != lay.input_size:
        raise ValueError(f"expected {lay.input_size} input columns for {lay}, got {len(cols)}")
    return tuple(cols)


def _scalars(x) -> list:
    """One step's inputs as a list of scalars: from a tuple of columns' entries or a vector."""
    return list(x) if isinstance(x, (tuple, list)) else [x[i] for i in range(x.shape[0])]


def stack_columns(cols: list) -> jax.Array:
    """``jnp.stack(cols, axis=1)`` for equally long vectors, from stacks of at most eight
    columns and under 64 bytes a row: XLA:CPU does not fuse a larger minor-axis stack with
    its producers, and materialises every column first (see :func:`stack_scalars`)."""
    return _grouped_stack(cols, 1, max(1, min(_MAX_STACK, 63 // jnp.dtype(cols[0].dtype).itemsize)))


def _grouped_stack(items: list, axis: int, k: int) -> jax.Array:
    """``jnp.stack(items, axis)`` assembled from stacks of at most ``k`` items, each
    zero-padded to full length along ``axis`` and added."""
    n = len(items)
    if n <= k:
        return jnp.stack(items, axis=axis)
    parts = []
    for a in range(0, n, k):
        part = jnp.stack(items[a : a + k], axis=axis)
        widths = [(0, 0)] * part.ndim
        widths[axis] = (a, n - a - part.shape[axis])
        parts.append(jnp.pad(part, widths))
    return reduce(operator.add, parts)


# ----------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------
def _num(v):
    return 1.0 if v is _ONE else v


def _dot(a: list, b: list):
    """Dot product of lists with ``None`` (zero) and ``_ONE`` entries."""
    return tree_sum([None if t is None else _num(t) for t in (_mul(x, y) for x, y in zip(a, b))])


def _sub(a, b):
    if b is None:
        return a
    return -_num(b) if a is None else _num(a) - _num(b)


def _unit_lower(n: int, idx, vals) -> list:
    M = [[_ONE if i == j else None for j in range(n)] for i in range(n)]
    for (i, j), v in zip(idx, vals):
        M[i][j] = v
    return M


def mwgs_lower(rows: list[list], w: list) -> tuple[list[list], list, list]:
    """Modified weighted Gram–Schmidt (Thornton & Bierman 1977) on lists of scalars.

    ``W diag(w) W^T = Lu diag(Dd) Lu^T`` for the rows ``W`` and non-negative weights
    ``w``, with ``Lu`` unit lower triangular. The square-root-free counterpart of
    :func:`probdyn.linalg.mgs_lower` (same numerics as the square-root form, Bierman 1977,
    with divisions in place of square roots). Returns ``(Lu, Dd, inv)``, ``inv[i] = 1/Dd[i]``
    (0 where ``Dd[i] = 0``) for ``i < n - 1``.
    """
    n = len(rows)
    rows = [list(r) for r in rows]
    Lu: list[list[Any]] = [[None] * n for _ in range(n)]
    Dd, inv = [], []
    for i in range(n):
        wi = [_mul(v, c) for v, c in zip(rows[i], w)]
        s = _dot(rows[i], wi)
        Dd.append(s)
        if i == n - 1 or s is None:
            inv.append(None)
            continue
        r = safe_inv(s)
        inv.append(r)
        for j in range(i + 1, n):
            c = _dot(rows[j], wi)
            if c is None:
                continue
            c = c * r
            Lu[j][i] = c
            rows[j] = [_sub(vj, _mul(c, vi)) for vi, vj in zip(rows[i], rows[j])]
    return Lu, Dd, inv


def _propagate(A: list, m: list, L: list) -> tuple[list, list]:
    """``A m`` and ``A L`` on lists of scalars (the prediction of mean and factor)."""
    d = len(m)
    return [_dot(A[i], m) for i in range(d)], [
        [_dot(A[i], [L[k][j] for k in range(d)]) for j in range(d)] for i in range(d)
    ]


def _step_lists(lay: Layout, s: list, x: list, predict: bool = True) -> list:
    """One predict+update step on lists of scalars (see the module docstring); the
    transition inputs are dense (``lay.basis`` is ignored: see :func:`dense_inputs`)."""
    d, p = lay.d, lay.p
    ns, nsp = len(lay.strict), len(lay.strict_p)
    m = s[:d]
    L = _unit_lower(d, lay.strict, s[d : d + ns])
    D = s[d + ns : 2 * d + ns]
    ll = s[2 * d + ns]
    A = [[x[i * d + j] for j in range(d)] for i in range(d)]
    o = d * d
    LQ = _unit_lower(d, lay.strict, x[o : o + ns])
    o += ns
    DQ = x[o : o + d]
    o += d
    y = x[o : o + p]
    o += p
    if lay.H is None:
        H = [[x[o + i * d + j] for j in range(d)] for i in range(p)]
        o += p * d
    else:
        H = [[None if v == 0 else (_ONE if v == 1 else v) for v in row] for row in lay.H]
    LR = _unit_lower(p, lay.strict_p, x[o : o + nsp])
    o += nsp
    DR = x[o : o + p]

    obs = [yi == yi for yi in y]  # False where NaN
    of = [jnp.where(b, 1.0, 0.0).astype(yi.dtype) for b, yi in zip(obs, y)]
    if observes_first_state(lay):
        return _first_state_update(lay, m, L, D, ll, A, LQ, DQ, y[0], DR[0], obs[0], of[0], predict)
    if predict:
        mp, AL = _propagate(A, m, L)
        Q, wQ = LQ, list(DQ)
    else:
        mp, AL, Q, wQ = list(m), [list(r) for r in L], [[] for _ in range(d)], []
    Hm = [[_mul(H[i][j], of[i]) for j in range(d)] for i in range(p)]
    HAL = [[_dot(Hm[i], [AL[k][j] for k in range(d)]) for j in range(d)] for i in range(p)]
    HQ = [[_dot(Hm[i], [Q[k][j] for k in range(d)]) for j in range(len(wQ))] for i in range(p)]
    if p == 1:  # missing: the noise row becomes a unit-variance row
        noise, wN, zeros = [[_ONE]], [jnp.where(obs[0], DR[0], 1.0)], [None]
    else:
        noise = [
            [_mul(LR[i][j], of[i]) for j in range(p)] + [1.0 - of[i] if j == i else None for j in range(p)]
            for i in range(p)
        ]
        wN, zeros = list(DR) + [1.0] * p, [None] * (2 * p)
    rows = [noise[i] + HAL[i] + HQ[i] for i in range(p)]
    rows += [zeros + AL[i] + Q[i] for i in range(d)]
    Lu, Dd, inv = mwgs_lower(rows, wN + list(D) + wQ)

    # innovation e = y - H m_p = Lu_yy eps, eps_i ~ N(0, Dd_i) (observed entries)
    eps = []
    lterm = None
    for i in range(p):
        pred = _dot(Hm[i], mp)
        acc = jnp.where(obs[i], y[i], 0.0) - (0.0 if pred is None else pred)
        for j in range(i):
            if Lu[i][j] is not None:
                acc = acc - Lu[i][j] * eps[j]
        eps.append(acc)
        li = _log_density(acc, Dd[i], inv[i], obs[i])
        lterm = li if lterm is None else lterm + li
    mn = []
    for i in range(d):
        v = mp[i]
        for j in range(p):
            if Lu[p + i][j] is not None:
                v = Lu[p + i][j] * eps[j] if v is None else v + Lu[p + i][j] * eps[j]
        mn.append(v)
    out = mn + [Lu[p + i][p + j] for i, j in lay.strict] + [Dd[p + i] for i in range(d)] + [ll + lterm]
    ref = y[0]
    return [jnp.zeros_like(ref) if v is None else jnp.asarray(v, ref.dtype) for v in out]


def _log_density(e, v, inv, obs):
    """``log N(e | 0, v)`` of an observed innovation entry (0 if missing), ``inv = 1/v``
    (0 where ``v = 0``). A zero variance is a point mass at the prediction: ``0`` if
    ``e == 0`` exactly and ``-inf`` (an impossible observation) otherwise, never the
    ``+inf`` of ``-log(0)/2``; a NaN ``e`` stays NaN (gradient-safe: the log never sees
    ``v <= 0``)."""
    pos = v > 0
    ll = -0.5 * e * e * inv + jnp.where(obs, neg_half_log(jnp.where(obs & pos, v, 1.0)) - _HALF_LOG2PI, 0.0)
    point = jnp.where(e == 0, 0.0, -jnp.inf).astype(ll.dtype) + 0 * e
    return jnp.where(obs & ~pos, point, ll)


def _combination(cs: list, vals: list):
    """``sum_k cs[k] * vals[k]`` for Python-float ``vals`` (zeros skipped, ones free)."""
    return tree_sum([c if v == 1 else c * v for c, v in zip(cs, vals) if v != 0])


def dense_inputs(lay: Layout, x: list) -> list:
    """Step inputs with a basis transition (``lay.basis``) -> the same inputs with the dense
    transition ``[A, strict_lower(L_Q), D_Q]``, ``Q = L_Q diag(D_Q) L_Q^T``. Elementwise:
    ``x`` is a list of scalars (one step) or of (n,) columns (all steps at once)."""
    if lay.basis is None:
        return list(x)
    d = lay.d
    ba, bq = lay.basis
    ca, cq = x[: len(ba)], x[len(ba) : len(ba) + len(bq)]
    zero = jnp.zeros_like(cq[0])
    A = [_combination(ca, [B[i][j] for B in ba]) for i in range(d) for j in range(d)]
    Q = [[_combination(cq, [B[i][j] for B in bq]) for j in range(i + 1)] for i in range(d)]
    L, DQ = ldl_lists([[zero if v is None else v for v in row] for row in Q])
    trans = [zero if v is None else v for v in A] + [L[i][j] for i, j in lay.strict] + list(DQ)
    return trans + list(x[lay.transition_size :])


class Staged(NamedTuple):
    """The step ``inner(s, prepare(x))``, where ``prepare`` (elementwise, inputs only) runs
    inside the forward step, and the reverse pass applies it to all inputs at once
    (vectorised), differentiates ``inner`` only and chains back through ``prepare``: a
    short forward input, without the reverse scan paying for ``prepare``'s derivative."""

    prepare: Callable
    inner: Callable

    def __call__(self, s, x):
        """The inner step on the state ``s`` and the prepared inputs of ``x``."""
        return self.inner(s, self.prepare(x))


def _filter_step(lay: Layout):
    if lay.basis is None:
        return partial(_step_lists, lay)
    return Staged(partial(dense_inputs, lay), partial(_step_lists, lay._replace(basis=None)))


def observes_first_state(lay: Layout) -> bool:
    """A scalar observation of the first state (``H = [h, 0, ..., 0]``, static): every
    Matérn, SHO and Periodic kernel alone."""
    return lay.p == 1 and lay.H is not None and lay.H[0][0] != 0 and all(v == 0 for v in lay.H[0][1:])


def _first_state_update(lay, m, L, D, ll, A, LQ, DQ, y, DR, obs, of, predict):
    """Predict + update for ``y = h x_0 + r``. With ``P = L diag(D) L^T`` (``L`` unit lower),
    ``P e_0 = D_0 L e_0``, so the update keeps ``L`` and only shrinks the first pivot:
    ``D_0 <- D_0 R / (h^2 D_0 + R)``, gain ``K = L e_0 h D_0 / (h^2 D_0 + R)`` (no
    cancellation anywhere; the time update is one weighted Gram–Schmidt of ``[A L, L_Q]``).
    Only one division per step is on the recursion's critical path of a 2-state model,
    against two square roots and two divisions of the joint triangularisation."""
    d = lay.d
    if predict:
        mp, AL = _propagate(A, m, L)
        Lp, Dp, _ = mwgs_lower([AL[i] + LQ[i] for i in range(d)], list(D) + list(DQ))
        Lp = [[_ONE if i == j else Lp[i][j] for j in range(d)] for i in range(d)]
    else:
        mp, Lp, Dp = list(m), L, list(D)
    hm = lay.H[0][0] * of
    Rw = jnp.where(obs, DR, 1.0)  # missing: no update (hm = 0) and a unit dummy variance
    sv = hm * hm * Dp[0] + Rw
    inv = safe_inv(sv)
    e = jnp.where(obs, y, 0.0) - hm * mp[0]
    g = Dp[0] * hm * inv * e
    mn = [mp[i] + (g if Lp[i][0] is _ONE else (0.0 if Lp[i][0] is None else Lp[i][0] * g)) for i in range(d)]
    Dn = [Dp[0] * Rw * inv] + list(Dp[1:])
    lterm = _log_density(e, sv, inv, obs)
    out = mn + [Lp[i][j] for i, j in lay.strict] + Dn + [ll + lterm]
    return [jnp.zeros_like(y) if v is None else jnp.asarray(v, y.dtype) for v in out]


def _step(lay: Layout, s, x, predict: bool = True):
    """Packed step: state (state_size,), input (input_size,) -> state."""
    return stack_scalars(_step_lists(lay, _scalars(s), dense_inputs(lay, _scalars(x)), predict))


def first_state(lay: Layout, m0, S0, x0):
    """Filtered state at t = 0 (update only), packed, from the prior mean (d,), lower
    Cholesky factor (d, d) and the t = 0 inputs (a vector or a list of scalars; the
    transition part is ignored)."""
    L0, D0 = ldl_from_cholesky(S0)
    s = pack_state(lay, m0, L0, D0, jnp.zeros((), m0.dtype))
    return _step(lay, s, x0, predict=False)


# ----------------------------------------------------------------------------------
# One scan with a custom reverse-mode rule, for every fused recursion
# ----------------------------------------------------------------------------------
def stack_scalars(out: list) -> jax.Array:
    """``jnp.stack(out)`` for a list of scalars, built from stacks of at most eight
    (zero-padded and added) so that XLA:CPU keeps the producing step in one kernel
    (measured, 3-state filter, 10^5 steps: 61 ms -> 6.2 ms)."""
    return _grouped_stack(out, 0, _MAX_STACK)


def _packed(step):
    def run(c, x):
        out = step(_scalars(c), _scalars(x))
        return stack_scalars([jnp.zeros_like(c[0]) if v is None else v for v in out])

    return run


def fused_scan(step, s0, X, reverse: bool = False, guard=None):
    """All states of ``s_k = step(s_{k-1}, X[k-1])``: (n + 1, state_size) with ``s0`` first
    (``reverse=True``: ``s_t = step(s_{t+1}, X[t])``, ``s0`` last). ``X`` is an
    (n, input_size) array or a tuple of (n,) columns.

    ``step`` maps lists of scalars to a list (or is a :class:`Staged` step); each step
    compiles to one fused kernel. The reverse pass (custom VJP) stores only the states and recomputes each step's
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

    # Stacked here: a loop that also writes every state runs faster reading one array
    # (measured, Matern-3/2, 1e5 steps: 5.2 vs 7.5 ms); the loop of fused_scan_last, which
    # only reads, is faster on the columns (see pack_inputs).
    Xs = stack_columns(list(X)) if isinstance(X, tuple) else X
    sN, prev = jax.lax.scan(body, s0, Xs, reverse=reverse)
    states = jnp.concatenate([sN[None], prev] if reverse else [prev, sN[None]], axis=0)
    return states, (states, X, guard)


def _fused_scan_bwd(step, reverse, res, g):
    states, X, guard = res
    columns = isinstance(X, tuple)
    pull_prepare = None
    if isinstance(step, Staged):
        X, pull_prepare = jax.vjp(step.prepare, _scalars(X) if columns else [X[:, i] for i in range(X.shape[1])])
        X, step = stack_columns(X), step.inner
    elif columns:
        X = stack_columns(list(X))
    ns, nx = states.shape[1], X.shape[1]

    def vjp_step(gc, c, x):
        _, pull = jax.vjp(lambda a, b: step(a, b), _scalars(c), _scalars(x))
        gcs, gxs = pull([gc[i] for i in range(ns)])
        z = jnp.zeros_like(gc[0])
        return stack_scalars([z if v is None else v for v in gcs + gxs])

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
    if pull_prepare is not None:
        gcols = pull_prepare([gX[:, i] for i in range(nx)])[0]
        gX = tuple(gcols) if columns else jnp.stack(gcols, axis=1)
    elif columns:
        gX = tuple(gX[:, i] for i in range(nx))
    return g0, gX, None


_fused_scan.defvjp(_fused_scan_fwd, _fused_scan_bwd)


def fused_scan_last(step, s0, X, guard=None):
    """The last state of :func:`fused_scan` (forward direction), (state_size,), with the
    same reverse pass. Without differentiation the loop stores no states: XLA:CPU then
    compiles it into one kernel for larger steps too (its small-loop limit counts the
    bytes each iteration touches; measured, 3-state filter, 10^5 steps: 15 ms -> 6 ms)."""
    return _fused_last(step, s0, X, guard)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_last(step, s0, X, guard):
    run = _packed(step)
    return jax.lax.scan(lambda c, x: (run(c, x), None), s0, X)[0]


def _fused_last_fwd(step, s0, X, guard):
    states, res = _fused_scan_fwd(step, False, s0, X, guard)
    return states[-1], res


def _fused_last_bwd(step, res, g):
    return _fused_scan_bwd(step, False, res, jnp.zeros_like(res[0]).at[-1].set(g))


_fused_last.defvjp(_fused_last_fwd, _fused_last_bwd)


def finite_guard(y) -> jax.Array:
    """``guard`` for :func:`fused_scan` from observations: true unless ``y`` holds an inf.

    The optimisation barrier keeps XLA from folding the predicate when ``y`` is a
    compile-time constant (data closed over by a jitted function): a folded predicate
    removes the conditional and makes the reverse pass ~7x slower on CPU."""
    return jax.lax.optimization_barrier(~jnp.any(jnp.isinf(y)))


def filter_states(lay: Layout, s0, X, guard=None):
    """Packed filtered states for t = 0..T-1, (T, state_size), from the t = 0 state and the
    packed inputs (T-1, input_size) of t = 1..T-1. The log-likelihood is ``[-1, -1]``."""
    return fused_scan(_filter_step(lay), s0, X, False, guard)


def filter_last(lay: Layout, s0, X, guard=None):
    """The packed filtered state at t = T-1 only (its last entry is the log-likelihood)."""
    return fused_scan_last(_filter_step(lay), s0, X, guard)


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
