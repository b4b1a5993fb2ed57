"""Shared test helpers: the repository root, the environment of the suite's subprocesses and
the executed docs build that runs the tutorials (``from tests.helpers import ROOT, ...``)."""

import html
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


def build_docs_executed(tmp_path, timeout: int = 1500):
    """``mkdocs build --strict`` with the tutorials executed in smoke mode (docs/hooks.py),
    each run's files kept under ``tmp_path / "work" / NAME``; returns ``(work, site)``."""
    work, site = tmp_path / "work", tmp_path / "site"
    env = subprocess_env(NO_MKDOCS_2_WARNING="1", PROBDYN_DOCS_EXECUTE="1", PROBDYN_DOCS_WORKDIR=str(work))
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return work, site


def tutorial_results(runs, stem: str):
    """One tutorial's smoke run from :func:`build_docs_executed`: (metrics dict, figure
    folder). Checks the wall time per section (printed and in the metrics) and that the
    tutorial's page shows the run's printed output and every figure it wrote."""
    work, site = runs
    m = json.loads((work / stem / "metrics.json").read_text())
    stdout = (work / stem / "stdout.txt").read_text()
    # every tutorial reports its wall time per section (probdyn.tutorials.Sections), and prints it
    sec = m.pop("section_seconds")  # checked here; the tests see the tutorial's own numbers
    assert len(sec) >= 3 and all(v >= 0 for v in sec.values())
    assert abs(sec["total"] - sum(v for k, v in sec.items() if k != "total")) < 1e-6
    assert all(f"[{k}: " in stdout for k in sec if k != "total")
    page = html.unescape((site / "tutorials" / stem / "index.html").read_text())
    assert "smoke mode" in page and all(f"[{k}: " in page for k in sec if k != "total")
    figures = work / stem / "figures"
    for png in figures.rglob("*.png"):
        assert (site / "tutorials" / stem / png.relative_to(figures)).exists(), png.name
        assert f'src="{png.relative_to(figures).as_posix()}"' in page or png.name in page, png.name
    return m, figures
