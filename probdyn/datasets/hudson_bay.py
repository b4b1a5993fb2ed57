"""Hudson's Bay Company lynx–hare pelt counts, 1900–1920 (bundled; no download).

The numbers are the posteriordb ``hudson_lynx_hare`` data set (thousands of pelts):
``ts = 1..20`` (years after 1900), ``y_init`` = [hare, lynx] in 1900 and ``y`` (20, 2) =
[hare, lynx] for 1901–1920. The file ships inside the package as
``probdyn/datasets/hudson_lynx_hare.json`` and is read with :mod:`importlib.resources`.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import NamedTuple

import numpy as np

__all__ = ["LynxHare", "lynx_hare"]


class LynxHare(NamedTuple):
    """``ts`` (N,), ``y_init`` (2,), ``y`` (N, 2) with columns ``columns`` = (hare, lynx)."""

    ts: np.ndarray
    y_init: np.ndarray
    y: np.ndarray
    years: np.ndarray
    columns: tuple[str, str]

    @property
    def times_all(self) -> np.ndarray:
        """(N + 1,) times including t = 0 (1900)."""
        return np.concatenate([[0.0], self.ts])

    @property
    def y_all(self) -> np.ndarray:
        """(N + 1, 2) observations including the 1900 row."""
        return np.concatenate([self.y_init[None], self.y], axis=0)


def lynx_hare() -> LynxHare:
    """Load the Hudson's Bay lynx–hare data (float64 numpy arrays)."""
    text = resources.files("probdyn.datasets").joinpath("hudson_lynx_hare.json").read_text()
    raw = json.loads(text)
    ts = np.asarray(raw["ts"], float)
    y = np.asarray(raw["y"], float)
    if y.shape != (int(raw["N"]), 2) or ts.shape != (int(raw["N"]),):
        raise ValueError("corrupt hudson_lynx_hare.json: shapes do not match N")
    return LynxHare(
        ts, np.asarray(raw["y_init"], float), y, 1900 + np.concatenate([[0], ts]).astype(int), ("hare", "lynx")
    )
