"""Tests for probdyn.models.fractional, the MA-fBM LTISDE wrapper and moving digits.

References: the closed-form MA-fBM covariance (``ma_fbm_covariance``) and dense Gaussian
log-densities for the LTISDE/Kalman likelihood; the exact Kalman smoother of the
Euler-discretised augmented linear prior for the variational fOU bridge (Monte-Carlo error
bars); the analytic mean of geometric Brownian motion for the Itô scan and the
Stratonovich diffrax solver; exact fBM samples for the Hurst estimate.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from probdyn.inference import kalman  # noqa: E402
from probdyn.models import fractional as fs  # noqa: E402
from probdyn.sde import fractional as fr  # noqa: E402


def _dense_cov_from_ssm(ssm, n):
    """Covariance of the first state coordinate at all steps by explicit propagation."""
    A = np.asarray(ssm.transition_matrix)
    Q = np.asarray(ssm.transition_cov)
    A = np.broadcast_to(A, (n - 1,) + A.shape[-2:]) if A.ndim == 2 else A
    Q = np.broadcast_to(Q, (n - 1,) + Q.shape[-2:]) if Q.ndim == 2 else Q
    Ps = [np.asarray(ssm.initial_cov)]
    for k in range(n - 1):
        Ps.append(A[k] @ Ps[-1] @ A[k].T + Q[k])
    C = np.zeros((n, n))
    for i in range(n):
        M = np.eye(A.shape[-1])
        for j in range(i, n):
            if j > i:
                M = A[j - 1] @ M
            C[i, j] = C[j, i] = (M @ Ps[i])[0, 0]
    return C


@pytest.mark.parametrize("kind", ["type1", "type2"])
def test_linear_sde_matches_closed_form_covariance(kind):
    g = fr.gamma_grid(5, 20.0)
    H, T = 0.3, 1.5
    times = jnp.array([0.0, 0.1, 0.35, 0.4, 0.9, 1.5])  # irregular
    sde = fr.ma_fbm_linear_sde(jnp.zeros((1, 1)), 1.0, H, g, T, kind)
    P0 = fr.ma_fbm_initial_cov(jnp.zeros((1, 1)), g, kind)
    from probdyn import discretise

    ssm = discretise(sde, times, initial_cov=P0)
    C = _dense_cov_from_ssm(ssm, len(times))
    w = fr.ma_fbm_weights(H, g, T, kind)
    Cref = np.asarray(fr.ma_fbm_covariance(times, H, g, w, kind))
    np.testing.assert_allclose(C, Cref, atol=1e-10)
    # the standard normalisation approximates Var B^H(t) = t^{2H}
    np.testing.assert_allclose(np.diag(C)[1:], np.asarray(times[1:]) ** (2 * H), rtol=0.08)


def test_brownian_special_case_is_exact():
    """K = 0: the augmented SDE is the plain OU SDE; Kalman likelihood = dense OU likelihood."""
    sde = fr.ma_fbm_linear_sde(jnp.array([[-0.7]]), 0.9, 0.5, jnp.zeros((0,)), 1.0)
    assert sde.F.shape == (1, 1)
    t = jnp.linspace(0.0, 2.0, 9)
    y = jnp.sin(3 * t)
    ll = fs.fou_log_likelihood(0.7, 0.9, 0.5, t, y, jnp.zeros((0,)), x0_std=0.4, noise_std=0.2)
    tt = np.asarray(t)
    var0, th, s2 = 0.16, 0.7, 0.81
    stat = s2 / (2 * th)
    ti, tj = np.meshgrid(tt, tt, indexing="ij")
    lo = np.minimum(ti, tj)
    C = np.exp(-th * np.abs(ti - tj)) * (stat + (var0 - stat) * np.exp(-2 * th * lo)) + 0.04 * np.eye(9)
    np.testing.assert_allclose(ll, stats.multivariate_normal(np.zeros(9), C).logpdf(np.asarray(y)), rtol=1e-9)


def test_fou_log_likelihood_matches_dense_gaussian():
    g = fr.gamma_grid(4, 20.0)
    t = jnp.linspace(0.0, 1.0, 12)
    y = jnp.cos(2 * t) - 1.0
    y = y.at[4].set(jnp.nan)
    H, s, noise = 0.35, 1.3, 0.1
    ll = fs.fou_log_likelihood(0.0, s, H, t, y, g, 1.0, noise_std=noise)
    w = fr.ma_fbm_weights(H, g, 1.0)
    C = s**2 * np.asarray(fr.ma_fbm_covariance(t, H, g, w)) + noise**2 * np.eye(12)
    keep = ~np.isnan(np.asarray(y))
    ref = stats.multivariate_normal(np.zeros(keep.sum()), C[np.ix_(keep, keep)]).logpdf(np.asarray(y)[keep])
    np.testing.assert_allclose(ll, ref, rtol=1e-8)


@pytest.mark.slow
def test_fou_bridge_variational_posterior_matches_kalman():
    """Variational posterior (affine control, Itô scan) vs the exact conditional of the
    Euler-discretised augmented prior (Kalman smoother), within Monte-Carlo error."""
    theta, H, K, noise, T, nsub = 1.0, 0.7, 5, 0.25, 1.0, 2
    times = jnp.linspace(0.0, T, 26)
    iobs = 15
    y = jnp.full(times.shape, jnp.nan).at[iobs].set(0.8)
    lik = fs.GaussianLikelihood(jnp.log(jnp.array([noise])), learn_noise=False)
    scale = jnp.concatenate([jnp.ones(1), 1 / jnp.sqrt(2 * fr.gamma_grid(K, 20.0))])
    model = fs.FractionalSDE(
        lambda x, t: -theta * x,
        fs.AffineControl(times, 1, K, state_scale=scale),
        lik,
        1,
        hurst=H,
        num_components=K,
        gamma_max=20.0,
        horizon=T,
        sigma=1.0,
        x0_std=0.5,
        learn_hurst=False,
    )
    ssm, idx = fs.euler_lgssm(model, times, nsub, noise, jnp.array([[-theta]]))
    yf = jnp.full((ssm.transition_matrix.shape[0] + 1, 1), jnp.nan).at[idx[iobs], 0].set(0.8)
    sm = kalman.smoother(ssm, yf)
    m_ref, sd_ref = np.asarray(sm.mean[idx, 0]), np.sqrt(np.asarray(sm.cov[idx, 0, 0]))
    n = 800
    sched = optax.piecewise_constant_schedule(0.3, {int(0.6 * n): 0.1, int(0.85 * n): 0.1})
    res = fs.fit_elbo(
        model,
        jax.random.PRNGKey(0),
        times,
        y[:, None],
        n,
        optax.adam(sched),
        num_samples=32,
        num_substeps=nsub,
        freeze=("log_sigma",),
    )
    N = 4000
    xs = np.asarray(
        fs.sample_posterior(res.params, jax.random.PRNGKey(1), times, num_samples=N, num_substeps=nsub)[..., 0]
    )
    m, sd = xs.mean(0), xs.std(0)
    se_m, se_sd = sd_ref / np.sqrt(N), sd_ref / np.sqrt(2 * N)
    assert np.max(np.abs(m - m_ref) / se_m) < 4.0, np.abs(m - m_ref) / se_m
    assert np.max(np.abs(sd - sd_ref) / se_sd) < 4.0, np.abs(sd - sd_ref) / se_sd
    # the pinned point: posterior sd far below the prior's
    assert sd[iobs] < 0.6 * sd[0]


@pytest.mark.slow
def test_ito_scan_and_stratonovich_diffrax_match_gbm_mean():
    """Multiplicative noise (K = 0): dX = mu X dt + s X dW (Itô), E X_T = x0 exp(mu T).
    The Stratonovich diffrax option solves the same Itô model (drift corrected)."""
    mu, s = 0.3, 0.6
    model = fs.FractionalSDE(
        lambda x, t: mu * x,
        fs.AffineControl(jnp.array([0.0, 1.0]), 1, 0),
        fs.GaussianLikelihood(jnp.zeros(1)),
        1,
        num_components=0,
        x0_mean=1.0,
        x0_std=1e-6,
        sigma_fn=lambda x, t: s * x,
    )
    times = jnp.linspace(0.0, 1.0, 5)
    N = 4000
    ref = np.exp(mu * times)
    ref_sd = np.sqrt(np.exp(2 * mu * times) * (np.exp(s**2 * times) - 1))
    x_ito = np.asarray(fs.sample_prior(model, jax.random.PRNGKey(0), times, N, num_substeps=50)[..., 0])
    x_str = np.asarray(
        fs.sample_prior(model, jax.random.PRNGKey(1), times, N, solver="diffrax", stratonovich=True, dt0=0.02)[..., 0]
    )
    for x in (x_ito, x_str):
        np.testing.assert_array_less(np.abs(x.mean(0) - ref)[1:], 4 * ref_sd[1:] / np.sqrt(N) + 0.01)
    # without the correction a Stratonovich solve would have mean exp((mu + s^2/2) t): far off
    assert abs(x_str.mean(0)[-1] - np.exp(mu + s**2 / 2)) > 8 * ref_sd[-1] / np.sqrt(N)


def _dense_profile_mle(times, ys, g, horizon):
    """argmax_H of the MA-fBM log-likelihood with sigma profiled out, from the dense closed-form
    covariance (``ma_fbm_covariance``) -- independent of the Kalman engine and of fou_mle."""
    from scipy.optimize import minimize_scalar

    Y = np.asarray(ys)[:, 1:]  # X(0) = 0 carries no information

    def nll(h):
        w = fr.ma_fbm_weights(h, g, horizon)
        C = np.asarray(fr.ma_fbm_covariance(times[1:], h, g, w)) + 1e-10 * np.eye(Y.shape[1])
        L = np.linalg.cholesky(C)
        z = np.linalg.solve(L, Y.T)
        return 0.5 * z.size * np.log(np.sum(z**2) / z.size) + Y.shape[0] * np.sum(np.log(np.diag(L)))

    return minimize_scalar(nll, bounds=(0.05, 0.95), method="bounded", options=dict(xatol=1e-5)).x


@pytest.mark.slow
def test_hurst_ml_through_kalman_on_exact_fbm():
    """fou_mle (Kalman likelihood, Newton) on exact fBM: within 0.05 of the truth for the rough
    H = 0.2 (8 paths: standard error ~0.02), and at the maximum of the dense likelihood."""
    times = jnp.linspace(0.0, 1.0, 101)
    g = fr.gamma_grid_for(0.01, 1.0)
    for H in (0.2,):  # the roughest case; all five H values: tutorial + benchmark (test-time budget)
        ys = fr.sample_fbm(jax.random.PRNGKey(int(100 * H)), times, H, 8)
        r = fs.fou_mle(times, ys, g)
        assert abs(float(r.hurst) - H) < 0.05, (H, r)
        assert 0.005 < float(r.hurst_sd) < 0.03 and r.num_iterations < 50
        # sigma is profiled in the reference; noise_std = 1e-3 moves the maximum by ~1e-4
        assert abs(float(r.hurst) - _dense_profile_mle(times, ys, g, 1.0)) < 2e-3


@pytest.mark.slow
def test_fou_log_likelihood_smooth_in_hurst():
    """The one-Brownian-motion process noise is numerically singular; the likelihood must still be
    smooth in H (regression: pivots dropped by the square-root filter made it jump by ~1e-4)."""
    t = jnp.linspace(0.0, 1.0, 101)
    y = fr.sample_fbm(jax.random.PRNGKey(80), t, 0.8, 1)[0]
    g = fr.gamma_grid_for(0.01, 1.0)
    f = jax.jit(lambda h: fs.fou_log_likelihood(0.0, 1.3, h, t, y, g, 1.0))
    v = np.array([float(f(0.829 + 1e-5 * k)) for k in range(6)])
    d2 = v[2:] - 2 * v[1:-1] + v[:-2]
    assert np.max(np.abs(d2 - np.median(d2))) < 1e-7, d2


@pytest.mark.slow
def test_sigma_scale_time_per_path_q0_and_shared_gain():
    times = jnp.linspace(0.0, 1.0, 6)
    lik = fs.GaussianLikelihood(jnp.zeros(1))
    ctrl = fs.AffineControl(times, 1, 3, num_paths=2, shared_gain=True)
    assert ctrl.a.shape == (2, 5, 2, 1) and ctrl.C.shape == (5, 2, 1, 4)
    m = fs.FractionalSDE(
        lambda x, t: -x, ctrl, lik, 1, hurst=0.3, num_components=3, sigma=0.7, sigma_scale_time=0.2, num_paths=2
    )
    np.testing.assert_allclose(m.constant_sigma(), [0.7], rtol=1e-12)
    np.testing.assert_allclose(m.log_sigma, np.log(0.7 * 0.2**0.3), rtol=1e-12)  # scale at Delta
    assert m.num_paths == 2 and m.q0_mean.shape == (2, 4) and m.for_path(1).num_paths is None
    y = jnp.stack([jnp.ones((6, 1)), -jnp.ones((6, 1))])
    with pytest.raises(ValueError, match="for_path"):
        fs.elbo(m, jax.random.PRNGKey(0), times, y[0])
    # batched fit: per-path q(z0) and offsets train, the shared gain table is one array
    res = fs.fit_elbo(m, jax.random.PRNGKey(0), times, y, 3, 1e-2, num_samples=2, batched=True)
    assert np.all(np.isfinite(res.losses))
    q = np.asarray(res.params.q0_mean)
    assert not np.allclose(q[0], q[1])  # each sequence has its own q(z0)
    with pytest.raises(ValueError, match="num_paths"):
        fs.AffineControl(times, 1, 3, shared_gain=True)


@pytest.mark.slow
def test_elbo_float32_and_bad_input():
    times = jnp.linspace(0.0, 1.0, 6, dtype=jnp.float32)
    lik = fs.GaussianLikelihood(jnp.zeros(1, jnp.float32))
    model = fs.FractionalSDE(
        lambda x, t: -x, fs.AffineControl(times, 1, 3), lik, 1, num_components=3, hurst=0.3, dtype=jnp.float32
    )
    y = jnp.ones((6, 1), jnp.float32)
    e = fs.elbo(model, jax.random.PRNGKey(0), times, y, num_samples=4)
    assert e.dtype == jnp.float32 and np.isfinite(float(e))
    import equinox as eqx

    g = eqx.filter_grad(lambda m: fs.elbo(m, jax.random.PRNGKey(0), times, y, num_samples=4))(model)
    assert np.isfinite(float(g.hurst_logit)) and float(g.hurst_logit) != 0.0
    with pytest.raises(ValueError, match="hurst"):
        fs.FractionalSDE(lambda x, t: -x, None, lik, 1, hurst=1.2)
    with pytest.raises(ValueError, match="kind"):
        fs.FractionalSDE(lambda x, t: -x, None, lik, 1, kind="type3")
    with pytest.raises(ValueError, match="time steps"):
        fs.elbo(model, jax.random.PRNGKey(0), times, y[:4])
    with pytest.raises(ValueError, match="increasing"):
        fs.elbo(model, jax.random.PRNGKey(0), times[::-1], y)
    with pytest.raises(AttributeError, match="freeze"):
        fs.fit_elbo(model, jax.random.PRNGKey(0), times, y, 1, freeze=("nope",))
    with pytest.raises(ValueError, match="drift_matrix"):
        fr.ma_fbm_linear_sde(jnp.zeros(2), 1.0, 0.3, fr.gamma_grid(3), 1.0)


def test_moving_digits():
    from probdyn.datasets import moving_digits

    d = moving_digits(6, 5, 14, hurst=0.3, seed=1)
    assert d.frames.shape == (6, 5, 14, 14) and d.frames.dtype == np.float32
    assert np.all((d.positions >= 0) & (d.positions <= 6))
    # bilinear rendering conserves the ink of the (in-canvas) digit at every frame
    from sklearn.datasets import load_digits

    ink = load_digits().images.reshape(-1, 64).sum(1) / 16.0
    mass = d.frames.sum((2, 3))
    assert np.allclose(mass, mass[:, :1], atol=1e-4)
    assert np.all(np.min(np.abs(mass[:, :1] - ink[None, :]), axis=1) < 1e-4)
    np.testing.assert_array_equal(moving_digits(6, 5, 14, hurst=0.3, seed=1).frames, d.frames)
    with pytest.raises(ValueError):
        moving_digits(2, 5, 8)


def test_video_decoder_likelihood_and_encoder_causality():
    """BernoulliDecoder against scipy's Bernoulli pmf; the backward-GRU context row ``i``
    depends on frames ``i..T-1`` only; the video ELBO is finite with a finite gradient."""
    import equinox as eqx

    from probdyn.models.fractional import video as fv

    key = jax.random.PRNGKey(0)
    model = fv.LatentVideoModel(key, size=4, latent_dim=2, context_dim=3, num_components=2, width=8, dtype=jnp.float64)
    rng = np.random.default_rng(0)
    T = 5
    frames = (rng.uniform(size=(T, 4, 4)) < 0.3).astype(float)
    xs = rng.normal(size=(T, 2))
    dec = model.sde.likelihood
    lg = np.asarray(dec.logits(jnp.asarray(xs)))
    ref = stats.bernoulli.logpmf(frames, 1.0 / (1.0 + np.exp(-lg))).sum()
    np.testing.assert_allclose(float(dec(jnp.asarray(xs), jnp.asarray(frames))), ref, rtol=1e-12)
    ctx = np.asarray(model.encode(jnp.asarray(frames)))
    changed = frames.copy()
    changed[:2] = 1.0 - changed[:2]
    ctx2 = np.asarray(model.encode(jnp.asarray(changed)))
    np.testing.assert_array_equal(ctx[2:], ctx2[2:])  # rows 2.. have not seen frames 0, 1
    assert np.all(np.abs(ctx[:2] - ctx2[:2]).max(axis=1) > 0)
    times = jnp.linspace(0.0, 1.0, T)
    val, grad = eqx.filter_value_and_grad(lambda m: fv.video_elbo(m, key, times, jnp.asarray(frames)))(model)
    assert np.isfinite(float(val))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
