"""The exact OU / AR(1) equivalence check of the comparison (:func:`ou_ar1_check`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from probdyn.inference import gaussian_filters as gf
from probdyn.inference import kalman
from probdyn.inference.gaussian_filters import observations as obs_lib
from probdyn.sde import SDE

__all__ = ["ou_ar1_check"]


def ou_ar1_check(y, dt: float, lam, s, noise_var) -> dict:
    """Log-likelihoods of an OU process and of its exact AR(1) counterpart on the same data.

    OU ``dx = -lam x dt + s sqrt(2 lam) dW`` (stationary variance ``s^2``) observed at spacing
    ``dt`` with noise variance ``noise_var`` is exactly the AR(1) ``x_{k+1} = a x_k + q_k`` with
    ``a = exp(-lam dt)``, ``q ~ N(0, s^2 (1 - a^2))``, ``x_0 ~ N(0, s^2)``. Computed three ways:
    the Kalman engine on the *continuous* model (Matern-1/2 kernel -> exact discretisation), the
    engine on the AR(1) ``LinearGaussianSSM``, and the continuous–discrete filter
    ``gf.filter`` (``propagation="linearised"``, exact for linear SDEs) vs ``gf.discrete_filter``.

    Returns dict of the log-likelihoods (arrays over the broadcast parameter grid) and
    ``max_abs_diff`` (largest |OU - AR(1)| of all pairs).
    """
    from probdyn import kernels
    from probdyn.ssm import LinearGaussianSSM, discretise

    y = jnp.asarray(y)
    y = y[:, None] if y.ndim == 1 else y
    T = y.shape[0]
    times = jnp.arange(T, dtype=y.dtype) * dt
    lam, s, noise_var = (jnp.atleast_1d(jnp.asarray(v, y.dtype)) for v in (lam, s, noise_var))
    lam, s, noise_var = jnp.broadcast_arrays(lam, s, noise_var)

    def one(lam, s, r):
        ou = discretise(kernels.Matern12(1.0 / lam, s**2).sde(), times, emission_cov=r * jnp.eye(1, dtype=y.dtype))
        ll_ou = kalman.log_likelihood(ou, y)
        a = jnp.exp(-lam * dt)
        ar = LinearGaussianSSM(
            jnp.zeros(1, y.dtype),
            s**2 * jnp.eye(1, dtype=y.dtype),
            a * jnp.eye(1, dtype=y.dtype),
            s**2 * (1 - a**2) * jnp.eye(1, dtype=y.dtype),
            jnp.eye(1, dtype=y.dtype),
            r * jnp.eye(1, dtype=y.dtype),
        )
        ll_ar = kalman.log_likelihood(ar, y)
        sde = SDE(lambda x, t: -lam * x, s * jnp.sqrt(2 * lam) * jnp.ones(1, y.dtype), 1)
        ob = obs_lib.LinearGaussian(jnp.eye(1, dtype=y.dtype), r * jnp.eye(1, dtype=y.dtype))
        m0, P0 = jnp.zeros(1, y.dtype), s**2 * jnp.eye(1, dtype=y.dtype)
        ll_cd = gf.filter(sde, ob, times, y, m0, P0, num_substeps=1, propagation="linearised").log_likelihood
        ll_df = gf.discrete_filter(
            lambda x, k: a * x, s**2 * (1 - a**2) * jnp.eye(1, dtype=y.dtype), ob, y, m0, P0
        ).log_likelihood
        return ll_ou, ll_ar, ll_cd, ll_df

    ll_ou, ll_ar, ll_cd, ll_df = jax.jit(jax.vmap(one))(lam, s, noise_var)
    diffs = [jnp.abs(a - b) for a, b in ((ll_ou, ll_ar), (ll_cd, ll_df), (ll_cd, ll_ar))]
    return dict(
        ou_kalman=np.asarray(ll_ou),
        ar1_kalman=np.asarray(ll_ar),
        ou_filter=np.asarray(ll_cd),
        ar1_filter=np.asarray(ll_df),
        max_abs_diff=float(max(jnp.max(d) for d in diffs)),
    )
