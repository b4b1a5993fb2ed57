"""Sparse-GP / Gauss–Markov variational SDE posteriors (probdyn.models.sde_posteriors).

Independent references: the exact Markov-GP posterior and log marginal likelihood (OU kernel,
Kalman engine of the core) for linear SDEs; the exact maximum-likelihood OU decay (grid search +
refinement of ``kalman.log_likelihood``); the dense SVGP (Titsias) bound and predictive of the
OU kernel for the sparse variant; a dense joint-precision computation for the chain
conditioning with indefinite potentials; a bootstrap particle filter + FFBSm smoother
(independent replicates for the Monte Carlo error) for a double-well SDE on the same grid; and
autodiff stationarity of the ELBO at the CVI fixed point.
"""

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from probdyn import LinearGaussianSSM, MarkovGP, kernels  # noqa: E402
from probdyn.inference import kalman, natgrad  # noqa: E402
from probdyn.inference.gaussian_filters import particle_smoother_scalar  # noqa: E402
from probdyn.models import sde_posteriors as sg  # noqa: E402
from probdyn.sde.base import SDE, euler_maruyama  # noqa: E402

THETA, Q_OU, SIG_OU, P0_OU = 0.5, 1.0, 0.1, 1.0


def _ou_data(n=200, T=100.0, seed=1):
    """Exact OU samples (decay 0.5, x(0) ~ N(0, 1)) at n random times, noise sd 0.1."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, T, n))
    x, xp, tp = np.zeros(n), rng.normal() * np.sqrt(P0_OU), 0.0
    for i, ti in enumerate(t):
        a = np.exp(-THETA * (ti - tp))
        xp = a * xp + np.sqrt(Q_OU / (2 * THETA) * (1 - a * a)) * rng.normal()
        x[i], tp = xp, ti
    return t, x + SIG_OU * rng.normal(size=n)


def _ou_model(decay, t, y, dtype=jnp.float64, **kw):
    sde = SDE(sg.OUDrift(jnp.asarray(decay, dtype)), jnp.sqrt(Q_OU) * jnp.ones(1, dtype), 1)
    grid = sg.make_grid(0.0, float(t[-1]), 1.0, include=t)  # nodes between sparse observations too
    return sg.SparseGPSDE(sde, t, jnp.asarray(y, dtype), obs_noise=SIG_OU**2, grid=grid, initial_cov=[[P0_OU]], **kw)


def test_condition_chain_with_indefinite_potentials_matches_dense():
    rng = np.random.default_rng(0)
    N, d = 6, 2
    Psi = rng.normal(size=(N - 1, d, d)) * 0.5 + np.eye(d)
    c = rng.normal(size=(N - 1, d))
    Ls = rng.normal(size=(N - 1, d, d)) * 0.3
    V = Ls @ np.swapaxes(Ls, 1, 2) + 0.1 * np.eye(d)
    m0, P0 = rng.normal(size=d), 0.7 * np.eye(d)
    n1 = rng.normal(size=(N, d))
    B = rng.normal(size=(N, d, d)) * 0.3
    n2 = -0.25 * (B + np.swapaxes(B, 1, 2))  # indefinite node potentials
    W = rng.normal(size=(N - 1, d, d)) * 0.2
    ch = natgrad.condition_chain(*map(jnp.asarray, (m0, P0, Psi, c, V, n1, n2, W)))
    D = N * d
    J, h = np.zeros((D, D)), np.zeros(D)
    b = [slice(i * d, (i + 1) * d) for i in range(N)]
    J[b[0], b[0]] += np.linalg.inv(P0)
    h[b[0]] += np.linalg.solve(P0, m0)
    for k in range(N - 1):
        Vi = np.linalg.inv(V[k])
        J[b[k + 1], b[k + 1]] += Vi
        J[b[k], b[k]] += Psi[k].T @ Vi @ Psi[k]
        J[b[k], b[k + 1]] -= Psi[k].T @ Vi + W[k]
        J[b[k + 1], b[k]] -= Vi @ Psi[k] + W[k].T
        h[b[k + 1]] += Vi @ c[k]
        h[b[k]] -= Psi[k].T @ Vi @ c[k]
    for k in range(N):
        J[b[k], b[k]] -= 2 * n2[k]
        h[b[k]] += n1[k]
    assert min(np.linalg.eigvalsh(-2 * n2[k]).min() for k in range(N)) < -0.1  # really indefinite
    S = np.linalg.inv(J)
    assert np.allclose(np.asarray(ch.mean).reshape(-1), S @ h, atol=1e-12)
    assert all(np.allclose(ch.cov[k], S[b[k], b[k]], atol=1e-12) for k in range(N))
    assert all(np.allclose(ch.cross_cov[k], S[b[k], b[k + 1]], atol=1e-12) for k in range(N - 1))
    assert np.allclose(ch.dF, ch.F - Psi, atol=1e-12) and np.allclose(ch.dQ, ch.Q - V, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_ou_one_natural_gradient_step_is_exact_gp_posterior(dtype):
    t, y = _ou_data()
    model = _ou_model(THETA, t, y, dtype)
    st, tr = model.fit_posterior(num_iters=1, rho=1.0)
    post = model.posterior(st)
    # reference: the core MarkovGP with the OU (Matern-1/2) kernel; its stationary variance
    # q / (2 theta) = 1 equals P0, so it is the same prior as the SDE started at t = 0
    g = np.asarray(model.grid, float)
    gp = MarkovGP(kernels.Matern12(lengthscale=1 / THETA, variance=Q_OU / (2 * THETA)), t, noise=SIG_OU**2)
    mu, v = gp.predict(jnp.asarray(y), g)
    tol = 1e-6 if dtype == jnp.float64 else 2e-4
    assert post.mean.dtype == dtype
    assert np.max(np.abs(np.asarray(post.mean[:, 0], float) - mu)) < tol
    assert np.max(np.abs(np.asarray(post.cov[:, 0, 0], float) - v)) < tol
    # linear drift: no path sites, ELBO = exact log marginal likelihood
    assert float(jnp.max(jnp.abs(st.path.nat2))) < (1e-10 if dtype == jnp.float64 else 1e-4)
    ll = float(gp.log_likelihood(jnp.asarray(y)))
    assert abs(tr.elbo[-1] - ll) < (1e-6 if dtype == jnp.float64 else 2e-3)  # float32: measured 1e-4
    if dtype == jnp.float64:  # off-grid marginals (linearised-prior bridge) and predictive density
        tt = np.array([0.05, 33.333, 77.7])
        m2, c2 = model.marginals(st, tt)
        mu2, v2 = gp.predict(jnp.asarray(y), tt)
        assert np.max(np.abs(np.asarray(m2[:, 0]) - mu2)) < 1e-8
        assert np.max(np.abs(np.asarray(c2[:, 0, 0]) - v2)) < 1e-8
        lp = model.predictive_log_density(st, tt, np.asarray(mu2))
        assert np.allclose(lp, -0.5 * np.log(2 * np.pi * (v2 + SIG_OU**2)), atol=1e-8)


def test_ou_joint_samples_match_posterior_moments():
    t, y = _ou_data()
    model = _ou_model(THETA, t, y)
    st, _ = model.fit_posterior(num_iters=1)
    S = 4000
    xs = np.asarray(model.sample_paths(jax.random.PRNGKey(0), st, S)[..., 0])[:, :60]  # first 60 grid nodes
    g = np.asarray(model.grid)[:60]
    k = kernels.Matern12(lengthscale=1 / THETA, variance=1.0)
    Kyy = np.asarray(k.covariance(t, t)) + SIG_OU**2 * np.eye(t.size)
    Kgy = np.asarray(k.covariance(g, t))
    Cpost = np.asarray(k.covariance(g, g)) - Kgy @ np.linalg.solve(Kyy, Kgy.T)  # dense GP posterior
    mpost = Kgy @ np.linalg.solve(Kyy, y)
    se = np.sqrt((Cpost**2 + np.outer(np.diag(Cpost), np.diag(Cpost))) / S)
    assert np.all(np.abs(np.cov(xs.T) - Cpost) < 5 * se + 1e-12)
    assert np.all(np.abs(xs.mean(0) - mpost) < 5 * np.sqrt(np.diag(Cpost) / S))


def _ou_exact_ml(t, y):
    """Maximum-likelihood OU decay with the Kalman engine (same prior x(0) ~ N(0, P0) at t = 0)."""
    dts = jnp.diff(jnp.concatenate([jnp.zeros(1), jnp.asarray(t)]))
    H, R = jnp.ones((t.size, 1, 1)), jnp.full((t.size, 1, 1), SIG_OU**2)

    def ll(th):
        A = jnp.exp(-th * dts)[:, None, None]
        Qm = (Q_OU / (2 * th) * (1 - jnp.exp(-2 * th * dts)))[:, None, None]
        P = A[0] * P0_OU * A[0] + Qm[0]
        ssm = LinearGaussianSSM(jnp.zeros(1), P, A[1:], Qm[1:], H, R)
        return kalman.log_likelihood(ssm, jnp.asarray(y)[:, None], parallel=False)

    lls = jax.jit(jax.vmap(ll))
    ths = np.linspace(0.05, 3.0, 256)
    th = ths[int(np.argmax(lls(jnp.asarray(ths))))]
    for w in (0.02, 0.001):  # refine (same compiled program)
        ths = th + np.linspace(-w, w, 256)
        v = np.asarray(lls(jnp.asarray(ths)))
        th = ths[int(np.argmax(v))]
    c2, c1, c0 = np.polyfit(ths - th, v, 2)  # quadratic within +-0.001 of the maximum
    th_ml = th - c1 / (2 * c2)
    return float(th_ml), float(1 / np.sqrt(-2 * c2)), float(np.polyval([c2, c1, c0], th_ml - th))


def test_ou_variational_em_recovers_exact_ml_decay():
    t, y = _ou_data()
    th_ml, se_ml, ll_ml = _ou_exact_ml(t, y)
    # the data pin the decay down to se_ml ~ 0.13 (n = 200 over T = 100); truth within 3 se
    assert abs(th_ml - THETA) < 3 * se_ml
    model = _ou_model(2.5, t, y)
    fitted, st, tr = model.fit(jax.random.PRNGKey(0), num_steps=15, progress_bar=False)
    th = float(fitted.sde.drift.decay)
    # the ELBO is exact for a linear SDE, so variational EM converges to the exact ML estimate
    assert abs(th - th_ml) < 1e-3, (th, th_ml)  # = 0.008 se_ml; measured 1e-7 after 15 steps
    assert abs(tr.elbo[-1] - ll_ml) < 1e-6
    assert np.all(np.diff(tr.elbo) > -1e-8)


def _dw_problem(c_true=1.0, q=0.5, sig=0.2, T=8.0, dt=0.02, obs_every=10):
    sde = SDE(sg.DoubleWellDrift(jnp.asarray(c_true)), jnp.sqrt(q) * jnp.ones(1), 1)
    grid = jnp.linspace(0.0, T, int(round(T / dt)) + 1)
    x = euler_maruyama(sde, jnp.array([1.0]), grid, jax.random.PRNGKey(3))[:, 0]
    obs_idx = jnp.arange(0, grid.size, obs_every)
    y = x[obs_idx] + sig * jax.random.normal(jax.random.PRNGKey(4), obs_idx.shape)
    return sde, grid, obs_idx, y, q, sig


def _dw_model(c, grid, obs_idx, y, q, sig, **kw):
    sde = SDE(sg.DoubleWellDrift(jnp.asarray(c)), jnp.sqrt(q) * jnp.ones(1), 1)
    return sg.SparseGPSDE(
        sde, grid[obs_idx], y, obs_noise=sig**2, grid=grid, initial_mean=[1.0], initial_cov=[[0.1]], **kw
    )


def _benes_problem():
    sde, grid, obs_idx, _, _, sig = _dw_problem()
    sde = SDE(sg.BenesDrift(), jnp.ones(1), 1)
    x = euler_maruyama(sde, jnp.array([0.5]), grid, jax.random.PRNGKey(3))[:, 0]
    y = x[obs_idx] + sig * jax.random.normal(jax.random.PRNGKey(4), obs_idx.shape)
    return sde, grid, obs_idx, y, 1.0, sig


@pytest.mark.slow
@pytest.mark.parametrize("case", ["benes", "double_well"])
def test_nonlinear_marginals_vs_particle_smoother(case):
    if case == "benes":  # mild nonlinearity: near-Gaussian posterior
        (sde, grid, obs_idx, y, q, sig), drift, x0 = _benes_problem(), jnp.tanh, 0.5
    else:
        (sde, grid, obs_idx, y, q, sig), drift, x0 = _dw_problem(), (lambda x: 4 * x * (1 - x**2)), 1.0
    f = jax.jit(lambda k: particle_smoother_scalar(k, drift, q, sig, grid, obs_idx, y, x0, 0.1, 600))
    reps = [f(jax.random.PRNGKey(10 + r)) for r in range(3)]
    ms = np.stack([np.sum(W * X, 1) for X, W in reps])
    vs = np.stack([np.sum(W * X**2, 1) for X, W in reps]) - ms**2
    se_m = ms.std(0, ddof=1) / np.sqrt(3)
    model = sg.SparseGPSDE(sde, grid[obs_idx], y, obs_noise=sig**2, grid=grid, initial_mean=[x0], initial_cov=[[0.1]])
    st, tr = model.fit_posterior(num_iters=40, grow=2.0, atol=1e-9)
    assert np.all(np.diff(tr.elbo) >= -1e-9 * np.abs(tr.elbo[1:]))  # back-off keeps the ELBO monotone
    post = model.posterior(st)
    sd = np.sqrt(vs.mean(0))
    dm = np.abs(np.asarray(post.mean[:, 0]) - ms.mean(0))
    ratio = np.asarray(post.cov[:, 0, 0]) / vs.mean(0)
    # Gaussian VI vs the exact smoother of the Euler chain on the same grid: 4 MC standard
    # errors plus `bias` posterior sds. The reference's own Euler bias is O(|f'| dt): at the
    # wells f' = -8, dt = 0.02, the Euler chain's stationary variance is 1 / (1 - |f'| dt / 2) =
    # 1.09 times the continuous one, while the ELBO's linear part is discretised exactly.
    # Measured: max (|dm| - 4 se)/sd: Benes 0.07, double well 0.05; variance ratio q / smoother
    # median [min]: Benes 1.01 [0.93], double well 0.88 [0.80] (Gaussian VI under-disperses
    # at the wells; with dt = 0.05 the ratio was 0.76, with dt = 0.01 0.90: mostly Euler bias).
    bias, lo = (0.1, 0.85) if case == "benes" else (0.2, 0.75)
    assert np.all(dm < 4 * se_m + bias * sd), (dm.max(), se_m.max(), np.max(dm / sd))
    assert lo < np.median(ratio) < 1.1 and ratio.min() > lo - 0.1, (np.median(ratio), ratio.min())


def _neural_double_well_drift():
    """An equinox MLP drift (probdyn's NeuralDrift, 8 tanh units) with fixed weights: first layer
    tanh steps at 8 points of [-1.6, 1.6], last layer by ridge regression on ``4 x (1 - x^2)``
    (max error 0.33 on |x| < 1.5), i.e. a neural double well."""
    import equinox as eqx

    from probdyn.models.sysid import NeuralDrift

    nd = NeuralDrift(1, jax.random.PRNGKey(0), width=8, depth=1)
    W1 = 2.5 * np.ones(8)
    b1 = -W1 * np.linspace(-1.6, 1.6, 8)
    xs = np.linspace(-1.8, 1.8, 200)
    Hb = np.c_[np.tanh(xs[:, None] * W1 + b1), np.ones(xs.size)]
    coef = np.linalg.solve(Hb.T @ Hb + 0.2 * np.eye(9), Hb.T @ (4 * xs * (1 - xs**2)))
    layers = nd.mlp.layers
    nd = eqx.tree_at(
        lambda d: (d.mlp.layers[0].weight, d.mlp.layers[0].bias, d.mlp.layers[1].weight, d.mlp.layers[1].bias),
        nd,
        (jnp.asarray(W1[:, None]), jnp.asarray(b1), jnp.asarray(coef[None, :8]), jnp.asarray(coef[8:])),
    )
    assert len(layers) == 2
    return nd


@pytest.mark.slow
def test_neural_drift_marginals_vs_particle_smoother():
    # prior: an SDE whose drift is an equinox MLP (fixed weights); the Gauss-Hermite SLR and the
    # residual run through the network. Reference: the particle smoother with the same network.
    nd = _neural_double_well_drift()
    _, grid, obs_idx, y, q, sig = _dw_problem()
    sde = SDE(nd, jnp.sqrt(q) * jnp.ones(1), 1)
    f_el = jax.vmap(lambda v: nd(v[None], 0.0)[0])
    xs = jnp.linspace(-1.5, 1.5, 7)
    assert np.max(np.abs(np.asarray(f_el(xs)) - 4 * xs * (1 - xs**2))) < 0.4  # a neural double well
    f = jax.jit(lambda k: particle_smoother_scalar(k, f_el, q, sig, grid, obs_idx, y, 1.0, 0.1, 600))
    reps = [f(jax.random.PRNGKey(20 + r)) for r in range(3)]
    ms = np.stack([np.sum(W * X, 1) for X, W in reps])
    vs = np.stack([np.sum(W * X**2, 1) for X, W in reps]) - ms**2
    se_m = ms.std(0, ddof=1) / np.sqrt(3)
    model = sg.SparseGPSDE(sde, grid[obs_idx], y, obs_noise=sig**2, grid=grid, initial_mean=[1.0], initial_cov=[[0.1]])
    st, tr = model.fit_posterior(num_iters=40, grow=2.0, atol=1e-9)
    assert np.all(np.diff(tr.elbo) >= -1e-9 * np.abs(tr.elbo[1:]))
    post = model.posterior(st)
    sd = np.sqrt(vs.mean(0))
    dm = np.abs(np.asarray(post.mean[:, 0]) - ms.mean(0))
    ratio = np.asarray(post.cov[:, 0, 0]) / vs.mean(0)
    print("NN", np.max((dm - 4 * se_m) / sd), np.median(ratio), ratio.min())
    # same problem and tolerances as the double-well case above (Euler bias of the reference)
    assert np.all(dm < 4 * se_m + 0.2 * sd), (dm.max(), se_m.max(), np.max(dm / sd))
    assert 0.75 < np.median(ratio) < 1.1 and ratio.min() > 0.65, (np.median(ratio), ratio.min())


def _ou_poisson(n=30, T=20.0, offset=1.0, seed=5):
    """OU latent (decay 0.5, x(0) ~ N(0, 1)) at n random times, counts y ~ Poisson(exp(x + offset))."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, T, n))
    x, xp, tp = np.zeros(n), rng.normal() * np.sqrt(P0_OU), 0.0
    for i, ti in enumerate(t):
        a = np.exp(-THETA * (ti - tp))
        xp = a * xp + np.sqrt(Q_OU / (2 * THETA) * (1 - a * a)) * rng.normal()
        x[i], tp = xp, ti
    return t, rng.poisson(np.exp(x + offset)).astype(float)


def _pf_ou_exact(key, t, y, loglik, num_particles):
    """Bootstrap particle filter with the *exact* OU transitions between the observation times
    (prior x(0) ~ N(0, P0) at t = 0) and FFBSm marginals; ``loglik(y, x)`` elementwise in x."""
    P = int(num_particles)
    dts = np.diff(np.concatenate([[0.0], t]))
    a = jnp.asarray(np.exp(-THETA * dts))
    v = jnp.asarray(Q_OU / (2 * THETA) * (1 - np.exp(-2 * THETA * dts)))
    k0, key = jax.random.split(key)
    x0 = jnp.sqrt(P0_OU) * jax.random.normal(k0, (P,))

    def step(carry, inp):
        xp, lw, key = carry
        ak, vk, yk = inp
        key, k1, k2 = jax.random.split(key, 3)
        xr = xp[jax.random.choice(k1, P, (P,), p=jax.nn.softmax(lw))]
        xn = ak * xr + jnp.sqrt(vk) * jax.random.normal(k2, (P,))
        return (xn, loglik(yk, xn), key), (xn, loglik(yk, xn))

    _, (X, LW) = jax.lax.scan(step, (x0, jnp.zeros(P), key), (a, v, jnp.asarray(y)))
    Wf = jax.nn.softmax(LW, axis=1)

    def back(wn, k):
        lt = -0.5 * (X[k + 1][None] - a[k + 1] * X[k][:, None]) ** 2 / v[k + 1]
        lden = jax.scipy.special.logsumexp(jnp.log(Wf[k] + 1e-300)[:, None] + lt, axis=0)
        ws = Wf[k] * jnp.sum(wn[None] * jnp.exp(lt - lden[None]), axis=1)
        return ws / ws.sum(), ws / ws.sum()

    _, Ws = jax.lax.scan(back, Wf[-1], jnp.arange(len(t) - 1), reverse=True)
    return X, jnp.concatenate([Ws, Wf[-1][None]])


@pytest.mark.slow
def test_poisson_likelihood_by_quadrature_vs_particle_smoother():
    # non-Gaussian observations through `log_likelihood=` (Gauss-Hermite expectations and CVI
    # targets): OU latent, Poisson counts with log link (rate e^{x+1}: counts 0-6). For a linear
    # drift the linear part of the ELBO is exact, so q is the continuous-time Gaussian-VI
    # optimum; the reference uses the exact OU transitions (no grid bias).
    off = 1.0
    t, y = _ou_poisson(offset=off)

    def loglik(yi, z):
        eta = z[0] + off
        return yi[0] * eta - jnp.exp(eta) - jax.scipy.special.gammaln(yi[0] + 1.0)

    f = jax.jit(lambda k: _pf_ou_exact(k, t, y, lambda yk, x: yk * (x + off) - jnp.exp(x + off), 1000))
    reps = [f(jax.random.PRNGKey(30 + r)) for r in range(4)]
    ms = np.stack([np.sum(W * X, 1) for X, W in reps])
    vs = np.stack([np.sum(W * X**2, 1) for X, W in reps]) - ms**2
    se_m = ms.std(0, ddof=1) / 2.0
    sde = SDE(sg.OUDrift(jnp.asarray(THETA)), jnp.sqrt(Q_OU) * jnp.ones(1), 1)
    model = sg.SparseGPSDE(
        sde, t, y, log_likelihood=loglik, grid=sg.make_grid(0.0, float(t[-1]), 1.0, include=t), initial_cov=[[P0_OU]]
    )
    st, tr = model.fit_posterior(num_iters=40, grow=2.0, atol=1e-10)
    assert np.all(np.diff(tr.elbo) >= -1e-10 * np.abs(tr.elbo[1:])) and len(tr.elbo) < 40  # converged
    post = model.posterior(st)  # the observation times are grid nodes
    mu, v = np.asarray(post.mean[model.obs_idx, 0]), np.asarray(post.cov[model.obs_idx, 0, 0])
    vr, sd = vs.mean(0), np.sqrt(vs.mean(0))
    dm, dv = np.abs(mu - ms.mean(0)), v - vr
    se_v = vs.std(0, ddof=1) / 2.0
    print(
        "POIS",
        np.max((dm - 4 * se_m) / sd),
        np.max(dm / sd),
        np.max(se_m / sd),
        np.sort(dv / vr)[[0, 15, -1]],
        np.max(se_v / vr),
    )
    # Gaussian VI vs the exact posterior, 4 MC standard errors plus a bias allowance: measured
    # max (|dm| - 4 se)/sd < 0 (|dm|/sd <= 0.09, se/sd <= 0.04); variances 0-7 % below the
    # reference (median 3 %; VI under-disperses where counts are low), MC se of v up to 6 %
    assert np.all(dm < 4 * se_m + 0.05 * sd), (np.max(dm / sd), np.max(se_m / sd))
    assert np.all(dv > -0.1 * vr - 4 * se_v) and np.all(dv < 0.02 * vr + 4 * se_v), np.sort(dv / vr)
    assert -0.06 < np.median(dv / vr) < 0.0
    # the predictive density of the counts (Gauss-Hermite of the likelihood) is a proper pmf
    j = int(np.argmin(mu))
    ks = jnp.arange(30.0)[:, None]
    lp = eqx.filter_jit(model.marginal_log_density)(
        post.mean[model.obs_idx[j]][None].repeat(30, 0), post.cov[model.obs_idx[j]][None].repeat(30, 0), ks
    )
    assert abs(float(jnp.sum(jnp.exp(lp))) - 1.0) < 1e-6


def test_gaussian_log_likelihood_by_quadrature_equals_builtin_route():
    # the same Gaussian likelihood given as `log_likelihood=` (Gauss-Hermite expectations, CVI
    # targets by autodiff) must reproduce the closed-form route: GH with order >= 2 is exact for
    # the quadratic log density, so every CVI iterate agrees to rounding.
    sde, grid, obs_idx, y, q, sig = _dw_problem()
    builtin = _dw_model(1.0, grid, obs_idx, y, q, sig)

    def loglik(yi, z):
        return -0.5 * (jnp.log(2 * jnp.pi * sig**2) + jnp.sum((yi - z) ** 2) / sig**2)

    quad = _dw_model(1.0, grid, obs_idx, y, q, sig, log_likelihood=loglik)
    s1, t1 = builtin.fit_posterior(num_iters=12, grow=2.0)
    s2, t2 = quad.fit_posterior(num_iters=12, grow=2.0)
    assert np.allclose(t1.elbo, t2.elbo, rtol=0, atol=1e-9 * np.abs(t1.elbo).max())
    p1, p2 = builtin.posterior(s1), quad.posterior(s2)
    assert np.max(np.abs(np.asarray(p1.mean - p2.mean))) < 1e-9
    assert np.max(np.abs(np.asarray(p1.cov - p2.cov))) < 1e-9
    assert np.max(np.abs(np.asarray(s1.data.nat1 - s2.data.nat1))) < 1e-6  # sites of size 1/sig^2 = 25
    # predictive densities at grid nodes: closed form vs Gauss-Hermite (20 points) of the density
    k = np.arange(5, 400, 37)
    yt = jnp.asarray(p1.mean[k] + 0.1)
    lp1 = eqx.filter_jit(builtin.marginal_log_density)(p1.mean[k], p1.cov[k], yt)
    lp2 = eqx.filter_jit(quad.marginal_log_density)(p2.mean[k], p2.cov[k], yt)
    assert np.max(np.abs(np.asarray(lp1 - lp2))) < 1e-8


def test_double_well_cvi_fixed_point_is_elbo_stationary_point():
    sde, grid, obs_idx, y, q, sig = _dw_problem()
    model = _dw_model(1.0, grid, obs_idx, y, q, sig)
    st1, _ = model.fit_posterior(num_iters=1)
    st, tr = model.fit_posterior(num_iters=60, grow=2.0, atol=1e-11)
    gfun = jax.jit(jax.grad(lambda p, s: model.elbo(sg.VariationalState(s.A, s.b, s.data, p[0], p[1])), argnums=0))

    def gnorm(s):
        g = gfun((s.path, s.path_pair), s)
        return float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree_util.tree_leaves(g))))

    g_conv, g_one = gnorm(st), gnorm(st1)
    assert g_conv < 1e-4 * g_one, (g_conv, g_one)
    # the path sites are really used (indefinite somewhere) and the ELBO beats the prior's
    assert float(jnp.max(jnp.abs(st.path.nat2))) > 1e-3
    assert tr.elbo[-1] > tr.elbo[1]


@pytest.mark.slow
def test_double_well_variational_em_recovers_parameter():
    sde, grid, obs_idx, y, q, sig = _dw_problem()
    model = _dw_model(0.5, grid, obs_idx, y, q, sig)
    fitted, st, tr = model.fit(jax.random.PRNGKey(0), num_steps=12, progress_bar=False)
    c = float(fitted.sde.drift.c)
    # L-BFGS without line search may overshoot on the way, but ends at the best ELBO seen
    assert tr.elbo[-1] >= tr.elbo.max() - 1e-5 * abs(tr.elbo[-1]) and tr.elbo[-1] > tr.elbo[0]

    def collapsed(cv):  # max_q ELBO at a given c (warm-started CVI to convergence)
        import equinox as eqx

        m = eqx.tree_at(lambda mm: mm.sde.drift.c, fitted, jnp.asarray(cv))
        return m.fit_posterior(st, 40, grow=2.0, atol=1e-10)[1].elbo[-1]

    h = 0.02
    F = [collapsed(c - h), collapsed(c), collapsed(c + h)]
    se = 1.0 / np.sqrt(-(F[0] - 2 * F[1] + F[2]) / h**2)  # Laplace sd of c from the collapsed ELBO
    assert abs(F[2] - F[0]) / (2 * h) < 0.05 / se  # at the maximum (slope << 1/se)
    # 41 observations (sd 0.2) over T = 8 give se ~ 0.1; the estimate is within 3 se of the truth
    assert se < 0.2 and abs(c - 1.0) < 3 * se, (c, se)


@pytest.mark.slow
def test_sparse_ou_matches_dense_svgp_bound():
    t, y = _ou_data(n=40, T=20.0, seed=2)
    ind = np.linspace(0.0, 20.0, 11)
    model = _ou_model(THETA, t, y, inducing_times=ind)
    assert model.num_inducing == 11 and float(model.grid[-1]) == 20.0  # the grid ends at 20 here
    st, tr = model.fit_posterior(num_iters=1, rho=1.0)
    assert st.A.shape[0] == model.num_inducing - 1 and st.path.nat1.shape[0] == model.num_inducing
    z = np.asarray(model.grid)[np.asarray(model.ind_idx)]
    k = kernels.Matern12(lengthscale=1 / THETA, variance=1.0)
    Kzz = np.asarray(k.covariance(z, z))
    Ktz = np.asarray(k.covariance(t, z))
    D = Ktz @ np.linalg.inv(Kzz)
    vb = 1.0 - np.sum(D * Ktz, 1)  # Var(f(t) | u)
    S = D @ Kzz @ D.T + SIG_OU**2 * np.eye(t.size)
    _, logdet = np.linalg.slogdet(S)
    titsias = -0.5 * (t.size * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(S, y)) - vb.sum() / (2 * SIG_OU**2)
    assert abs(tr.elbo[-1] - titsias) < 1e-6, (tr.elbo[-1], titsias)
    # predictive marginals q(f(t)) = N(D m_u, D S_u D^T + Var(f|u)) at off-inducing times
    Su = np.linalg.inv(np.linalg.inv(Kzz) + D.T @ D / SIG_OU**2)
    mu = Su @ D.T @ y / SIG_OU**2
    tt = np.array([0.7, 5.55, 13.1])
    Dt = np.asarray(k.covariance(tt, z)) @ np.linalg.inv(Kzz)
    m2, c2 = model.marginals(st, tt)
    assert np.allclose(m2[:, 0], Dt @ mu, atol=1e-8)
    assert np.allclose(
        c2[:, 0, 0], np.sum((Dt @ Su) * Dt, 1) + 1.0 - np.sum(Dt * np.asarray(k.covariance(tt, z)), 1), atol=1e-8
    )


@pytest.mark.slow
def test_sparse_benes_close_to_dense():
    # inducing states at the 41 observation times of the 401-node grid: the sequential pass
    # runs over 41 states, the residual over 8 Gauss-Legendre points per cell; between them q
    # is the bridge of the linearised prior. For a linear drift that is exactly the dense
    # optimum (prior bridges); for Benes it differs by the nonlinearity inside 0.2-long cells
    # and the residual's quadrature (dense: Euler on the grid).
    sde, grid, obs_idx, y, q, sig = _benes_problem()
    kw = dict(obs_noise=sig**2, grid=grid, initial_mean=[0.5], initial_cov=[[0.1]])
    dense = sg.SparseGPSDE(sde, grid[obs_idx], y, **kw)
    sparse = sg.SparseGPSDE(sde, grid[obs_idx], y, inducing_times=np.asarray(grid[obs_idx]), **kw)
    sd_, trd = dense.fit_posterior(num_iters=40, grow=2.0, atol=1e-8)
    ss, trs = sparse.fit_posterior(num_iters=40, grow=2.0, atol=1e-8)
    assert sparse.num_inducing == obs_idx.size and np.all(np.diff(trs.elbo) >= -1e-9 * np.abs(trs.elbo[1:]))
    assert ss.A.shape[0] == sparse.num_inducing - 1  # one linearisation per cell; the chain has M states
    assert abs(trs.elbo[-1] - trd.elbo[-1]) < 1e-2
    pd_, ps = dense.posterior(sd_), sparse.posterior(ss)
    sdv = np.sqrt(np.asarray(pd_.cov[:, 0, 0]))
    assert np.max(np.abs(np.asarray(ps.mean - pd_.mean)[:, 0]) / sdv) < 0.05
    assert np.max(np.abs(np.asarray(ps.cov - pd_.cov)[:, 0, 0]) / sdv**2) < 0.05
    xs = sparse.sample_paths(jax.random.PRNGKey(1), ss, 2000)[..., 0]  # bridges by Matheron's rule
    assert np.max(np.abs(np.asarray(xs.mean(0)) - np.asarray(ps.mean[:, 0])) / np.sqrt(ps.cov[:, 0, 0] / 2000)) < 5
    rel = np.abs(np.asarray(xs.var(0)) - np.asarray(ps.cov[:, 0, 0])) / np.asarray(ps.cov[:, 0, 0])
    assert np.max(rel) < 5 * np.sqrt(2 / 2000)


def test_natgrad_cvi_target_and_quadrature():
    rule = natgrad.gauss_hermite(2, 6)
    m, C = jnp.array([0.3, -1.0]), jnp.array([[1.0, 0.3], [0.3, 0.5]])
    e = natgrad.gaussian_expectation(lambda x: x[0] ** 2 * x[1], m, C, rule)
    # E[x0^2 x1] = (C00 + m0^2) m1 + 2 C01 m0
    assert abs(float(e) - ((1.0 + 0.09) * -1.0 + 2 * 0.3 * 0.3)) < 1e-12
    y, R = jnp.array([0.5, 2.0]), jnp.array([[0.2, 0.05], [0.05, 0.1]])
    Ri = np.linalg.inv(np.asarray(R))

    def exp_loglik(mm, CC):
        return natgrad.gaussian_expectation(lambda z: -0.5 * (y - z) @ jnp.asarray(Ri) @ (y - z), mm, CC, rule)

    n1, n2 = natgrad.cvi_site_target(exp_loglik, m, C)
    assert np.allclose(n1, Ri @ np.asarray(y), atol=1e-10) and np.allclose(n2, -0.5 * Ri, atol=1e-10)


def test_bad_input_raises():
    sde = SDE(sg.OUDrift(jnp.asarray(0.5)), jnp.ones(1), 1)
    t = np.array([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="increasing"):
        sg.SparseGPSDE(sde, t[::-1], np.zeros(3), dt=0.1)
    with pytest.raises(ValueError, match="finite"):
        sg.SparseGPSDE(sde, t, np.array([0.0, np.nan, 1.0]), dt=0.1)
    with pytest.raises(ValueError, match="shape"):
        sg.SparseGPSDE(sde, t, np.zeros(4), dt=0.1)
    with pytest.raises(ValueError, match="grid point"):
        sg.SparseGPSDE(sde, t, np.zeros(3), grid=np.array([0.0, 0.5, 2.0]))
    with pytest.raises(ValueError, match="positive"):
        sg.SparseGPSDE(sde, t, np.zeros(3), dt=0.1, obs_noise=-1.0)
    with pytest.raises(ValueError, match="constant"):
        sg.SparseGPSDE(SDE(sg.OUDrift(jnp.asarray(0.5)), lambda x, t: jnp.eye(1), 1), t, np.zeros(3), dt=0.1)
    with pytest.raises(ValueError, match="inducing_times"):
        sg.SparseGPSDE(sde, t, np.zeros(3), dt=0.1, inducing_times=[5.0])
    with pytest.raises(ValueError, match="initial_cov"):
        sg.SparseGPSDE(sde, t, np.zeros(3), dt=0.1, initial_cov=[[-1.0]])
    m = sg.SparseGPSDE(sde, t, np.zeros(3), dt=0.1)
    with pytest.raises(ValueError, match="grid span"):
        m.marginals(m.init_state(), [3.0])
    with pytest.raises(ValueError, match="optimizer"):
        m.fit(jax.random.PRNGKey(0), num_steps=1, optimizer="sgd", progress_bar=False)
    with pytest.raises(ValueError, match="nothing to learn"):
        sg.SparseGPSDE(SDE(sg.BenesDrift(), jnp.ones(1), 1), t, np.zeros(3), dt=0.1).fit(
            jax.random.PRNGKey(0), num_steps=1, progress_bar=False
        )
