"""Markovian GP-VAE: Kalman ELBO vs dense-GP ELBO, KL vs dense Gaussian KL, importance-weighted
log-likelihood vs the exact linear-Gaussian marginal likelihood, joint posterior paths vs dense
conditioning (Monte Carlo error bars), datasets vs scipy, training/resume, input checks."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from probdyn import kernels  # noqa: E402
from probdyn.models import mgpvae as mg  # noqa: E402
from probdyn.models.mgpvae import CNNDecoder, CNNEncoder, MLPEncoder  # noqa: E402

T, D, L = 9, 5, 2
KEY = jax.random.PRNGKey(0)


@eqx.filter_jit
def _terms(model, times, frames, mask, eps):
    return model.elbo_terms(times, frames, mask, eps)


@eqx.filter_jit
def _iw(model, key, times, frames, mask, num_samples):
    return model.iw_log_likelihood(key, times, frames, mask, num_samples)


@eqx.filter_jit
def _elbo(model, key, times, frames, mask, num_samples):
    return model.elbo(key, times, frames, mask, num_samples)


@eqx.filter_jit
def _paths_and_impute(model, key, times, frames, mask, num_samples):
    tt, yy, mm = model.prepare(times, frames, mask)
    sm, sv = model.sites(yy, mm)
    f, _ = model.posterior_paths(key, tt, sm, sv, mm, num_samples)
    return sm, sv, f, model.impute(key, times, frames, mask, num_samples)


@eqx.filter_jit
def _terms_both(model, times, frames, mask, eps):
    return model.elbo_terms(times, frames, mask, eps), model.to(mg.GPVAE).elbo_terms(times, frames, mask, eps)


def _data(seed=0, T=T):
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(0.1, 1.2, T))  # irregular
    frames = rng.normal(size=(T, D))
    mask = np.ones(T, bool)
    mask[[0, 3, 4, T - 1]] = False  # missing, first and last included
    frames[~mask] = np.nan
    return times, frames, mask


def _dense_posterior(K, m, v, mask):
    """Numpy reference: q = N(mu, S) with S = (K^-1 + diag(obs / v))^-1 (one channel)."""
    Kinv = np.linalg.inv(K)
    prec = Kinv + np.diag(np.where(mask, 1.0 / v, 0.0))
    S = np.linalg.inv(prec)
    mu = S @ np.where(mask, m / v, 0.0)
    return mu, S


M32 = [kernels.Matern32(1.1, 0.8), kernels.Matern32(4.0, 2.0)]
CHANNEL_KERNELS = [  # Matern32 (M32): importance-weighting tests + tutorial
    [kernels.Matern12(0.7, 1.3), kernels.Matern12(3.0, 0.5)],
    [kernels.Matern52(0.9, 1.0), kernels.Matern52(2.5, 0.3)],
    [kernels.SHO(2.0, 3.0, 1.0), kernels.SHO(0.7, 0.6, 0.4)],
]


@pytest.mark.slow
def test_elbo_kalman_equals_dense_and_kl_equals_gaussian_kl():
    times, frames, mask = _data()
    eps = jax.random.normal(KEY, (3, T, L))
    for i, ks in enumerate(CHANNEL_KERNELS):
        m = mg.make_model(mg.MarkovGPVAE, (D,), L, jax.random.PRNGKey(i), kernel=ks, obs_var=0.3, width=16)
        a, b = _terms_both(m, times, frames, mask, eps)
        for k in ("elbo", "recon", "kl"):
            assert abs(float(a[k]) - float(b[k])) <= 1e-9 * abs(float(b[k])), (type(ks[0]).__name__, k)
        # KL(q || p) from the dense Gaussians (independent formula)
        sm, sv = (np.asarray(x) for x in m.sites(jnp.nan_to_num(jnp.asarray(frames)), mask))
        kl = 0.0
        for l, k in enumerate(ks):
            K = np.asarray(k.covariance(times))
            mu, S = _dense_posterior(K, sm[:, l], sv[:, l], mask)
            Kinv = np.linalg.inv(K)
            kl += 0.5 * (np.trace(Kinv @ S) + mu @ Kinv @ mu - T + np.linalg.slogdet(K)[1] - np.linalg.slogdet(S)[1])
        assert abs(float(a["kl"]) - kl) <= 1e-8 * abs(kl)


@eqx.filter_jit
def _grads_both(model, times, frames, mask, eps):
    def g(m):
        params, static = eqx.partition(m, eqx.is_inexact_array)
        loss = lambda p: eqx.combine(p, static).elbo_terms(times, frames, mask, eps)["elbo"]  # noqa: E731
        return jax.grad(loss)(params)

    return g(model), g(model.to(mg.GPVAE))


@pytest.mark.slow
def test_dense_gradient_equals_kalman_gradient():
    """The dense reference's hand-written conditioning gradient (one Cholesky -> one solve) vs
    autodiff through the Kalman smoother: every parameter (encoder, decoder, kernel
    hyperparameters, observation variance), irregular times, missing frames."""
    times, frames, mask = _data()
    eps = jax.random.normal(KEY, (3, T, L))
    m = mg.make_model(mg.MarkovGPVAE, (D,), L, jax.random.PRNGKey(3), kernel=M32, obs_var=0.3, width=16)
    ga, gb = _grads_both(m, times, frames, mask, eps)
    la, lb = jax.tree.leaves(ga), jax.tree.leaves(gb)
    assert len(la) == len(lb) > 4
    scale = max(float(jnp.max(jnp.abs(x))) for x in lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-7, atol=1e-9 * scale)
    gk = np.asarray(gb.log_kernel.lengthscale)
    assert np.all(np.abs(gk) > 1e-6 * scale)  # the hyperparameter gradients are not trivially zero


class _ExactSites(eqx.Module):
    """Encoder giving the exact posterior sites of a linear-Gaussian decoder with W^T W diagonal."""

    W: jax.Array
    b: jax.Array
    s2: jax.Array

    def __call__(self, y):
        c = jnp.sum(self.W**2, axis=0)
        return (self.W.T @ (y - self.b)) / c, self.s2 / c


def _linear_model(cls, ks, s2=0.2):
    rng = np.random.default_rng(7)
    Q, _ = np.linalg.qr(rng.normal(size=(D, L)))
    W = Q * np.array([1.5, 0.7])  # orthogonal columns, W^T W diagonal
    b = rng.normal(size=D)
    dec = eqx.nn.Linear(L, D, key=KEY)
    dec = eqx.tree_at(lambda d: (d.weight, d.bias), dec, (jnp.asarray(W), jnp.asarray(b)))
    return cls(_ExactSites(jnp.asarray(W), jnp.asarray(b), jnp.asarray(s2)), dec, L, (D,), ks, obs_var=s2), W, b


def _exact_loglik(times, frames, mask, W, b, s2, grams):
    obs = np.flatnonzero(mask)
    n = obs.size
    C = np.zeros((n * D, n * D))
    for i, ti in enumerate(obs):
        for j, tj in enumerate(obs):
            C[i * D : (i + 1) * D, j * D : (j + 1) * D] = W @ np.diag([g[ti, tj] for g in grams]) @ W.T
    C += s2 * np.eye(n * D)
    r = (frames[obs] - b).reshape(-1)
    return -0.5 * r @ np.linalg.solve(C, r) - 0.5 * np.linalg.slogdet(C)[1] - 0.5 * n * D * math.log(2 * math.pi)


@pytest.mark.slow
def test_iw_loglik_exact_for_linear_gaussian_decoder():
    """With the exact posterior as q every importance weight equals p(y_obs): compare with the
    dense (T*D)-dimensional Gaussian marginal likelihood; then a perturbed encoder: IWAE with many
    joint paths is closer to the truth than the ELBO and both are below it."""
    times, frames, mask = _data(1)
    ks = M32
    grams = [np.asarray(k.covariance(times)) for k in ks]
    for cls, gr in [(mg.MarkovGPVAE, grams), (mg.GPVAE, grams), (mg.IIDVAE, [np.eye(T)] * L)]:
        model, W, b = _linear_model(cls, ks)
        exact = _exact_loglik(times, frames, mask, W, b, 0.2, gr)
        iw = float(_iw(model, KEY, times, frames, mask, 4000))  # S as below: one compilation
        assert abs(iw - exact) <= 1e-8 * abs(exact), cls.__name__
    model, W, b = _linear_model(mg.MarkovGPVAE, ks)
    exact = _exact_loglik(times, frames, mask, W, b, 0.2, grams)
    bad = eqx.tree_at(lambda m: m.encoder.s2, model, jnp.asarray(0.6))  # over-dispersed sites: q != posterior
    iw = float(_iw(bad, KEY, times, frames, mask, 4000))
    elbo = float(_elbo(bad, KEY, times, frames, mask, 4000))
    assert elbo < iw < exact + 0.05 and exact - iw < 0.3 * (exact - elbo)


def test_joint_paths_and_imputation_match_dense_posterior():
    times, frames, mask = _data(2)
    ks = M32
    model, W, b = _linear_model(mg.MarkovGPVAE, ks)
    S = 4000
    sm, sv, f, imp = _paths_and_impute(model, KEY, times, frames, mask, S)
    f = np.asarray(f)
    for l, k in enumerate(ks):
        mu, C = _dense_posterior(np.asarray(k.covariance(times)), np.asarray(sm[:, l]), np.asarray(sv[:, l]), mask)
        se_mu = np.sqrt(np.diag(C) / S)
        assert np.all(np.abs(f[:, :, l].mean(0) - mu) < 5 * se_mu)
        Ch = np.cov(f[:, :, l].T)
        se_C = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / S)
        assert np.all(np.abs(Ch - C) < 5 * se_C)  # joint (lagged) covariances, not only marginals
    # imputation: E[W f + b] = W mu + b, checked with the Monte Carlo error of S paths
    imp = np.asarray(imp)
    mus = np.stack(
        [
            _dense_posterior(np.asarray(k.covariance(times)), np.asarray(sm[:, l]), np.asarray(sv[:, l]), mask)[0]
            for l, k in enumerate(ks)
        ],
        axis=1,
    )
    assert np.max(np.abs(imp - (mus @ W.T + b))) < 5 * np.max(np.abs(W)) * np.sqrt(1.0 / S) * 2


@pytest.mark.slow
def test_float32_matches_float64():
    """float32 Kalman and dense ELBOs agree with float64 (same shapes as the first ELBO test, so
    the float64 compilation is reused)."""
    times, frames, mask = _data()
    m64 = mg.make_model(
        mg.MarkovGPVAE, (D,), L, jax.random.PRNGKey(0), kernel=CHANNEL_KERNELS[0], obs_var=0.3, width=16
    )
    eps = jax.random.normal(KEY, (3, T, L))
    a64, b64 = _terms_both(m64, times, frames, mask, eps)
    a32, b32 = _terms_both(m64.astype(jnp.float32), times, frames, mask, eps.astype(jnp.float32))
    assert a32["elbo"].dtype == jnp.float32
    for x32, x64 in ((a32, a64), (b32, a64)):
        assert abs(float(x32["elbo"]) - float(x64["elbo"])) < 1e-4 * abs(float(x64["elbo"]))


@functools.lru_cache(maxsize=1)
def _pendulum():
    from probdyn.datasets import pendulum_sensors

    return pendulum_sensors(12, 10, num_sensors=D, missing_rate=0.3, noise_std=0.05, seed=4)


@eqx.filter_jit
def _posterior_grads(model, times, site_mean, site_var, mask, w):
    """Gradient of a weighted sum of posterior means, variances and log Z w.r.t. the
    log-hyperparameters and the sites."""

    def f(log_kernel, sm, sv):
        mdl = eqx.tree_at(lambda m: m.log_kernel, model, log_kernel)
        mu, var, log_z = mdl.posterior_marginals(times, sm, sv, mask)
        return jnp.sum(w[0] * mu) + jnp.sum(w[1] * var) + jnp.sum(log_z)

    lk = eqx.filter(model.log_kernel, eqx.is_inexact_array)
    return jax.grad(
        lambda a, b, c: f(eqx.combine(a, eqx.filter(model.log_kernel, eqx.is_inexact_array, inverse=True)), b, c),
        argnums=(0, 1, 2),
    )(lk, site_mean, site_var)


@pytest.mark.slow
def test_float32_gradients_long_lengthscales():
    """Regression: float32 training of the digits tutorial skipped/NaN'd steps once channel
    lengthscales grew to ~300x the frame spacing (non-finite RTS-smoother gradients in
    float32). Gradients must stay finite and match the float64 dense-GP reference."""
    rng = np.random.default_rng(11)
    Tn = 20
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.6, 1.5, Tn - 1))])
    mask = rng.uniform(size=Tn) > 0.5
    sm, sv = rng.normal(0.0, 2.0, (Tn, L)), rng.uniform(0.1, 1.5, (Tn, L))
    w = rng.normal(size=(2, Tn, L))
    ks = [kernels.Matern32(363.6, 1.6), kernels.Matern32(2900.0, 0.5)]
    m = mg.make_model(mg.MarkovGPVAE, (D,), L, KEY, kernel=ks, width=8)
    ref = _posterior_grads(
        m.to(mg.GPVAE), jnp.asarray(times), jnp.asarray(sm), jnp.asarray(sv), jnp.asarray(mask), jnp.asarray(w)
    )
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    got = _posterior_grads(m.astype(jnp.float32), f32(times), f32(sm), f32(sv), jnp.asarray(mask), f32(w))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        assert a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(
            np.asarray(a, np.float64), np.asarray(b), rtol=0, atol=2e-3 * float(jnp.max(jnp.abs(b)))
        )


@pytest.mark.slow
def test_fit_on_pendulum_sensors_improves_and_checkpoints(tmp_path):
    """MLP-encoder MGPVAE on the simulated pendulum sensors: the ELBO improves; a resumed run
    from the final checkpoint has nothing left to do and returns the same result."""
    p = _pendulum()
    m = mg.make_model(mg.MarkovGPVAE, (D,), L, KEY, width=16)
    assert isinstance(m.encoder, MLPEncoder)
    ck = tmp_path / "ck.eqx"
    kw = dict(batch_size=4, learning_rate=1e-2, checkpoint=ck, checkpoint_every=10, progress_bar=False)
    full = mg.fit(m, p.times, p.frames, p.mask, KEY, 40, **kw)
    assert full.losses[-10:].mean() < full.losses[:10].mean() - 0.5
    again = mg.fit(m, p.times, p.frames, p.mask, KEY, 40, **kw)  # resumes at step 40: nothing to do
    np.testing.assert_array_equal(again.losses, full.losses)
    np.testing.assert_array_equal(
        np.asarray(again.params.log_kernel.lengthscale), np.asarray(full.params.log_kernel.lengthscale)
    )


def test_interpolate_linear_vs_numpy():
    rng = np.random.default_rng(6)
    times = np.cumsum(rng.uniform(0.1, 1.0, (2, 8)), axis=1)
    frames = rng.normal(size=(2, 8, 3))
    mask = rng.uniform(size=(2, 8)) > 0.5
    mask[:, 2] = True
    out = mg.interpolate_linear(times, frames, mask)
    for i in range(2):
        for p in range(3):
            ref = np.interp(times[i], times[i][mask[i]], frames[i, mask[i], p])
            np.testing.assert_allclose(out[i, :, p], ref, rtol=1e-12, atol=1e-12)


def test_datasets_against_independent_references():
    from scipy import ndimage
    from scipy.integrate import solve_ivp

    from probdyn.datasets import rotating_digits

    d = rotating_digits(40, 8, missing_rate=0.5, corrupt_rate=0.2, seed=3)
    n = d.mask.size
    assert abs(d.mask.mean() - 0.5) < 4 * math.sqrt(0.25 / n) + 1.0 / n
    assert np.all(np.isnan(d.frames[~d.mask])) and np.all(np.isfinite(d.frames[d.mask]))
    ok = d.mask & ~d.corrupted
    np.testing.assert_array_equal(d.frames[ok], d.clean[ok])
    assert not np.any(d.corrupted & ~d.mask) and np.all(np.diff(d.times, axis=1) > 0)
    i = 0  # the video is the first frame rotated by speed * elapsed time (not the reverse)
    for t in range(1, 8):
        ang = np.degrees(d.info["speed"][i] * (d.times[i, t] - d.times[i, 0]))
        fwd = ndimage.rotate(d.clean[i, 0], ang, reshape=False, order=1)
        bwd = ndimage.rotate(d.clean[i, 0], -ang, reshape=False, order=1)
        assert np.mean((fwd - d.clean[i, t]) ** 2) < 0.5 * np.mean((bwd - d.clean[i, t]) ** 2) + 1e-3

    p = _pendulum()  # the training test's data (one compilation of the ODE solver)
    for i in range(2):
        w0, c = p.info["omega0"][i], p.info["damping"][i]
        sol = solve_ivp(
            lambda t, x: [x[1], -(w0**2) * np.sin(x[0]) - c * x[1]],
            (p.times[i, 0], p.times[i, -1]),
            p.info["states"][i, 0],
            t_eval=p.times[i],
            rtol=1e-11,
            atol=1e-11,
            method="DOP853",
        )
        np.testing.assert_allclose(p.info["states"][i], sol.y.T, atol=1e-5)
    th = p.info["states"][..., 0]
    phi = np.linspace(-np.pi, np.pi, D, endpoint=False)
    dist2 = (np.sin(th)[..., None] - np.sin(phi)) ** 2 + (np.cos(th)[..., None] - np.cos(phi)) ** 2
    np.testing.assert_allclose(p.clean, np.exp(-dist2 / (2 * 0.35**2)), atol=1e-12)
    resid = (p.frames - p.clean)[p.mask]
    assert abs(resid.std() - 0.05) < 0.01 and np.all(np.isnan(p.frames[~p.mask]))


def test_image_networks():
    """Images get the small CNN encoder; decoder='cnn' the transposed-convolution decoder."""
    mc = mg.make_model(mg.MarkovGPVAE, (13, 10), L, KEY, decoder="cnn")  # (the tutorial uses the MLP decoder)
    assert isinstance(mc.encoder, CNNEncoder) and isinstance(mc.decoder, CNNDecoder)
    sites = jax.eval_shape(mc.encoder, jax.ShapeDtypeStruct((13, 10), jnp.float64))  # shapes only: no compile
    assert [x.shape for x in sites] == [(L,), (L,)]
    assert jax.eval_shape(mc.decoder, sites[0]).shape == (13, 10)
    with pytest.raises(ValueError, match="decoder"):
        mg.make_model(mg.MarkovGPVAE, (D,), L, KEY, decoder="cnn")


def test_bad_input():
    m = mg.make_model(mg.MarkovGPVAE, (D,), L, KEY, width=8)
    times, frames, mask = _data()
    with pytest.raises(ValueError, match="increasing"):
        mg.check_data(m, times[::-1], frames, mask)
    with pytest.raises(ValueError, match="frames must have shape"):
        mg.check_data(m, times, frames[:, :3], mask)
    with pytest.raises(ValueError, match="non-finite"):
        mg.check_data(m, times, frames, np.ones(T, bool))
    with pytest.raises(ValueError, match="mask"):
        mg.check_data(m, times, frames, mask.astype(int))
    with pytest.raises(ValueError, match="likelihood"):
        mg.make_model(mg.MarkovGPVAE, (D,), L, KEY, likelihood="poisson")
    with pytest.raises(ValueError, match="kernels"):
        mg.make_model(mg.MarkovGPVAE, (D,), L, KEY, kernel=[kernels.Matern32()])
    with pytest.raises(TypeError, match="same type"):
        mg.make_model(mg.MarkovGPVAE, (D,), L, KEY, kernel=[kernels.Matern32(), kernels.Matern12()])
    with pytest.raises(ValueError, match="missing_rate"):
        from probdyn.datasets import rotating_digits

        rotating_digits(2, 5, missing_rate=1.0)
