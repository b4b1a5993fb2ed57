"""Every Python code block of the README and the docs pages runs on its own (a fresh
interpreter per block, as a reader would paste it), with the sizes it shows."""

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, subprocess_env

PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("**/*.md"))
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks():
    for page in PAGES:
        for i, m in enumerate(FENCE.finditer(page.read_text())):
            yield pytest.param(m.group(1), id=f"{page.relative_to(ROOT)}#{i + 1}")


def test_blocks_found():
    assert len(list(blocks())) >= 7


@pytest.mark.slow
@pytest.mark.parametrize("code", list(blocks()))
def test_code_block_runs(code, tmp_path):
    env = subprocess_env()
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-3000:]
