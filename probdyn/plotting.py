"""Figures shared by the ``probdyn`` command and the tutorials.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot state, no
backend switch, no style change on import) and writes a PNG to ``path`` when one is given;
it returns the figure.

* :func:`band`: a mean line with a ``+- 2 sd`` band on an axis;
* :func:`gp_forecast`: data and a Markov-GP posterior over the data and a horizon;
* :func:`sde_forecast`: data and an SDE smoother / forecast, one panel per observed column;
* :func:`compare_scores`: NLPD and RMSE against lead time, a colour per model, a line style
  per test spacing;
* :func:`compare_forecasts`: a panel per model and observed coordinate, each on a scale set by
  its data; a forecast that leaves that scale is marked as diverged instead of setting it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "new_figure",
    "save",
    "band",
    "mark_forecast_start",
    "gp_forecast",
    "sde_forecast",
    "plot_window",
    "compare_scores",
    "compare_forecasts",
]

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


def band(ax, x, mean, sd, color="C0", label=None, transform=None, z: float = 2.0, band_label="default"):
    """``mean`` (labelled ``label``) with a ``mean +- z sd`` band labelled ``band_label`` (by
    default ``"+-2 sd"`` for ``z = 2``, none otherwise); ``transform`` (e.g. ``np.exp``) is
    applied to the line and both band edges."""
    f = (lambda v: v) if transform is None else transform
    x, mean, sd = np.asarray(x), np.asarray(mean), np.asarray(sd)
    ax.plot(x, f(mean), color=color, label=label)
    ax.fill_between(
        x,
        f(mean - z * sd),
        f(mean + z * sd),
        color=color,
        alpha=0.25,
        lw=0,
        label=("±2 sd" if z == 2.0 else None) if band_label == "default" else band_label,
    )


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


def plot_window(data, reach: float = 2.0) -> tuple[float, float]:
    """The values a panel may show around ``data`` (NaN ignored): its range widened by
    ``reach`` times the range (or 1 for constant data) on each side. A forecast outside it is
    off scale (see :func:`compare_forecasts`)."""
    d = np.asarray(data, float)
    d = d[np.isfinite(d)]
    lo, hi = (float(d.min()), float(d.max())) if d.size else (-1.0, 1.0)
    r = hi - lo if hi > lo else 1.0
    return lo - reach * r, hi + reach * r


def compare_scores(path, table) -> Figure:
    """NLPD (symmetric-log scale) and RMSE (log scale) against lead time from the long table of
    :func:`probdyn.models.sysid.compare`: one colour per model, solid at the test spacing and
    dotted at the training spacing. Infinite scores (diverged forecasts) are left out of the
    lines and drawn as crosses on the top edge."""
    fig, axes = new_figure(1, 2, panel=(5.2, 3.8))
    models = list(dict.fromkeys(table["model"]))
    for c, model in enumerate(models):
        for spacing, ls in (("test", "-"), ("train", ":")):
            g = table[(table["model"] == model) & (table["spacing"] == spacing)].sort_values("horizon_time")
            if g.empty:
                continue
            for ax, col in zip(axes[0], ("nlpd", "rmse")):
                v = g[col].to_numpy(float)
                ok = np.isfinite(v)
                ax.plot(
                    g["horizon_time"][ok],
                    v[ok],
                    ls,
                    marker="o",
                    ms=3,
                    color=f"C{c}",
                    label=f"{model}, {spacing} spacing",
                )
                if (~ok).any():
                    ax.plot(
                        g["horizon_time"][~ok],
                        np.full((~ok).sum(), 1.0),
                        "x",
                        color=f"C{c}",
                        ms=7,
                        transform=ax.get_xaxis_transform(),
                        clip_on=False,
                    )
    axes[0, 0].set_yscale("symlog", linthresh=1.0)
    axes[0, 1].set_yscale("log")
    for ax, col in zip(axes[0], ("NLPD (nats per observation, symlog)", "RMSE")):
        ax.set_xlabel("lead time (time units of the data)")
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=7)
    fig.suptitle(
        "forecast scores, lower is better (solid: test spacing, dotted: training spacing; x on the top edge: diverged)",
        fontsize=9,
    )
    return save(fig, path)


def compare_forecasts(path, forecasts: dict, names=None, spacing: str = "test") -> Figure:
    """One column per model and one row per observed coordinate: the context (dots), the held
    out data (crosses) and the forecast's mean +- 2 sd, for the ``spacing`` forecasts of
    :func:`probdyn.models.sysid.compare` (its ``forecasts`` dict). Each panel's scale is set
    by its data and the forecast inside :func:`plot_window` of them; where the mean leaves that
    window (or is not finite) the forecast is marked diverged (red triangles on the edge, from
    the first such time) and does not set the scale. ``names``: coordinate labels."""
    keys = [k for k in forecasts if k[1] == spacing]
    p = np.asarray(forecasts[keys[0]]["mean"]).shape[-1]
    names = list(names) if names is not None else [f"y[{i}]" for i in range(p)]
    fig, axes = new_figure(p, len(keys), panel=(4.2, 2.8), sharex=True)
    for j, key in enumerate(keys):
        f = forecasts[key]
        mean, cov = np.asarray(f["mean"]), np.asarray(f["cov"])
        sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=-2, axis2=-1), 0.0))
        for i in range(p):
            ax = axes[i, j]
            ctx, truth = np.asarray(f["ctx_y"])[:, i], np.asarray(f["truth"])[:, i]
            lo, hi = plot_window(np.concatenate([ctx, truth]))
            m, s = mean[:, i], sd[:, i]
            bad = ~np.isfinite(m) | (m < lo) | (m > hi)
            first = int(np.argmax(bad)) if bad.any() else m.size
            shown = np.arange(m.size) < first  # the forecast before it first leaves the window
            ax.plot(f["ctx_times"], ctx, "k.", ms=4, label="context")
            ax.plot(f["times"], truth, "kx", ms=4, label="held out")
            if shown.any():
                band(ax, np.asarray(f["times"])[shown], m[shown], s[shown], label="forecast")
            vals = np.concatenate([ctx, truth, (m - 2 * s)[shown], (m + 2 * s)[shown]])
            vals = vals[np.isfinite(vals)]
            a, b = max(vals.min(), lo), min(vals.max(), hi)
            pad = 0.05 * (b - a if b > a else 1.0)
            ax.set_ylim(a - pad, b + pad)
            if bad.any():
                tb = np.asarray(f["times"])[first:]
                up = ~(m[first:] < lo)  # off the top (or not finite) vs off the bottom
                for sel, edge, mk in ((up, 1.0, "^"), (~up, 0.0, "v")):
                    if sel.any():  # (an empty unclipped line would pull the layout to the origin)
                        ax.plot(
                            tb[sel],
                            np.full(sel.sum(), edge),
                            mk,
                            color="C3",
                            ms=5,
                            clip_on=False,
                            transform=ax.get_xaxis_transform(),
                            label="diverged (off scale)",
                        )
                ax.text(
                    0.02,
                    0.95,
                    f"diverged from t = {tb[0]:.3g}",
                    transform=ax.transAxes,
                    color="C3",
                    fontsize=8,
                    va="top",
                )
            if i == 0:
                ax.set_title(key[0], fontsize=9)
            if j == 0:
                ax.set_ylabel(names[i])
            if i == p - 1:
                ax.set_xlabel("time")
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(
        f"forecasts at the {spacing} spacing from the first origin (mean ± 2 sd); each panel on its own scale",
        fontsize=9,
    )
    return save(fig, path)
