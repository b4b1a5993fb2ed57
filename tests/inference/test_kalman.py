"""Tests for probdyn.inference.kalman (filter, RTS smoother, sampler, log-likelihood).

Independent references:

* dynamax's covariance-form Kalman filter / RTS smoother (different code base, different
  conventions: dynamax's ``dynamics.weights[t]`` maps ``z_{t-1} -> z_t`` with entry 0
  ignored, and its emissions/dynamics carry bias and input terms that we set to zero);
* a dense Gaussian reference: the joint covariance of all states and observations,
  conditioned with NumPy (handles NaN rows and single NaN entries exactly);
* statsmodels' local-level model on the Nile data with a known initial state;
* central finite differences for gradients; Monte Carlo moments for the sampler.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from probdyn import LinearGaussianSSM, MarkovGP, kernels  # noqa: E402
from probdyn.inference import kalman  # noqa: E402

# The engine is compiled once per (shapes, schedule); eager execution of the unrolled
# square-root algebra is slow, so the tests call jitted entry points and reuse shapes.
_smoother = jax.jit(kalman.smoother, static_argnames="parallel")
_filter = jax.jit(kalman.filter, static_argnames="parallel")
_loglik = jax.jit(kalman.log_likelihood, static_argnames="parallel")
_sample = jax.jit(kalman.sample, static_argnames=("num_samples", "parallel"))


# ----------------------------------------------------------------------------------
# Random models
# ----------------------------------------------------------------------------------
def _spd(rng, n, scale=1.0):
    B = rng.normal(size=(n, n))
    return scale * (B @ B.T / n + 0.2 * np.eye(n))


def _stable(rng, d):
    A = rng.normal(size=(d, d))
    return 0.95 * A / max(1.0, np.max(np.abs(np.linalg.eigvals(A))))


def random_model(seed, d, m, T, tv_trans=False, tv_emis=False):
    """NumPy arrays of a random LGSSM; time-varying arrays have leading axis T-1 / T."""
    rng = np.random.default_rng(seed)
    m0 = rng.normal(size=d)
    P0 = _spd(rng, d)
    if tv_trans:
        A = np.stack([_stable(rng, d) for _ in range(T - 1)])
        Q = np.stack([_spd(rng, d, 0.3) for _ in range(T - 1)])
    else:
        A, Q = _stable(rng, d), _spd(rng, d, 0.3)
    if tv_emis:
        H = rng.normal(size=(T, m, d))
        R = np.stack([_spd(rng, m, 0.5) for _ in range(T)])
    else:
        H, R = rng.normal(size=(m, d)), _spd(rng, m, 0.5)
    return dict(m0=m0, P0=P0, A=A, Q=Q, H=H, R=R)


def to_ssm(mdl, dtype=jnp.float64):
    c = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return LinearGaussianSSM(c(mdl["m0"]), c(mdl["P0"]), c(mdl["A"]), c(mdl["Q"]), c(mdl["H"]), c(mdl["R"]))


def simulate(mdl, T, seed):
    rng = np.random.default_rng(seed + 1000)
    A, Q, H, R = (_per_step(mdl, k, T) for k in "AQHR")
    x = rng.multivariate_normal(mdl["m0"], mdl["P0"])
    ys = []
    for t in range(T):
        if t > 0:
            x = A[t - 1] @ x + rng.multivariate_normal(np.zeros(len(x)), Q[t - 1])
        ys.append(H[t] @ x + rng.multivariate_normal(np.zeros(H[t].shape[0]), R[t]))
    return np.array(ys)


def _per_step(mdl, key, T):
    x = mdl[key]
    n = T - 1 if key in "AQ" else T
    return x if x.ndim == 3 else np.broadcast_to(x, (n,) + x.shape)


# ----------------------------------------------------------------------------------
# Dense reference
# ----------------------------------------------------------------------------------
def dense_reference(mdl, y):
    """Exact log-likelihood, filtered and smoothed marginals by dense conditioning."""
    y = np.asarray(y, float)
    T, m = y.shape
    d = mdl["m0"].shape[0]
    A, Q, H, R = (_per_step(mdl, k, T) for k in "AQHR")
    mu = np.zeros((T, d))
    mu[0] = mdl["m0"]
    # Sigma[t, s] blocks via marginal covariances and propagation
    P = [mdl["P0"]]
    for t in range(1, T):
        mu[t] = A[t - 1] @ mu[t - 1]
        P.append(A[t - 1] @ P[-1] @ A[t - 1].T + Q[t - 1])
    S = np.zeros((T * d, T * d))
    for s in range(T):
        C = P[s]
        S[s * d : (s + 1) * d, s * d : (s + 1) * d] = C
        for t in range(s + 1, T):
            C = A[t - 1] @ C
            S[t * d : (t + 1) * d, s * d : (s + 1) * d] = C
            S[s * d : (s + 1) * d, t * d : (t + 1) * d] = C.T
    Hb = np.zeros((T * m, T * d))
    Rb = np.zeros((T * m, T * m))
    for t in range(T):
        Hb[t * m : (t + 1) * m, t * d : (t + 1) * d] = H[t]
        Rb[t * m : (t + 1) * m, t * m : (t + 1) * m] = R[t]
    muX = mu.reshape(-1)
    muY = Hb @ muX
    Syy = Hb @ S @ Hb.T + Rb
    Sxy = S @ Hb.T
    yv = y.reshape(-1)
    obs = ~np.isnan(yv)
    time_of = np.repeat(np.arange(T), m)

    def condition(sel):
        if not np.any(sel):
            return muX, S
        K = np.linalg.solve(Syy[np.ix_(sel, sel)], Sxy[:, sel].T).T
        return muX + K @ (yv[sel] - muY[sel]), S - K @ Sxy[:, sel].T

    ll = 0.0
    if np.any(obs):
        ll = stats.multivariate_normal(muY[obs], Syy[np.ix_(obs, obs)]).logpdf(yv[obs])
    ms, Ps = condition(obs)
    sm_mean = ms.reshape(T, d)
    sm_cov = np.stack([Ps[t * d : (t + 1) * d, t * d : (t + 1) * d] for t in range(T)])
    f_mean, f_cov = np.zeros((T, d)), np.zeros((T, d, d))
    for t in range(T):
        mf, Pf = condition(obs & (time_of <= t))
        f_mean[t] = mf[t * d : (t + 1) * d]
        f_cov[t] = Pf[t * d : (t + 1) * d, t * d : (t + 1) * d]
    return dict(ll=ll, f_mean=f_mean, f_cov=f_cov, s_mean=sm_mean, s_cov=sm_cov)


# ----------------------------------------------------------------------------------
# dynamax reference
# ----------------------------------------------------------------------------------
def dynamax_params(mdl, T):
    from dynamax.linear_gaussian_ssm.inference import (
        ParamsLGSSM,
        ParamsLGSSMDynamics,
        ParamsLGSSMEmissions,
        ParamsLGSSMInitial,
    )

    d = mdl["m0"].shape[0]
    m = mdl["H"].shape[-2]
    A, Q = mdl["A"], mdl["Q"]
    if A.ndim == 3:  # dynamax: weights[t] maps z_{t-1} -> z_t, entry 0 ignored
        A = np.concatenate([np.eye(d)[None], A])
        Q = np.concatenate([np.eye(d)[None], Q])
    j = jnp.asarray
    return ParamsLGSSM(
        initial=ParamsLGSSMInitial(mean=j(mdl["m0"]), cov=j(mdl["P0"])),
        dynamics=ParamsLGSSMDynamics(weights=j(A), bias=jnp.zeros(d), input_weights=jnp.zeros((d, 0)), cov=j(Q)),
        emissions=ParamsLGSSMEmissions(
            weights=j(mdl["H"]), bias=jnp.zeros(m), input_weights=jnp.zeros((m, 0)), cov=j(mdl["R"])
        ),
    )


DYNAMAX_CASES = [
    # (seed, d, m, T, tv_trans, tv_emis)
    (0, 1, 1, 12, False, False),
    (1, 2, 2, 12, True, True),
    (2, 3, 2, 12, True, False),
    (3, 4, 3, 12, False, True),
]


# XLA compile time of the engine grows steeply with (d, m), especially for the parallel
# schedule (~30 s for d=4, m=3 on 2 CPU cores); the largest case runs sequentially only,
# parallel == sequential is checked separately.
SCHEDULES = [(c, p) for c in DYNAMAX_CASES for p in (False, True) if not (p and c[1] == 4)]


@pytest.mark.parametrize(
    "case,parallel",
    SCHEDULES,
    ids=lambda c: "s{}_d{}_m{}_T{}_tvA{}_tvH{}".format(*c) if isinstance(c, tuple) else f"par{c}",
)
def test_against_dynamax(case, parallel):
    from dynamax.linear_gaussian_ssm.inference import lgssm_smoother

    seed, d, m, T, tvt, tve = case
    mdl = random_model(seed, d, m, T, tvt, tve)
    y = simulate(mdl, T, seed)
    ref = lgssm_smoother(dynamax_params(mdl, T), jnp.asarray(y))
    ssm = to_ssm(mdl)
    s = _smoother(ssm, jnp.asarray(y), parallel=parallel)
    f = s.filtered
    # dynamax's covariance-form recursions are themselves accurate to ~1e-9 here (checked
    # against the dense reference below, which probdyn matches to ~1e-15)
    tol = dict(rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(f.mean, ref.filtered_means, **tol)
    np.testing.assert_allclose(f.cov, ref.filtered_covariances, **tol)
    np.testing.assert_allclose(f.chol @ jnp.swapaxes(f.chol, -1, -2), ref.filtered_covariances, **tol)
    np.testing.assert_allclose(s.mean, ref.smoothed_means, **tol)
    np.testing.assert_allclose(s.cov, ref.smoothed_covariances, **tol)
    np.testing.assert_allclose(f.log_likelihood, ref.marginal_loglik, rtol=1e-9)
    np.testing.assert_allclose(s.log_likelihood, ref.marginal_loglik, rtol=1e-9)
    dense = dense_reference(mdl, y)
    np.testing.assert_allclose(s.mean, dense["s_mean"], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(s.cov, dense["s_cov"], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(s.log_likelihood, dense["ll"], rtol=1e-11)


# ----------------------------------------------------------------------------------
# Dense reference with missing data
# ----------------------------------------------------------------------------------
def _with_nans(y, seed, rows=True, entries=True):
    rng = np.random.default_rng(seed)
    y = y.copy()
    T, m = y.shape
    if rows:
        y[rng.choice(np.arange(1, T), size=max(1, T // 5), replace=False)] = np.nan
        y[0] = np.nan  # first row missing (prior must pass through)
    if entries and m > 1:
        for _ in range(T // 3):
            t = rng.integers(T)
            y[t, rng.integers(m)] = np.nan
    return y


NAN_CASES = [  # same shapes as DYNAMAX_CASES (compiled code is reused)
    (10, 1, 1, 12, False, False, True, False),
    (11, 2, 2, 12, True, True, True, True),
    (12, 3, 2, 12, True, False, False, True),
    (13, 4, 3, 12, False, True, True, True),
]


@pytest.mark.parametrize(
    "case,parallel",
    [(c, p) for c in NAN_CASES for p in (False, True) if not (p and c[1] == 4)],
    ids=lambda c: "s{}_d{}_m{}".format(*c[:3]) if isinstance(c, tuple) else f"par{c}",
)
def test_missing_data_against_dense(case, parallel):
    seed, d, m, T, tvt, tve, rows, entries = case
    mdl = random_model(seed, d, m, T, tvt, tve)
    y = _with_nans(simulate(mdl, T, seed), seed, rows, entries)
    ref = dense_reference(mdl, y)
    ssm = to_ssm(mdl)
    s = _smoother(ssm, jnp.asarray(y), parallel=parallel)
    tol = dict(rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(s.filtered.mean, ref["f_mean"], **tol)
    np.testing.assert_allclose(s.filtered.cov, ref["f_cov"], **tol)
    np.testing.assert_allclose(s.mean, ref["s_mean"], **tol)
    np.testing.assert_allclose(s.cov, ref["s_cov"], **tol)
    np.testing.assert_allclose(s.log_likelihood, ref["ll"], rtol=1e-10)


@pytest.mark.parametrize("parallel", [False, True])
def test_all_missing_and_single_step(parallel):
    mdl = random_model(20, 2, 2, 12, True, True)
    ssm = to_ssm(mdl)
    y = np.full((12, 2), np.nan)
    s = _smoother(ssm, jnp.asarray(y), parallel=parallel)
    ref = dense_reference(mdl, y)
    assert float(s.log_likelihood) == 0.0
    np.testing.assert_allclose(s.mean, ref["s_mean"], atol=1e-12)
    np.testing.assert_allclose(s.cov, ref["s_cov"], rtol=1e-10, atol=1e-12)
    # T = 1 (time-invariant model: no transitions at all)
    mdl = random_model(21, 2, 2, 1)
    ssm = to_ssm(mdl)
    y1 = simulate(mdl, 1, 20)
    ref1 = dense_reference(mdl, y1)
    s1 = kalman.smoother(ssm, jnp.asarray(y1), parallel=parallel)
    np.testing.assert_allclose(s1.mean, ref1["s_mean"], rtol=1e-10)
    np.testing.assert_allclose(s1.cov, ref1["s_cov"], rtol=1e-10)
    np.testing.assert_allclose(s1.log_likelihood, ref1["ll"], rtol=1e-12)
    x = kalman.sample(jax.random.PRNGKey(0), ssm, jnp.asarray(y1), 3, parallel=parallel)
    assert x.shape == (3, 1, 2) and np.all(np.isfinite(x))


# ----------------------------------------------------------------------------------
# statsmodels: local level model on the Nile data
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_nile_local_level_against_statsmodels():
    import statsmodels.api as sm
    from statsmodels.datasets import nile

    y = nile.load_pandas().data["volume"].to_numpy(dtype=float)
    y = y.copy()
    y[[20, 21, 60]] = np.nan  # statsmodels handles missing values too
    s2_eps, s2_eta, a1, p1 = 15099.0, 1469.1, 1000.0, 1e4
    mod = sm.tsa.UnobservedComponents(y, "llevel")
    # known (not approximate-diffuse) initial distribution of the level at the first time
    mod.ssm.initialize_known(np.array([a1]), np.array([[p1]]))
    mod.loglikelihood_burn = 0
    res = mod.smooth([s2_eps, s2_eta])
    ssm = LinearGaussianSSM(
        jnp.array([a1]), jnp.array([[p1]]), jnp.eye(1), jnp.array([[s2_eta]]), jnp.eye(1), jnp.array([[s2_eps]])
    )
    for parallel in (False, True):
        s = _smoother(ssm, jnp.asarray(y)[:, None], parallel=parallel)
        np.testing.assert_allclose(s.log_likelihood, res.llf, rtol=1e-10)
        np.testing.assert_allclose(s.log_likelihood, np.nansum(res.llf_obs), rtol=1e-10)
        np.testing.assert_allclose(s.mean[:, 0], res.smoothed_state[0], rtol=1e-10)
        np.testing.assert_allclose(s.cov[:, 0, 0], res.smoothed_state_cov[0, 0], rtol=1e-9)
        np.testing.assert_allclose(s.filtered.mean[:, 0], res.filtered_state[0], rtol=1e-10)
        np.testing.assert_allclose(s.filtered.cov[:, 0, 0], res.filtered_state_cov[0, 0], rtol=1e-9)


# ----------------------------------------------------------------------------------
# Parallel == sequential; sampler
# ----------------------------------------------------------------------------------
def test_parallel_equals_sequential():
    seed, d, m, T = 30, 2, 2, 12
    mdl = random_model(seed, d, m, T, True, True)
    y = _with_nans(simulate(mdl, T, seed), seed)
    ssm = to_ssm(mdl)
    yj = jnp.asarray(y)
    ss, sp = _smoother(ssm, yj, parallel=False), _smoother(ssm, yj, parallel=True)
    fs, fp = ss.filtered, sp.filtered
    tol = dict(rtol=1e-10, atol=1e-10)
    for a, b in [(fs.mean, fp.mean), (fs.cov, fp.cov), (fs.chol, fp.chol), (ss.mean, sp.mean), (ss.cov, sp.cov)]:
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(fs.log_likelihood, fp.log_likelihood, rtol=1e-12)
    # the stand-alone entry points agree with the smoother's filter pass
    f = _filter(ssm, yj, parallel=False)
    np.testing.assert_allclose(f.mean, fs.mean, **tol)
    np.testing.assert_allclose(f.cov, fs.cov, **tol)
    np.testing.assert_allclose(_loglik(ssm, yj, parallel=True), fs.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(_loglik(ssm, yj, parallel=False), fs.log_likelihood, rtol=1e-12)


@pytest.mark.slow
def test_sampler_parallel_equals_sequential_and_moments():
    """Same key -> same paths in both schedules; moments match the dense posterior."""
    seed, d, m, T = 40, 2, 2, 12
    mdl = random_model(seed, d, m, T, True, True)
    y = _with_nans(simulate(mdl, T, seed), seed)
    ssm = to_ssm(mdl)
    ref = dense_reference(mdl, y)
    n = 20000
    key = jax.random.PRNGKey(7)
    xs = np.asarray(_sample(key, ssm, jnp.asarray(y), num_samples=n, parallel=False))
    xp = np.asarray(_sample(key, ssm, jnp.asarray(y), num_samples=n, parallel=True))
    assert xs.shape == (n, T, d)
    np.testing.assert_allclose(xs, xp, rtol=1e-10, atol=1e-10)
    flat = xs.reshape(n, T * d)
    emp_mean = flat.mean(0)
    emp_cov = np.cov(flat.T)
    # joint posterior moments vs the dense reference, within ~5 Monte Carlo std errors
    sd = np.sqrt(np.diag(emp_cov))
    assert np.all(np.abs(emp_mean - ref["s_mean"].reshape(-1)) < 5 * sd / np.sqrt(n))
    marg = np.stack([emp_cov[t * d : (t + 1) * d, t * d : (t + 1) * d] for t in range(T)])
    Sc = ref["s_cov"]
    se = np.sqrt((Sc**2 + np.einsum("tii,tjj->tij", Sc, Sc)) / n)
    assert np.all(np.abs(marg - Sc) < 5 * se + 1e-12)
    # different keys give different samples
    x2 = _sample(jax.random.PRNGKey(8), ssm, jnp.asarray(y), num_samples=n, parallel=False)
    assert not np.allclose(x2[0], xs[0])


# ----------------------------------------------------------------------------------
# Gradients, jit, vmap
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_gradients_match_finite_differences(parallel):
    seed, d, m, T = 50, 2, 1, 12
    mdl = random_model(seed, d, m, T)
    y = _with_nans(simulate(mdl, T, seed), seed, rows=True, entries=True)
    yj = jnp.asarray(y)
    names = ["m0", "P0", "A", "Q", "H", "R"]
    params = {k: jnp.asarray(mdl[k]) for k in names}

    @jax.jit
    def f(p):
        ssm = LinearGaussianSSM(p["m0"], p["P0"], p["A"], p["Q"], p["H"], p["R"])
        return kalman.log_likelihood(ssm, yj, parallel=parallel)

    g = jax.grad(f)(params)
    h = 1e-6
    for k in names:
        base = np.asarray(params[k])
        fd = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            e = np.zeros_like(base)
            e[idx] = h
            fp = f({**params, k: jnp.asarray(base + e)})
            fm = f({**params, k: jnp.asarray(base - e)})
            fd[idx] = (fp - fm) / (2 * h)
        np.testing.assert_allclose(g[k], fd, rtol=1e-6, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_jit_and_vmap_match_loop():
    seed, d, m, T = 60, 2, 2, 12
    mdl = random_model(seed, d, m, T, True, True)
    ssm = to_ssm(mdl)
    ys = np.stack([_with_nans(simulate(mdl, T, seed + i), seed + i) for i in range(3)])
    y0 = jnp.asarray(ys[0])
    # jit == eager (one eager call: eager execution is slow)
    np.testing.assert_allclose(
        kalman.log_likelihood(ssm, y0, parallel=False), _loglik(ssm, y0, parallel=False), rtol=1e-13
    )
    for parallel in (False, True):
        loop = [_smoother(ssm, jnp.asarray(y), parallel=parallel) for y in ys]
        vm = jax.jit(jax.vmap(lambda y: _smoother(ssm, y, parallel=parallel)))(jnp.asarray(ys))
        np.testing.assert_allclose(vm.log_likelihood, [r.log_likelihood for r in loop], rtol=1e-12)
        np.testing.assert_allclose(vm.mean, np.stack([r.mean for r in loop]), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(vm.cov, np.stack([r.cov for r in loop]), rtol=1e-11, atol=1e-12)
        for i, y in enumerate(ys):
            np.testing.assert_allclose(vm.log_likelihood[i], dense_reference(mdl, y)["ll"], rtol=1e-10)
    # vmap over parameters: a batch of whole models (pytrees with stacked arrays)
    models = [random_model(70 + i, d, m, T, True, True) for i in range(3)]
    ssms = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[to_ssm(md) for md in models])
    ll_b = jax.jit(jax.vmap(lambda s: _loglik(s, y0, parallel=False)))(ssms)
    for i in range(3):
        np.testing.assert_allclose(ll_b[i], _loglik(to_ssm(models[i]), y0, parallel=False), rtol=1e-12)
        np.testing.assert_allclose(ll_b[i], dense_reference(models[i], ys[0])["ll"], rtol=1e-10)


# ----------------------------------------------------------------------------------
# float32 stress test
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stress_data():
    rng = np.random.default_rng(123)
    n = 10_000
    t = np.cumsum(0.2 + rng.exponential(0.8, n))  # irregular, min spacing 0.2 (> float32 resolution)
    t -= t[0]
    ell = 1e3 * np.median(np.diff(t))
    f = np.sin(2 * np.pi * t / (0.3 * ell)) + 0.5 * np.cos(2 * np.pi * t / (0.07 * ell))
    y = f + 0.1 * rng.normal(size=n)
    # both precisions see the same (float32-representable) inputs
    return t.astype(np.float32).astype(float), y.astype(np.float32).astype(float), float(np.float32(ell))


@pytest.mark.parametrize("parallel", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_float32_long_lengthscale_stress(stress_data, parallel):
    t, y, ell = stress_data

    def ll(dtype):
        c = lambda x: jnp.asarray(x, dtype)  # noqa: E731
        k = kernels.Matern52(lengthscale=c(ell), variance=c(1.0))
        gp = MarkovGP(k, c(t), noise=c(0.01))
        return jax.jit(lambda gp, y: gp.log_likelihood(y, parallel=parallel))(gp, c(y))

    l64 = float(ll(jnp.float64))
    l32 = ll(jnp.float32)
    assert l32.dtype == jnp.float32
    assert np.isfinite(float(l32))
    assert abs(float(l32) - l64) <= 1e-3 * abs(l64), (float(l32), l64)


# ----------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------
def test_bad_inputs_raise():
    T, d, m = 6, 2, 2
    mdl = random_model(80, d, m, T)
    ssm = to_ssm(mdl)
    y = jnp.asarray(simulate(mdl, T, 80))
    for fn in (kalman.filter, kalman.smoother, kalman.log_likelihood):
        for par in (False, True):
            with pytest.raises(ValueError):
                fn(ssm, y[:, :1], parallel=par)  # wrong obs dim
            with pytest.raises(ValueError):
                fn(ssm, y[:, 0], parallel=par)  # 1-D but obs_dim 2
            with pytest.raises(ValueError):
                fn(ssm, y[None], parallel=par)  # 3-D
            with pytest.raises(ValueError):
                fn(ssm, y.at[2, 1].set(jnp.inf), parallel=par)
            with pytest.raises(ValueError):
                fn(ssm, y.at[0, 0].set(-jnp.inf), parallel=par)
            with pytest.raises(ValueError):
                fn(ssm, y[:0], parallel=par)  # empty
    with pytest.raises(ValueError):
        kalman.sample(jax.random.PRNGKey(0), ssm, y.at[1, 1].set(jnp.inf))
    # time-varying arrays of the wrong length
    tv = random_model(81, d, m, T, tv_trans=True, tv_emis=True)
    for key, bad in [
        ("A", np.concatenate([tv["A"], tv["A"][:1]])),  # T instead of T-1
        ("Q", tv["Q"][:-1]),
        ("H", tv["H"][:-1]),  # T-1 instead of T
        ("R", np.concatenate([tv["R"], tv["R"][:1]])),
    ]:
        bad_ssm = to_ssm({**tv, key: bad})
        for par in (False, True):
            with pytest.raises(ValueError):
                kalman.filter(bad_ssm, y, parallel=par)
            with pytest.raises(ValueError):
                kalman.log_likelihood(bad_ssm, y, parallel=par)
    # inconsistent shapes at construction
    with pytest.raises(ValueError):
        LinearGaussianSSM(jnp.zeros(2), jnp.eye(3), jnp.eye(2), jnp.eye(2), jnp.ones((1, 2)), jnp.eye(1))
    with pytest.raises(ValueError):
        LinearGaussianSSM(jnp.zeros(2), jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.ones((1, 3)), jnp.eye(1))
    with pytest.raises(ValueError):
        LinearGaussianSSM(jnp.zeros(2), jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.ones((2, 2)), jnp.eye(1))
    with pytest.raises(TypeError):
        kalman.filter("not an ssm", y)


@pytest.mark.slow
def test_checkpointed_chunked_scan_matches_plain(monkeypatch):
    """Long-scan path of the matrix-form schedule (sqrt(T) chunks + jax.checkpoint, padded
    last chunk) gives the plain scan's values and gradients."""
    rng = np.random.default_rng(11)
    mdl = random_model(11, 3, 2, 60, True, False)  # d + p = 5: matrix form
    y = _with_nans(simulate(mdl, 60, 11), 11)

    def run(A):
        f = kalman.filter(to_ssm({**mdl, "A": A}), jnp.asarray(y), form="matrix")
        return f.log_likelihood + 0.1 * jnp.sum(f.mean) + 0.1 * jnp.sum(f.chol)

    A = jnp.asarray(mdl["A"]) + 0.01 * rng.normal(size=mdl["A"].shape)
    ref_v, ref_g = jax.jit(jax.value_and_grad(run))(A)
    monkeypatch.setattr(kalman, "REMAT_MIN_STEPS", 10)  # 59 steps -> 8 chunks of 8, 5 padded
    v, g = jax.jit(jax.value_and_grad(lambda A: run(A)))(A)  # a new function: traced again
    np.testing.assert_allclose(v, ref_v, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------
# The fused step (small models) and the matrix form, each against the dense reference
# ----------------------------------------------------------------------------------
FUSED_CASES = [  # (seed, d, m, T, tv_trans, tv_emis): all have d + m <= FUSED_MAX_DIM
    (90, 1, 1, 9, False, False),
    (91, 2, 1, 9, True, False),
    (92, 3, 1, 9, False, True),
    (93, 2, 2, 9, True, True),
    (94, 1, 3, 9, False, True),
]


def _run_both(mdl, y):
    """Filtered and smoothed moments and both log-likelihoods with ``form="fused"`` and
    ``form="matrix"``."""
    ssm, y = to_ssm(mdl), jnp.asarray(y)
    out = {}
    for form in ("fused", "matrix"):
        f, s = kalman.filter(ssm, y, form=form), kalman.smoother(ssm, y, form=form)
        out[form] = (f.mean, f.cov, f.log_likelihood, s.mean, s.cov, kalman.log_likelihood(ssm, y, form=form))
    return out


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: f"d{c[1]}_m{c[2]}_tvA{c[4]}_tvH{c[5]}")
def test_fused_and_matrix_forms_against_dense(case):
    seed, d, m, T, tvt, tve = case
    mdl = random_model(seed, d, m, T, tvt, tve)
    _check_fused_and_matrix(mdl, _with_nans(simulate(mdl, T, seed), seed, rows=True, entries=True))


@pytest.mark.parametrize("d,h,tvt", [(2, 1.0, True), (3, -1.7, False)])
def test_fused_first_state_update_against_dense(d, h, tvt):
    """The fused step's short route for ``H = [h, 0, ..., 0]`` (static): pivot-only update."""
    mdl = random_model(100 + d, d, 1, 11, tvt, False)
    mdl["H"] = np.eye(1, d) * h
    lay = kalman.fused.Layout(d, 1, kalman.static_emission(to_ssm(mdl)))
    assert kalman.fused.observes_first_state(lay)
    _check_fused_and_matrix(mdl, _with_nans(simulate(mdl, 11, 100 + d), 100 + d, rows=True, entries=False))


def _check_fused_and_matrix(mdl, y):
    ref = dense_reference(mdl, y)
    for name, (fm, fP, ll, sm, sP, ll2) in _run_both(mdl, y).items():
        tol = dict(rtol=1e-9, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(fm, ref["f_mean"], **tol)
        np.testing.assert_allclose(fP, ref["f_cov"], **tol)
        np.testing.assert_allclose(sm, ref["s_mean"], **tol)
        np.testing.assert_allclose(sP, ref["s_cov"], **tol)
        np.testing.assert_allclose(ll, ref["ll"], rtol=1e-11, err_msg=name)
        np.testing.assert_allclose(ll2, ref["ll"], rtol=1e-11, err_msg=name)


def _fd_check(f, x, h=1e-6, rtol=1e-6, atol=1e-6):
    g = jax.grad(f)(x)
    base = np.asarray(x)
    fd = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        e = np.zeros_like(base)
        e[idx] = h
        fd[idx] = (f(jnp.asarray(base + e)) - f(jnp.asarray(base - e))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=rtol, atol=atol)


@pytest.mark.slow
def test_smoother_and_sampler_gradients_match_finite_differences():
    """Reverse-mode rules of the fused smoother and sampler passes (custom VJPs) against
    central differences, through a functional of all smoothed moments / sampled paths."""
    mdl = random_model(95, 2, 1, 10, False, False)
    y = jnp.asarray(_with_nans(simulate(mdl, 10, 95), 95))
    w = jnp.asarray(np.random.default_rng(1).normal(size=(10, 2)))

    def smooth_fn(A):
        s = kalman.smoother(to_ssm({**mdl, "A": A}), y, parallel=False)
        return jnp.sum(w * s.mean) + jnp.sum(s.cov) + s.log_likelihood

    def sample_fn(Q):
        x = kalman.sample(jax.random.PRNGKey(3), to_ssm({**mdl, "Q": Q}), y, num_samples=3, parallel=False)
        return jnp.sum(w * jnp.sin(x))

    _fd_check(jax.jit(smooth_fn), jnp.asarray(mdl["A"]))
    _fd_check(jax.jit(sample_fn), jnp.asarray(mdl["Q"]))


def test_vmapped_gradient_matches_loop():
    """The custom VJP of the fused scan under vmap (its conditional becomes a select)."""
    mdl = random_model(96, 2, 1, 10, False, False)
    ys = jnp.asarray(np.stack([_with_nans(simulate(mdl, 10, 96 + i), 96 + i) for i in range(3)]))

    def ll(A, y):
        return kalman.log_likelihood(to_ssm({**mdl, "A": A}), y, parallel=False)

    A = jnp.asarray(mdl["A"])
    gv = jax.jit(jax.vmap(jax.grad(ll), in_axes=(None, 0)))(A, ys)
    for i in range(3):
        np.testing.assert_allclose(gv[i], jax.jit(jax.grad(ll))(A, ys[i]), rtol=1e-12, atol=1e-13)


def test_fused_reverse_pass_keeps_its_conditional_for_constant_data():
    """Structure, not timing: data closed over by a jitted gradient are compile-time constants;
    the fused reverse pass must still run each step as a conditional (a folded predicate turns
    it into one large fused loop body, ~7x slower on XLA:CPU), and the gradient stays exact."""
    t = jnp.linspace(0.0, 10.0, 50)
    y = jnp.sin(t)
    f = lambda p: MarkovGP(kernels.Matern32(jnp.exp(p[0]), 1.0), t, noise=0.1).log_likelihood(y)  # noqa: E731
    g = jax.jit(jax.grad(f))
    assert "conditional(" in g.lower(jnp.zeros(1)).compile().as_text()
    eps = 1e-6
    fd = (f(jnp.array([eps])) - f(jnp.array([-eps]))) / (2 * eps)
    np.testing.assert_allclose(g(jnp.zeros(1)), [fd], rtol=1e-6)


def test_simulate_chain_matches_dense_joint_gaussian():
    """kalman.simulate_chain (the one forward sampler of Gauss-Markov chains) vs the dense joint
    Gaussian of the chain built as one linear map of (x0, eps): means, lag-0 and lag-1
    covariances of 40 000 draws as z-scores; float64."""
    rng = np.random.default_rng(5)
    d, m, K, n = 2, 3, 6, 40_000
    F = rng.normal(size=(K, d, d)) * 0.6
    g = rng.normal(size=(K, d))
    L = rng.normal(size=(K, d, m)) * 0.5
    m0, C0 = rng.normal(size=d), np.linalg.cholesky(np.array([[1.0, 0.3], [0.3, 0.5]]))
    # dense reference: X = mu + B [z0; eps_0; ...; eps_{K-1}]
    mu = [m0]
    blocks = [np.concatenate([C0, np.zeros((d, K * m))], axis=1)]
    for k in range(K):
        mu.append(F[k] @ mu[-1] + g[k])
        Bk = F[k] @ blocks[-1]
        Bk[:, d + k * m : d + (k + 1) * m] += L[k]
        blocks.append(Bk)
    mu, B = np.stack(mu), np.stack(blocks)  # (K+1, d), (K+1, d, d + K m)
    cov = np.einsum("kiz,ljz->klij", B, B)  # Cov(x_k, x_l) (K+1, K+1, d, d)

    key0, key1 = jax.random.split(jax.random.PRNGKey(0))
    z0 = jax.random.normal(key0, (n, d), jnp.float64)
    eps = jax.random.normal(key1, (n, K, m), jnp.float64)
    run = jax.jit(
        jax.vmap(
            lambda z, e: kalman.simulate_chain(
                jnp.asarray(m0) + jnp.asarray(C0) @ z, (jnp.asarray(F), jnp.asarray(g)), jnp.asarray(L), e
            )
        )
    )
    X = np.asarray(run(z0, eps))  # (n, K+1, d)
    var = np.einsum("kkii->ki", cov)
    z_mean = (X.mean(0) - mu) / np.sqrt(var / n)
    Xc = X - mu
    zs = [z_mean.ravel()]
    for lag in (0, 1):
        emp = np.einsum("nki,nkj->kij", Xc[:, : K + 1 - lag], Xc[:, lag:]) / n
        ref = np.stack([cov[k, k + lag] for k in range(K + 1 - lag)])
        vi = np.stack([np.diag(cov[k, k]) for k in range(K + 1 - lag)])
        vj = np.stack([np.diag(cov[k + lag, k + lag]) for k in range(K + 1 - lag)])
        se = np.sqrt((vi[:, :, None] * vj[:, None, :] + ref**2) / n)
        zs.append(((emp - ref) / se).ravel())
    z = np.concatenate(zs)
    assert np.max(np.abs(z)) < 4.5, np.max(np.abs(z))
    # a callable transition gives the same path as the matrices
    f = lambda x, k: jnp.asarray(F)[k] @ x + jnp.asarray(g)[k]  # noqa: E731
    X2 = jax.vmap(lambda z, e: kalman.simulate_chain(jnp.asarray(m0) + jnp.asarray(C0) @ z, f, jnp.asarray(L), e))(
        z0[:50], eps[:50]
    )
    np.testing.assert_allclose(np.asarray(X2), X[:50], rtol=1e-13, atol=1e-13)


def test_schedule_forms():
    """Every form gives the dense reference's log-likelihood and smoothed means; the options
    are checked: an unknown form, a form that contradicts ``parallel``, and ``"fused"`` on a
    model too large for the fused step are ValueErrors naming the problem."""
    mdl = random_model(97, 2, 1, 12, True, False)
    y = _with_nans(simulate(mdl, 12, 97), 97)
    ref = dense_reference(mdl, y)
    ssm = to_ssm(mdl)
    for form in kalman.FORMS:
        np.testing.assert_allclose(kalman.log_likelihood(ssm, jnp.asarray(y), form=form), ref["ll"], rtol=1e-11)
        np.testing.assert_allclose(kalman.smoother(ssm, jnp.asarray(y), form=form).mean, ref["s_mean"], rtol=1e-9)
    assert kalman.schedule("auto", True) == "parallel" and kalman.schedule("auto", False) == "sequential"
    with pytest.raises(ValueError, match="form must be one of"):
        kalman.filter(ssm, jnp.asarray(y), form="sequential")
    with pytest.raises(ValueError, match="contradicts parallel=True"):
        kalman.filter(ssm, jnp.asarray(y), parallel=True, form="matrix")
    big = random_model(98, 3, 2, 8, False, False)  # d + p = 5 > FUSED_MAX_DIM
    with pytest.raises(ValueError, match="form='fused' needs"):
        kalman.filter(to_ssm(big), jnp.asarray(simulate(big, 8, 98)), form="fused")


@pytest.mark.parametrize("varying", ["none", "A", "SQ"])
def test_rts_smooth_over_filtered_marginals_is_the_smoother(varying):
    """``rts_smooth`` (the nonlinear filters' smoothing pass) with a time-varying transition
    matrix and a constant noise factor, or the reverse, equals the engine's smoother."""
    rng = np.random.default_rng(5)
    T, d = 25, 2
    A = np.array([[0.9, 0.1], [-0.3, 0.8]]) + 0.05 * rng.normal(size=(T - 1, d, d))
    Q = np.array([[0.2, 0.05], [0.05, 0.1]]) * rng.uniform(0.5, 2.0, size=(T - 1, 1, 1))
    if varying != "A":
        A = A[0]
    if varying != "SQ":
        Q = Q[0]
    ssm = LinearGaussianSSM(np.zeros(d), np.eye(d), A, Q, np.array([[1.0, 0.0]]), np.array([[0.5]]))
    y = rng.normal(size=(T, 1))
    f = kalman.filter(ssm, y, parallel=False)
    SQ = np.linalg.cholesky(Q)
    ms, Ss = kalman.rts_smooth(f.mean, f.chol, jnp.asarray(A), jnp.asarray(SQ))
    ref = kalman.smoother(ssm, y, parallel=False)
    np.testing.assert_allclose(ms, ref.mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(Ss @ np.swapaxes(Ss, -1, -2), ref.cov, rtol=0, atol=1e-10)
