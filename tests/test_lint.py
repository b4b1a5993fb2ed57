"""The repository passes its own ruff configuration (pyproject.toml): lint and format."""

import subprocess
import sys

from tests.helpers import ROOT


def ruff(*args):
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=str(ROOT), capture_output=True, text=True)


def test_ruff_check():
    r = ruff("check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_format():
    r = ruff("format", "--no-cache", "--check", ".")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
