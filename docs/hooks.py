"""mkdocs hooks: the home page is README.md and the tutorial index is tutorials/README.md
(single sources; docs/index.md and docs/tutorials.md are placeholders), and every tutorial
becomes a page ``tutorials/NAME.md``, executed in smoke mode while the site is built.

Environment: ``PROBDYN_DOCS_EXECUTE=0`` renders the tutorials as code only (no run);
``PROBDYN_DOCS_WORKDIR=DIR`` keeps each run's ``cells.json``, ``metrics.json`` and figures
under ``DIR/NAME`` (the test suite reads them); otherwise a temporary folder is used.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"index.md": ROOT / "README.md", "tutorials.md": ROOT / "tutorials" / "README.md"}
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))

_spec = importlib.util.spec_from_file_location("tutorial_pages", Path(__file__).with_name("tutorial_pages.py"))
assert _spec is not None and _spec.loader is not None
pages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pages)


def _run(path: Path, work: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MPLBACKEND": "Agg",
        "PROBDYN_SMOKE": "1",
        "PROBDYN_OUT": str(work / "figures"),
        "PROBDYN_METRICS": str(work / "metrics.json"),
    }
    cmd = [sys.executable, str(Path(pages.__file__)), str(path), str(work)]
    r = subprocess.run(cmd, env=env, cwd=str(work), capture_output=True, text=True)
    (work / "stdout.txt").write_text(r.stdout)
    if r.returncode != 0:
        raise PluginError(f"tutorial {path.name} failed in smoke mode:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def on_files(files, config):
    """mkdocs hook: add one generated page per tutorial (and the figures its run wrote)."""
    execute = os.environ.get("PROBDYN_DOCS_EXECUTE", "1") != "0"
    root = os.environ.get("PROBDYN_DOCS_WORKDIR") or tempfile.mkdtemp(prefix="probdyn-docs-")
    for path in TUTORIALS:
        if execute:
            work = Path(root) / path.stem
            work.mkdir(parents=True, exist_ok=True)
            _run(path, work)
            cells = json.loads((work / "cells.json").read_text())
            for cell in cells:
                for fig in cell.get("figures", []):
                    data = (work / "figures" / fig).read_bytes()
                    files.append(File.generated(config, f"tutorials/{path.stem}/{fig}", content=data))
        else:
            cells = pages.parse_cells(path.read_text())
        md = pages.render(cells, path.stem, execute)
        files.append(File.generated(config, f"tutorials/{path.stem}.md", content=md))
    return files


def on_page_read_source(page, config):
    """mkdocs hook: pages whose source lives outside docs/ (README, tutorials) are read from there."""
    src = SOURCES.get(page.file.src_uri)
    return src.read_text() if src is not None and src.exists() else None


def on_page_markdown(markdown, page, config, files):
    """mkdocs hook: the README's repository links (``docs/x.md``, ``tutorials/README.md``)
    become site links on the home page, where ``docs/`` is the root; the tutorial index
    links each tutorial's page."""
    if page.file.src_uri == "tutorials.md":
        for path in TUTORIALS:
            markdown = markdown.replace(f"| `{path.name}` |", f"| [`{path.name}`](tutorials/{path.stem}.md) |")
        return markdown
    if page.file.src_uri != "index.md":
        return markdown
    return markdown.replace("](docs/", "](").replace("](tutorials/README.md)", "](tutorials.md)")


_ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|obj|exc|py:\w+):(?=<code>)")
_MATH = re.compile(r"<p>\.\. math::\s*(.*?)</p>", re.S)


def on_page_content(html, page, config, files):
    """mkdocs hook: docstrings written with Sphinx roles (``:func:`x```) show as code, and a
    ``.. math::`` paragraph as a preformatted formula (the site ships no math renderer)."""
    html = _ROLE.sub("", html)
    return _MATH.sub(lambda m: f"<pre><code>{m.group(1).strip()}</code></pre>", html)
