"""Offline sequence datasets for GP-VAEs: rotating digit videos and pendulum sensor readings.

Both return a :class:`SequenceData` with irregular frame times and missing frames (NaN in
``frames``, ``mask`` False); ``clean`` holds the uncorrupted, complete sequences for
imputation metrics. Nothing is downloaded: the digits are scikit-learn's bundled 8x8 digits
and the pendulum is integrated with :func:`probdyn.sde.solve_ode` (diffrax backend).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["SequenceData", "rotating_digits", "pendulum_sensors"]


class SequenceData(NamedTuple):
    """frames (N, T, *obs) with NaN at missing frames; clean (N, T, *obs); times (N, T);
    mask (N, T) bool, True = observed; corrupted (N, T) bool; info: per-sequence parameters."""

    frames: np.ndarray
    clean: np.ndarray
    times: np.ndarray
    mask: np.ndarray
    corrupted: np.ndarray
    info: dict


def _check_common(num_sequences, num_frames, missing_rate, corrupt_rate):
    if int(num_sequences) < 1 or int(num_frames) < 2:
        raise ValueError(f"need num_sequences >= 1 and num_frames >= 2, got {num_sequences}, {num_frames}")
    for name, r in (("missing_rate", missing_rate), ("corrupt_rate", corrupt_rate)):
        if not 0.0 <= float(r) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {r}")


def _times_and_mask(rng, N, T, mean_dt, irregular, missing_rate):
    gaps = rng.uniform(0.5 * mean_dt, 1.5 * mean_dt, (N, T - 1)) if irregular else np.full((N, T - 1), mean_dt)
    times = np.concatenate([np.zeros((N, 1)), np.cumsum(gaps, axis=1)], axis=1)
    mask = rng.uniform(size=(N, T)) >= missing_rate
    empty = ~mask.any(axis=1)
    mask[empty, rng.integers(0, T, int(empty.sum()))] = True  # at least one observed frame
    return times, mask


def rotating_digits(
    num_sequences: int = 100,
    num_frames: int = 20,
    size: int = 16,
    missing_rate: float = 0.5,
    corrupt_rate: float = 0.0,
    irregular: bool = True,
    speed: tuple[float, float] = (0.15, 0.45),
    mean_dt: float = 1.0,
    digits: tuple[int, ...] | None = None,
    seed: int = 0,
) -> SequenceData:
    """Videos of a rotating scikit-learn digit (upsampled to ``size`` x ``size``, values in [0, 1]).

    Each sequence picks a digit image, a start angle and an angular speed ``|w|`` uniform in
    ``speed`` (rad per time unit, random sign); frame times have gaps uniform in
    ``[0.5, 1.5] * mean_dt`` (or exactly ``mean_dt``). Frames are missing with probability
    ``missing_rate`` and observed frames are corrupted (half the pixels replaced by uniform
    noise) with probability ``corrupt_rate``. ``info``: ``label``, ``speed``, ``angle0``.
    """
    from scipy import ndimage
    from sklearn.datasets import load_digits

    _check_common(num_sequences, num_frames, missing_rate, corrupt_rate)
    if int(size) < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    N, T = int(num_sequences), int(num_frames)
    d: Any = load_digits()  # a Bunch (sklearn annotates the return_X_y tuple too)
    keep = np.ones(len(d.target), bool) if digits is None else np.isin(d.target, digits)
    if not keep.any():
        raise ValueError(f"no digits among {digits}")
    images, labels = d.images[keep] / 16.0, d.target[keep]
    pick = rng.integers(0, len(images), N)
    w = rng.uniform(speed[0], speed[1], N) * rng.choice([-1.0, 1.0], N)
    a0 = rng.uniform(0, 2 * np.pi, N)
    times, mask = _times_and_mask(rng, N, T, mean_dt, irregular, missing_rate)
    clean = np.empty((N, T, size, size))
    for i in range(N):
        base = np.clip(np.asarray(ndimage.zoom(images[pick[i]], size / 8.0, order=1)), 0.0, 1.0)
        for t in range(T):
            ang = np.degrees(a0[i] + w[i] * times[i, t])
            clean[i, t] = np.clip(ndimage.rotate(base, ang, reshape=False, order=1, cval=0.0), 0.0, 1.0)
    frames = clean.copy()
    corrupted = mask & (rng.uniform(size=(N, T)) < corrupt_rate)
    for i, t in zip(*np.nonzero(corrupted)):
        hit = rng.uniform(size=(size, size)) < 0.5
        frames[i, t][hit] = rng.uniform(size=int(hit.sum()))
    frames[~mask] = np.nan
    return SequenceData(frames, clean, times, mask, corrupted, {"label": labels[pick], "speed": w, "angle0": a0})


def pendulum_sensors(
    num_sequences: int = 100,
    num_frames: int = 50,
    num_sensors: int = 12,
    missing_rate: float = 0.5,
    corrupt_rate: float = 0.0,
    noise_std: float = 0.05,
    irregular: bool = True,
    mean_dt: float = 0.2,
    seed: int = 0,
) -> SequenceData:
    r"""Damped pendulum :math:`\ddot\theta = -\omega_0^2 \sin\theta - c\dot\theta` seen by sensors.

    ``num_sensors`` sensors sit evenly on the unit circle around the pivot at angles
    :math:`\phi_j`; each reads :math:`\exp(-|p - s_j|^2 / (2 \cdot 0.35^2))` of the bob
    position :math:`p = (\sin\theta, -\cos\theta)`, plus N(0, ``noise_std``^2) noise (``clean``
    is noiseless). Per sequence: :math:`\omega_0 \sim U(2, 3)`, :math:`c \sim U(0.05, 0.3)`,
    :math:`\theta_0 \sim U(-2.5, 2.5)`, :math:`\dot\theta_0 \sim N(0, 1)`. Corrupted frames get
    large (sd 1) noise. ``info``: ``omega0``, ``damping``, ``states`` (N, T, 2).
    """
    import jax
    import jax.numpy as jnp

    from probdyn.sde import solve_ode

    _check_common(num_sequences, num_frames, missing_rate, corrupt_rate)
    if int(num_sensors) < 1 or not noise_std >= 0:
        raise ValueError(f"need num_sensors >= 1 and noise_std >= 0, got {num_sensors}, {noise_std}")
    rng = np.random.default_rng(seed)
    N, T, D = int(num_sequences), int(num_frames), int(num_sensors)
    w0, c = rng.uniform(2.0, 3.0, N), rng.uniform(0.05, 0.3, N)
    x0 = np.stack([rng.uniform(-2.5, 2.5, N), rng.normal(0.0, 1.0, N)], axis=1)
    times, mask = _times_and_mask(rng, N, T, mean_dt, irregular, missing_rate)

    def one(x0, w0, c, t):
        def drift(x, _t):
            return jnp.stack([x[1], -(w0**2) * jnp.sin(x[0]) - c * x[1]])

        return solve_ode(drift, x0, t, backend="diffrax", rtol=1e-7, atol=1e-7, max_steps=100_000, count_failures=False)

    states, ok = jax.jit(jax.vmap(one))(x0, w0, c, times)
    if not np.all(np.asarray(ok)):
        raise RuntimeError(f"the pendulum ODE solve failed for sequences {np.flatnonzero(~np.asarray(ok)).tolist()}")
    states = np.asarray(states)
    phi = np.linspace(-np.pi, np.pi, D, endpoint=False)
    sens = np.stack([np.sin(phi), -np.cos(phi)], axis=1)  # (D, 2)
    pos = np.stack([np.sin(states[..., 0]), -np.cos(states[..., 0])], axis=-1)  # (N, T, 2)
    clean = np.exp(-np.sum((pos[:, :, None, :] - sens) ** 2, axis=-1) / (2 * 0.35**2))
    frames = clean + noise_std * rng.normal(size=clean.shape)
    corrupted = mask & (rng.uniform(size=(N, T)) < corrupt_rate)
    frames[corrupted] += rng.normal(size=(int(corrupted.sum()), D))
    frames[~mask] = np.nan
    return SequenceData(frames, clean, times, mask, corrupted, {"omega0": w0, "damping": c, "states": states})
