"""Figures shared by the ``probdyn`` command and the tutorials.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot state, no
backend switch, no style change on import) and writes a PNG to ``path`` when one is given;
it returns the figure.

* :func:`band`: a mean line with a ``+- 2 sd`` band on an axis;
* :func:`gp_forecast`: data and a Markov-GP posterior over the data and a horizon;
* :func:`sde_forecast`: data and an SDE smoother / forecast, one panel per observed column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

__all__ = ["DPI", "new_figure", "save", "band", "mark_forecast_start", "gp_forecast", "sde_forecast"]

DPI = 120


def new_figure(nrows: int = 1, ncols: int = 1, panel: tuple[float, float] = (9.0, 3.2), **kw):
    """A figure of ``nrows x ncols`` panels of ``panel`` inches each, and its axes as a 2-D array."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save(fig: Figure, path: str | Path | None) -> Figure:
    """Write ``fig`` to ``path`` (PNG at :data:`DPI`) when ``path`` is given; return ``fig``."""
    if path is not None:
        fig.savefig(str(path), dpi=DPI)
    return fig


def band(ax, x, mean, sd, color="C0", label=None, transform=None):
    """``mean`` with a ``mean +- 2 sd`` band (labelled ``"+-2 sd"``); ``transform`` (e.g.
    ``np.exp``) is applied to the line and both band edges."""
    f = (lambda v: v) if transform is None else transform
    x, mean, sd = np.asarray(x), np.asarray(mean), np.asarray(sd)
    ax.plot(x, f(mean), color=color, label=label)
    ax.fill_between(x, f(mean - 2 * sd), f(mean + 2 * sd), color=color, alpha=0.25, lw=0, label="±2 sd")


def mark_forecast_start(ax, t) -> None:
    """A dashed vertical line at the last data time ``t``."""
    ax.axvline(t, color="gray", lw=0.8, ls="--")


def gp_forecast(path, times, y, grid, mean, sd, name: str, label: str, time_label: str = "time") -> Figure:
    """Data ``y`` (N,) at ``times`` and the posterior ``mean``/``sd`` (M,) on ``grid``; the
    dashed line marks the end of the data."""
    fig, axes = new_figure(panel=(9.0, 3.5))
    ax = axes[0, 0]
    ax.plot(times, y, ".", ms=3, color="k", label="data")
    band(ax, grid, mean, sd, label=label)
    mark_forecast_start(ax, float(np.asarray(times)[-1]))
    ax.set_xlabel(time_label)
    ax.set_ylabel(name)
    ax.legend(loc="best", fontsize=8)
    return save(fig, path)


def sde_forecast(path, times, y, forecast, names, label: str, time_label: str = "time") -> Figure:
    """One panel per observed column of ``y`` (T, p): the data and ``forecast`` (a
    :class:`probdyn.models.sysid.SDEForecast`; log-scale moments are exponentiated)."""
    y = np.asarray(y)
    fig, axes = new_figure(len(names), 1, panel=(9.0, 2.8), sharex=True)
    tr = np.exp if forecast.log_scale else None
    for i, (ax, nm) in enumerate(zip(axes[:, 0], names)):
        ax.plot(times, y[:, i], "k.", ms=4, label="data")
        band(ax, forecast.times, forecast.mean[:, i], forecast.sd[:, i], label=label, transform=tr)
        mark_forecast_start(ax, forecast.last_data_time)
        ax.set_ylabel(nm)
    axes[0, 0].legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel(time_label)
    return save(fig, path)
