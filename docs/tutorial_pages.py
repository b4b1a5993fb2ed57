"""The tutorials as documentation pages: parse a jupytext percent-format script into cells,
run it cell by cell in smoke mode, and render the cells with their printed output and the
figures each cell wrote as a markdown page.

Run as a script (``python docs/tutorial_pages.py TUTORIAL.py WORKDIR``) it executes the
tutorial in this process, one cell after another in one namespace (``PROBDYN_SMOKE``,
``PROBDYN_OUT`` and ``PROBDYN_METRICS`` come from the environment), and writes
``WORKDIR/cells.json``: ``[{"kind", "source", "stdout", "figures"}]``. A DeprecationWarning
from probdyn is an error, as in the test suite. docs/hooks.py starts it once per tutorial.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from pathlib import Path

MAX_OUTPUT_LINES = 60


def parse_cells(text: str) -> list[dict]:
    """``[{"kind": "markdown" | "code", "source": str}]`` of a percent-format script (the
    jupytext header before the first ``# %%`` is dropped; markdown loses its ``# ``)."""
    cells: list[dict] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append({"kind": "markdown" if "[markdown]" in line else "code", "lines": []})
        elif cells:
            cells[-1]["lines"].append(line)
    out = []
    for c in cells:
        lines = c["lines"]
        if c["kind"] == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append({"kind": c["kind"], "source": source})
    return out


def _pngs(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.png")} if folder.is_dir() else {}


def execute(path: Path, work: Path) -> list[dict]:
    """Run the cells of ``path`` in one namespace; each code cell gains ``stdout`` and the
    ``figures`` (paths under ``$PROBDYN_OUT``) it wrote or rewrote."""
    figs = Path(os.environ["PROBDYN_OUT"])
    cells = parse_cells(path.read_text())
    namespace = {"__name__": "__main__", "__file__": str(path)}
    warnings.filterwarnings("error", category=DeprecationWarning, module="probdyn")
    for i, cell in enumerate(cells):
        if cell["kind"] != "code":
            continue
        before = _pngs(figs)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(cell["source"], f"{path.name} (cell {i})", "exec"), namespace)
        after = _pngs(figs)
        cell["stdout"] = buf.getvalue()
        cell["figures"] = sorted(k for k, v in after.items() if before.get(k) != v)
        sys.stdout.write(cell["stdout"])
    work.mkdir(parents=True, exist_ok=True)
    (work / "cells.json").write_text(json.dumps(cells))
    return cells


def render(cells: list[dict], stem: str, executed: bool) -> str:
    """The markdown page of one tutorial; figures are linked as ``STEM/NAME.png``."""
    how = (
        "It was executed in smoke mode (`PROBDYN_SMOKE=1`, tiny sizes) when this site was built, "
        "so the printed numbers and figures are the smoke run's."
        if executed
        else "This build did not execute it (`PROBDYN_DOCS_EXECUTE=0`): code only."
    )
    note = (
        f'!!! note "Source: `tutorials/{stem}.py`"\n'
        f"    {how} The full run: `probdyn run {stem}` (or `python tutorials/{stem}.py`).\n"
    )
    parts = []
    for i, cell in enumerate(cells):
        if cell["kind"] == "markdown":
            parts.append(cell["source"] + "\n")
            if i == 0:
                parts.append(note)
            continue
        parts.append(f"```python\n{cell['source']}\n```\n")
        out = cell.get("stdout", "").rstrip("\n").splitlines()
        if len(out) > MAX_OUTPUT_LINES:  # the head and the tail (where the section times are)
            head, tail = MAX_OUTPUT_LINES // 2, MAX_OUTPUT_LINES // 4
            out = out[:head] + [f"... ({len(out) - head - tail} lines not shown)"] + out[-tail:]
        if out:
            parts.append("```text\n" + "\n".join(out) + "\n```\n")
        parts += [f"![{Path(f).stem}]({stem}/{f})\n" for f in cell.get("figures", [])]
    return "\n".join(parts if cells and cells[0]["kind"] == "markdown" else [note, *parts])


if __name__ == "__main__":
    execute(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
