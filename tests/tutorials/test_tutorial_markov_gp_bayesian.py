"""Runs tutorials/markov_gp_bayesian.py in smoke mode and checks its metrics and figures."""

import pytest

from tests.helpers import run_tutorial


@pytest.mark.slow
def test_tutorial_smoke(tmp_path):
    m, out = run_tutorial("markov_gp_bayesian.py", tmp_path)
    assert m["smoke"] is True and m["n_points"] == 80
    for b in ("numpyro", "blackjax", "svi"):  # smoke sizes: loose sanity bounds only
        assert 0.2 < m["period_mean"][b] < 5.0
        assert 0.0 < m["sigma_mean"][b] < 5.0
    assert 0.5 < m["period_mean"]["numpyro"] < 2.0  # the yearly CO2 cycle, in years
    for b in ("numpyro", "blackjax"):
        assert m["rhat_max"][b] > 0.9 and m["ess_bulk_min"][b] > 0
    assert all(v > 0 for v in m["wall_time_s"].values())
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"trace_numpyro.png", "forest_compare.png", "elbo_and_fit.png"} <= set(pngs)
