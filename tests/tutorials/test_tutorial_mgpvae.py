"""Runs tutorials/mgpvae_digits.py in smoke mode and checks its metrics and figures."""

import math

import pytest

from tests.helpers import run_tutorial


@pytest.mark.slow
def test_tutorial_smoke(tmp_path):
    m, out = run_tutorial("mgpvae_digits.py", tmp_path)
    assert m["smoke"] is True and m["num_frames"] == 10
    assert m["elbo_kalman_vs_dense_rel_diff"] < 1e-6  # float64, same parameters and noise draws
    for k in ("impute_rmse_mgpvae", "impute_rmse_linear_interp", "impute_rmse_iid_vae", "iw_loglik_mgpvae"):
        assert math.isfinite(m[k])
    assert m["loss_last"] < m["loss_first"]  # training made progress
    # smoke sizes (60 steps): only loose sanity; pixel values are in [0, 1]
    assert 0.0 < m["impute_rmse_mgpvae"] < 0.35 and 0.0 < m["impute_rmse_iid_vae"] < 0.45
    assert {"imputations.png", "training.png"} <= {p.name for p in out.glob("*.png")}
