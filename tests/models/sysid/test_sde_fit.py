"""probdyn.models.sysid.sde_fit (what `probdyn fit --model sde` runs), against dense Gaussian
algebra of the Ornstein-Uhlenbeck process: the maximum-likelihood fit maximises the exact
likelihood and reports it, and the smoothed forecast equals dense conditioning."""

import jax
import numpy as np
import pytest
from scipy import optimize
from scipy.stats import multivariate_normal

from probdyn.inference.gaussian_filters import observations as obs_lib
from probdyn.models import sysid

jax.config.update("jax_enable_x64", True)

OBS_SD = sysid.get_system("ornstein_uhlenbeck").obs_sd


def ou_data(n=40, lam=0.5, sig=0.5, seed=3):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 30, n))
    x = [rng.normal(0, sig / np.sqrt(2 * lam))]
    for h in np.diff(t):
        a = np.exp(-lam * h)
        x.append(a * x[-1] + np.sqrt(sig**2 / (2 * lam) * (1 - a * a)) * rng.normal())
    return t, (np.asarray(x) + OBS_SD * rng.normal(size=n))[:, None]


def ou_prior(t, lam, sig, m0, P0):
    """Mean and covariance of x(t) for dx = -lam x dt + sig dW, x(t[0]) ~ N(m0, P0)."""
    dt = t - t[0]
    v = P0 * np.exp(-2 * lam * dt) + sig**2 / (2 * lam) * (1 - np.exp(-2 * lam * dt))
    lo = np.minimum.outer(np.arange(t.size), np.arange(t.size))
    return m0 * np.exp(-lam * dt), v[lo] * np.exp(-lam * np.abs(t[:, None] - t[None]))


def dense_loglik(t, y, lam, sig):
    m, C = ou_prior(t, lam, sig, y[0, 0], 1.0)  # the fit's initial prior: N(y_0, 1)
    return multivariate_normal.logpdf(y[:, 0], m, C + OBS_SD**2 * np.eye(t.size))


def test_fit_sde_map_maximises_the_exact_likelihood():
    t, y = ou_data()
    fit = sysid.fit_sde("ornstein_uhlenbeck", t, y, jax.random.PRNGKey(0), num_steps=400, learning_rate=0.05)
    lam, sig = fit.parameters["lam"], fit.parameters["diffusion_0"]
    assert fit.map.log_likelihood == pytest.approx(dense_loglik(t, y, lam, sig), rel=1e-6)
    ref = optimize.minimize(
        lambda u: -dense_loglik(t, y, *np.exp(u)),
        np.log([0.5, 0.5]),
        method="Nelder-Mead",
        options=dict(xatol=1e-8, fatol=1e-10),
    ).x
    np.testing.assert_allclose(np.log([lam, sig]), ref, atol=0.02)
    assert float(fit.idata.posterior["lam"].values.ravel()[0]) == lam  # MAP: the one draw


def test_forecast_sde_equals_dense_conditioning():
    """The smoother over the data and a 3-unit horizon (one posterior draw) equals conditioning
    the dense OU prior on the noisy data, at data times and beyond them."""
    t, y = ou_data(n=25)
    fit = sysid.fit_sde("ornstein_uhlenbeck", t, y, jax.random.PRNGKey(0), num_steps=20)
    fc = sysid.forecast_sde(fit, t, y, horizon=3.0)
    dt = np.median(np.diff(t))
    n_h = int(round(3.0 / dt))
    np.testing.assert_allclose(fc.times, np.concatenate([t, t[-1] + dt * np.arange(1, n_h + 1)]), rtol=1e-12)
    m, C = ou_prior(fc.times, fit.parameters["lam"], fit.parameters["diffusion_0"], y[0, 0], 1.0)
    n = t.size
    S = C[:n, :n] + OBS_SD**2 * np.eye(n)
    K = C[:, :n] @ np.linalg.inv(S)
    mean = m + K @ (y[:, 0] - m[:n])
    sd = np.sqrt(np.diag(C - K @ C[:n]))
    np.testing.assert_allclose(fc.mean[:, 0], mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fc.sd[:, 0], sd, rtol=1e-6)
    assert not fc.log_scale and fc.last_data_time == t[-1]


def test_observation_for():
    y2 = np.ones((5, 2))
    assert isinstance(sysid.observation_for("lotka_volterra", 30 * y2), obs_lib.LogNormal)
    assert isinstance(sysid.observation_for("van_der_pol", y2), obs_lib.LinearGaussian)
    with pytest.raises(ValueError, match="observes 1 coordinate"):
        sysid.observation_for("double_well", y2)
    with pytest.raises(ValueError, match="positive populations"):
        sysid.observation_for("lotka_volterra", -y2)
    with pytest.raises(ValueError, match="engine"):
        sysid.fit_sde("double_well", np.arange(5.0), np.ones((5, 1)), jax.random.PRNGKey(0), engine="hmc")
    with pytest.raises(ValueError, match="horizon"):
        fit = sysid.SDEFit(None, None, {}, None, None, None, None, "map", 0.0)
        sysid.forecast_sde(fit, np.arange(5.0), np.ones((5, 1)), horizon=-1.0)
