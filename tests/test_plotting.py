"""probdyn.plotting: figures written without pyplot state; the comparison's forecast panels
each keep the scale of their data, and a diverging forecast is marked, not used for the scale."""

import numpy as np
import pandas as pd

from probdyn import plotting


def forecasts(blow_up=3e4):
    t, ctx_t = np.arange(10, 15, 0.5), np.arange(0, 10, 0.5)
    truth = np.stack([np.sin(t), 10 + 5 * np.cos(t)], -1)
    out = {}
    for name, scale in (("continuous", 0.0), ("naive", blow_up)):
        mean = truth + scale * ((t - 10) ** 3)[:, None] * np.array([1.0, -1.0])
        out[(name, "test")] = dict(
            mean=mean,
            cov=np.tile(0.01 * np.eye(2), (t.size, 1, 1)),
            truth=truth,
            times=t,
            ctx_times=ctx_t,
            ctx_y=np.stack([np.sin(ctx_t), 10 + 5 * np.cos(ctx_t)], -1),
        )
        out[(name, "train")] = out[(name, "test")]
    return out


def texts(ax):
    return [t.get_text() for t in ax.texts]


def test_compare_forecasts_scales_and_divergence(tmp_path):
    fig = plotting.compare_forecasts(tmp_path / "f.png", forecasts(), names=["a", "b"])
    assert (tmp_path / "f.png").stat().st_size > 0
    axes = np.array(fig.axes[:4]).reshape(2, 2)  # rows: coordinates, columns: models
    for i, (lo, hi) in enumerate(((-1.0, 1.0), (5.0, 15.0))):  # each coordinate's data range
        for j in range(2):
            a, b = axes[i, j].get_ylim()
            assert lo - 0.2 * (hi - lo) < a <= lo and hi <= b < hi + 0.2 * (hi - lo), (i, j, a, b)
        assert not any("diverged" in s for s in texts(axes[i, 0]))
        assert any(s.startswith("diverged from t = 10.5") for s in texts(axes[i, 1]))
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b"]


def test_compare_forecasts_without_divergence_has_no_marks():
    fig = plotting.compare_forecasts(None, forecasts(blow_up=0.0))
    assert not any("diverged" in s for ax in fig.axes for s in texts(ax))
    assert fig.axes[0].get_ylabel() == "y[0]"


def test_compare_scores_infinite_scores_off_the_lines(tmp_path):
    rows = [
        dict(
            model=m,
            spacing=s,
            horizon_time=h,
            nlpd=(np.inf if (m == "naive" and h == 5) else h),
            rmse=(np.inf if (m == "naive" and h == 5) else 0.1 * h),
        )
        for m in ("continuous", "naive")
        for s in ("train", "test")
        for h in (1.0, 2.0, 5.0)
    ]
    fig = plotting.compare_scores(tmp_path / "s.png", pd.DataFrame(rows))
    nlpd_ax = fig.axes[0]
    for line in nlpd_ax.get_lines():
        assert np.all(np.isfinite(line.get_ydata()))
    crosses = [ln for ln in nlpd_ax.get_lines() if ln.get_marker() == "x"]
    assert len(crosses) == 2 and all(list(ln.get_xdata()) == [5.0] for ln in crosses)  # test and train spacing
    assert nlpd_ax.get_yscale() == "symlog" and fig.axes[1].get_yscale() == "log"
