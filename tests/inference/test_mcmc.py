"""mcmc.sample: both backends against quadrature/conjugate references, recovery, sharding."""

import os
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
import xarray as xr  # noqa: E402

from probdyn import MarkovGP, kernels  # noqa: E402
from probdyn.distributions import MarkovGPDistribution  # noqa: E402
from probdyn.inference import mcmc  # noqa: E402
from tests.helpers import ROOT  # noqa: E402

SIZES = dict(num_warmup=300, num_samples=400, num_chains=2, progress_bar=False, report=False)


ELL, B, S0 = 1.5, 0.8, 2.0  # true lengthscale and offset; prior sd of the offset


@pytest.fixture(scope="module")
def gp_data():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 20, 50))
    K = np.asarray(kernels.Matern32(ELL, 1.0).covariance(t)) + 0.1 * np.eye(50)
    y = B + np.linalg.cholesky(K) @ rng.standard_normal(50)
    y[[3, 20, 21]] = np.nan  # missing
    return t, y


def gp_model(t, y=None):
    ell = numpyro.sample("ell", dist.LogNormal(0.0, 0.5))
    b = numpyro.sample("b", dist.Normal(0.0, S0))
    numpyro.sample("y", MarkovGPDistribution(kernels.Matern32(ell, 1.0), t, 0.1, mean=b), obs=y)


def _quadrature(t, y, n):
    """Dense quadrature over ``u = log ell`` (n-point grid on [-2.5, 2.5]): normalised
    weights, and the Gaussian posterior mean and variance of the conjugate offset ``b``
    given each ``ell``."""
    obs = ~np.isnan(y)
    to, yo = jnp.asarray(t[obs]), jnp.asarray(y[obs])
    one = jnp.ones(to.shape[0])
    u = jnp.linspace(-2.5, 2.5, n)

    def at(uu):
        ell = jnp.exp(uu)
        r = jnp.abs(to[:, None] - to[None]) * jnp.sqrt(3.0) / ell
        Sig = (1 + r) * jnp.exp(-r) + 0.1 * jnp.eye(to.shape[0])
        marg = jax.scipy.stats.multivariate_normal.logpdf(yo, jnp.zeros_like(yo), Sig + S0**2)
        prec = 1 / S0**2 + one @ jnp.linalg.solve(Sig, one)
        return marg - 0.5 * (uu / 0.5) ** 2, (one @ jnp.linalg.solve(Sig, yo)) / prec, 1 / prec

    logp, bm, bv = (np.asarray(a) for a in jax.vmap(at)(u))
    w = np.exp(logp - logp.max())
    return np.asarray(u), w / w.sum(), bm, bv


def reference_posterior(t, y):
    """Independent dense reference: quadrature over u = log ell (1-D grid); the offset b is
    conjugate given ell (Gaussian), so its posterior is a Gaussian mixture over the grid."""
    u, w, bm, bv = _quadrature(t, y, 801)
    ell = np.exp(u)
    m_ell = np.sum(w * ell)
    m_b = np.sum(w * bm)
    return dict(
        ell=(m_ell, np.sqrt(np.sum(w * (ell - m_ell) ** 2))), b=(m_b, np.sqrt(np.sum(w * (bv + (bm - m_b) ** 2))))
    )


def reference_quantiles(t, y, ps=(0.05, 0.95)):
    """Exact posterior quantiles of ``ell`` (grid CDF) and ``b`` (CDF of the Gaussian
    mixture over the grid), from the same quadrature as :func:`reference_posterior`."""
    from scipy import stats

    u, w, bm, bv = _quadrature(t, y, 4001)
    bs = np.linspace(bm.min() - 6 * np.sqrt(bv.max()), bm.max() + 6 * np.sqrt(bv.max()), 4001)
    cdf = stats.norm.cdf((bs[:, None] - bm[None]) / np.sqrt(bv[None])) @ w
    return dict(ell=np.exp(np.interp(ps, np.cumsum(w), u)), b=np.interp(ps, cdf, bs))


def stats_norm_pdf_at(z):
    return float(np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))


def _check_against(draws, mean, sd, what):
    draws = np.asarray(draws)  # (chain, draw)
    ess = float(az.ess(draws))
    assert ess > 100, (what, ess)
    tol = 4.0 * sd / np.sqrt(ess)
    assert abs(draws.mean() - mean) < tol, (what, draws.mean(), mean, tol)
    assert abs(draws.std() - sd) < 0.2 * sd, (what, draws.std(), sd)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpyro", "blackjax"])
def test_gp_posterior_matches_reference(gp_data, backend):
    """Both backends: posterior means/sds and 5%/95% quantiles of (ell, b) agree with the
    dense quadrature reference within Monte Carlo error, the truth is inside the exact 90%
    intervals, and the ArviZ groups are right. (The truth is checked against the exact
    posterior, not the draws: for this data set it sits at the exact posterior's 94.6%
    quantile of ell, where a sample quantile falls on either side of it by chance.)"""
    t, y = gp_data
    ref = reference_posterior(t, y)
    qref = reference_quantiles(t, y)
    idata = mcmc.sample(gp_model, jax.random.PRNGKey(1), t, y=y, backend=backend, **SIZES)
    assert isinstance(idata, xr.DataTree)
    for g in ("posterior", "sample_stats", "observed_data", "log_likelihood"):
        assert g in idata.children, g
    for v in ("diverging", "energy", "step_size", "tree_depth", "acceptance_rate", "lp"):
        assert v in idata.sample_stats, v
    assert idata.posterior["ell"].shape == (2, 400) and idata.posterior["b"].shape == (2, 400)
    for name, truth in (("ell", ELL), ("b", B)):
        draws = idata.posterior[name].values  # (chain, draw)
        _check_against(draws, *ref[name], f"{backend}:{name}")
        lo, hi = qref[name]
        assert lo < truth < hi, (name, lo, truth, hi)
        # sample quantiles vs exact: sd of a p-quantile ~ sqrt(p (1-p) / ESS) / density, the
        # density at the tails bounded below by that of a normal with the reference sd
        ess = float(az.ess(draws))
        dens = stats_norm_pdf_at(1.645) / ref[name][1]
        tol = 4.0 * np.sqrt(0.05 * 0.95 / ess) / dens
        np.testing.assert_allclose(np.quantile(draws, [0.05, 0.95]), qref[name], atol=tol, err_msg=f"{backend}:{name}")
    # pointwise log-likelihood: one per time point (0 where missing), sums to the Kalman total
    ll = idata.log_likelihood["y"]
    assert ll.shape == (2, 400, t.shape[0])
    assert np.all(ll.values[..., [3, 20, 21]] == 0.0)
    e0, b0 = float(idata.posterior["ell"][0, 0]), float(idata.posterior["b"][0, 0])
    total = MarkovGP(kernels.Matern32(e0, 1.0), t, 0.1, mean=b0).log_likelihood(y)
    np.testing.assert_allclose(float(ll[0, 0].sum()), float(total), rtol=1e-8)
    np.testing.assert_allclose(idata.observed_data["y"], y)
    assert idata.attrs["backend"] == backend and idata.attrs["compile_time_s"] > 0


@pytest.mark.slow
def test_sho_hyperparameters_recovered():
    """Simulated SHO data: the true frequency and noise lie inside the 90% intervals."""
    rng = np.random.default_rng(4)
    t = np.sort(rng.uniform(0, 30, 150))
    omega, sigma = 2.0, 0.3
    y = MarkovGPDistribution(kernels.SHO(omega=omega, quality=3.0, variance=1.0), t, sigma**2).sample(
        jax.random.PRNGKey(5)
    )

    def model(t, y=None):
        w = numpyro.sample("omega", dist.LogNormal(0.5, 0.5))
        s = numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.sample("y", MarkovGPDistribution(kernels.SHO(omega=w, quality=3.0, variance=1.0), t, s**2), obs=y)

    idata = mcmc.sample(
        model,
        jax.random.PRNGKey(6),
        t,
        y=y,
        backend="numpyro",
        log_likelihood=False,
        **{**SIZES, "num_warmup": 200, "num_samples": 300},
    )
    for name, val in (("omega", omega), ("sigma", sigma)):
        lo, hi = np.quantile(idata.posterior[name].values.ravel(), [0.05, 0.95])
        assert lo < val < hi, (name, lo, val, hi)


@pytest.mark.slow
def test_bad_input_and_warnings(gp_data):
    t, y = gp_data
    with pytest.raises(ValueError, match="unknown backend"):
        mcmc.sample(gp_model, jax.random.PRNGKey(0), t, y=y, backend="stan")
    with pytest.raises(ValueError, match="unknown sampler"):
        mcmc.sample(gp_model, jax.random.PRNGKey(0), t, y=y, sampler="mh")
    with pytest.raises(ValueError, match="num_chains"):
        mcmc.sample(gp_model, jax.random.PRNGKey(0), t, y=y, num_chains=0)
    with pytest.raises(TypeError, match="PRNG key"):
        mcmc.sample(gp_model, 0, t, y=y)

    def funnel():  # Neal's funnel with few warmup steps: divergences and bad R-hat
        v = numpyro.sample("v", dist.Normal(0, 3))
        numpyro.sample("x", dist.Normal(0, jnp.exp(v / 2)).expand([5]))

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        idata = mcmc.sample(
            funnel,
            jax.random.PRNGKey(0),
            num_warmup=20,
            num_samples=100,
            num_chains=2,
            progress_bar=False,
            report=False,
        )
    msgs = [str(x.message) for x in w if issubclass(x.category, mcmc.ConvergenceWarning)]
    assert msgs and any("divergent" in m or "R-hat" in m for m in msgs)
    assert "log_likelihood" not in idata.children  # no observed sites
    tab = mcmc.diagnostics(idata)
    assert {"r_hat", "ess_bulk", "ess_tail"} <= set(tab.columns)


@pytest.mark.slow
def test_sequential_chains_match_conjugate_posterior_and_vectorized_draws():
    """chain_method='sequential': the conjugate normal posterior N(sum(y)/(n+1), 1/(n+1)) within
    Monte Carlo error, chains independent, and the same draws as the vectorised chains given
    the same keys (the two layouts differ only in scheduling, so up to rounding: XLA may
    order a vmapped reduction differently, and a 1e-16 difference in an adapted step size
    carries through the chain; jax 0.12.1 gives 4 of 900 draws that differ by <= 9.3e-11,
    jax 0.10.2 gave none above 1e-12; another random stream would differ by O(0.5))."""

    def model(y=None):
        m = numpyro.sample("m", dist.Normal(0, 1))
        numpyro.sample("y", dist.Normal(m, 1.0), obs=y)

    y = np.array([0.5, 1.0, 1.5])
    kw = dict(y=y, num_warmup=150, num_samples=300, num_chains=3, progress_bar=False, report=False)
    seq = mcmc.sample(model, jax.random.PRNGKey(2), chain_method="sequential", **kw)
    draws = seq.posterior["m"].values
    assert draws.shape == (3, 300) and seq.attrs["chain_method"] == "sequential"
    ess = float(az.ess(draws))
    assert abs(draws.mean() - 0.75) < 4 * 0.5 / np.sqrt(ess) and abs(draws.std() - 0.5) < 0.1, (draws.mean(), ess)
    assert not np.allclose(draws[0], draws[1])
    vec = mcmc.sample(model, jax.random.PRNGKey(2), **kw)
    np.testing.assert_allclose(vec.posterior["m"].values, draws, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="chain_method"):
        mcmc.sample(model, jax.random.PRNGKey(2), chain_method="parallel", **kw)


@pytest.mark.slow
def test_chains_sharded_over_devices():
    """4 host devices: chains are split across them, both backends (subprocess; XLA_FLAGS first)."""
    code = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, numpy as np, numpyro, numpyro.distributions as dist
        from probdyn.inference import mcmc
        assert jax.local_device_count() == 4
        def model(y=None):
            m = numpyro.sample("m", dist.Normal(0, 1))
            numpyro.sample("y", dist.Normal(m, 1.0), obs=y)
        y = np.array([0.5, 1.0, 1.5])
        for b in ("numpyro", "blackjax"):
            idata = mcmc.sample(model, jax.random.PRNGKey(0), y=y, backend=b, num_warmup=100,
                                num_samples=200, num_chains=4, progress_bar=False, report=False)
            assert idata.attrs["num_devices"] == 4 and idata.attrs["output_devices"] == 4, idata.attrs
            draws = idata.posterior["m"].values
            assert draws.shape == (4, 200)
            # posterior N(sum(y)/4, 1/4); chains differ (independent keys)
            assert abs(draws.mean() - 0.75) < 0.15 and abs(draws.std() - 0.5) < 0.1, (b, draws.mean(), draws.std())
            assert not np.allclose(draws[0], draws[1])
        print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd="/tmp")
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_results_round_trip_netcdf_and_diagnostics_are_arviz_stats(tmp_path):
    """A NUTS result is an ArviZ DataTree that survives a netCDF round trip (draws, groups,
    attrs), and :func:`mcmc.diagnostics` gives arviz-stats' own R-hat and ESS of the same
    draws (computed here from the plain arrays)."""

    def model(y=None):
        m = numpyro.sample("m", dist.Normal(0, 1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(m, s), obs=y)

    y = np.array([0.3, -0.4, 1.1, 0.8, 0.2])
    idata = mcmc.sample(
        model,
        jax.random.PRNGKey(5),
        y=y,
        num_warmup=300,
        num_samples=400,
        num_chains=2,
        progress_bar=False,
        report=False,
    )
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert isinstance(back, xr.DataTree)
    assert set(back.children) == {"posterior", "sample_stats", "observed_data", "log_likelihood"}
    for g in back.children:
        for v in back[g].data_vars:
            np.testing.assert_array_equal(back[g][v].values, idata[g][v].values, err_msg=f"{g}/{v}")
    assert back.attrs["backend"] == "numpyro" and back.attrs["num_divergences"] == idata.attrs["num_divergences"]
    tab = mcmc.diagnostics(back)
    for v in ("m", "s"):
        draws = idata.posterior[v].values  # (chain, draw)
        np.testing.assert_allclose(tab.loc[v, "r_hat"], float(az.rhat(draws)), rtol=1e-12)
        np.testing.assert_allclose(tab.loc[v, "ess_bulk"], float(az.ess(draws, method="bulk")), rtol=1e-12)
        tail = float(az.ess(idata, var_names=[v], method="tail")[v])
        np.testing.assert_allclose(tab.loc[v, "ess_tail"], tail, rtol=1e-12)


def _watched_model(seen):
    """Normal mean with a known scale; ``seen`` records whether each evaluation had a concrete
    (eager) or a traced latent value."""
    y = np.array([0.3, -0.1, 0.8, 0.4])

    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        seen.append(isinstance(mu, jax.core.Tracer))
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)

    return model, y


def test_model_sites_are_found_without_running_the_model():
    """``model_sites`` traces abstractly (the latent value is a tracer), returns the observed
    data; a model whose observed value is computed inside it is run eagerly once instead; and
    ``sample`` never evaluates the model eagerly."""
    seen = []
    model, y = _watched_model(seen)
    latent, observed = mcmc.model_sites(model)
    assert latent == ["mu"] and seen == [True]
    np.testing.assert_array_equal(observed["y"], y)

    def computed():
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=jnp.asarray(y, jnp.float32) * 2)

    latent, observed = mcmc.model_sites(computed)
    np.testing.assert_allclose(observed["y"], 2 * y, rtol=1e-6)
    seen.clear()
    idata = mcmc.sample(
        model, jax.random.PRNGKey(0), num_warmup=20, num_samples=20, num_chains=1, progress_bar=False, report=False
    )
    assert seen and all(seen)  # every evaluation traced, none eager
    np.testing.assert_array_equal(idata["observed_data"]["y"].values, y)


def test_warmup_and_sampling_times_are_measured():
    """A gradient evaluation of the potential sleeps 20 ms where ``|mu| > 3`` (a host callback),
    and the chain starts at ``mu = 10``, 40 posterior sd away: only the first warmup steps are
    slow. Measured, the warmup takes the sleeps and sampling almost nothing; apportioned by
    step count (100 warmup, 100 draws), both would get half the time."""
    from numpyro.infer import init_to_value

    def sleepy(mu):
        if abs(float(mu)) > 3:
            time.sleep(0.02)

    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        jax.debug.callback(sleepy, mu)
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=np.array([0.3, -0.1, 0.8, 0.4]))

    idata = mcmc.sample(
        model,
        jax.random.PRNGKey(1),
        num_warmup=100,
        num_samples=100,
        num_chains=1,
        progress_bar=False,
        report=False,
        log_likelihood=False,
        init_strategy=init_to_value(values={"mu": 10.0}),
        sampler_kwargs=dict(adapt_mass_matrix=False),
    )  # unit mass: draws' trajectories stay near
    warm, samp = idata.attrs["warmup_time_s"], idata.attrs["sampling_time_s"]
    assert float(np.abs(idata["posterior"]["mu"]).max()) < 3 and idata.attrs["num_divergences"] == 0
    assert warm > 0.02 and 0 < samp < warm / 2, (warm, samp)


def test_numpyro_factor_after_arviz_first(tmp_path):
    """arviz imported before probdyn makes numpyro a lazy module; numpyro.factor (used by the
    posteriordb Lotka-Volterra program) must still work (fix_lazy_numpyro)."""
    import subprocess
    import sys

    code = (
        "import arviz\n"
        "from probdyn.datasets import lynx_hare\n"
        "from probdyn.models import sysid\n"
        "from probdyn.inference import mcmc\n"
        "d = lynx_hare()\n"
        "print(mcmc.model_sites(sysid.lotka_volterra, (d.ts, d.y_init, d.y), {})[0])\n"
    )
    root = str(ROOT)
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": root},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "theta" in r.stdout
