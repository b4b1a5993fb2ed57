"""Encoders and decoders for the (Markovian) GP-VAE of :mod:`probdyn.models.mgpvae.model`.

An *encoder* maps one frame (``obs_shape``) to Gaussian sites ``(mean (L,), var (L,))``;
a *decoder* maps a latent ``z`` (L,) to the likelihood parameters of one frame
(``obs_shape``: Gaussian mean or Bernoulli logits). Any equinox Module / callable with those
signatures can be used instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["MLPEncoder", "CNNEncoder", "MLPDecoder", "CNNDecoder", "site_params"]

_MIN_VAR = 1e-3


def site_params(raw: Float[Array, "*batch two_L"]) -> tuple[Float[Array, "*batch L"], Float[Array, "*batch L"]]:
    """Split a network output into site mean and variance ``softplus(.) + 1e-3``."""
    L = raw.shape[-1] // 2
    return raw[..., :L], jax.nn.softplus(raw[..., L:]) + _MIN_VAR


class MLPEncoder(eqx.Module):
    """Vector frames (D,) -> sites; an MLP with ELU activations."""

    mlp: eqx.nn.MLP
    obs_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, obs_shape: Sequence[int], latent_dim: int, key: PRNGKeyArray, width: int = 64, depth: int = 2):
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.mlp = eqx.nn.MLP(math.prod(self.obs_shape), 2 * latent_dim, width, depth, activation=jax.nn.elu, key=key)

    def __call__(self, y):
        """Gaussian site parameters (mean, variance) of one frame ``y``."""
        return site_params(self.mlp(jnp.reshape(y, (-1,))))


class CNNEncoder(eqx.Module):
    """Image frames (H, W) -> sites: two stride-2 3x3 convolutions (16, 32 channels) + linear."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear
    obs_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, obs_shape: Sequence[int], latent_dim: int, key: PRNGKeyArray, channels: int = 16):
        if len(obs_shape) != 2:
            raise ValueError(f"CNNEncoder expects images (H, W), got obs_shape {tuple(obs_shape)}")
        self.obs_shape = tuple(int(s) for s in obs_shape)
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, channels, 3, stride=2, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, key=k2)
        h, w = self.obs_shape
        h, w = (h + 1) // 2, (w + 1) // 2
        h, w = (h + 1) // 2, (w + 1) // 2
        self.head = eqx.nn.Linear(2 * channels * h * w, 2 * latent_dim, key=k3)

    def __call__(self, y):
        """Gaussian site parameters (mean, variance) of one frame ``y``."""
        x = jax.nn.elu(self.conv1(y[None]))
        x = jax.nn.elu(self.conv2(x))
        return site_params(self.head(jnp.reshape(x, (-1,))))


class MLPDecoder(eqx.Module):
    """Latent (L,) -> frame parameters ``obs_shape`` (Gaussian mean or Bernoulli logits)."""

    mlp: eqx.nn.MLP
    obs_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, latent_dim: int, obs_shape: Sequence[int], key: PRNGKeyArray, width: int = 64, depth: int = 2):
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.mlp = eqx.nn.MLP(latent_dim, math.prod(self.obs_shape), width, depth, activation=jax.nn.elu, key=key)

    def __call__(self, z):
        """The decoder's output for one latent ``z``, shaped like a frame."""
        return jnp.reshape(self.mlp(z), self.obs_shape)


class CNNDecoder(eqx.Module):
    """Latent (L,) -> image parameters (H, W): a linear layer onto a (2C, ceil(H/4), ceil(W/4))
    grid, then two stride-2 4x4 transposed convolutions (2C -> C -> 1 channels, ELU between),
    cropped to (H, W). The mirror image of :class:`CNNEncoder`."""

    head: eqx.nn.Linear
    deconv1: eqx.nn.ConvTranspose2d
    deconv2: eqx.nn.ConvTranspose2d
    obs_shape: tuple[int, ...] = eqx.field(static=True)
    grid: tuple[int, int, int] = eqx.field(static=True)

    def __init__(self, latent_dim: int, obs_shape: Sequence[int], key: PRNGKeyArray, channels: int = 16):
        if len(obs_shape) != 2:
            raise ValueError(f"CNNDecoder expects images (H, W), got obs_shape {tuple(obs_shape)}")
        self.obs_shape = tuple(int(s) for s in obs_shape)
        h, w = ((s + 3) // 4 for s in self.obs_shape)
        self.grid = (2 * channels, h, w)
        k1, k2, k3 = jax.random.split(key, 3)
        self.head = eqx.nn.Linear(latent_dim, math.prod(self.grid), key=k1)
        self.deconv1 = eqx.nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1, key=k2)
        self.deconv2 = eqx.nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1, key=k3)

    def __call__(self, z):
        """The decoder's output for one latent ``z``, shaped like a frame."""
        x = jax.nn.elu(jnp.reshape(self.head(z), self.grid))
        x = jax.nn.elu(self.deconv1(x))
        x = self.deconv2(x)[0]
        H, W = self.obs_shape
        return x[:H, :W]
