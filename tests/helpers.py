"""Shared test helpers: the repository root, the environment of the suite's subprocesses and
the tutorial runner (``from tests.helpers import ROOT, run_tutorial``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (the folder holding ``probdyn/``)."""

STRICT_RUN = str(Path(__file__).resolve().with_name("strict_run.py"))
"""Start scripts and modules through this file so probdyn's DeprecationWarnings are errors."""


def subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment with probdyn importable and matplotlib headless, plus ``extra``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", **extra}


def run_tutorial(name: str, tmp_path, timeout: int = 600):
    """Run ``tutorials/NAME`` in smoke mode in a subprocess; return (metrics dict, figure folder)."""
    metrics = tmp_path / "metrics.json"
    out = tmp_path / "figs"
    env = subprocess_env(PROBDYN_SMOKE="1", PROBDYN_METRICS=str(metrics), PROBDYN_OUT=str(out))
    r = subprocess.run(
        [sys.executable, STRICT_RUN, str(ROOT / "tutorials" / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(tmp_path),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads(metrics.read_text())
    # every tutorial reports its wall time per section (probdyn.tutorials.Sections), and prints it
    sec = m.pop("section_seconds")  # checked here; the tests see the tutorial's own numbers
    assert len(sec) >= 3 and all(v >= 0 for v in sec.values())
    assert abs(sec["total"] - sum(v for k, v in sec.items() if k != "total")) < 1e-6
    assert all(f"[{k}: " in r.stdout for k in sec if k != "total")
    return m, out
