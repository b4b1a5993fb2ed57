"""Runs tutorials/sparse_gp_sde_double_well.py in smoke mode and checks its metrics and figures."""

import pytest

from tests.helpers import run_tutorial


@pytest.mark.slow
def test_tutorial_smoke(tmp_path):
    m, out = run_tutorial("sparse_gp_sde_double_well.py", tmp_path)
    assert m["smoke"] is True
    # one rho=1 natural-gradient step == exact Markov-GP (OU kernel) posterior
    assert m["ou_one_step_max_abs_diff"] < 1e-6
    # double well vs the independent particle smoother (smoke sizes: loose bounds)
    assert abs(m["dw_test_nlpd"] - m["dw_reference_test_nlpd"]) < 3.0
    assert m["dw_mean_abs_diff_median"] < 0.1
    # the path (Girsanov) sites raise the ELBO over q = linearised prior x data sites
    assert m["elbo"] > m["elbo_without_path_sites"]
    # the data's drift is 4x(1 - x^2) (regression on the simulated latent path)
    assert (
        abs(m["dw_drift_regression_coefficients"][0] - 4) < 0.5
        and abs(m["dw_drift_regression_coefficients"][1] + 4) < 0.5
    )
    # variational EM moves the double-well parameter from 0.5 towards the truth 1.0 (full run:
    # 0.997 with Laplace sd 0.105)
    assert m["true_parameter"] == 1.0
    assert abs(m["learned_parameter"] - m["true_parameter"]) < abs(m["initial_parameter"] - m["true_parameter"])
    assert m["elbo_first_last"][1] > m["elbo_first_last"][0]
    pngs = {p.name for p in out.glob("*.png")}
    assert {"posterior_vs_reference.png", "learned_drift.png"} <= pngs
