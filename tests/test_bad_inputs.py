"""Bad input through the API gets our own clear error: a ValueError/TypeError that names the
argument and the problem, raised by probdyn's check before any JAX work (the Kalman engine's
own table is in test_kalman_inputs.py). Each row: (case, call, error type, message fragment)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from probdyn import MarkovGP, gp_fit, kernels
from probdyn.datasets import load_series, read_csv_series
from probdyn.inference import mcmc
from probdyn.models import fractional as fs
from probdyn.models import sysid
from probdyn.sde import fractional as fr

jax.config.update("jax_enable_x64", True)

T = np.linspace(0.0, 1.0, 12)
Y = np.sin(3 * T)
G = fr.gamma_grid(4, 20.0)


def fou(**kw):
    a = dict(theta=1.0, sigma=1.0, hurst=0.5, noise_std=1e-3)
    a.update(kw)
    return lambda: fs.fou_log_likelihood(a["theta"], a["sigma"], a["hurst"], T, Y, G, noise_std=a["noise_std"])


def impossible_data(y=None):
    numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Uniform(10.0, 11.0), obs=y)  # log density -inf at every point


def nuts(backend):
    return lambda: mcmc.sample(
        impossible_data,
        jax.random.PRNGKey(0),
        jnp.array([0.5, 1.0]),
        backend=backend,
        num_warmup=5,
        num_samples=5,
        num_chains=2,
        progress_bar=False,
    )


BAD = [
    # fractional noise (fixed in this change: NaN paths / NaN or huge likelihoods before)
    ("sample_fbm hurst 1.5", lambda: fr.sample_fbm(jax.random.PRNGKey(0), T, 1.5, 2), ValueError, "hurst"),
    ("sample_fbm hurst 0", lambda: fr.sample_fbm(jax.random.PRNGKey(0), T, 0.0, 2), ValueError, "hurst"),
    ("sample_fbm hurst -0.2", lambda: fr.sample_fbm(jax.random.PRNGKey(0), T, -0.2, 2), ValueError, "hurst"),
    ("sample_fbm 2.5 samples", lambda: fr.sample_fbm(jax.random.PRNGKey(0), T, 0.3, 2.5), ValueError, "num_samples"),
    ("fOU hurst 1.2", fou(hurst=1.2), ValueError, "hurst must be finite and in the open interval (0, 1)"),
    ("fOU hurst 0", fou(hurst=0.0), ValueError, "hurst"),
    ("fOU hurst 1", fou(hurst=1.0), ValueError, "hurst"),
    ("fOU negative speed", fou(theta=-0.5), ValueError, "theta must be finite and >= 0"),
    ("fOU negative noise", fou(noise_std=-1.0), ValueError, "noise_std must be finite and >= 0"),
    ("gamma_grid 2.5 components", lambda: fr.gamma_grid(2.5), ValueError, "num_components must be an integer"),
    # MCMC on a model with no finite starting point (ran to the end with 100 % divergences before)
    ("NUTS no valid start (numpyro)", nuts("numpyro"), ValueError, "at site(s) 'y'"),
    ("NUTS no valid start (blackjax)", nuts("blackjax"), ValueError, "at site(s) 'y'"),
    # already clear before this change (kept)
    ("gamma_grid 0 components", lambda: fr.gamma_grid(0), ValueError, "num_components"),
    (
        "inf in GP data",
        lambda: MarkovGP(kernels.Matern32(1.0, 1.0), T).log_likelihood(np.where(T > 0.5, np.inf, Y)),
        ValueError,
        "infinite",
    ),
    ("negative GP noise", lambda: MarkovGP(kernels.Matern32(1.0, 1.0), T, noise=-1.0), ValueError, "noise"),
    ("unsorted GP times", lambda: MarkovGP(kernels.Matern32(1.0, 1.0), T[::-1]), ValueError, "increasing"),
    ("unknown kernel spec", lambda: gp_fit.parse_kernel("matern32+rbf"), ValueError, "unknown kernel 'rbf'"),
    ("constant series", lambda: gp_fit.fit_gp(T, np.ones_like(T), jax.random.PRNGKey(0)), ValueError, "constant"),
    ("unknown fit engine", lambda: gp_fit.fit_gp(T, Y, jax.random.PRNGKey(0), engine="hmc"), ValueError, "engine"),
    ("unknown dataset", lambda: load_series("sunspots"), ValueError, "unknown dataset 'sunspots'"),
    ("missing CSV", lambda: read_csv_series("/nonexistent/d.csv"), FileNotFoundError, "file not found"),
    ("unknown system", lambda: sysid.get_system("lorenz"), ValueError, "unknown system 'lorenz'"),
    (
        "SDE drift vs columns",
        lambda: sysid.observation_for("double_well", np.ones((5, 2))),
        ValueError,
        "observes 1 coordinate",
    ),
    (
        "MCMC 0 chains",
        lambda: mcmc.sample(impossible_data, jax.random.PRNGKey(0), num_chains=0),
        ValueError,
        "num_chains",
    ),
    (
        "MCMC unknown backend",
        lambda: mcmc.sample(impossible_data, jax.random.PRNGKey(0), backend="stan"),
        ValueError,
        "unknown backend",
    ),
]


@pytest.mark.parametrize("case,call,exc,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_clear_error(case, call, exc, fragment):
    with pytest.raises(exc) as err:
        call()
    assert fragment in str(err.value), str(err.value)
