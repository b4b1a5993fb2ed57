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
    return json.loads(metrics.read_text()), out
