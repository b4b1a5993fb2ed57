"""mkdocs hook: the home page is README.md and the tutorial index is tutorials/README.md
(single sources; docs/index.md and docs/tutorials.md are placeholders)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"index.md": ROOT / "README.md", "tutorials.md": ROOT / "tutorials" / "README.md"}


def on_page_read_source(page, config):
    """mkdocs hook: pages whose source lives outside docs/ (README, tutorials) are read from there."""
    src = SOURCES.get(page.file.src_uri)
    return src.read_text() if src is not None and src.exists() else None
