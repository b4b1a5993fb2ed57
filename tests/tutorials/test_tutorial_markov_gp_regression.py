"""Runs tutorials/markov_gp_regression.py in smoke mode and checks its metrics and figure."""

import math

import pytest

from tests.helpers import run_tutorial


@pytest.mark.slow
def test_tutorial_smoke(tmp_path):
    m, out = run_tutorial("markov_gp_regression.py", tmp_path)
    assert all(math.isfinite(v) for v in m.values())
    assert m["loss_last"] < m["loss_first"]  # the optimiser made progress
    assert m["seq_par_abs_diff"] < 1e-6 * abs(m["log_likelihood"]) + 1e-6  # same numbers, both schedules
    assert m["forecast_rmse"] < 5.0  # ppm; smoke fit (30 Adam steps) of a 5-year forecast, data sd ~15 ppm
    assert (out / "forecast.png").exists()
