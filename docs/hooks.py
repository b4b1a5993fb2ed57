"""mkdocs hook: the home page is README.md and the tutorial index is tutorials/README.md
(single sources; docs/index.md and docs/tutorials.md are placeholders)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"index.md": ROOT / "README.md", "tutorials.md": ROOT / "tutorials" / "README.md"}


def on_page_read_source(page, config):
    """mkdocs hook: pages whose source lives outside docs/ (README, tutorials) are read from there."""
    src = SOURCES.get(page.file.src_uri)
    return src.read_text() if src is not None and src.exists() else None


def on_page_markdown(markdown, page, config, files):
    """mkdocs hook: the README's repository links (``docs/x.md``, ``tutorials/README.md``)
    become site links on the home page, where ``docs/`` is the root."""
    if page.file.src_uri != "index.md":
        return markdown
    return markdown.replace("](docs/", "](").replace("](tutorials/README.md)", "](tutorials.md)")
