"""Tests for probdyn.sde.fractional (Markov-approximate fractional Brownian motion).

References are independent of the closed forms in the library: nested scipy quadrature of
the Itô-isometry integrals of the kernels, Euler simulation of the OU system, Monte-Carlo
moments of the samplers.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import integrate, special  # noqa: E402

from probdyn.sde import fractional as fr  # noqa: E402


def test_gamma_grid():
    g = fr.gamma_grid(5, 20.0)
    np.testing.assert_allclose(g, [0.05, 0.2236068, 1.0, 4.472136, 20.0], rtol=1e-6)
    assert fr.gamma_grid(1, 20.0).shape == (1,)
    with pytest.raises(ValueError):
        fr.gamma_grid(0, 20.0)


def test_gamma_grid_for():
    g = np.asarray(fr.gamma_grid_for(0.01, 1.0))
    # [0.005 / T, 5 / Delta], ceil(1.5 * 5 decades) + 1 = 9 speeds, geometric
    assert g.shape == (9,)
    np.testing.assert_allclose(g[[0, -1]], [0.005, 500.0], rtol=1e-12)
    np.testing.assert_allclose(np.diff(np.log(g)), np.log(1e5) / 8, rtol=1e-12)
    assert fr.gamma_grid_for(0.5, 10.0, per_decade=1.0, slow=0.01, fast=2.0).shape == (5,)  # 3.6 decades
    with pytest.raises(ValueError):
        fr.gamma_grid_for(1.0, 0.5)
    with pytest.raises(ValueError):
        fr.gamma_grid_for(0.1, 1.0, slow=10.0, fast=0.1)


# ----------------------------------------------------- optimal weights vs brute force


def _quad(f, a, b, **kw):
    return integrate.quad(f, a, b, epsabs=1e-13, epsrel=1e-12, limit=200, **kw)[0]


def _brute_force_system_type1(H, gammas, T):
    """A, b of the type-I MA-fBM fit by nested quadrature of the Itô-isometry integrals.

    Z_k(t) = int k_k(t,u) dW_u with k_k = e^{-g(t-u)} on [0,t] and e^{-g(t-u)} - e^{gu} for
    u < 0; B(t) = int [(t-u)_+^al - (-u)_+^al] dW_u / Gamma(H+1/2).
    """
    al = H - 0.5
    ga = special.gamma(H + 0.5)

    def ezz(t, gi, gj):
        fut = _quad(lambda v: np.exp(-(gi + gj) * v), 0.0, t)
        past = _quad(
            lambda r: (np.exp(-gi * (t + r)) - np.exp(-gi * r)) * (np.exp(-gj * (t + r)) - np.exp(-gj * r)),
            0.0,
            np.inf,
        )
        return fut + past

    def ebz(t, g):
        if t == 0.0:
            return 0.0
        fut = _quad(lambda v: np.exp(-g * v), 0.0, t, weight="alg", wvar=(al, 0.0))
        kern = lambda r: np.exp(-g * (t + r)) - np.exp(-g * r)  # noqa: E731
        past = _quad(lambda r: (t + r) ** al * kern(r), 0.0, np.inf)
        past -= _quad(kern, 0.0, 1.0, weight="alg", wvar=(al, 0.0))
        past -= _quad(lambda r: r**al * kern(r), 1.0, np.inf)
        return (fut + past) / ga

    K = len(gammas)
    A = np.zeros((K, K))
    for i in range(K):
        for j in range(i, K):
            A[i, j] = A[j, i] = _quad(lambda t: ezz(t, gammas[i], gammas[j]), 0.0, T)
    b = np.array([_quad(lambda t: ebz(t, g), 0.0, T) for g in gammas])
    return A, b


@pytest.mark.parametrize("H", [0.3, 0.7])
def test_optimal_weights_type1_vs_quadrature(H):
    T = 2.4
    g = np.asarray(fr.gamma_grid(5, 20.0))
    A_ref, b_ref = _brute_force_system_type1(H, g, T)
    w_ref = np.linalg.solve(A_ref, b_ref)
    sysm = fr.ma_fbm_system(H, g, T, "type1")
    np.testing.assert_allclose(sysm.A, A_ref, rtol=1e-9)
    np.testing.assert_allclose(sysm.b, b_ref, rtol=1e-8)
    w = fr.optimal_weights(H, g, T, "type1")
    np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-6 * np.max(np.abs(w_ref)))
    # c = int_0^T Var B^H(t) dt, Var of the paper-normalised MvN fBM (Mandelbrot-van Ness
    # integral by quadrature)
    al = H - 0.5
    vq = _quad(lambda u: ((1 + u) ** al - u**al) ** 2, 0.0, np.inf) + 1 / (2 * H)
    c_ref = vq / special.gamma(H + 0.5) ** 2 * T ** (2 * H + 1) / (2 * H + 1)
    np.testing.assert_allclose(sysm.c, c_ref, rtol=1e-8)


def test_system_type2_vs_quadrature():
    H, T = 0.3, 2.4
    al = H - 0.5
    g = np.asarray(fr.gamma_grid(4, 20.0))
    sysm = fr.ma_fbm_system(H, g, T, "type2")
    A_ref = np.array([[_quad(lambda t: -np.expm1(-(gi + gj) * t) / (gi + gj), 0.0, T) for gj in g] for gi in g])

    def ebz(t, gk):
        if t == 0.0:
            return 0.0
        return _quad(lambda v: np.exp(-gk * v), 0.0, t, weight="alg", wvar=(al, 0.0)) / special.gamma(H + 0.5)

    b_ref = np.array([_quad(lambda t: ebz(t, gk), 0.0, T) for gk in g])
    np.testing.assert_allclose(sysm.A, A_ref, rtol=1e-10)
    np.testing.assert_allclose(sysm.b, b_ref, rtol=1e-8)


# --------------------------------------------------------- exact fBM tools


def test_fbm_covariance_type2_vs_quadrature():
    t = np.array([0.0, 1e-3, 0.3, 0.999, 1.0, 2.0])
    for H in (0.2, 0.8):
        C = np.asarray(fr.fbm_covariance(t, H, "type2", "paper"))
        for i in range(len(t)):
            for j in range(len(t)):
                lo, hi = min(t[i], t[j]), max(t[i], t[j])
                ref = 0.0
                if lo > 0 and hi > lo:
                    f = lambda v: (hi - lo + v) ** (H - 0.5)  # noqa: E731
                    ref = _quad(f, 0.0, lo, weight="alg", wvar=(H - 0.5, 0.0)) / special.gamma(H + 0.5) ** 2
                elif lo > 0:
                    ref = _quad(lambda v: 1.0, 0.0, lo, weight="alg", wvar=(2 * H - 1, 0.0))
                    ref /= special.gamma(H + 0.5) ** 2
                np.testing.assert_allclose(C[i, j], ref, rtol=1e-9, atol=1e-14)
        Cs = fr.fbm_covariance(t, H, "type2")  # standard: Var = t^2H
        np.testing.assert_allclose(np.diag(Cs), t ** (2 * H), rtol=1e-12)


def _check_cov(x, C, nsig=5.0):
    n = x.shape[0]
    emp = x.T @ x / n  # zero-mean processes
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / n) + 1e-300
    z = np.abs(emp - C) / se
    assert np.max(z) < nsig, np.max(z)


@pytest.mark.parametrize(
    "kind,times,method",
    [
        ("type1", np.linspace(0.0, 2.0, 17), "davies-harte"),
        ("type1", np.array([0.1, 0.15, 0.7, 1.0, 2.3]), "cholesky"),
        ("type2", np.array([0.0, 0.05, 0.4, 0.41, 1.3]), "cholesky"),
    ],
)
def test_sample_fbm_covariance(kind, times, method):
    H = 0.3
    x = np.asarray(fr.sample_fbm(jax.random.PRNGKey(0), times, H, 20000, kind, method=method))
    assert x.shape == (20000, len(times))
    C = np.asarray(fr.fbm_covariance(times, H, kind))
    _check_cov(x, C)
    if times[0] == 0:
        assert np.all(x[:, 0] == 0)


# ------------------------------------------------ MA-fBM covariance vs Euler simulation


@pytest.mark.parametrize("kind", ["type1", "type2"])
def test_ma_fbm_covariance_vs_euler(kind):
    # Euler bias on a variance ~ gamma_max * dt / 2 = 0.5%, well below the MC error (~1.6%)
    H, T, n_paths, n_blocks, steps = 0.3, 1.0, 8192, 4, 500
    g = fr.gamma_grid(5, 20.0)
    w = fr.optimal_weights(H, g, 2.4, kind)
    dt = T / (n_blocks * steps)
    key0, key = jax.random.split(jax.random.PRNGKey(1))
    if kind == "type1":
        P0 = 1.0 / (g[:, None] + g[None, :])  # stationary OU covariance (infinite past)
        y0 = jax.random.normal(key0, (n_paths, 5)) @ jnp.linalg.cholesky(P0).T
    else:
        y0 = jnp.zeros((n_paths, 5))

    def step(y, k):
        dw = jnp.sqrt(dt) * jax.random.normal(k, (n_paths, 1))  # ONE Brownian motion
        return y - g * y * dt + dw, None

    @jax.jit
    def simulate(y0, key):
        def block(y, k):
            y, _ = jax.lax.scan(step, y, jax.random.split(k, steps))
            return y, (y - y0) @ w if kind == "type1" else y @ w

        _, b = jax.lax.scan(block, y0, jax.random.split(key, n_blocks))
        return b.T  # (n_paths, n_blocks)

    x = np.asarray(simulate(y0, key))
    times = T * np.arange(1, n_blocks + 1) / n_blocks
    C = np.asarray(fr.ma_fbm_covariance(times, H, g, w, kind))
    _check_cov(x, C)


def test_ma_fbm_lti():
    g = fr.gamma_grid(3, 10.0)
    w = jnp.array([0.1, 0.2, 0.3])
    m = fr.ma_fbm_lti(0.3, g, w, "type1")
    assert m.F.shape == (3, 3) and m.L.shape == (3, 1) and m.H.shape == (1, 3)
    np.testing.assert_allclose(m.F, -np.diag(g))
    np.testing.assert_allclose(m.P0, 1.0 / (g[:, None] + g[None, :]))
    assert np.all(fr.ma_fbm_lti(0.3, g, w, "type2").P0 == 0)
    # Lyapunov check: F P0 + P0 F^T + L L^T = 0 (P0 is stationary)
    np.testing.assert_allclose(m.F @ m.P0 + m.P0 @ m.F.T + m.L @ m.L.T, 0.0, atol=1e-12)


# ------------------------------------------------------------- approximation quality


@pytest.mark.parametrize("kind", ["type1", "type2"])
def test_integrated_mse_decreases_with_K(kind):
    Ks = (2, 4, 8, 16)
    Hs = jnp.array([0.2, 0.35, 0.65, 0.8])
    grids = [np.asarray(fr.gamma_grid(K, 20.0)) for K in Ks]
    allg = jnp.asarray(np.concatenate(grids))
    # one compile: the closed-form system over all grids; sub-blocks are the per-K systems
    A, b, c = jax.vmap(lambda h: fr.ma_fbm_system(h, allg, 2.4, kind))(Hs)
    A, b, c = map(np.asarray, (A, b, c))
    for ih in range(len(Hs)):
        errs, start = [], 0
        for gk in grids:
            sl = slice(start, start + len(gk))
            start += len(gk)
            w = np.linalg.solve(A[ih][sl, sl], b[ih][sl])
            errs.append((c[ih] - w @ b[ih][sl]) / c[ih])
        assert np.all(np.diff(errs) < 0), (float(Hs[ih]), errs)
        assert 0 < errs[-1] < errs[0]


def test_relative_integrated_mse_metrics():
    g = fr.gamma_grid(5, 20.0)
    A, b, c = fr.ma_fbm_system(0.35, g, 2.4, "type1")
    w = np.linalg.solve(np.asarray(A), np.asarray(b))
    e = fr.relative_integrated_mse(0.35, 5, 20.0, 2.4, "type1", metric="path")
    np.testing.assert_allclose(e, (c - w @ b) / c, rtol=1e-8)
    # covariance metric against a direct numpy evaluation on the same grid
    t = np.linspace(0.0, 2.4, 61)
    C = np.asarray(fr.fbm_covariance(t, 0.35, "type1")) * float(fr.fbm_scale(0.35, "type1")) ** 2
    tt, ss = np.meshgrid(t, t, indexing="ij")
    Ch = np.zeros_like(C)
    for i, gi in enumerate(np.asarray(g)):
        for j, gj in enumerate(np.asarray(g)):
            e_ts = np.where(tt >= ss, np.exp(-gi * np.abs(tt - ss)), np.exp(-gj * np.abs(tt - ss)))
            Ch += w[i] * w[j] * (e_ts - np.exp(-gi * tt) - np.exp(-gj * ss) + 1) / (gi + gj)
    q = np.ones(61)
    q[[0, -1]] = 0.5
    Q = np.outer(q, q)
    ref = np.sum(Q * (Ch - C) ** 2) / np.sum(Q * C**2)
    e_cov = fr.relative_integrated_mse(0.35, 5, 20.0, 2.4, "type1", num_points=61)
    np.testing.assert_allclose(e_cov, ref, rtol=1e-6)
    assert 0 < e_cov < 1e-2


def test_brownian_limit_H_half():
    """At H = 1/2 the targets are W; OU with gamma -> 0 reproduces it (type II exactly,
    type I with error O(sqrt(gamma_min)))."""
    g = jnp.array([1e-7, 0.1, 1.0, 10.0, 20.0])
    A, b, c = fr.ma_fbm_system(0.5, g, 2.0, "type2")
    w = fr.optimal_weights(0.5, g, 2.0, "type2")
    np.testing.assert_allclose(w, [1.0, 0.0, 0.0, 0.0, 0.0], atol=1e-5)
    assert (c - w @ b) / c < 1e-10
    errs = []
    for gmin in (1e-2, 1e-4, 1e-6):
        gg = jnp.array([gmin, 0.1, 1.0, 10.0, 20.0])
        A, b, c = fr.ma_fbm_system(0.5, gg, 2.0, "type1")
        w = fr.optimal_weights(0.5, gg, 2.0, "type1")
        errs.append(float((c - w @ b) / c))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3


def test_normalize_unit_variance():
    g = fr.gamma_grid(5, 20.0)
    T = 2.4
    for kind in ("type1", "type2"):
        for H in (0.3, 0.7):
            w = fr.optimal_weights(H, g, T, kind, normalize=True)
            C = fr.ma_fbm_covariance(jnp.array([T]), H, g, w, kind)
            np.testing.assert_allclose(C[0, 0], T ** (2 * H), rtol=1e-8)
            # a positive rescaling of the standard-normalised optimum
            w0 = np.asarray(fr.optimal_weights(H, g, T, kind) / fr.fbm_scale(H, kind))
            ratio = np.asarray(w) / w0
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)
            assert 0.7 < ratio[0] < 1.3


# ------------------------------------------------------------------- gradients, dtype


@pytest.mark.parametrize("kind", ["type1", "type2"])
def test_grad_wrt_hurst_matches_finite_differences(kind):
    g = fr.gamma_grid(5, 20.0)
    proj = jnp.arange(1.0, 6.0)

    @jax.jit
    def f(h, g, T):
        return fr.optimal_weights(h, g, T, kind) @ proj + fr.optimal_weights(h, g, T, kind, True) @ proj

    vg = jax.jit(jax.value_and_grad(f))
    for H in (0.3, 0.5, 0.7):
        _, gr = vg(H, g, 2.4)
        eps = 1e-5
        fd = (f(H + eps, g, 2.4) - f(H - eps, g, 2.4)) / (2 * eps)
        assert np.isfinite(gr)
        np.testing.assert_allclose(gr, fd, rtol=1e-6)
    # extreme speeds / horizon (gamma * T up to 5e7): no overflow, finite gradients
    big = jnp.array([1e-3, 1.0, 1e3, 1e5, 1e6])
    val, gr = vg(0.3, big, 50.0)
    assert np.isfinite(val) and np.isfinite(gr)
    assert np.all(np.isfinite(fr.optimal_weights(0.3, big, 50.0, kind)))


@pytest.mark.slow
def test_float32_inputs_are_finite():
    g64 = fr.gamma_grid(5, 20.0)
    w64 = {k: np.asarray(fr.optimal_weights(0.3, g64, 2.4, k)) for k in ("type1", "type2")}
    with jax.enable_x64(False):
        H = jnp.float32(0.3)
        T = jnp.float32(2.4)
        g = fr.gamma_grid(5, jnp.float32(20.0))
        assert g.dtype == jnp.float32
        for kind in ("type1", "type2"):
            w = fr.optimal_weights(H, g, T, kind)
            assert w.dtype == jnp.float32 and np.all(np.isfinite(w))
            np.testing.assert_allclose(w, w64[kind], rtol=1e-2, atol=1e-2)  # ill-conditioned A
        gr = jax.grad(lambda h: fr.optimal_weights(h, g, T, "type1").sum())(H)
        assert np.isfinite(gr)
        t = jnp.linspace(0.0, 2.4, 9, dtype=jnp.float32)
        C = fr.ma_fbm_covariance(t, H, g, w, "type1")
        Cx = fr.fbm_covariance(t, H, "type2")
        x = fr.sample_fbm(jax.random.PRNGKey(0), t, H, 4, "type2")
        for arr in (C, Cx, x):
            assert arr.dtype == jnp.float32 and np.all(np.isfinite(arr))


def test_bad_input_raises():
    with pytest.raises(ValueError):
        fr.optimal_weights(0.3, fr.gamma_grid(3, 10.0), 1.0, kind="type3")
    with pytest.raises(ValueError):
        fr.fbm_covariance(jnp.ones(3), 0.3, normalization="other")
    with pytest.raises(ValueError):
        fr.sample_fbm(jax.random.PRNGKey(0), jnp.array([0.1, 0.5]), 0.3, 2, "type2", method="davies-harte")
