"""SVI helpers: autoguides and custom guides against a conjugate Kalman-marginalised posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

jax.config.update("jax_enable_x64", True)

import xarray as xr  # noqa: E402

from probdyn import kernels  # noqa: E402
from probdyn.distributions import MarkovGPDistribution  # noqa: E402
from probdyn.inference import variational  # noqa: E402

RNG = np.random.default_rng(3)
T = np.sort(RNG.uniform(0, 10, 30))
K = np.asarray(kernels.Matern12(2.0, 1.0).covariance(T)) + 0.2 * np.eye(30)
Y = 1.0 + np.linalg.cholesky(K) @ RNG.standard_normal(30)
ONE = np.ones(30)
PREC = 1 / 4.0 + ONE @ np.linalg.solve(K, ONE)
MEAN, SD = (ONE @ np.linalg.solve(K, Y)) / PREC, PREC**-0.5


def model(t, y=None):
    """Unknown offset under a GP prior: posterior N(MEAN, SD^2) exactly."""
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    numpyro.deterministic("b2", 2 * b)
    numpyro.sample("y", MarkovGPDistribution(kernels.Matern12(2.0, 1.0), t, 0.2, mean=b), obs=y)


@pytest.mark.parametrize("guide", ["normal", pytest.param("mvn", marks=pytest.mark.slow), "lowrank"])
def test_autoguides_recover_conjugate_posterior(guide):
    kw = {"rank": 1} if guide == "lowrank" else None
    r = variational.svi(
        model,
        jax.random.PRNGKey(0),
        T,
        y=Y,
        guide=guide,
        guide_kwargs=kw,
        optimizer=optax.adam(optax.exponential_decay(0.05, 1500, 0.01)),
        num_steps=1500,
        num_particles=4,
        num_posterior_samples=2000,
        progress_bar=False,
    )
    assert r.elbo.shape == (1500,) and np.all(np.isfinite(r.elbo))
    assert r.elbo[-100:].mean() > r.elbo[:10].mean()
    assert isinstance(r.idata, xr.DataTree)
    for g in ("posterior", "observed_data", "log_likelihood"):
        assert g in r.idata.children
    b = r.idata.posterior["b"].values
    assert b.shape == (1, 2000)
    np.testing.assert_allclose(r.idata.posterior["b2"].values, 2 * b)
    assert abs(b.mean() - MEAN) < 0.3 * SD
    assert abs(b.std() - SD) < 0.25 * SD
    assert r.idata.log_likelihood["y"].shape == (1, 2000, 30)


def test_custom_guide_and_errors():
    def guide(t, y=None):
        loc = numpyro.param("loc", 0.0)
        scale = numpyro.param("scale", 1.0, constraint=dist.constraints.positive)
        numpyro.sample("b", dist.Normal(loc, scale))

    r = variational.svi(
        model,
        jax.random.PRNGKey(1),
        T,
        y=Y,
        guide=guide,
        optimizer=optax.adam(optax.exponential_decay(0.05, 1500, 0.01)),
        num_steps=1500,
        num_particles=4,
        num_posterior_samples=200,
        progress_bar=False,
        log_likelihood=False,
    )
    np.testing.assert_allclose(r.params["loc"], MEAN, atol=0.3 * SD)
    np.testing.assert_allclose(r.params["scale"], SD, rtol=0.25)
    with pytest.raises(ValueError, match="unknown guide"):
        variational.svi(model, jax.random.PRNGKey(1), T, y=Y, guide="flow", progress_bar=False)
    with pytest.raises(TypeError, match="optimizer"):
        variational.svi(model, jax.random.PRNGKey(1), T, y=Y, optimizer="adam", progress_bar=False)
    with pytest.raises(ValueError, match="num_steps"):
        variational.svi(model, jax.random.PRNGKey(1), T, y=Y, num_steps=0, progress_bar=False)

    def bad_guide(t, y=None):
        numpyro.sample("c", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="latent sites"):
        variational.svi(model, jax.random.PRNGKey(1), T, y=Y, guide=bad_guide, num_steps=2, progress_bar=False)
    assert jnp.isfinite(r.elbo[-1])
