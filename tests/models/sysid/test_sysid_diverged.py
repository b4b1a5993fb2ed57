"""Diverged forecasts are reported, not NaN: a discrete model built to blow up (an Euler map
``x -> (1 - 1e30) x``) scored by the comparison harness gets ``diverged = True`` and ``inf``
scores at the lead times where its predictive moments overflow, the well-posed model beside
it is untouched, and nothing in the table or the printed summary is NaN."""

import jax
import numpy as np

from probdyn.models import sysid
from probdyn.models.sysid.fit import FitInfo

jax.config.update("jax_enable_x64", True)


def test_diverging_model_is_flagged_with_inf_scores():
    system = sysid.get_system("ornstein_uhlenbeck")
    data = sysid.simulate_data(system, jax.random.PRNGKey(0), quick=True)
    drift = lambda lam: sysid.MechanisticDrift(system.drift, {"lam": lam})  # noqa: E731
    fits = {
        "sde": FitInfo(sysid.SDEModel(drift(0.5), 0.5, 1), np.zeros(1), 0.0, 0.0),
        "blow-up": FitInfo(sysid.DiscreteModel(drift(1e30), 0.5, 1, "euler", 1.0), np.zeros(1), 0.0, 0.0),
    }
    rows, forecasts = sysid.score_forecasts(data, fits, quick=True)
    res = sysid.report(data, fits, rows, forecasts)
    df = res.table
    assert not df[["rmse", "nlpd"]].isna().any().any()
    sde, bad = df[df.model == "sde"], df[df.model == "blow-up"]
    assert not sde.diverged.any() and np.isfinite(sde[["rmse", "nlpd"]].to_numpy()).all()
    # after the data pin the state (variance ~ R = 0.01), each step of x -> -1e30 x multiplies
    # the predictive variance by 1e60: finite after one step, past float64's 1.8e308 after six
    assert not bad[bad.horizon_steps == 1].diverged.any()
    far = bad[bad.horizon_steps >= 6]
    assert len(far) == 1 and far.diverged.all()
    assert np.isinf(far.rmse).all() and np.isinf(far.nlpd).all()
    assert (bad.diverged == ~np.isfinite(bad.nlpd)).all()
    md = res.to_markdown()
    assert "diverged" in md and "nan" not in md.lower()
