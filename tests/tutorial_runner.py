"""Run a tutorial script in smoke mode in a subprocess; return its metrics and figure folder."""

import json
import os
import subprocess
import sys

from strict_run import PATH as STRICT_RUN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tutorial(name: str, tmp_path, timeout: int = 600):
    metrics = tmp_path / "metrics.json"
    out = tmp_path / "figs"
    env = {
        **os.environ,
        "PROBDYN_SMOKE": "1",
        "PROBDYN_METRICS": str(metrics),
        "PROBDYN_OUT": str(out),
        "PYTHONPATH": ROOT,
        "MPLBACKEND": "Agg",
    }
    r = subprocess.run(
        [sys.executable, STRICT_RUN, os.path.join(ROOT, "tutorials", name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(tmp_path),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(metrics.read_text()), out
