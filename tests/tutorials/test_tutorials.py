"""The seven tutorials, run once in smoke mode by an executed docs build (docs/hooks.py runs
each cell by cell and renders it as a page): each test checks one tutorial's metrics and
figures, and that its page shows the run's output and figures."""

import math

import numpy as np
import pytest

from tests.helpers import build_docs_executed, tutorial_results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(workdir with one folder per tutorial, built site)."""
    return build_docs_executed(tmp_path_factory.mktemp("docs"))


def test_markov_gp_regression(runs):
    m, out = tutorial_results(runs, "markov_gp_regression")
    assert all(math.isfinite(v) for v in m.values())
    assert m["loss_last"] < m["loss_first"]  # the optimiser made progress
    assert m["seq_par_abs_diff"] < 1e-6 * abs(m["log_likelihood"]) + 1e-6  # same numbers, both schedules
    assert m["forecast_rmse"] < 5.0  # ppm; smoke fit (30 Adam steps) of a 5-year forecast, data sd ~15 ppm
    assert (out / "forecast.png").exists()


def test_markov_gp_bayesian(runs):
    m, out = tutorial_results(runs, "markov_gp_bayesian")
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


def test_sysid(runs):
    m, out = tutorial_results(runs, "sysid_continuous_vs_discrete")
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


def test_mgpvae(runs):
    m, out = tutorial_results(runs, "mgpvae_digits")
    assert m["smoke"] is True and m["num_frames"] == 10
    assert m["elbo_kalman_vs_dense_rel_diff"] < 1e-6  # float64, same parameters and noise draws
    for k in ("impute_rmse_mgpvae", "impute_rmse_linear_interp", "impute_rmse_iid_vae", "iw_loglik_mgpvae"):
        assert math.isfinite(m[k])
    assert m["loss_last"] < m["loss_first"]  # training made progress
    # smoke sizes (60 steps): only loose sanity; pixel values are in [0, 1]
    assert 0.0 < m["impute_rmse_mgpvae"] < 0.35 and 0.0 < m["impute_rmse_iid_vae"] < 0.45
    assert {"imputations.png", "training.png"} <= {p.name for p in out.glob("*.png")}


def test_sparse_gp_sde(runs):
    m, out = tutorial_results(runs, "sparse_gp_sde_double_well")
    assert m["smoke"] is True
    # one rho=1 natural-gradient step == exact Markov-GP (OU kernel) posterior
    assert m["ou_one_step_max_abs_diff"] < 1e-6
    # double well vs the independent particle smoother (smoke sizes: loose bounds)
    assert abs(m["dw_test_nlpd"] - m["dw_reference_test_nlpd"]) < 3.0
    assert m["dw_mean_abs_diff_median"] < 0.1
    # L-BFGS on the same ELBO from CVI's end point (60 iterations) gains almost nothing: CVI is at
    # the family's optimum (full run: 3.9e-7 nats)
    assert -1e-9 < m["direct_elbo_gain"] < 1e-5
    assert abs(m["direct_test_nlpd"] - m["dw_test_nlpd"]) < 0.05
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


def test_fractional_sde(runs):
    m, out = tutorial_results(runs, "fractional_sde")
    assert m["smoke"] is True
    assert len(m["hurst_true"]) == len(m["hurst_estimated"]) == 5
    # smoke sizes (40 ML steps): loose sanity bound; the full run is reported in the docs
    assert all(0.0 < h < 1.0 for h in m["hurst_estimated"])
    assert abs(m["hurst_estimated"][2] - 0.5) < 0.1
    assert 0.0 <= m["bridge_max_sd_rel_err"] < 0.5
    assert m["video_final_loss"] > 0
    pngs = {p.name for p in out.glob("*.png")}
    assert {"bridge.png", "hurst.png", "video_frames.png"} <= pngs


def test_iterated_smoothers(runs):
    m, out = tutorial_results(runs, "iterated_smoothers")
    assert m["smoke"] is True and m["T"] == 120 and m["num_datasets"] == 3
    # poor prior, precise data through sin: the one-pass EKS is off by several sd and its NEES
    # far above the honest 2; the iterated smoothers recover (smoke: EKS 0.085 / 18.0, IEKS
    # 0.040 / 3.1 measured; full run in the note and the tutorial's page)
    rmse, nees = m["rmse_median"], m["nees_median"]
    for it in ("IEKS", "IPLS (cubature)"):
        assert rmse[it] < 0.7 * rmse["EKS (one pass)"]
        assert nees[it] < 4.0 < nees["EKS (one pass)"]
    assert m["seq_par_max_abs_diff"] < 1e-8
    # the linearised likelihood tracks the particle filter's (smoke: 500 particles, 2 seeds)
    assert m["lin_minus_pf_max_abs"] < 2.0 + 6 * m["pf_se_median"]
    # L-BFGS and NUTS (30 draws) find gravity near the truth 9.81 within the posterior spread
    assert abs(m["g_map"] - 9.81) < 3 * m["g_laplace_sd"]
    assert abs(m["g_nuts_mean"] - m["g_map"]) < 2 * m["g_laplace_sd"]
    assert {"smoothers.png", "learning_gravity.png"} <= {p.name for p in out.glob("*.png")}
