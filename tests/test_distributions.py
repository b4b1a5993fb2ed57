"""probdyn.distributions against dense Gaussian references."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

jax.config.update("jax_enable_x64", True)

from probdyn import LinearGaussianSSM, MarkovGP, kernels  # noqa: E402
from probdyn.distributions import LinearGaussianSSMDistribution, MarkovGPDistribution  # noqa: E402

RNG = np.random.default_rng(0)
T = np.sort(RNG.uniform(0, 10, 15))


def dense_logpdf(y, mean, K):
    obs = ~np.isnan(y)
    return stats.multivariate_normal(np.broadcast_to(mean, y.shape)[obs], K[np.ix_(obs, obs)]).logpdf(y[obs])


@pytest.mark.slow
def test_markov_gp_log_prob_dense_missing_and_grad():
    k = kernels.Matern32(1.3, 0.8) + kernels.SHO(omega=2.0, quality=3.0, variance=0.4)
    noise = RNG.uniform(0.05, 0.2, 15)
    d = MarkovGPDistribution(k, T, noise, mean=0.5)
    K = np.asarray(k.covariance(T)) + np.diag(noise)
    y = RNG.standard_normal(15)
    y[[2, 9]] = np.nan
    np.testing.assert_allclose(d.log_prob(y), dense_logpdf(y, 0.5, K), rtol=1e-9)
    np.testing.assert_allclose(d.pointwise_log_prob(y).sum(), d.log_prob(y), rtol=1e-9)
    assert d.batch_shape == () and d.event_shape == (15,)
    # gradients through the filter match the dense likelihood's
    yo = np.where(np.isnan(y), 0.0, y)

    def dense(ell):
        Kd = kernels.Matern32(ell, 0.8).covariance(T) + jnp.diag(jnp.asarray(noise))
        obs = ~np.isnan(y)
        return jax.scipy.stats.multivariate_normal.logpdf(
            jnp.asarray(yo)[obs], jnp.zeros(obs.sum()), Kd[np.ix_(obs, obs)]
        )

    kal = lambda ell: MarkovGPDistribution(kernels.Matern32(ell, 0.8), T, noise).log_prob(y)  # noqa: E731
    np.testing.assert_allclose(jax.grad(kal)(1.7), jax.grad(dense)(1.7), rtol=1e-7)
    # MarkovGP.numpyro_dist is this distribution
    gp = MarkovGP(k, T, noise, mean=0.5)
    assert isinstance(gp.numpyro_dist(), MarkovGPDistribution)
    np.testing.assert_allclose(gp.numpyro_dist().log_prob(y), d.log_prob(y), rtol=1e-12)


@pytest.mark.slow
def test_markov_gp_sample_moments():
    k = kernels.Matern52(2.0, 1.5)
    d = MarkovGPDistribution(k, T[:6], 0.1, mean=lambda t: 0.3 * t)
    ys = np.asarray(d.sample(jax.random.PRNGKey(0), (20000,)))
    assert ys.shape == (20000, 6)
    K = np.asarray(k.covariance(T[:6])) + 0.1 * np.eye(6)
    np.testing.assert_allclose(ys.mean(0), 0.3 * T[:6], atol=0.05)
    np.testing.assert_allclose(np.cov(ys.T), K, atol=0.08)
    np.testing.assert_allclose(d.variance, np.diag(K), rtol=1e-6)
    np.testing.assert_allclose(d.mean, 0.3 * T[:6])


@pytest.mark.slow
def test_batched_parameters_plate_and_vmap():
    ells = jnp.array([0.5, 1.0, 2.0])
    d = MarkovGPDistribution(kernels.Matern32(ells, 1.0), T, jnp.array([0.1, 0.2, 0.3]))
    assert d.batch_shape == (3,)
    y = RNG.standard_normal((3, 15))
    lp = d.log_prob(y)
    for i in range(3):
        K = np.asarray(kernels.Matern32(float(ells[i]), 1.0).covariance(T)) + (0.1 * (i + 1)) * np.eye(15)
        np.testing.assert_allclose(lp[i], dense_logpdf(y[i], 0.0, K), rtol=1e-9)
    assert d.sample(jax.random.PRNGKey(1), (2,)).shape == (2, 3, 15)
    # per-point noise batched: shape (3, N)
    assert MarkovGPDistribution(kernels.Matern32(ells, 1.0), T, 0.1 * np.ones((3, 15))).batch_shape == (3,)
    # vmap over the distribution's construction gives the same numbers
    lpv = jax.vmap(lambda e, n, yy: MarkovGPDistribution(kernels.Matern32(e, 1.0), T, n).log_prob(yy))(
        ells, jnp.array([0.1, 0.2, 0.3]), y
    )
    np.testing.assert_allclose(lpv, lp, rtol=1e-10)

    # inside a numpyro plate with a sampled per-series lengthscale
    def model(y):
        with numpyro.plate("series", 3):
            ell = numpyro.sample("ell", dist.LogNormal(0.0, 1.0))
            numpyro.sample("y", MarkovGPDistribution(kernels.Matern32(ell, 1.0), T, 0.1), obs=y)

    tr = numpyro.handlers.trace(numpyro.handlers.substitute(numpyro.handlers.seed(model, 0), {"ell": ells}))
    site = tr.get_trace(y)["y"]
    ref = MarkovGPDistribution(kernels.Matern32(ells, 1.0), T, 0.1).log_prob(y)
    np.testing.assert_allclose(site["fn"].log_prob(site["value"]), ref)
    # a plate over an unbatched distribution expands it
    with numpyro.handlers.seed(rng_seed=0), numpyro.plate("s", 4):
        draw = numpyro.sample("z", MarkovGPDistribution(kernels.Matern12(1.0, 1.0), T, 0.1))
    assert draw.shape == (4, 15)


@pytest.mark.slow
def test_lgssm_distribution_dense_reference():
    """Random 2-state, 2-output time-varying SSM: log_prob equals the dense joint Gaussian."""
    n, d, m = 6, 2, 2
    A = 0.9 * np.linalg.qr(RNG.standard_normal((n - 1, d, d)))[0]
    Q = np.einsum("tij,tkj->tik", L := RNG.standard_normal((n - 1, d, d)) * 0.3, L) + 0.01 * np.eye(d)
    H = RNG.standard_normal((m, d))
    R = 0.2 * np.eye(m)
    m0, P0 = np.array([0.5, -0.2]), np.eye(d)
    ssm = LinearGaussianSSM(m0, P0, A, Q, H, R)
    dd = LinearGaussianSSMDistribution(ssm)
    assert dd.event_shape == (n, m)
    # dense moments of x_{0:n-1} by unrolling, then y = H x + r
    mx, Px = [m0], [P0]
    cross = {(0, 0): P0}
    for t in range(1, n):
        mx.append(A[t - 1] @ mx[-1])

    def Phi(s, t):  # transition from step s to step t
        out = np.eye(d)
        for k in range(s + 1, t + 1):
            out = A[k - 1] @ out
        return out

    for t in range(1, n):
        Px.append(A[t - 1] @ Px[-1] @ A[t - 1].T + Q[t - 1])
    big = np.zeros((n * d, n * d))
    for s in range(n):
        for t in range(s, n):
            C = Phi(s, t) @ Px[s]
            big[t * d : (t + 1) * d, s * d : (s + 1) * d] = C
            big[s * d : (s + 1) * d, t * d : (t + 1) * d] = C.T
    del cross
    Hb = np.kron(np.eye(n), H)
    Sy = Hb @ big @ Hb.T + np.kron(np.eye(n), R)
    my = Hb @ np.concatenate(mx)
    y = RNG.standard_normal((n, m))
    y[1, 0] = np.nan
    y[3] = np.nan
    np.testing.assert_allclose(dd.log_prob(y), dense_logpdf(y.ravel(), my, Sy), rtol=1e-9)
    np.testing.assert_allclose(dd.pointwise_log_prob(y).sum(), dd.log_prob(y), rtol=1e-9)
    ys = np.asarray(dd.sample(jax.random.PRNGKey(2), (20000,))).reshape(20000, -1)
    np.testing.assert_allclose(ys.mean(0), my, atol=0.06)
    np.testing.assert_allclose(np.cov(ys.T), Sy, atol=0.12)
    # batched parameters: per-element emission noise, shared everything else
    Rb = np.stack([0.1 * np.eye(m), 0.5 * np.eye(m)])
    db = LinearGaussianSSMDistribution(LinearGaussianSSM(m0, P0, A[None], Q[None], H, Rb), batch_shape=(2,))
    assert db.batch_shape == (2,)
    lpb = db.log_prob(y)
    for i in range(2):
        np.testing.assert_allclose(
            lpb[i], LinearGaussianSSMDistribution(LinearGaussianSSM(m0, P0, A, Q, H, Rb[i])).log_prob(y), rtol=1e-10
        )
    assert db.sample(jax.random.PRNGKey(0), (3,)).shape == (3, 2, n, m)


def test_bad_input():
    with pytest.raises(TypeError, match="Kernel"):
        MarkovGPDistribution("matern", T)
    with pytest.raises(ValueError, match="increasing"):
        MarkovGPDistribution(kernels.Matern12(), T[::-1])
    with pytest.raises(ValueError, match="non-negative"):
        MarkovGPDistribution(kernels.Matern12(), T, -1.0)
    with pytest.raises(ValueError, match="time axis"):
        MarkovGPDistribution(kernels.Matern12(), T).log_prob(np.zeros(3))
    ssm = LinearGaussianSSM(np.zeros(1), np.eye(1), np.eye(1), np.eye(1), np.eye(1), np.eye(1))
    with pytest.raises(ValueError, match="num_timesteps"):
        LinearGaussianSSMDistribution(ssm)
    with pytest.raises(TypeError, match="LinearGaussianSSM"):
        LinearGaussianSSMDistribution(object(), 3)
