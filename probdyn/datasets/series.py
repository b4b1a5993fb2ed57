"""One time series as ``(times (T,), values (T, k), names)``: the embedded series and CSV files.

* :func:`load_series`: ``"lynx_hare"`` (Hudson's Bay pelts, 1900-1920, bundled),
  ``"co2"`` (Mauna Loa weekly CO2, 1958-2001) and ``"nile"`` (annual Nile flow, 1871-1970),
  the last two from statsmodels' bundled datasets; :data:`SERIES_UNITS` names their units;
* :func:`read_csv_series`: a CSV with a header row, checked: numeric, finite, strictly
  increasing times; numeric or empty (missing) values; enough observed rows.

Errors are ``ValueError`` (``FileNotFoundError`` for a missing file) naming the column and row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SERIES", "SERIES_UNITS", "load_series", "read_csv_series"]

SERIES = ("lynx_hare", "co2", "nile")
#: ``(time axis label, unit of the values)`` of each embedded series
SERIES_UNITS = {
    "lynx_hare": ("years since 1900", "thousands of pelts"),
    "co2": ("year", "ppm"),
    "nile": ("year", "10^8 m^3 per year"),
}


def load_series(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An embedded series as ``(times (T,), values (T, k), column names)``."""
    if name == "lynx_hare":
        from probdyn.datasets.hudson_bay import lynx_hare

        d = lynx_hare()
        t = np.concatenate([[0.0], np.asarray(d.ts, float)])
        y = np.concatenate([np.asarray(d.y_init, float)[None], np.asarray(d.y, float)])
        return t, y, ["hare", "lynx"]
    if name == "co2":
        import statsmodels.api as sm

        df: Any = sm.datasets.co2.load_pandas().data  # statsmodels annotates .data as optional
        t = 1958.0 + np.arange(len(df)) * 7.0 / 365.25
        return t, df["co2"].to_numpy(float)[:, None], ["co2"]
    if name == "nile":
        import statsmodels.api as sm

        df: Any = sm.datasets.nile.load_pandas().data
        return df["year"].to_numpy(float), df["volume"].to_numpy(float)[:, None], ["volume"]
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(SERIES)}")


def read_csv_series(
    path: str | Path, time_col: str | None = None, columns: str | list[str] | None = None, min_points: int = 5
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(times (T,), values (T, k), names)`` from a CSV file with a header row.

    ``time_col``: the time column (default the first); ``columns``: the value columns, a list
    or a comma-separated string (default all others). Times must be numeric, finite and
    strictly increasing; values numeric, or empty / NaN for a missing value, never infinite;
    at least ``min_points`` rows must have an observed value."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        df = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - any parser failure is one message
        raise ValueError(f"cannot read {path} as CSV: {e}") from None
    if df.shape[1] < 2:
        raise ValueError(f"{path} needs a time column and at least one value column (found {list(df.columns)})")
    tc = time_col or str(df.columns[0])
    if tc not in df.columns:
        raise ValueError(f"unknown time column {tc!r}; columns are {list(df.columns)}")
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",")]
    names = list(columns) if columns else [c for c in df.columns if c != tc]
    for c in names:
        if c not in df.columns:
            raise ValueError(f"unknown column {c!r}; columns are {list(df.columns)}")
    t = np.asarray(pd.to_numeric(df[tc], errors="coerce"), float)
    if not np.all(np.isfinite(t)):
        bad = int(np.argmax(~np.isfinite(t)))
        raise ValueError(f"time column {tc!r} must be numeric and finite (row {bad + 2}: {df[tc].to_numpy()[bad]!r})")
    if np.any(np.diff(t) <= 0):
        bad = int(np.argmax(np.diff(t) <= 0))
        raise ValueError(
            f"times must be strictly increasing (rows {bad + 2} and {bad + 3}: {t[bad]} then {t[bad + 1]})"
        )
    vals = []
    for c in names:
        raw = df[c]
        v = np.asarray(pd.to_numeric(raw, errors="coerce"), float)
        bad = np.isnan(v) & raw.notna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"column {c!r} has a non-numeric value at row {i + 2}: {raw.to_numpy()[i]!r}")
        vals.append(v)
    y = np.stack(vals, axis=1)
    if np.any(np.isinf(y)):
        raise ValueError("values must be finite (leave a cell empty for a missing value)")
    n_obs = int(np.sum(np.any(np.isfinite(y), axis=1)))
    if n_obs < min_points:
        raise ValueError(f"too few points: {n_obs} observed rows, need at least {min_points}")
    return t, y, names
