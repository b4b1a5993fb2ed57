"""probdyn.datasets.vgpdp: the four bundled splits of the Verma, Adam & Solin (2024) data."""

import hashlib

import numpy as np
import pytest

from probdyn.datasets import VGPDP_BUNDLED, vgpdp_split
from tests.helpers import ROOT

# sha256 of the benchmark's files linear/15/0.npz, dw/3/0.npz, dw/3/4.npz and benes/7/2.npz the
# copies were taken from
SHA256 = {
    "linear_15_0.npz": "47309b850619fef51ce31041f730d15592b05f9290a7e66e3bd9dcf70fafea9b",
    "dw_3_0.npz": "92cc3e8c8b7f15951d77dbf06163ac8ed8bb7163db4ff54f14e0de127e55ab44",
    "dw_3_4.npz": "326a40a16800271a5883065da769864ea3d59e461f4450aef6f9dd064b9cb8ed",
    "benes_7_2.npz": "634e9c5e808620e70075b293fde70f52027d4d47a3c9cc8663a153a5ca578a69",
}


def test_bundled_files_are_the_benchmark_files():
    for name in VGPDP_BUNDLED.values():
        raw = (ROOT / "probdyn" / "datasets" / "vgpdp" / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == SHA256[name], name


@pytest.mark.parametrize(
    ("process", "split", "T", "sigma", "frames"),
    [
        ("linear", 0, 10.0, 0.1, 1001),
        ("dw", 0, 20.0, 0.01, 2002),
        ("dw", 4, 20.0, 0.01, 2002),
        ("benes", 2, 8.0, 0.1, 801),
    ],
)
def test_split_contents(process, split, T, sigma, frames):
    """The fields the data note documents: 32 training and 8 test points inside [0, T], noise
    sd, the latent path on its fine grid; the test points are disjoint from the training ones
    and the observations lie within a few noise sds of the latent path."""
    d = vgpdp_split(process, split)
    assert d["observations"].shape == (32, 1) and d["test_observations"].shape == (8, 1)
    assert d["latent_process"].shape == (frames, 1) and d["time_grid"].shape == (frames,)
    assert float(d["sigma"]) == sigma and float(d["Q"]) == 1.0
    np.testing.assert_allclose(d["time_grid"][[0, -1]], [0.0, T], atol=0.02)
    assert not set(d["observation_grid"].tolist()) & set(d["test_grid"].tolist())
    latent = np.interp(d["observation_grid"], d["time_grid"], d["latent_process"][:, 0])
    # the path is on a grid of step ~0.01, so interpolation adds its own small error
    assert np.max(np.abs(d["observations"][:, 0] - latent)) < 5 * sigma + 0.1


def test_unbundled_split_is_a_clear_error():
    with pytest.raises(ValueError, match="not bundled"):
        vgpdp_split("gps", 0)
