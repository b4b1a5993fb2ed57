"""The tutorials of a source checkout: :func:`list_tutorials` and :func:`run_tutorial`
(what ``probdyn tutorials`` and ``probdyn run`` call).

The folder is ``tutorials/`` next to the package, or ``$PROBDYN_TUTORIALS``. A tutorial is a
jupytext script; it writes its figures into ``$PROBDYN_OUT`` and its numbers into
``$PROBDYN_METRICS``, and ``PROBDYN_SMOKE=1`` makes it tiny.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["tutorial_dir", "list_tutorials", "run_tutorial", "Sections"]


def tutorial_dir() -> Path:
    """The tutorials folder (``$PROBDYN_TUTORIALS``, else ``tutorials/`` of the checkout)."""
    env = os.environ.get("PROBDYN_TUTORIALS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "tutorials"


def list_tutorials() -> dict[str, str]:
    """Tutorial name -> title (its first markdown heading); ``FileNotFoundError`` without a folder."""
    d = tutorial_dir()
    if not d.is_dir():
        raise FileNotFoundError(f"tutorial folder not found at {d} (set PROBDYN_TUTORIALS or install from a clone)")
    out = {}
    for f in sorted(d.glob("*.py")):
        heads = (re.match(r"#\s*#\s+(.*)", line) for line in f.read_text().splitlines())
        out[f.stem] = next((m.group(1).strip() for m in heads if m), "")
    return out


def run_tutorial(name: str, out: str | Path, smoke: bool = False) -> Path:
    """Run tutorial ``name`` (with or without ``.py``) in a fresh interpreter with ``out`` as
    its output folder (figures and ``metrics.json``); returns ``out``. ``ValueError`` for an
    unknown name, ``RuntimeError`` when the tutorial fails (its output is shown as it runs)."""
    tuts = list_tutorials()
    name = name[:-3] if name.endswith(".py") else name
    if name not in tuts:
        raise ValueError(f"unknown tutorial {name!r}; `probdyn tutorials` lists: {', '.join(tuts)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROBDYN_OUT": str(out), "PROBDYN_METRICS": str(out / "metrics.json"), "MPLBACKEND": "Agg"}
    if smoke:
        env["PROBDYN_SMOKE"] = "1"
    env["PYTHONPATH"] = str(tutorial_dir().parent) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, str(tutorial_dir() / f"{name}.py")], env=env, cwd=str(out))
    if r.returncode != 0:
        raise RuntimeError(f"tutorial {name} failed with exit status {r.returncode} (see its output above)")
    return out


class Sections:
    """Wall time per section of a tutorial, for notebook cells (no ``with`` across cells):
    ``sections.start("name")`` ends the running section, prints its time and starts the next;
    ``sections.stop()`` ends the last one and returns ``{name: seconds}`` (the tutorial writes
    it into its metrics). Time before the first ``start`` counts as ``"setup"``."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._name: str | None = "setup"
        self._t0 = clock()
        self.seconds: dict[str, float] = {}

    def _close(self) -> float:
        now = self._clock()
        if self._name is not None:
            dt = now - self._t0
            self.seconds[self._name] = self.seconds.get(self._name, 0.0) + dt
            print(f"[{self._name}: {dt:.1f} s]", flush=True)
        return now

    def start(self, name: str) -> None:
        """End the running section and start ``name``."""
        self._t0 = self._close()
        self._name = name

    def stop(self) -> dict[str, float]:
        """End the running section; ``{section: seconds}``, plus ``"total"``."""
        self._close()
        self._name = None
        return {**self.seconds, "total": sum(self.seconds.values())}
