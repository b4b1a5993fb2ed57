"""Result files written together, never half-written: :class:`Outputs`.

A job that writes several files into one folder writes each under a temporary name in that
folder (:meth:`Outputs.staged`) and renames all of them to their final names when it
succeeds; on an error or Ctrl-C the temporary files are removed, so a final name never holds
a half-written file and earlier results stay as they were.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["Outputs"]


class Outputs:
    """The files ``names`` of one job in ``folder`` (created if missing); a context manager.

    ``ValueError`` when ``folder`` is a file, or when one of ``names`` exists there and
    ``force`` is false (nothing is overwritten unless asked)."""

    def __init__(self, folder: str | Path, names: list[str], force: bool = False):
        self.folder, self.names = Path(folder), list(names)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"--out {folder} exists and is not a directory")
        clash = [n for n in self.names if (self.folder / n).exists()]
        if clash and not force:
            raise ValueError(
                f"{self.folder / clash[0]} already exists; use --force to overwrite or choose another --out"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.earlier = clash

    def staged(self, name: str) -> Path:
        """Where to write ``name`` now: ``.partial-NAME`` in the folder (extension kept)."""
        return self.folder / f".partial-{name}"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        staged = [n for n in self.names if self.staged(n).exists()]
        if exc_type is None:
            for n in staged:
                os.replace(self.staged(n), self.folder / n)
            return False
        for n in staged:
            self.staged(n).unlink()
        if exc_type is KeyboardInterrupt:
            kept = f"; the earlier {', '.join(self.earlier)} kept as they were" if self.earlier else ""
            print(
                f"probdyn: interrupted before writing its results: no file written in {self.folder}{kept}",
                file=sys.stderr,
            )
        return False
