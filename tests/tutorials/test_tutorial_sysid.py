"""Runs tutorials/sysid_continuous_vs_discrete.py in smoke mode and checks its metrics and figures."""

import numpy as np
import pytest

from tests.helpers import run_tutorial


@pytest.mark.slow
def test_tutorial_smoke(tmp_path):
    m, out = run_tutorial("sysid_continuous_vs_discrete.py", tmp_path)
    assert m["smoke"] is True
    assert m["ou_ar1_max_abs_diff"] < 1e-9  # OU == AR(1) exactly (float64)
    nc, nd = np.asarray(m["nlpd_continuous"]), np.asarray(m["nlpd_discrete"])
    assert len(nc) == len(nd) == len(m["horizons"]) >= 3
    # the naive discrete model degrades at the new spacing; the continuous model does not
    assert np.all(nd > nc + 0.5)
    assert np.all(nd > np.asarray(m["nlpd_discrete_train_spacing"]))
    assert abs(m["fitted_params"]["continuous (SDE)"]["mu"] - 1.5) < 0.3
    assert m["lv_theta_mean"][0] > 0 and np.isfinite(m["lv_max_abs_z_vs_stan"])
    assert set(m["lv_sde_params"]) == {"alpha", "beta", "gamma", "delta"}
    pngs = {p.name for p in out.glob("*.png")}
    assert {"vdp_forecasts.png", "vdp_scores.png", "lynx_hare_three_models.png"} <= pngs
