"""Latent video model: encoder -> latent fractional SDE -> decoder (moving digits).

Frames ``o_{1:T}`` (``T, S, S``) are encoded per frame by an MLP and summarised by a GRU run
backwards in time (Li et al. 2020), giving a context ``c_i`` that has seen frames ``i..T``;
``c_1`` parameterises the amortised ``q(z_0)`` (diagonal Gaussian over ``(x_0, Y_0)``) and the
control :class:`~probdyn.models.fractional.neural_sde.MLPControl` reads the context of the next
frame. The latent ``x`` (``d``) follows the MA-fBM neural SDE of
:class:`~probdyn.models.fractional.neural_sde.FractionalSDE`, and a decoder MLP maps ``x_t`` to
Bernoulli logits of the frame. Training maximises the ELBO of
:func:`~probdyn.models.fractional.neural_sde.elbo` over minibatches with
:func:`probdyn.inference.optimize.fit`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from probdyn.models.fractional.neural_sde import FractionalSDE, MLPControl, elbo, simulate_augmented
from probdyn.ssm import check_times

__all__ = ["BernoulliDecoder", "LatentVideoModel", "video_elbo", "fit_video", "predict_frames"]


class BernoulliDecoder(eqx.Module):
    """``log p(frames | xs) = sum Bernoulli(frame | sigmoid(MLP(x_t)))`` (targets in [0, 1])."""

    mlp: eqx.nn.MLP
    size: int = eqx.field(static=True)

    def __init__(self, latent_dim: int, size: int, key, width: int = 128, dtype=jnp.float32):
        self.mlp = eqx.nn.MLP(latent_dim, size * size, width, 2, activation=jax.nn.softplus, key=key, dtype=dtype)
        self.size = int(size)

    def logits(self, xs: Float[Array, "T d"]) -> Float[Array, "T S S"]:
        """Pixel logits of the frames decoded from latents ``xs`` (T, d), shape (T, S, S)."""
        return jax.vmap(self.mlp)(xs).reshape(xs.shape[0], self.size, self.size)

    def __call__(self, xs, frames):
        """``log p(frames | xs)`` summed over frames and pixels (Bernoulli)."""
        lg = self.logits(xs)
        return jnp.sum(frames * jax.nn.log_sigmoid(lg) + (1 - frames) * jax.nn.log_sigmoid(-lg))


class LatentVideoModel(eqx.Module):
    """Encoder (frame MLP + backward GRU) -> :class:`FractionalSDE` -> :class:`BernoulliDecoder`."""

    sde: FractionalSDE
    frame_enc: eqx.nn.MLP
    gru: eqx.nn.GRUCell
    q0_head: eqx.nn.Linear

    def __init__(
        self,
        key: PRNGKeyArray,
        size: int = 16,
        latent_dim: int = 4,
        context_dim: int = 16,
        num_components: int = 3,
        hurst: float = 0.5,
        gamma_max: float = 20.0,
        horizon: float = 1.0,
        kind: str = "type1",
        width: int = 64,
        learn_hurst: bool = True,
        dtype=jnp.float32,
    ):
        ks = jax.random.split(key, 6)
        d, K = int(latent_dim), int(num_components)
        drift = eqx.nn.MLP(d, d, width, 2, activation=jax.nn.softplus, key=ks[0], dtype=dtype)
        control = MLPControl(d, d * K, context_dim, ks[1], width=width, dtype=dtype)
        dec = BernoulliDecoder(d, size, ks[2], width=2 * width, dtype=dtype)
        self.sde = FractionalSDE(
            _TimeFree(drift),
            control,
            dec,
            d,
            hurst=hurst,
            num_components=K,
            gamma_max=gamma_max,
            horizon=horizon,
            sigma=0.5,
            kind=kind,
            learn_hurst=learn_hurst,
            dtype=dtype,
        )
        self.frame_enc = eqx.nn.MLP(
            size * size, context_dim, width, 1, activation=jax.nn.softplus, key=ks[3], dtype=dtype
        )
        self.gru = eqx.nn.GRUCell(context_dim, context_dim, key=ks[4], dtype=dtype)
        n0 = self.sde.q0_mean.shape[0]
        self.q0_head = eqx.nn.Linear(context_dim, 2 * n0, key=ks[5], dtype=dtype)

    def encode(self, frames: Float[Array, "T S S"]) -> Float[Array, "T c"]:
        """Backward-GRU context ``(T, c)``: row ``i`` summarises frames ``i..T-1``."""
        feats = jax.vmap(self.frame_enc)(frames.reshape(frames.shape[0], -1))

        def step(h, f):
            h = self.gru(f, h)
            return h, h

        h0 = jnp.zeros(feats.shape[1], feats.dtype)
        _, hs = jax.lax.scan(step, h0, feats, reverse=True)
        return hs

    def conditioned(self, ctx: Float[Array, "T c"]) -> FractionalSDE:
        """The SDE with the amortised ``q(z_0)`` of context ``ctx[0]`` (diagonal covariance)."""
        out = self.q0_head(ctx[0])
        n0 = out.shape[0] // 2
        prior_sd = jnp.sqrt(jnp.diag(self.sde.prior_initial_cov()))
        mean = out[:n0] * prior_sd
        chol = jnp.diag(prior_sd * jnp.exp(out[n0:] - 1.0))
        return eqx.tree_at(lambda s: (s.q0_mean, s.q0_chol), self.sde, (mean, chol))


class _TimeFree(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, x, t):
        return self.mlp(x)


def video_elbo(
    model: LatentVideoModel, key: PRNGKeyArray, times, frames, num_samples: int = 1, num_substeps: int = 1
) -> Float[Array, ""]:
    """ELBO of one video ``frames`` (T, S, S) at ``times`` (T,)."""
    ctx = model.encode(frames)
    sde = model.conditioned(ctx)
    return elbo(sde, key, times, frames, (times, ctx), num_samples, num_substeps)


def fit_video(
    model: LatentVideoModel,
    key: PRNGKeyArray,
    times,
    frames,
    num_steps: int,
    batch_size: int = 16,
    optimizer=1e-3,
    num_substeps: int = 1,
    **fit_kwargs,
):
    """Train on videos ``frames`` (N, T, S, S) with minibatches; returns ``FitResult``.

    The loss is the mean negative ELBO per frame.
    """
    from probdyn.inference.optimize import fit

    times = jnp.asarray(check_times(times))
    frames = jnp.asarray(frames)
    if frames.ndim != 4 or frames.shape[1] != times.shape[0]:
        raise ValueError(f"frames must have shape (N, {times.shape[0]}, S, S), got {frames.shape}")
    N, T = frames.shape[:2]
    bs = min(int(batch_size), N)

    def batches(k, i):
        return frames[jax.random.choice(k, N, (bs,), replace=False)]

    def loss(m, k, batch):
        ks = jax.random.split(k, batch.shape[0])
        vals = jax.vmap(lambda f, kk: video_elbo(m, kk, times, f, 1, num_substeps))(batch, ks)
        return -jnp.mean(vals) / T

    fit_kwargs.setdefault("progress_bar", False)
    return fit(loss, model, key, num_steps, optimizer, batches=batches, **fit_kwargs)


def predict_frames(
    model: LatentVideoModel,
    key: PRNGKeyArray,
    times,
    frames,
    num_context: int,
    num_samples: int = 1,
    num_substeps: int = 1,
) -> Float[Array, "num_samples T S S"]:
    """Frame probabilities ``(num_samples, T, S, S)``: posterior on the first ``num_context``
    frames (encoder sees only those), then the prior SDE (control off) beyond them."""
    times = jnp.asarray(check_times(times))
    nc = int(num_context)
    if not 1 <= nc <= times.shape[0]:
        raise ValueError(f"num_context must be in [1, {times.shape[0]}], got {num_context}")
    ctx = model.encode(frames[:nc])
    sde = model.conditioned(ctx)
    k0, k1, k2 = jax.random.split(key, 3)
    s0 = sde.sample_initial(k0, num_samples)
    tc, tf = times[:nc], times[nc - 1 :]

    def one(s, ka, kb):
        if nc > 1:
            a = simulate_augmented(sde, s, tc, ka, (tc, ctx), True, "euler", num_substeps, False, None)
        else:
            a = s[None]
        if tf.shape[0] > 1:
            b = simulate_augmented(sde, a[-1], tf, kb, None, False, "euler", num_substeps, False, None)
            a = jnp.concatenate([a, b[1:]], axis=0)
        return jax.nn.sigmoid(sde.likelihood.logits(a[:, : sde.state_dim]))

    return jax.vmap(one)(s0, jax.random.split(k1, num_samples), jax.random.split(k2, num_samples))
