"""probdyn.gp_fit (what `probdyn fit --model markov-gp` runs): the kernel spec builds the sum of
products it names, and the posterior predictive of a fit equals dense-matrix GP regression
with the fitted hyperparameters, on the data's scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers

from probdyn import gp_fit, kernels

jax.config.update("jax_enable_x64", True)


def test_parse_kernel():
    assert gp_fit.parse_kernel("Matern32 + sho*periodic") == [["matern32"], ["sho", "periodic"]]
    with pytest.raises(ValueError, match="unknown kernel 'rbf'"):
        gp_fit.parse_kernel("matern32+rbf")


def test_kernel_prior_builds_the_named_sum_of_products():
    """Conditioned on site values, the spec's kernel has the covariance of the same sum of
    products built by hand (each product term scaled by its amplitude squared)."""
    values = {
        "matern32_00_lengthscale": 1.7,
        "amplitude_0": 0.8,
        "sho_10_period": 2 * np.pi / 2.1,
        "sho_10_quality": 4.0,
        "periodic_11_period": 3.0,
        "periodic_11_lengthscale": 0.9,
        "amplitude_1": 1.3,
    }
    build = gp_fit.kernel_prior("matern32+sho*periodic", span=10.0, spacing=0.1)
    with handlers.seed(rng_seed=0), handlers.trace() as tr, handlers.condition(data=values):
        k = build()
    assert set(tr) == set(values)
    ref = kernels.Matern32(lengthscale=1.7, variance=0.8**2) + kernels.SHO(
        omega=2.1, quality=4.0, variance=1.3**2
    ) * kernels.Periodic(period=3.0, lengthscale=0.9, variance=1.0)
    t = jnp.linspace(0.0, 6.0, 23)
    np.testing.assert_allclose(k.covariance(t), ref.covariance(t), rtol=1e-12, atol=1e-14)


def _dense_matern32_predict(t, y, grid, ell, var, noise_sd):
    def k(a, b):
        r = np.sqrt(3.0) * np.abs(a[:, None] - b[None]) / ell
        return var * (1 + r) * np.exp(-r)

    ok = ~np.isnan(y)
    t, y = t[ok], y[ok]
    K = k(t, t) + noise_sd**2 * np.eye(t.size)
    Ks = k(grid, t)
    mean = Ks @ np.linalg.solve(K, y)
    cov = k(grid, grid) - Ks @ np.linalg.solve(K, Ks.T)
    return mean, np.sqrt(np.diag(cov))


@pytest.mark.parametrize("engine", ["map", "svi"])
def test_predict_gp_equals_dense_regression(engine):
    """MAP: one draw, the dense posterior with the fitted hyperparameters. SVI: the mixture over
    the draws used (mean of means; mean variance plus variance of means), each draw's moments
    from dense algebra. Test points include data times and a forecast beyond the data."""
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0.0, 10.0, 40))
    y = 5.0 + 2.0 * np.sin(t) + 0.3 * rng.normal(size=t.size)
    y[[4, 20]] = np.nan
    fit = gp_fit.fit_gp(
        t, y, jax.random.PRNGKey(0), kernel="matern32", engine=engine, num_steps=150, learning_rate=0.05
    )
    assert fit.loc == pytest.approx(np.nanmean(y)) and fit.scale == pytest.approx(np.nanstd(y))
    grid = np.concatenate([t[:5], np.linspace(10.0, 12.0, 7)])
    mean, sd = gp_fit.predict_gp(fit, t, y, grid, num_draws=5)
    post = fit.idata.posterior
    draws = {k: np.asarray(post[k]).reshape(-1) for k in ("matern32_lengthscale", "amplitude_0", "noise_sd")}
    n = draws["noise_sd"].size
    sel = np.linspace(0, n - 1, min(n, 5)).astype(int)
    z = (y - fit.loc) / fit.scale
    ms, vs = [], []
    for i in sel:
        m, s = _dense_matern32_predict(
            t, z, grid, draws["matern32_lengthscale"][i], draws["amplitude_0"][i] ** 2, draws["noise_sd"][i]
        )
        ms.append(m)
        vs.append(s**2)
    ms, vs = np.array(ms), np.array(vs)
    np.testing.assert_allclose(mean, fit.loc + fit.scale * ms.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sd, fit.scale * np.sqrt(vs.mean(0) + ms.var(0)), rtol=1e-8)


def test_time_scale_prior_tails():
    """1 % of the prior mass below the spacing and 1 % above the span (scipy's log-normal)."""
    from scipy import stats

    loc, sd = gp_fit.time_scale_prior(0.05, 200.0)
    d = stats.lognorm(sd, scale=np.exp(loc))
    np.testing.assert_allclose([d.cdf(0.05), d.sf(200.0)], [0.01, 0.01], rtol=1e-4)
    with pytest.raises(ValueError, match="spacing < span"):
        gp_fit.time_scale_prior(1.0, 1.0)


def test_fit_gp_bad_input():
    t = np.arange(10.0)
    with pytest.raises(ValueError, match="constant"):
        gp_fit.fit_gp(t, np.ones(10), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="engine"):
        gp_fit.fit_gp(t, np.sin(t), jax.random.PRNGKey(0), engine="hmc")
    with pytest.raises(ValueError, match="one series"):
        gp_fit.fit_gp(t, np.ones((10, 2)), jax.random.PRNGKey(0))


def _series(kind):
    rng = np.random.default_rng(0)
    if kind == "lynx_hare":
        from probdyn.datasets import load_series

        t, y, _ = load_series("lynx_hare")
        return t, y[:, 0]
    ts, vs, n = {
        "short times, large values": (1e-3, 1e3, 60),
        "long times, small values": (1e3, 1e-3, 60),
        "10 points": (1.0, 1.0, 10),
    }[kind]
    t = np.sort(rng.uniform(0, 20, n)) * ts
    return t, vs * (np.sin(0.7 * t / ts) + 0.2 * rng.normal(size=n)) + 5 * vs


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lynx_hare", "short times, large values", "long times, small values", "10 points"])
def test_default_nuts_converges(kind):
    """The default NUTS fit (4 chains, 500 warmup + 1000 draws, target acceptance 0.9, priors
    scaled to the data) converges: R-hat < 1.01, no divergences, on a bundled series and on
    simulated ones whose time and value scales span 1e-3 .. 1e3."""
    import arviz as az

    t, y = _series(kind)
    fit = gp_fit.fit_gp(t, y, jax.random.PRNGKey(0), engine="nuts", progress_bar=False)
    summ = az.summary(fit.idata, kind="diagnostics")
    assert float(summ["r_hat"].max()) < 1.01, summ
    assert int(fit.idata.attrs["num_divergences"]) == 0
