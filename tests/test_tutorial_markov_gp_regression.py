"""Runs tutorials/markov_gp_regression.py in smoke mode and checks its metrics and figure."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tutorial_smoke(tmp_path):
    metrics = tmp_path / "metrics.json"
    out = tmp_path / "figs"
    env = {**os.environ, "PROBDYN_SMOKE": "1", "PROBDYN_METRICS": str(metrics), "PROBDYN_OUT": str(out),
           "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tutorials", "markov_gp_regression.py")], env=env,
                       capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads(metrics.read_text())
    assert all(math.isfinite(v) for v in m.values())
    assert m["loss_last"] < m["loss_first"]  # the optimiser made progress
    assert m["seq_par_abs_diff"] < 1e-6 * abs(m["log_likelihood"]) + 1e-6  # same numbers, both schedules
    assert m["forecast_rmse"] < 5.0  # ppm; smoke fit (30 Adam steps) of a 5-year forecast, data sd ~15 ppm
    assert (out / "forecast.png").exists()
