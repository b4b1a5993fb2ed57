"""Runs tutorials/fractional_sde.py in smoke mode and checks its metrics and figures."""

import pytest

from tests.helpers import run_tutorial


@pytest.mark.slow
def test_tutorial_smoke(tmp_path):
    m, out = run_tutorial("fractional_sde.py", tmp_path)
    assert m["smoke"] is True
    assert len(m["hurst_true"]) == len(m["hurst_estimated"]) == 5
    # smoke sizes (40 ML steps): loose sanity bound; the full run is reported in the docs
    assert all(0.0 < h < 1.0 for h in m["hurst_estimated"])
    assert abs(m["hurst_estimated"][2] - 0.5) < 0.1
    assert 0.0 <= m["bridge_max_sd_rel_err"] < 0.5
    assert m["video_final_loss"] > 0
    pngs = {p.name for p in out.glob("*.png")}
    assert {"bridge.png", "hurst.png", "video_frames.png"} <= pngs
