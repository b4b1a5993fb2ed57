"""Does the default Bayesian Markov-GP fit converge? (``probdyn fit --model markov-gp
--engine nuts`` with default priors and settings, through :func:`probdyn.gp_fit.fit_gp`.)

Prints R-hat (max over parameters), the smallest bulk ESS, divergences, the median
lengthscale and the wall time for the bundled series and simulated ones whose time and value
scales range over 1e-3 .. 1e3, plus hard shapes (a trend, white noise, 10 points).

    python benchmarks/gp_default_priors.py            # everything (co2 alone takes ~3 min)
    python benchmarks/gp_default_priors.py nile sim   # cases whose name contains a word
"""

import sys
import time
import warnings

import arviz as az
import jax
import numpy as np

from probdyn import gp_fit
from probdyn.datasets import load_series


def cases():
    for name in ("nile", "lynx_hare", "co2"):
        t, y, _ = load_series(name)
        yield name, t, y[:, 0]
    rng = np.random.default_rng(0)
    for ts in (1e-3, 1.0, 1e3):
        for vs in (1e-3, 1e3):
            t = np.sort(rng.uniform(0, 20, 60)) * ts
            yield f"sim t*{ts:g} y*{vs:g}", t, vs * (np.sin(0.7 * t / ts) + 0.2 * rng.normal(size=60)) + 5 * vs
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 20, 40))
    yield "trend", t, 0.3 * t + 0.1 * rng.normal(size=40)
    yield "white noise", t, rng.normal(size=40)
    yield "10 points", t[::4], np.sin(t[::4])


def main(words):
    warnings.simplefilter("ignore")
    print("| series | points | R-hat max | ESS bulk min | divergences | median lengthscale | span | time s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, t, y in cases():
        if words and not any(w in name for w in words):
            continue
        t0 = time.perf_counter()
        fit = gp_fit.fit_gp(t, y, jax.random.PRNGKey(0), engine="nuts")
        el = time.perf_counter() - t0
        s = az.summary(fit.idata, kind="diagnostics")
        ell = float(np.median(fit.idata.posterior["matern32_lengthscale"].values))
        print(
            f"| {name} | {len(t)} | {s['r_hat'].max():.3f} | {s['ess_bulk'].min():.0f} | "
            f"{int(fit.idata.attrs['num_divergences'])} | {ell:.3g} | {t[-1] - t[0]:.3g} | {el:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
