"""Tests for probdyn.kernels: state-space forms of the Markov GP kernels.

Every reference here is independent of the library's own formulas:

* analytic covariance functions are written out below from the textbook definitions
  (Rasmussen & Williams ch. 4; Foreman-Mackey et al. 2017 for SHO/celerite) and, where
  tinygp has the same kernel, cross-checked against tinygp evaluated densely;
* ``expm`` and Lyapunov solves come from SciPy;
* process noise covariances are integrated numerically with ``scipy.integrate.quad_vec``;
* the periodic kernel's truncation bound uses ``scipy.special.ive``.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg as sla  # noqa: E402
from scipy import integrate, special  # noqa: E402

from probdyn import MarkovGP, kernels  # noqa: E402

TAUS = np.concatenate([[0.0, 1e-6, 1e-3], np.linspace(0.01, 6.0, 57), [10.0, 25.0]])


# ----------------------------------------------------------------------------------
# Independent analytic covariance functions (NumPy, written from the definitions)
# ----------------------------------------------------------------------------------
def ref_matern12(tau, ell, s2):
    return s2 * np.exp(-np.abs(tau) / ell)


def ref_matern32(tau, ell, s2):
    r = np.sqrt(3.0) * np.abs(tau) / ell
    return s2 * (1.0 + r) * np.exp(-r)


def ref_matern52(tau, ell, s2):
    r = np.sqrt(5.0) * np.abs(tau) / ell
    return s2 * (1.0 + r + r**2 / 3.0) * np.exp(-r)


def ref_sho(tau, w, Q, s2):
    """Damped SHO driven by white noise (Foreman-Mackey et al. 2017, eq. 20), k(0) = s2."""
    tau = np.abs(tau)
    env = np.exp(-w * tau / (2 * Q))
    if Q > 0.5:
        eta = np.sqrt(1 - 1 / (4 * Q**2))
        return s2 * env * (np.cos(eta * w * tau) + np.sin(eta * w * tau) / (2 * eta * Q))
    if Q < 0.5:
        eta = np.sqrt(1 / (4 * Q**2) - 1)
        return s2 * env * (np.cosh(eta * w * tau) + np.sinh(eta * w * tau) / (2 * eta * Q))
    return s2 * np.exp(-w * tau) * (1 + w * tau)


def ref_celerite(tau, a, b, c, d):
    tau = np.abs(tau)
    return np.exp(-c * tau) * (a * np.cos(d * tau) + b * np.sin(d * tau))


def ref_cosine(tau, period, s2):
    return s2 * np.cos(2 * np.pi * tau / period)


def ref_periodic_exact(tau, period, ell, s2):
    return s2 * np.exp(-2 * np.sin(np.pi * tau / period) ** 2 / ell**2)


def ref_periodic_truncated(tau, period, ell, s2, order):
    z = 1.0 / ell**2
    w = 2 * np.pi / period
    out = special.ive(0, z) * np.ones_like(tau)
    for j in range(1, order + 1):
        out = out + 2 * special.ive(j, z) * np.cos(j * w * tau)
    return s2 * out


def ref_constant(tau, s2):
    return s2 * np.ones_like(tau)


# (name, probdyn kernel factory, reference k(tau)); the SHO covers Q > 1/2, = 1/2, < 1/2.
CASES = [
    ("matern12", lambda: kernels.Matern12(0.7, 1.3), lambda t: ref_matern12(t, 0.7, 1.3)),
    ("matern32", lambda: kernels.Matern32(1.4, 0.6), lambda t: ref_matern32(t, 1.4, 0.6)),
    ("matern52", lambda: kernels.Matern52(0.9, 2.0), lambda t: ref_matern52(t, 0.9, 2.0)),
    ("sho_under", lambda: kernels.SHO(2.5, 4.0, 0.8), lambda t: ref_sho(t, 2.5, 4.0, 0.8)),
    ("sho_crit", lambda: kernels.SHO(1.7, 0.5, 1.1), lambda t: ref_sho(t, 1.7, 0.5, 1.1)),
    ("sho_over", lambda: kernels.SHO(3.0, 0.2, 0.5), lambda t: ref_sho(t, 3.0, 0.2, 0.5)),
    (
        "periodic",
        lambda: kernels.Periodic(period=1.7, lengthscale=1.2, variance=0.9, order=7),
        lambda t: ref_periodic_truncated(t, 1.7, 1.2, 0.9, 7),
    ),
    ("constant", lambda: kernels.Constant(0.4), lambda t: ref_constant(t, 0.4)),
    (
        "celerite",
        lambda: kernels.Celerite(1.0, 0.3, 0.8, 1.5),  # a c = 0.8 > b d = 0.45
        lambda t: ref_celerite(t, 1.0, 0.3, 0.8, 1.5),
    ),
    (
        # valid celerite term with b < 0: PSD iff |b d| <= a c (Foreman-Mackey et al. 2017,
        # eq. 10: both coefficients of the power spectrum non-negative); here 0.5 <= 1
        "celerite_negb",
        lambda: kernels.Celerite(1.0, -0.5, 1.0, 1.0),
        lambda t: ref_celerite(t, 1.0, -0.5, 1.0, 1.0),
    ),
    ("cosine", lambda: kernels.Cosine(2.3, 0.6), lambda t: ref_cosine(t, 2.3, 0.6)),
    (
        "sum",
        lambda: kernels.Matern32(1.0, 1.0) + kernels.SHO(2.0, 5.0, 0.5),
        lambda t: ref_matern32(t, 1.0, 1.0) + ref_sho(t, 2.0, 5.0, 0.5),
    ),
    (
        "product",
        lambda: kernels.Matern52(2.0, 1.5) * kernels.Cosine(1.3, 1.0),
        lambda t: ref_matern52(t, 2.0, 1.5) * ref_cosine(t, 1.3, 1.0),
    ),
    (
        "product_sho_m32",
        lambda: kernels.SHO(1.5, 0.3, 1.0) * kernels.Matern32(0.8, 0.7),
        lambda t: ref_sho(t, 1.5, 0.3, 1.0) * ref_matern32(t, 0.8, 0.7),
    ),
    ("scaled", lambda: 2.5 * kernels.Matern12(0.5, 0.4), lambda t: 2.5 * ref_matern12(t, 0.5, 0.4)),
    ("scaled_right", lambda: kernels.Matern32(0.5, 0.4) * 0.3, lambda t: 0.3 * ref_matern32(t, 0.5, 0.4)),
    (
        "nested",
        lambda: (
            0.5 * (kernels.Matern12(1.0, 1.0) + kernels.Constant(0.3)) * kernels.Cosine(3.0, 1.0)
            + kernels.SHO(1.0, 0.5, 0.2)
        ),
        lambda t: 0.5 * (ref_matern12(t, 1.0, 1.0) + 0.3) * ref_cosine(t, 3.0, 1.0) + ref_sho(t, 1.0, 0.5, 0.2),
    ),
]
IDS = [c[0] for c in CASES]


def _np(x):
    return np.asarray(x, dtype=float)


def _ss_cov(k, taus):
    """``H expm(F tau) Pinf H^T`` with SciPy's expm (the state-space covariance)."""
    F, P, H = _np(k.feedback()), _np(k.stationary_cov()), _np(k.observation())
    return np.array([(H @ sla.expm(F * t) @ P @ H.T)[0, 0] for t in taus])


@pytest.mark.parametrize("name,make,ref", CASES, ids=IDS)
def test_state_space_covariance_matches_analytic(name, make, ref):
    k = make()
    expected = ref(TAUS)
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(_ss_cov(k, TAUS), expected, rtol=0, atol=1e-10 * scale)
    # __call__ and the dense Gram matrix agree with the same reference
    np.testing.assert_allclose(_np(k(jnp.asarray(TAUS))), expected, rtol=0, atol=1e-11 * scale)
    rng = np.random.default_rng(0)
    t1, t2 = rng.uniform(0, 5, 7), rng.uniform(-1, 4, 5)
    K = _np(k.covariance(jnp.asarray(t1), jnp.asarray(t2)))
    np.testing.assert_allclose(K, ref(np.abs(t1[:, None] - t2[None, :])), rtol=0, atol=1e-11 * scale)
    assert k.state_dim == k.feedback().shape[0] == k.stationary_cov().shape[0]


@pytest.mark.parametrize("name,make,ref", CASES, ids=IDS)
def test_lyapunov_and_valid_sde(name, make, ref):
    k = make()
    sde = k.sde()
    F, L, Qc, H, P = (_np(a) for a in (sde.F, sde.L, sde.Qc, sde.H, sde.Pinf))
    LQL = L @ Qc @ L.T
    scale = max(np.max(np.abs(F)) * np.max(np.abs(P)), 1e-300)
    np.testing.assert_allclose(F @ P + P @ F.T + LQL, 0.0, atol=1e-12 * scale)
    # a valid SDE: Qc symmetric PSD, Pinf symmetric PSD
    np.testing.assert_allclose(Qc, Qc.T, atol=1e-14 * scale)
    assert np.min(np.linalg.eigvalsh(Qc)) >= -1e-10 * scale
    assert np.min(np.linalg.eigvalsh(P)) >= -1e-12 * np.max(np.abs(P))
    np.testing.assert_allclose(H, _np(k.observation()))
    # the Kronecker solve in LTISDE.stationary_cov recovers Pinf whenever it is unique
    # (F and -F^T share no eigenvalues, i.e. no pure rotations / constants)
    ev = np.linalg.eigvals(F)
    if np.all(ev.real < -1e-9):
        np.testing.assert_allclose(sla.solve_continuous_lyapunov(F, -LQL), P, atol=1e-10 * np.max(np.abs(P)))
        sde_nop = type(sde)(sde.F, sde.L, sde.Qc, sde.H, None)
        np.testing.assert_allclose(_np(sde_nop.stationary_cov()), P, atol=1e-10 * np.max(np.abs(P)))


def test_matern_spectral_density_is_rank_one():
    """Matérn SDEs are driven by one white noise entering the highest derivative."""
    for k in [kernels.Matern12(0.3, 2.0), kernels.Matern32(1.1, 0.5), kernels.Matern52(4.0, 1.7)]:
        Qc = _np(k.sde().Qc)
        d = Qc.shape[0]
        mask = np.zeros((d, d), bool)
        mask[-1, -1] = True
        np.testing.assert_allclose(Qc[~mask], 0.0, atol=1e-12 * Qc[-1, -1])
        assert Qc[-1, -1] > 0


DTS = [0.0, 1e-5, 1e-2, 0.3, 1.0, 3.7, 40.0]


@pytest.mark.parametrize("name,make,ref", CASES, ids=IDS)
def test_transition_is_expm(name, make, ref):
    k = make()
    F = _np(k.feedback())
    for dt in DTS:
        A = _np(k.transition(jnp.asarray(dt)))
        np.testing.assert_allclose(A, sla.expm(F * dt), rtol=1e-10, atol=1e-12)


def _quad_process_cov(F, LQL, dt):
    if dt == 0:
        return np.zeros_like(F)

    def integrand(s):
        E = sla.expm(F * s)
        return E @ LQL @ E.T

    val, _ = integrate.quad_vec(integrand, 0.0, dt, epsabs=1e-15, epsrel=1e-12, limit=200)
    return val


def _gl_process_cov(F, LQL, dt, n=40):
    """Gauss-Legendre quadrature of the same integral: entrywise *relative* accuracy for
    short steps, where the integrand is a smooth near-polynomial in s."""
    x, w = np.polynomial.legendre.leggauss(n)
    s = 0.5 * dt * (x + 1)
    out = np.zeros_like(F)
    for si, wi in zip(s, w):
        E = sla.expm(F * si)
        out += 0.5 * dt * wi * (E @ LQL @ E.T)
    return out


def _sde_arrays(k):
    sde = k.sde()
    return sde, _np(sde.F), _np(sde.L @ sde.Qc @ sde.L.T), _np(k.stationary_cov())


@pytest.mark.parametrize("name,make,ref", CASES, ids=IDS)
def test_process_cov_matches_quadrature(name, make, ref):
    k = make()
    sde, F, LQL, P = _sde_arrays(k)
    atol = 1e-10 * np.max(np.abs(P))  # the stationary covariance bounds every entry of Q
    for dt in DTS:
        Qq = _quad_process_cov(F, LQL, dt)
        Qk = _np(k.process_cov(jnp.asarray(dt)))
        np.testing.assert_allclose(Qk, Qq, rtol=1e-7, atol=atol, err_msg=f"dt={dt}")
    # discretise() stacks transition/process_cov
    A, Q = k.discretise(jnp.asarray([0.1, 0.7]))
    np.testing.assert_allclose(_np(A[1]), sla.expm(F * 0.7), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(Q[0]), _quad_process_cov(F, LQL, 0.1), rtol=1e-7, atol=atol)


@pytest.mark.parametrize("name,make,ref", CASES, ids=IDS)
def test_van_loan_process_cov_short_steps(name, make, ref):
    """LTISDE.process_cov (Van Loan) equals the kernel's process_cov and the quadrature."""
    k = make()
    sde, F, LQL, P = _sde_arrays(k)
    atol = 1e-10 * np.max(np.abs(P))
    for dt in [d for d in DTS if d <= 1.0]:
        Qq = _quad_process_cov(F, LQL, dt)
        Qv = _np(sde.process_cov(jnp.asarray(dt)))
        np.testing.assert_allclose(Qv, Qq, rtol=1e-7, atol=atol, err_msg=f"dt={dt}")
        np.testing.assert_allclose(Qv, _np(k.process_cov(jnp.asarray(dt))), rtol=1e-7, atol=atol)


@pytest.mark.parametrize(
    "name,make",
    [
        ("matern52_gap_40", lambda: kernels.Matern52(0.9, 2.0)),  # |F| dt ~ 100
        ("sho_overdamped", lambda: kernels.SHO(3.0, 0.2, 0.5)),  # stiff: eigenvalues -14.4, -0.6
        ("matern32_gap", lambda: kernels.Matern32(0.5, 1.0)),
    ],
)
def test_van_loan_process_cov_long_steps(name, make):
    """Long gaps (tens of lengthscales) are ordinary in irregular data; Van Loan's
    block exponential must not lose the (bounded, ~Pinf) answer to cancellation.

    Q(dt) -> Pinf as dt -> inf, so the reference is well conditioned.
    """
    k = make()
    sde, F, LQL, P = _sde_arrays(k)
    for dt in [3.7, 10.0, 40.0]:
        Qq = _quad_process_cov(F, LQL, dt)
        Qv = _np(sde.process_cov(jnp.asarray(dt)))
        np.testing.assert_allclose(Qv, Qq, rtol=1e-7, atol=1e-9 * np.max(np.abs(P)), err_msg=f"dt={dt}")


@pytest.mark.parametrize("kcls", [kernels.Matern12, kernels.Matern32, kernels.Matern52])
def test_matern_process_cov_relative_accuracy_small_steps(kcls):
    """For tiny steps Q = O(dt) entries must keep *relative* accuracy (no cancellation)."""
    k = kcls(lengthscale=1.0, variance=1.0)
    sde, F, LQL, P = _sde_arrays(k)
    # exact rank-one noise (see test_matern_spectral_density_is_rank_one): round-off in the
    # other entries of Qc (~1e-16) would swamp Q_00 = O(dt^5) for Matérn-5/2
    q = LQL[-1, -1]
    LQL = np.zeros_like(LQL)
    LQL[-1, -1] = q
    for dt in [1e-7, 1e-4, 1e-2]:
        Qq = _gl_process_cov(F, LQL, dt)
        Qk = _np(k.process_cov(jnp.asarray(dt)))
        # compare each entry relative to the geometric mean of its diagonal entries
        dg = np.sqrt(np.abs(np.diag(Qq)))
        np.testing.assert_allclose(Qk / np.outer(dg, dg), Qq / np.outer(dg, dg), atol=1e-9, err_msg=f"dt={dt}")


@pytest.mark.parametrize("ell,order", [(1.0, 6), (0.7, 10), (2.0, 4), (0.5, 20)])
def test_periodic_truncation_within_documented_bound(ell, order):
    period, s2 = 2.0, 1.3
    k = kernels.Periodic(period=period, lengthscale=ell, variance=s2, order=order)
    taus = np.linspace(0, 2 * period, 301)
    z = 1.0 / ell**2
    j = np.arange(order + 1, 4000)
    bound = 2 * s2 * np.sum(special.ive(j, z))
    approx = _np(k(jnp.asarray(taus)))
    exact = ref_periodic_exact(taus, period, ell, s2)
    err = np.max(np.abs(approx - exact))
    assert err <= bound * (1 + 1e-6) + 1e-14
    np.testing.assert_allclose(_np(k.exact(jnp.asarray(taus))), exact, rtol=1e-13, atol=1e-15)
    # state-space covariance reproduces the truncated series exactly
    np.testing.assert_allclose(_ss_cov(k, taus[::10]), approx[::10], atol=1e-12)
    assert k.state_dim == 2 * order + 1


def test_periodic_docstring_example():
    """The Periodic docstring promises error < 1.3e-6 s2 (order 6) and < 1e-7 s2 (order 7), l = 1."""
    s2 = 1.0
    taus = np.linspace(0, 1, 401)
    for order, bound in [(6, 1.3e-6), (7, 1e-7)]:
        k = kernels.Periodic(period=1.0, lengthscale=1.0, variance=s2, order=order)
        err = np.max(np.abs(_np(k(jnp.asarray(taus))) - ref_periodic_exact(taus, 1.0, 1.0, s2)))
        ref = 2 * np.sum(special.ive(np.arange(order + 1, 60), 1.0))
        assert err < bound * s2, f"order {order}: max error {err:.3e} (2 sum_j>order ive(j, 1) = {ref:.3e})"


def test_sho_matches_tinygp_all_regimes():
    from tinygp.kernels import quasisep as qs

    t = jnp.linspace(0, 8, 41)
    for Q in [5.0, 0.5, 0.2]:
        k = kernels.SHO(1.3, Q, 0.7)
        ktg = qs.SHO(omega=1.3, quality=Q, sigma=np.sqrt(0.7))
        np.testing.assert_allclose(_np(k.covariance(t)), _np(ktg(t, t)), atol=1e-12)


# ----------------------------------------------------------------------------------
# tinygp interop
# ----------------------------------------------------------------------------------
def _tinygp_cases():
    from tinygp.kernels import quasisep as qs

    return {
        "matern32": qs.Matern32(scale=1.3, sigma=0.8),
        "matern52": qs.Matern52(scale=0.6, sigma=1.4),
        "exp": qs.Exp(scale=2.1, sigma=0.5),
        "sho_under": qs.SHO(omega=3.0, quality=4.0, sigma=1.1),
        "sho_over": qs.SHO(omega=2.0, quality=0.3, sigma=0.9),
        "celerite": qs.Celerite(a=1.1, b=0.2, c=0.7, d=2.5),  # a c = 0.77 > b d = 0.5
        "celerite_negb": qs.Celerite(a=1.0, b=-0.5, c=1.0, d=1.0),  # |b d| = 0.5 <= a c = 1
        "cosine": qs.Cosine(scale=1.7, sigma=0.6),
        "scale": 2.3 * qs.Matern32(scale=0.9),
        "sum": qs.Matern52(scale=1.5, sigma=0.7) + qs.SHO(omega=1.0, quality=2.0, sigma=0.4),
        "product": qs.Matern32(scale=2.0) * qs.Cosine(scale=0.8, sigma=1.2),
        # (tinygp 0.3.1 itself cannot evaluate Scale(Sum) or Product(Sum, .) quasisep kernels)
        "nested": qs.Exp(scale=0.4) * qs.Cosine(scale=2.0) + 0.5 * qs.SHO(omega=1.0, quality=0.3),
    }


TG_NAMES = list(_tinygp_cases())


@pytest.mark.parametrize("name", TG_NAMES)
def test_from_tinygp_covariance(name):
    ktg = _tinygp_cases()[name]
    k = kernels.from_tinygp(ktg)
    assert isinstance(k, kernels.Kernel)
    rng = np.random.default_rng(1)
    t = jnp.asarray(np.sort(rng.uniform(0, 10, 40)))
    Ktg = _np(ktg(t, t))
    np.testing.assert_allclose(_np(k.covariance(t)), Ktg, atol=1e-11 * np.max(np.abs(Ktg)))
    # and the state-space covariance H expm(F tau) Pinf H^T, not just __call__
    taus = np.asarray(t - t[0])
    np.testing.assert_allclose(_ss_cov(k, taus), Ktg[0], atol=1e-10 * np.max(np.abs(Ktg)))


@jax.jit
def _markov_ll(k, t, noise, y):
    return MarkovGP(k, t, noise=noise).log_likelihood(y, parallel=False)


# the log-likelihood check runs the whole Kalman pipeline, so it is done on a subset
@pytest.mark.parametrize("name", ["matern32", "sho_over", "celerite", "celerite_negb", "product", "nested"])
def test_from_tinygp_log_likelihood(name):
    from tinygp import GaussianProcess

    ktg = _tinygp_cases()[name]
    k = kernels.from_tinygp(ktg)
    rng = np.random.default_rng(2)
    n = 60
    t = np.sort(rng.uniform(0, 12, n))
    noise = rng.uniform(0.05, 0.3, n)
    y = np.sin(t) + rng.normal(size=n) * 0.5
    ref = GaussianProcess(ktg, jnp.asarray(t), diag=jnp.asarray(noise)).log_probability(jnp.asarray(y))
    ll = _markov_ll(k, jnp.asarray(t), jnp.asarray(noise), jnp.asarray(y))
    np.testing.assert_allclose(float(ll), float(ref), rtol=1e-9)


def test_from_tinygp_rejects_unsupported():
    from tinygp import kernels as tk

    with pytest.raises(TypeError):
        kernels.from_tinygp(tk.ExpSquared(scale=1.0))


# ----------------------------------------------------------------------------------
# Parameter validation
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: kernels.Matern12(lengthscale=-1.0),
        lambda: kernels.Matern32(lengthscale=-0.5),
        lambda: kernels.Matern52(lengthscale=0.0),
        lambda: kernels.Matern32(lengthscale=1.0, variance=-2.0),
        lambda: kernels.Matern52(lengthscale=float("nan")),
        lambda: kernels.Matern32(lengthscale=float("inf")),
        lambda: kernels.SHO(omega=-1.0),
        lambda: kernels.SHO(omega=1.0, quality=0.0),
        lambda: kernels.SHO(omega=1.0, quality=1.0, variance=-1.0),
        lambda: kernels.Periodic(period=-1.0),
        lambda: kernels.Periodic(lengthscale=-1.0),
        lambda: kernels.Periodic(order=-1),
        lambda: kernels.Constant(-1.0),
        lambda: kernels.Cosine(period=0.0),
        lambda: kernels.Celerite(-1.0, 0.1, 1.0, 1.0),
        lambda: kernels.Celerite(1.0, 0.1, -1.0, 1.0),
        lambda: kernels.Matern32(lengthscale=np.array([1.0, 2.0])),
        lambda: -2.0 * kernels.Matern32(1.0),
        lambda: kernels.Matern32(1.0) * 0.0,
        lambda: kernels.Matern12(lengthscale=-3),  # Python int
        lambda: kernels.Matern12(lengthscale=np.float32(-1.0)),
    ],
)
def test_bad_parameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_kernels_are_pytrees_and_differentiable():
    """Kernels built from traced parameters work under jit/grad (no Python-value checks)."""

    def f(ell):
        k = kernels.Matern32(ell, 1.0)
        return k(jnp.asarray(0.8)) + k.process_cov(jnp.asarray(0.3))[0, 0]

    g = jax.grad(f)(1.2)
    h = 1e-6
    fd = (f(1.2 + h) - f(1.2 - h)) / (2 * h)
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-6)
    k = kernels.Matern52(1.0) + kernels.SHO(2.0, 3.0)
    leaves = jax.tree_util.tree_leaves(k)
    assert len(leaves) == 5
    np.testing.assert_allclose(jax.jit(lambda k: k(jnp.asarray(0.5)))(k), k(jnp.asarray(0.5)))
