"""The direct optimum of the sparse-GP SDE ELBO (L-BFGS over the chain's factors) as a reference
for CVI (issue: how far CVI is from the best Gauss–Markov posterior).

Independent references: the exact Markov-GP posterior and log marginal likelihood (Kalman engine
of the core) for a linear SDE, reached from a cold start; for the double well, L-BFGS to a tight
gradient tolerance from the prior (a route that shares nothing with CVI's updates).
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from probdyn import MarkovGP, kernels  # noqa: E402
from probdyn.datasets import vgpdp_split  # noqa: E402
from probdyn.models import sde_posteriors as sg  # noqa: E402
from probdyn.sde.base import SDE  # noqa: E402

DRIFTS = {"dw": sg.DoubleWellDrift(jnp.asarray(1.0)), "benes": sg.BenesDrift()}


def _bundled_case(process, split, dt):
    f = vgpdp_split(process, split)
    t, y = f["observation_grid"], f["observations"][:, 0]
    sde = SDE(DRIFTS[process], np.sqrt(float(f["Q"])) * np.ones(1), 1)
    grid = sg.make_grid(0.0, float(f["time_grid"][-1]), dt, include=t)
    kw = dict(obs_noise=float(f["sigma"]) ** 2, grid=grid, initial_mean=[float(f["x0"])], initial_cov=[[0.01]])
    return sg.SparseGPSDE(sde, t, y, **kw)


def test_direct_optimum_of_a_linear_sde_is_the_exact_gp_posterior():
    ou = vgpdp_split("linear", 0)
    theta, q, s = float(ou["decay"]), float(ou["Q"]), float(ou["sigma"])
    t, y = ou["observation_grid"], ou["observations"][:, 0]
    var = q / (2 * theta)
    sde = SDE(sg.OUDrift(jnp.asarray(theta)), np.sqrt(q) * np.ones(1), 1)
    m = sg.SparseGPSDE(sde, t, y, obs_noise=s**2, dt=0.2, t_span=(0.0, 10.0), initial_cov=[[var]])
    st, res = m.fit_posterior_direct()  # cold start: the prior
    gp = MarkovGP(kernels.Matern12(lengthscale=1 / theta, variance=var), t, noise=s**2)
    mu, v = gp.predict(jnp.asarray(y), np.asarray(m.grid))
    post = m.posterior(st)
    np.testing.assert_allclose(post.mean[:, 0], mu, rtol=0, atol=1e-6)
    np.testing.assert_allclose(post.cov[:, 0, 0], v, rtol=0, atol=1e-6)
    # at the optimum the ELBO of a linear SDE is the exact log marginal likelihood
    assert -res.value == pytest.approx(float(gp.log_likelihood(jnp.asarray(y))), abs=1e-8)
    assert float(m.elbo(st)) == pytest.approx(-res.value, abs=1e-10)  # the returned state is that chain


@pytest.mark.parametrize(("process", "split"), [("dw", 0), ("dw", 4), ("benes", 2)])
def test_cvi_reaches_the_direct_optimum(process, split):
    """CVI (natural gradients) to convergence is a stationary point of the ELBO: L-BFGS from it
    gains less than 1e-6 nats and stops at a small gradient. Cases: the tutorial's double well,
    a double well whose smoothing posterior is strongly bimodal between observations (split 4),
    and a Beneš SDE whose posterior is close to Gaussian."""
    m = _bundled_case(process, split, 0.1)
    st, tr = m.fit_posterior(num_iters=100, rho=1.0, grow=2.0, atol=1e-10)
    st_d, res = m.fit_posterior_direct(st)
    assert -res.value - tr.elbo[-1] < 1e-6
    assert -res.value >= tr.elbo[-1] - 1e-9  # L-BFGS never ends below its start
    assert res.max_abs_grad < 1e-4
    p, pd = m.posterior(st), m.posterior(st_d)
    np.testing.assert_allclose(p.mean, pd.mean, rtol=0, atol=1e-3)
    np.testing.assert_allclose(p.cov, pd.cov, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_cvi_and_a_cold_start_direct_optimum_agree_on_the_double_well():
    """From the prior (a cold start, ~15000 L-BFGS iterations) the direct route reaches the same
    ELBO as CVI to 1e-6 nats and the same posterior."""
    m = _bundled_case("dw", 0, 0.1)
    st, tr = m.fit_posterior(num_iters=100, rho=1.0, grow=2.0, atol=1e-10)
    st_d, res = m.fit_posterior_direct()
    assert abs(-res.value - tr.elbo[-1]) < 1e-6
    p, pd = m.posterior(st), m.posterior(st_d)
    np.testing.assert_allclose(p.mean, pd.mean, rtol=0, atol=1e-3)
    np.testing.assert_allclose(p.cov, pd.cov, rtol=0, atol=1e-4)
