"""The comparison's summary tables (probdyn.models.sysid.CompareResult) and
probdyn.tables.markdown_table, from a hand-made long table."""

import numpy as np
import pandas as pd

from probdyn.models.sysid import CompareResult
from probdyn.tables import markdown_table


def long_table():
    rows = []
    for m, kind, fit_s in (("sde", "continuous", 3.0), ("naive", "discrete", 1.0)):
        for sp, dt in (("train", 1.0), ("test", 0.5)):
            for h in (1.0, 2.0):
                bad = m == "naive" and sp == "test" and h == 2.0
                rows.append(
                    dict(
                        system="s",
                        model=m,
                        kind=kind,
                        spacing=sp,
                        dt=dt,
                        horizon_time=h,
                        horizon_steps=int(h / dt),
                        rmse=np.inf if bad else 0.1 * h + dt,
                        nlpd=np.inf if bad else h - dt,
                        param_rel_error=0.1,
                        fit_time_s=fit_s,
                        train_loglik=-fit_s,
                    )
                )
    return pd.DataFrame(rows)


def test_scores_and_per_model():
    df = long_table()
    res = CompareResult(df, {}, {"extra": 0.5}, {}, {}, {})
    nl = res.scores("nlpd")
    assert list(nl.index) == [
        ("sde", "train (dt 1)"),
        ("sde", "test (dt 0.5)"),
        ("naive", "train (dt 1)"),
        ("naive", "test (dt 0.5)"),
    ]
    assert list(nl.columns) == [1.0, 2.0]
    for (m, sp), row in nl.iterrows():
        for h, v in row.items():
            ref = df[(df.model == m) & (df.spacing == sp.split()[0]) & (df.horizon_time == h)].nlpd.item()
            assert v == ref
    pm = res.per_model()
    assert list(pm.index) == ["sde", "naive"] and list(pm["fit_time_s"]) == [3.0, 1.0]
    md = res.to_markdown()
    assert md.count("\n| naive, test (dt 0.5) | 0.500 | diverged |") == 1  # NLPD row: 1 - 0.5, then inf
    assert "| sde | continuous | 0.100 | 3.000 | -3.000 |" in md
    assert md.rstrip().endswith("extra = 0.5")
    assert len(res.to_markdown(long=True).splitlines()) == 2 + len(df) + 2


def test_markdown_table():
    df = pd.DataFrame({"a": [1.23456, np.nan], "b": ["x", "y"]}, index=pd.Index([0.5, 2.0], name="t"))
    assert markdown_table(df, ".3g").splitlines() == [
        "| t | a | b |",
        "|---|---|---|",
        "| 0.5 | 1.23 | x |",
        "| 2 | nan | y |",
    ]
