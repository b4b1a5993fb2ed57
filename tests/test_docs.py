"""The documentation builds (mkdocs --strict, API pages from docstrings) and every public
name of the public modules has a docstring."""

import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PUBLIC = [
    "probdyn.kernels",
    "probdyn.ssm",
    "probdyn.gp",
    "probdyn.inference.kalman",
    "probdyn.inference.fused",
    "probdyn.linalg",
    "probdyn.distributions",
    "probdyn.inference.mcmc",
    "probdyn.inference.variational",
    "probdyn.inference.optimize",
    "probdyn.sde.base",
    "probdyn.sde.ode",
    "probdyn.sde.fractional",
    "probdyn.sharding",
    "probdyn.cli",
    "probdyn.inference.gaussian_filters",
    "probdyn.inference.gaussian_filters.observations",
    "probdyn.inference.gaussian_filters.common",
    "probdyn.inference.gaussian_filters.distributions",
    "probdyn.inference.distribution_base",
    "probdyn.models.sysid",
    "probdyn.models.mgpvae",
    "probdyn.models.mgpvae.nets",
    "probdyn.models.sde_posteriors",
    "probdyn.models.sde_posteriors.vgpa",
    "probdyn.models.fractional",
    "probdyn.models.fractional.neural_sde",
    "probdyn.models.fractional.fou",
    "probdyn.models.fractional.video",
]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PROBDYN_DOCS_EXECUTE": "0"}  # executed: tests/tutorials
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    kalman = (tmp_path / "site" / "api" / "kalman" / "index.html").read_text()
    for name in ("log_likelihood", "smoother", "sample"):
        assert f"probdyn.inference.kalman.{name}" in kalman
    home = (tmp_path / "site" / "index.html").read_text()
    assert "probdyn" in home and "pytest" in home  # README rendered as the home page
    assert not re.findall(r'href="[^"]*\.md"', home)  # the README's links resolved to pages
    assert 'href="guides/sysid/"' in home
    index = (tmp_path / "site" / "tutorials" / "index.html").read_text()
    for path in (ROOT / "tutorials").glob("*.py"):  # one page per tutorial, linked from the index
        assert f'href="{path.stem}/"' in index, path.stem
        assert "import" in (tmp_path / "site" / "tutorials" / path.stem / "index.html").read_text()


def _nav_pages(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _nav_pages(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _nav_pages(value)


def test_every_page_is_in_the_navigation():
    """Every page under docs/ and every tutorial's generated page is reachable from
    mkdocs.yml's nav, and every nav entry exists."""
    import yaml

    with open(ROOT / "mkdocs.yml") as f:
        nav = set(_nav_pages(yaml.load(f, Loader=yaml.BaseLoader)["nav"]))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    pages |= {f"tutorials/{p.stem}.md" for p in (ROOT / "tutorials").glob("*.py")}  # generated (docs/hooks.py)
    assert pages == nav, (sorted(pages - nav), sorted(nav - pages))


@pytest.mark.parametrize("modname", PUBLIC)
def test_public_names_have_docstrings(modname):
    mod = importlib.import_module(modname)
    assert mod.__doc__, modname
    missing = []
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
            missing.append(name)
    assert not missing, f"{modname}: no docstring for {missing}"


def test_readme_is_a_front_door():
    """The README stays <= 8 KB, keeps its two set-up commands (main job, tests), a
    quickstart of <= 15 lines, and the peer table naming all six peers."""
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 8192, len(text.encode())
    assert 'pip install -c constraints.txt -e ".[tutorials]" && probdyn compare' in text
    assert 'pip install -c constraints.txt -e ".[test]" && python -m pytest -q -n 2 --dist loadfile' in text
    quick = text.split("## Quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert len(quick.strip().splitlines()) <= 15
    table = text.split("## Against the peers", 1)[1].split("\n\n", 2)[1]
    for peer in ("dynamax", "cuthbert", "tinygp", "BayesNewton", "markovflow", "dynestyx"):
        assert peer in table.splitlines()[0], peer


def test_nothing_refers_outside_the_repository():
    """No tracked text file names a path beside or above the repository (data, design notes):
    a user's clone has only the repository."""
    outside = ("../" + "shared", "/work" + "/shared", "/work" + "/main", "shared" + "/data")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        try:
            text = (ROOT / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        hits += [f"{name}: {p}" for p in outside if p in text]
    assert not hits, hits
