"""Four splits of the "Variational Gaussian Process Diffusion Processes" benchmark data
(Verma, Adam & Solin, AISTATS 2024), bundled; no download.

``vgpdp_split(process, split)`` returns one split as a dict of NumPy arrays: ``sde`` (name),
``decay``, ``Q`` (diffusion spectral density), ``x0``, ``sigma`` (observation noise sd),
``time_grid`` (F,) and ``latent_process`` (F, 1) (the simulated path on a fine grid),
``observation_grid`` (32,) / ``observations`` (32, 1) for training and ``test_grid`` (8,) /
``test_observations`` (8, 1).

Bundled: ``("linear", 0)`` (Ornstein–Uhlenbeck, drift ``-decay x``, Q = 1, T = 10, noise sd
0.1), ``("dw", 0)`` and ``("dw", 4)`` (double well, drift ``4 x (1 - x^2)``, Q = 1, T = 20,
noise sd 0.01; the file's ``decay`` is not this drift's parameter; split 4's smoothing
posterior is strongly bimodal between observations) and ``("benes", 2)`` (Beneš, drift
``tanh x``, Q = 1, T = 8, noise sd 0.1, x0 = 0; its smoothing posterior is close to
Gaussian). The other processes and splits of the benchmark are not shipped
(``benchmarks/sparse_gp_sde.py --data DIR`` reads them).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["VGPDP_BUNDLED", "vgpdp_split"]

VGPDP_BUNDLED = {
    ("linear", 0): "linear_15_0.npz",
    ("dw", 0): "dw_3_0.npz",
    ("dw", 4): "dw_3_4.npz",
    ("benes", 2): "benes_7_2.npz",
}


def vgpdp_split(process: str, split: int = 0) -> dict[str, np.ndarray]:
    """One bundled split (see the module docstring); ``ValueError`` naming what is bundled
    for any other ``(process, split)``."""
    name = VGPDP_BUNDLED.get((process, split))
    if name is None:
        raise ValueError(f"vgpdp split {(process, split)!r} is not bundled; bundled: {sorted(VGPDP_BUNDLED)}")
    with resources.files("probdyn.datasets").joinpath("vgpdp", name).open("rb") as f, np.load(f) as d:
        return {k: d[k] for k in d.files}
