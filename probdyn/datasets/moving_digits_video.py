"""Stochastic moving digits: scikit-learn's bundled 8x8 digits moving on a canvas.

Generated offline (no downloads): each sequence takes one digit image from
``sklearn.datasets.load_digits`` and moves it on a ``size x size`` canvas along a random
path ``p(t) = fold(p_0 + scale * B^H(t))`` per coordinate, where ``B^H`` is an *exact*
fractional Brownian motion (:func:`probdyn.sde.fractional.sample_fbm`) and ``fold``
reflects at the canvas walls (triangle wave), so the digit bounces. Sub-pixel positions are
rendered by bilinear interpolation of the shifted image.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["MovingDigits", "moving_digits"]


class MovingDigits(NamedTuple):
    """frames (N, T, size, size) in [0, 1]; positions (N, T, 2) (top-left corner, pixels);
    times (T,) in [0, duration]; labels (N,) digit classes; hurst (float)."""

    frames: np.ndarray
    positions: np.ndarray
    times: np.ndarray
    labels: np.ndarray
    hurst: float


def _fold(x, length):
    """Reflect ``x`` into ``[0, length]`` (triangle wave of period ``2 length``)."""
    y = np.mod(x, 2 * length)
    return np.where(y > length, 2 * length - y, y)


def _render(img, pos, size):
    """Place ``img`` (8, 8) with top-left corner at sub-pixel ``pos`` (2,) on a canvas."""
    canvas = np.zeros((size + 1, size + 1))
    r0, c0 = np.floor(pos).astype(int)
    fr, fc = pos - np.floor(pos)
    h, w = img.shape
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            canvas[r0 + dr : r0 + dr + h, c0 + dc : c0 + dc + w] += wr * wc * img
    return canvas[:size, :size]


def moving_digits(
    num_sequences: int = 64,
    num_frames: int = 16,
    size: int = 16,
    hurst: float = 0.5,
    speed: float = 1.0,
    duration: float = 1.0,
    digits=None,
    seed: int = 0,
) -> MovingDigits:
    """Generate stochastic moving-digit videos.

    Args:
        num_sequences: ``N``; num_frames: ``T`` (frames at ``linspace(0, duration, T)``).
        size: canvas side (>= 9; the digit is 8x8).
        hurst: Hurst index of the fBM driving the positions, in (0, 1).
        speed: fBM scale in canvas widths per unit time**H.
        digits: optional iterable of digit classes to use (default all 0..9).
        seed: numpy/JAX seed; the output is a deterministic function of the arguments.
    """
    import jax
    from sklearn.datasets import load_digits

    from probdyn.sde.fractional import sample_fbm

    if int(size) < 9:
        raise ValueError(f"size must be >= 9 (digits are 8x8), got {size}")
    if not 0.0 < float(hurst) < 1.0:
        raise ValueError(f"hurst must lie in (0, 1), got {hurst}")
    if int(num_sequences) < 1 or int(num_frames) < 2:
        raise ValueError("need num_sequences >= 1 and num_frames >= 2")
    if float(duration) <= 0 or float(speed) < 0:
        raise ValueError("duration must be positive and speed non-negative")
    N, T, size = int(num_sequences), int(num_frames), int(size)
    data: Any = load_digits()  # a Bunch (sklearn annotates the return_X_y tuple too)
    images, labels = data.images / 16.0, data.target
    if digits is not None:
        keep = np.isin(labels, np.asarray(list(digits)))
        if not keep.any():
            raise ValueError(f"no digits of classes {digits}")
        images, labels = images[keep], labels[keep]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(images), N)
    times = np.linspace(0.0, float(duration), T)
    length = size - 8.0
    fbm = np.asarray(sample_fbm(jax.random.PRNGKey(seed), times, float(hurst), 2 * N), dtype=float)
    start = rng.uniform(0.0, length, (N, 2))
    raw = start[:, None, :] + speed * length * fbm.reshape(N, 2, T).transpose(0, 2, 1)
    pos = _fold(raw, length)
    frames = np.stack([np.stack([_render(images[pick[n]], pos[n, t], size) for t in range(T)]) for n in range(N)])
    return MovingDigits(np.clip(frames, 0.0, 1.0).astype(np.float32), pos, times, labels[pick], float(hurst))
