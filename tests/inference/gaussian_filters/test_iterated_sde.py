"""Iterated smoothers for SDEs on the Euler sub-step grid (gaussian_filters.iterated_sde).

References: the Kalman smoother of the Euler-discretised OU model (the engine, with the sub-step
nodes missing) for a linear SDE; the scalar bootstrap particle filter + FFBSm smoother on the
same Euler grid (two seeds) for the Beneš and double-well SDEs of the bundled vgpdp splits.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from probdyn import LinearGaussianSSM  # noqa: E402
from probdyn.datasets import vgpdp_split  # noqa: E402
from probdyn.inference import kalman  # noqa: E402
from probdyn.inference.gaussian_filters import particle_smoother_scalar  # noqa: E402
from probdyn.inference.gaussian_filters.iterated_sde import iterated_sde_smoother, substep_grid  # noqa: E402
from probdyn.models import sde_posteriors as sg  # noqa: E402
from probdyn.sde.base import SDE  # noqa: E402


def test_substep_grid():
    g, i = substep_grid([0.0, 1.0, 1.5], num_substeps=4)
    np.testing.assert_allclose(g, [0, 0.25, 0.5, 0.75, 1.0, 1.125, 1.25, 1.375, 1.5])
    np.testing.assert_array_equal(i, [0, 4, 8])
    g, i = substep_grid([0.0, 1.0, 1.5], max_step=0.3)  # ceil(1/0.3) = 4, ceil(0.5/0.3) = 2
    np.testing.assert_allclose(g, [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    np.testing.assert_array_equal(i, [0, 4, 6])
    with pytest.raises(ValueError, match="strictly increasing"):
        substep_grid([0.0, 0.0], num_substeps=2)
    with pytest.raises(ValueError, match="not both"):
        substep_grid([0.0, 1.0], num_substeps=2, max_step=0.1)


@pytest.mark.parametrize("method", ["ieks", "cubature"])
def test_linear_sde_is_the_kalman_smoother_of_its_euler_model(method):
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 5, 12))
    y = np.sin(t) + 0.2 * rng.normal(size=12)
    theta, q = 0.7, 0.5
    sde = SDE(sg.OUDrift(jnp.asarray(theta)), np.sqrt(q) * np.ones(1), 1)
    kw = dict(num_iters=1) | ({"damping": 0.0} if method == "ieks" else {})
    res = iterated_sde_smoother(
        sde, t, y, lambda x, s: x, [[0.04]], [0.0], [[1.0]], max_step=0.1, method=method, t0=0.0, **kw
    )
    dts = np.diff(res.grid)
    yg = np.full((res.grid.size, 1), np.nan)
    yg[res.obs_index, 0] = y
    ssm = LinearGaussianSSM(
        np.zeros(1), np.eye(1), (1 - theta * dts)[:, None, None], q * dts[:, None, None], np.eye(1), np.array([[0.04]])
    )
    ref = kalman.smoother(ssm, yg, parallel=False)
    assert res.grid[0] == 0.0 and np.max(dts) <= 0.1 + 1e-12
    np.testing.assert_allclose(res.mean, ref.mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.cov, ref.cov, rtol=0, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize(("process", "split", "max_err", "median_err"), [("benes", 2, 0.15, 0.05), ("dw", 0, 1.2, 0.3)])
def test_iterated_sde_smoothers_against_a_particle_smoother(process, split, max_err, median_err):
    """Means in units of the particle smoother's sd (4000 particles x 2 seeds, Euler step 0.04).
    Measured with 4000 particles on a 0.02 grid (Monte Carlo se at most 0.16 sd): Beneš (close
    to Gaussian) max 0.09-0.10, median 0.016, sd ratio 1.00; double well (bimodal between some
    observations) max 0.86-0.92 (where a Gaussian cannot follow two wells), median 0.11-0.23,
    sd ratio median 0.92-1.01."""
    f = vgpdp_split(process, split)
    t, y = f["observation_grid"], f["observations"][:, 0]
    s, q, x0 = float(f["sigma"]), float(f["Q"]), float(f["x0"])
    drift, fnp = {
        "dw": (sg.DoubleWellDrift(jnp.asarray(1.0)), lambda x: 4 * x * (1 - x**2)),
        "benes": (sg.BenesDrift(), jnp.tanh),
    }[process]
    sde = SDE(drift, np.sqrt(q) * np.ones(1), 1)
    runs = {}
    for method in ("ieks", "cubature", "gauss_hermite"):
        kw = {} if method == "ieks" else {"damping": 0.5}
        runs[method] = iterated_sde_smoother(
            sde,
            t,
            y,
            lambda x, tt: x,
            [[s**2]],
            [x0],
            [[0.01]],
            max_step=0.04,
            method=method,
            t0=0.0,
            num_iters=200,
            **kw,
        )
        assert runs[method].result.converged
    grid, idx = runs["ieks"].grid, runs["ieks"].obs_index
    pf = jax.jit(
        lambda k: particle_smoother_scalar(
            k, fnp, q, s, jnp.asarray(grid), jnp.asarray(idx), jnp.asarray(y), x0, 0.01, 4000
        )
    )
    ms, vs = [], []
    for r in range(2):
        X, W = pf(jax.random.PRNGKey(r))
        m = jnp.sum(W * X, 1)
        ms.append(np.asarray(m))
        vs.append(np.asarray(jnp.sum(W * (X - m[:, None]) ** 2, 1)))
    m_ref, sd = np.mean(ms, 0), np.sqrt(np.mean(vs, 0))
    for method, res in runs.items():
        err = np.abs(np.asarray(res.mean[:, 0]) - m_ref) / sd
        ratio = np.median(np.sqrt(np.asarray(res.cov[:, 0, 0])) / sd)
        assert np.max(err) < max_err and np.median(err) < median_err, method
        assert 0.85 < ratio < 1.1, method
