"""probdyn.datasets.series: the embedded series (against the sources they come from) and the
checked CSV reader."""

import numpy as np
import pytest
import statsmodels.api as sm

from probdyn.datasets import load_series, lynx_hare, read_csv_series


def test_embedded_series():
    t, y, names = load_series("nile")
    nile = sm.datasets.nile.load_pandas().data
    np.testing.assert_array_equal(t, nile["year"])
    np.testing.assert_array_equal(y[:, 0], nile["volume"])
    assert names == ["volume"]
    t, y, names = load_series("lynx_hare")
    d = lynx_hare()
    assert names == ["hare", "lynx"] and y.shape == (21, 2) and t[0] == 0.0
    np.testing.assert_array_equal(y[0], d.y_init)
    np.testing.assert_array_equal(y[1:], d.y)
    t, y, _ = load_series("co2")
    assert np.all(np.diff(t) > 0) and y.shape == (t.size, 1) and 1958 <= t[0] < 1959
    with pytest.raises(ValueError, match="unknown dataset 'x'"):
        load_series("x")


def test_read_csv_series(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("b,time,a\n1,0.5,2\n,1.5,3\n3,2.0,\n4,3.0,5\n5,4.0,6\n")
    t, y, names = read_csv_series(p, time_col="time", columns="a, b")
    np.testing.assert_array_equal(t, [0.5, 1.5, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(y, [[2, 1], [3, np.nan], [np.nan, 3], [5, 4], [6, 5]])
    assert names == ["a", "b"]
    t, y, names = read_csv_series(p, time_col="time")
    assert names == ["b", "a"]
    with pytest.raises(ValueError, match="too few points: 5 observed rows, need at least 6"):
        read_csv_series(p, time_col="time", min_points=6)
    with pytest.raises(FileNotFoundError):
        read_csv_series(tmp_path / "missing.csv")
    p.write_text("t,y\n0,1\n1,inf\n")
    with pytest.raises(ValueError, match="finite"):
        read_csv_series(p)
    p.write_text("t,y\n0,1\n0,2\n")
    with pytest.raises(ValueError, match=r"strictly increasing \(rows 2 and 3"):
        read_csv_series(p)
