"""Tests for probdyn.MarkovGP against dense Gaussian-process references.

References: a NumPy Cholesky GP built from ``k.covariance`` (the analytic kernel), and
tinygp's dense ``GaussianProcess`` with the corresponding tinygp kernel (stationary
kernels from ``tinygp.kernels``; for the SHO, tinygp's quasisep SHO with the dense
``DirectSolver``). Sampler moments are checked against the dense posterior.
"""

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scipy import linalg as sla  # noqa: E402

from probdyn import MarkovGP, kernels  # noqa: E402


# jitted front ends (MarkovGP may hold a Python callable mean -> equinox filter_jit)
@eqx.filter_jit
def _ll(gp, y, parallel=False):
    return gp.log_likelihood(y, parallel=parallel)


@eqx.filter_jit
def _predict(gp, y, tt, parallel=False):
    return gp.predict(y, tt, parallel=parallel)


@eqx.filter_jit
def _sample(gp, key, n, y, tt):
    return gp.sample(key, n, y=y, test_times=tt, parallel=False)


# ----------------------------------------------------------------------------------
# Dense references
# ----------------------------------------------------------------------------------
def dense_gp(kfun, t, y, noise, mean_fn, tt):
    """Cholesky GP: log N(y | m, K + diag(noise)) and latent posterior at tt (NaN = missing)."""
    t, y, tt = np.asarray(t), np.asarray(y), np.asarray(tt)
    noise = np.broadcast_to(np.asarray(noise, float), t.shape)
    obs = ~np.isnan(y)
    to, yo, no = t[obs], y[obs], noise[obs]
    K = kfun(to, to) + np.diag(no)
    L = sla.cho_factor(K, lower=True)
    r = yo - mean_fn(to)
    alpha = sla.cho_solve(L, r)
    ll = -0.5 * r @ alpha - np.sum(np.log(np.diag(L[0]))) - 0.5 * len(yo) * np.log(2 * np.pi)
    Ks = kfun(tt, to)
    mu = mean_fn(tt) + Ks @ alpha
    cov = kfun(tt, tt) - Ks @ sla.cho_solve(L, Ks.T)
    return ll, mu, cov


def _probdyn_dense(k):
    return lambda a, b: np.asarray(k.covariance(jnp.asarray(a), jnp.asarray(b)))


def _tinygp_kernel(name, p):
    from tinygp import kernels as tk
    from tinygp.kernels import quasisep as qs

    if name == "matern12":
        return p["s2"] * tk.Exp(scale=p["ell"])
    if name == "matern32":
        return p["s2"] * tk.Matern32(scale=p["ell"])
    if name == "matern52":
        return p["s2"] * tk.Matern52(scale=p["ell"])
    if name == "sho":
        return qs.SHO(omega=p["w"], quality=p["Q"], sigma=np.sqrt(p["s2"]))
    if name == "sum_m32_cos":
        return p["s2"] * tk.Matern32(scale=p["ell"]) + p["c2"] * tk.Cosine(scale=p["period"])
    raise KeyError(name)


def _probdyn_kernel(name, p):
    if name == "matern12":
        return kernels.Matern12(p["ell"], p["s2"])
    if name == "matern32":
        return kernels.Matern32(p["ell"], p["s2"])
    if name == "matern52":
        return kernels.Matern52(p["ell"], p["s2"])
    if name == "sho":
        return kernels.SHO(p["w"], p["Q"], p["s2"])
    if name == "sum_m32_cos":
        return kernels.Matern32(p["ell"], p["s2"]) + kernels.Cosine(p["period"], p["c2"])
    raise KeyError(name)


def tinygp_reference(name, p, t, y, noise, mean_fn, tt):
    from tinygp import GaussianProcess
    from tinygp.solvers import DirectSolver

    obs = ~np.isnan(y)
    noise = np.broadcast_to(np.asarray(noise, float), t.shape)
    gp = GaussianProcess(
        _tinygp_kernel(name, p), jnp.asarray(t[obs]), diag=jnp.asarray(noise[obs]), mean=mean_fn, solver=DirectSolver
    )
    ll = gp.log_probability(jnp.asarray(y[obs]))
    cond = gp.condition(jnp.asarray(y[obs]), jnp.asarray(tt), diag=0.0).gp
    return float(ll), np.asarray(cond.loc), np.asarray(cond.variance)


# ----------------------------------------------------------------------------------
# Problem set-up: irregular grids, test times before/between/at/after data, unsorted
# ----------------------------------------------------------------------------------
PARAMS = dict(ell=1.3, s2=1.7, w=2.0, Q=2.5, period=2.2, c2=0.4)


def _problem(seed, n=30, nan=False):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 10.0, n))
    t = t[np.concatenate([[True], np.diff(t) > 1e-3])][:n]
    n = t.size
    y = np.sin(1.3 * t) + 0.3 * rng.normal(size=n) + 0.5
    if nan:
        y[rng.choice(n, 5, replace=False)] = np.nan
    tt = np.concatenate(
        [
            [-2.0, -0.1],  # before
            rng.uniform(t[0], t[-1], 4),  # between
            t[[0, 7, n - 1]],  # at data times (first, interior, last)
            [t[-1] + 0.05, 14.0, 14.0],  # after (a repeated test time)
        ]
    )
    tt = rng.permutation(tt)  # unsorted
    return t, y, tt


def _const_mean(c):
    return lambda x: c * np.ones_like(np.asarray(x)) if isinstance(x, np.ndarray) else c * jnp.ones_like(x)


def _lin_mean(x):
    return 0.3 + 0.1 * x


# one configuration per kernel (compiling every combination would be slow)
GP_CASES = [
    # (kernel, noise kind, mean kind, NaN in y)
    ("matern12", "scalar", "const", False),
    ("matern32", "vector", "callable", True),
    ("matern52", "scalar", "callable", True),
    ("sho", "vector", "const", False),
    ("sum_m32_cos", "vector", "callable", True),
]


def _setup(case, seed=0):
    name, noise_kind, mean_kind, nan = case
    t, y, tt = _problem(seed, nan=nan)
    rng = np.random.default_rng(seed + 1)
    noise = 0.05 if noise_kind == "scalar" else rng.uniform(0.01, 0.2, t.size)
    if mean_kind == "const":
        mean_arg, mean_fn = 0.5, _const_mean(0.5)
    else:
        mean_arg, mean_fn = _lin_mean, _lin_mean
    k = _probdyn_kernel(name, PARAMS)
    gp = MarkovGP(k, jnp.asarray(t), noise=jnp.asarray(noise), mean=mean_arg)
    return name, k, gp, t, y, tt, noise, mean_fn


# one case in the fast tier, the others marked slow
@pytest.mark.parametrize(
    "case",
    [c if c[0] == "matern52" else pytest.param(c, marks=pytest.mark.slow) for c in GP_CASES],
    ids=lambda c: "-".join(map(str, c)),
)
def test_log_likelihood_and_predict_vs_dense(case):
    name, k, gp, t, y, tt, noise, mean_fn = _setup(case)
    ll_d, mu_d, cov_d = dense_gp(_probdyn_dense(k), t, y, noise, mean_fn, tt)
    ll_t, mu_t, var_t = tinygp_reference(name, PARAMS, t, y, noise, mean_fn, tt)
    # the two references agree (sanity of the references themselves)
    np.testing.assert_allclose(ll_d, ll_t, rtol=1e-10)
    np.testing.assert_allclose(mu_d, mu_t, rtol=1e-9, atol=1e-10)

    ll = _ll(gp, jnp.asarray(y))
    np.testing.assert_allclose(float(ll), ll_d, rtol=1e-8)
    np.testing.assert_allclose(float(ll), ll_t, rtol=1e-8)
    mu, var = _predict(gp, jnp.asarray(y), jnp.asarray(tt))
    assert mu.shape == var.shape == tt.shape
    scale = PARAMS["s2"]
    np.testing.assert_allclose(mu, mu_d, rtol=1e-8, atol=1e-9 * scale)
    np.testing.assert_allclose(var, np.diag(cov_d), rtol=1e-8, atol=1e-9 * scale)
    np.testing.assert_allclose(mu, mu_t, rtol=1e-8, atol=1e-9 * scale)
    np.testing.assert_allclose(var, var_t, rtol=1e-7, atol=1e-9 * scale)


@pytest.mark.slow
def test_parallel_schedule_matches_dense():
    case = GP_CASES[1]
    name, k, gp, t, y, tt, noise, mean_fn = _setup(case, seed=5)
    ll_d, mu_d, cov_d = dense_gp(_probdyn_dense(k), t, y, noise, mean_fn, tt)
    np.testing.assert_allclose(float(_ll(gp, jnp.asarray(y), parallel=True)), ll_d, rtol=1e-8)
    mu, var = _predict(gp, jnp.asarray(y), jnp.asarray(tt), parallel=True)
    np.testing.assert_allclose(mu, mu_d, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(var, np.diag(cov_d), rtol=1e-8, atol=1e-9)
    # to_ssm: state-space model on the data grid
    ssm = gp.to_ssm()
    assert ssm.transition_matrix.shape == (t.size - 1, k.state_dim, k.state_dim)


# ----------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------
def _check_moments(samples, mean, cov, n):
    samples = np.asarray(samples)
    emp_mean = samples.mean(0)
    emp_cov = np.cov(samples.T)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(emp_mean - mean) < 5 * sd / np.sqrt(n) + 1e-12)
    se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    assert np.all(np.abs(emp_cov - cov) < 5 * se + 1e-12)


def test_prior_and_posterior_samples_moments():
    case = GP_CASES[1]  # Matérn-3/2, per-point noise, callable mean, NaN in y
    name, k, gp, t, y, tt, noise, mean_fn = _setup(case, seed=3)
    n = 8000
    key = jax.random.PRNGKey(0)
    # prior at the data times
    prior = _sample(gp, key, n, None, None)
    assert prior.shape == (n, t.size)
    _check_moments(prior, mean_fn(t), np.asarray(k.covariance(jnp.asarray(t))), n)
    # posterior at (unsorted) test times
    post = _sample(gp, jax.random.PRNGKey(1), n, jnp.asarray(y), jnp.asarray(tt))
    assert post.shape == (n, tt.size)
    _, mu_d, cov_d = dense_gp(_probdyn_dense(k), t, y, noise, mean_fn, tt)
    _check_moments(post, mu_d, cov_d, n)


# ----------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------
def test_bad_inputs_raise():
    k = kernels.Matern32(1.0)
    t = jnp.linspace(0, 1, 5)
    with pytest.raises(ValueError):
        MarkovGP(k, jnp.array([0.0, 2.0, 1.0]))  # unsorted
    with pytest.raises(ValueError):
        MarkovGP(k, jnp.array([0.0, 1.0, 1.0, 2.0]))  # duplicate
    with pytest.raises(ValueError):
        MarkovGP(k, jnp.ones((3, 2)))  # 2-D times
    with pytest.raises(ValueError):
        MarkovGP(k, jnp.array([0.0, jnp.nan, 2.0]))
    with pytest.raises(ValueError):
        MarkovGP(k, t, noise=jnp.ones(4))  # wrong noise length
    with pytest.raises(ValueError):
        MarkovGP(k, t, noise=-0.1)
    with pytest.raises(ValueError):
        MarkovGP(k, t, noise=jnp.ones((5, 1)))
    with pytest.raises(TypeError):
        MarkovGP("matern", t)
    gp = MarkovGP(k, t, noise=0.1)
    for bad in (jnp.ones(4), jnp.ones((5, 1)), jnp.ones(6)):
        with pytest.raises(ValueError):
            gp.log_likelihood(bad, parallel=False)
        with pytest.raises(ValueError):
            gp.predict(bad, jnp.array([0.5]), parallel=False)
    with pytest.raises(ValueError):
        gp.log_likelihood(jnp.ones(5).at[2].set(jnp.inf), parallel=False)


# ----------------------------------------------------------------------------------
# Property-based: random grids, kernels and parameters vs the dense reference
# ----------------------------------------------------------------------------------
KERNEL_FACTORIES = {
    "matern12": lambda a, b, c: kernels.Matern12(a, b),
    "matern32": lambda a, b, c: kernels.Matern32(a, b),
    "matern52": lambda a, b, c: kernels.Matern52(a, b),
    "sho": lambda a, b, c: kernels.SHO(2.0 / a, c, b),
}


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(
    n=st.just(16),  # one size: each new shape recompiles
    gaps=st.lists(st.floats(0.05, 3.0), min_size=16, max_size=16),
    kname=st.sampled_from(sorted(KERNEL_FACTORIES)),
    ell=st.floats(0.1, 10.0),
    s2=st.floats(0.1, 5.0),
    quality=st.floats(0.1, 5.0),
    noise=st.floats(1e-3, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_log_likelihood_vs_dense(n, gaps, kname, ell, s2, quality, noise, seed):
    t = np.cumsum(np.asarray(gaps[:n])) - gaps[0]
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n) * np.sqrt(s2)
    k = KERNEL_FACTORIES[kname](ell, s2, quality)
    gp = MarkovGP(k, jnp.asarray(t), noise=noise)
    ll_d, _, _ = dense_gp(_probdyn_dense(k), t, y, noise, lambda x: np.zeros_like(x), t[:1])
    np.testing.assert_allclose(float(_ll(gp, jnp.asarray(y))), ll_d, rtol=1e-8)


# ----------------------------------------------------------------------------------
# Coefficient form of the Matérn transitions (the fused filter's fast input)
# ----------------------------------------------------------------------------------
def _dense_ll_jax(k, t, y, noise):
    """Dense Cholesky log-likelihood in JAX (differentiable reference), NaN-free ``y``."""
    K = k.covariance(t) + noise * jnp.eye(t.shape[0])
    L = jnp.linalg.cholesky(K)
    z = jax.scipy.linalg.solve_triangular(L, y, lower=True)
    return -0.5 * z @ z - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * t.shape[0] * jnp.log(2 * jnp.pi)


@pytest.mark.slow
@pytest.mark.parametrize("kname", ["Matern12", "Matern52"])  # Matern32: through every other MarkovGP test
def test_transition_basis_values_gradients_and_float32(kname):
    from probdyn.inference import kalman
    from probdyn.ssm import TransitionBasis

    rng = np.random.default_rng(11)
    n = 60
    # irregular grid from tiny (series branch) to long steps (exp(-x) underflow branch)
    t = np.cumsum(np.concatenate([[0.0], rng.choice([1e-7, 1e-3, 0.05, 0.4, 30.0], n - 1)]))
    y = np.sin(t) + 0.3 * rng.normal(size=n)
    kc = getattr(kernels, kname)
    p0 = jnp.array([np.log(0.7), np.log(1.3), np.log(0.05)])

    def make(p, dtype=jnp.float64):
        k = kc(jnp.exp(p[0]).astype(dtype), jnp.exp(p[1]).astype(dtype))
        return MarkovGP(k, jnp.asarray(t, dtype), noise=jnp.exp(p[2]).astype(dtype))

    gp = make(p0)
    basis = gp.kernel.transition_basis(jnp.diff(gp.times))
    assert isinstance(basis, TransitionBasis) and basis.num_steps == n - 1
    # the basis reproduces the exact discretisation: A = expm(F dt), Q = Pinf - A Pinf A^T
    A, Q = basis.dense()
    F, P = np.asarray(gp.kernel.feedback()), np.asarray(gp.kernel.stationary_cov())
    for i in [0, 1, 2, 5, 7]:
        Ae = sla.expm(F * (t[i + 1] - t[i]))
        np.testing.assert_allclose(A[i], Ae, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(Q[i], P - Ae @ P @ Ae.T, rtol=1e-6, atol=1e-9)

    # log-likelihood and gradient (through the fused filter's custom VJP and the
    # coefficient functions) against autodiff of a dense Cholesky GP
    f = jax.jit(lambda p: make(p).log_likelihood(jnp.asarray(y)))
    ref = jax.jit(lambda p: _dense_ll_jax(make(p).kernel, jnp.asarray(t), jnp.asarray(y), jnp.exp(p[2])))
    np.testing.assert_allclose(float(f(p0)), float(ref(p0)), rtol=1e-9)
    np.testing.assert_allclose(jax.grad(f)(p0), jax.grad(ref)(p0), rtol=1e-6, atol=1e-8)
    # the same model without the basis (dense A, Q through the engine) agrees
    ssm = gp.to_ssm()
    assert ssm.transition_basis is None and gp.to_ssm(transition_basis=True).transition_basis is not None
    np.testing.assert_allclose(
        float(kalman.log_likelihood(ssm, jnp.asarray(y), parallel=False)), float(f(p0)), rtol=1e-12
    )
    # smoother through the basis path vs the dense posterior
    ll_d, mu_d, cov_d = dense_gp(_probdyn_dense(gp.kernel), t, y, float(jnp.exp(p0[2])), lambda s: 0.0 * s, t[::7])
    mu, var = _predict(gp, jnp.asarray(y), jnp.asarray(t[::7]))
    np.testing.assert_allclose(mu, mu_d, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(var, np.diag(cov_d), rtol=1e-6, atol=1e-9)
    # float32 through the same path: finite and close to float64
    l32 = jax.jit(lambda p: make(p, jnp.float32).log_likelihood(jnp.asarray(y, jnp.float32)))(p0)
    assert l32.dtype == jnp.float32 and np.isfinite(float(l32))
    np.testing.assert_allclose(float(l32), float(f(p0)), rtol=1e-4)


def test_transition_basis_validation():
    from probdyn import LinearGaussianSSM
    from probdyn.ssm import TransitionBasis

    k = kernels.Matern32(1.0, 1.0)
    b = k.transition_basis(jnp.array([0.1, 0.2, 0.3]))
    A, Q = b.dense()
    P = k.stationary_cov()
    with pytest.raises(ValueError, match="transition_basis"):
        LinearGaussianSSM(jnp.zeros(2), P, A[:2], Q[:2], k.observation(), jnp.eye(1), b)
    with pytest.raises(ValueError, match="one coefficient column per basis matrix"):
        TransitionBasis(b.a[:1], b.q, b.basis_a, b.basis_q)
    with pytest.raises(ValueError, match="equally long"):
        TransitionBasis((b.a[0], b.a[1][:2]), b.q, b.basis_a, b.basis_q)


# ----------------------------------------------------------------------------------
# Zero-length and very short steps, every state dimension (unrolled and loop branches)
# ----------------------------------------------------------------------------------
def _kernel_of_dim(d, dtype):
    p = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    m32 = lambda ell, s2: kernels.Matern32(p(ell), p(s2))  # noqa: E731
    per = lambda order: kernels.Periodic(p(1.3), p(1.0), p(1.0), order=order)  # noqa: E731
    return {
        2: m32(0.7, 1.0),
        24: m32(0.7, 1.0) * per(5) + m32(2.0, 0.5),  # 22 + 2: the largest unrolled size
        25: per(12),  # Q = 0 at every step (deterministic rotations)
        39: kernels.Matern52(p(2.0), p(1.0)) * per(6),  # the product kernel
    }[d]


# d = 24 (the unrolled branch's largest size) compiles for ~100 s; d > 24 (12-16 s each) runs in the slow
# tier here and through tests/test_linalg.py's loop-branch checks (d = 25, 40) in the fast tier
@pytest.mark.parametrize(
    "d,dtype",
    [
        (2, "float64"),
        (2, "float32"),
        pytest.param(39, "float64", marks=pytest.mark.slow),
        pytest.param(25, "float64", marks=pytest.mark.slow),
        pytest.param(25, "float32", marks=pytest.mark.slow),
        pytest.param(39, "float32", marks=pytest.mark.slow),
        pytest.param(24, "float64", marks=pytest.mark.slow),
        pytest.param(24, "float32", marks=pytest.mark.slow),
    ],
)
def test_predict_at_and_next_to_data_times_every_state_dim(d, dtype):
    """Test times equal to data times and 1e-12 away (zero-length and cancellation-level
    steps) against dense GP conditioning with the same (truncated) kernel. float32: the
    dense reference's condition number (~1e4 here, noise 0.01) times eps32 (1.2e-7) sets
    the tolerance."""
    dt = jnp.dtype(dtype)
    k = _kernel_of_dim(d, dt)
    assert k.state_dim == d
    rng = np.random.default_rng(d)
    t = np.sort(rng.uniform(0, 5, 40))
    y = np.sin(3 * t) + 0.1 * rng.normal(size=40)
    y[[7, 20]] = np.nan
    tt = np.concatenate([t[::5], t[1::7] + 1e-12, [t[3] - 1e-12], t[[7, 20]]])  # incl. times of missing values
    gp = MarkovGP(k, jnp.asarray(t, dt), noise=jnp.asarray(0.01, dt))
    ll_d, mu_d, cov_d = dense_gp(_probdyn_dense(k), t, y, 0.01, lambda s: 0.0 * s, tt)
    mu, var = _predict(gp, jnp.asarray(y, dt), jnp.asarray(tt, dt))
    ll = _ll(gp, jnp.asarray(y, dt))
    assert mu.dtype == dt and np.all(np.isfinite(mu)) and np.all(np.isfinite(var))
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == "float64" else dict(rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(mu, mu_d, **tol)
    np.testing.assert_allclose(var, np.diag(cov_d), rtol=tol["rtol"], atol=tol["atol"] / 10)
    np.testing.assert_allclose(float(ll), ll_d, rtol=1e-9 if dtype == "float64" else 1e-4)


@pytest.mark.parametrize("name", ["matern52", "sum_m32_cos"])
def test_kernel_to_ssm_marginal_matches_dense_gram(name):
    """``Kernel.to_ssm`` (what MarkovGP and MarkovGPDistribution both build on): the Kalman
    marginal of its observations is N(0, K + diag(noise)) built from the dense Gram matrix."""
    from probdyn.inference import kalman

    t, y, _ = _problem(3, nan=False)
    noise = np.random.default_rng(4).uniform(0.01, 0.2, t.size)
    k = _probdyn_kernel(name, PARAMS)
    C = np.asarray(k.covariance(jnp.asarray(t))) + np.diag(noise)
    ref = float(sla.cho_solve(sla.cho_factor(C), y) @ y)
    ref = -0.5 * (ref + np.linalg.slogdet(C)[1] + t.size * np.log(2 * np.pi))
    for basis in (False, True):
        ssm = k.to_ssm(jnp.asarray(t), jnp.asarray(noise), transition_basis=basis)
        ll = float(kalman.log_likelihood(ssm, jnp.asarray(y)[:, None]))
        np.testing.assert_allclose(ll, ref, rtol=1e-9)
