"""Exact observations (``R = 0``) with rank-one process noise: both schedules against
statsmodels and against each other.

The model is statsmodels' ARMA(2,1) in its standard state-space form (``SARIMAX``:
``x_t = [y_t, phi_2 y_{t-1} + theta eps_t]``, ``H = [1, 0]``, ``R = 0``,
``Q = sigma^2 [1, theta] [1, theta]^T``), ~15 % missing values. Over long observed
stretches the filtered covariance of the second state shrinks like ``theta^(2k)`` towards
zero, the predicted covariance becomes singular to working precision, and an RTS gain
computed from it would amplify rounding by ``1/theta`` per step (the defect this guards:
smoothed means off by 1e-3 to 3e-2, covariances by O(1), before the pivot rule of
``backward_kernels``, the square-root parallel filter and the parallel smoother's adjoint
form, whose maps contract where products of RTS gains grow by ``1/theta`` per step).
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from probdyn import LinearGaussianSSM  # noqa: E402
from probdyn.inference import kalman  # noqa: E402

PARAMS = (0.6, -0.3, 0.4, 0.8)  # ar1, ar2, ma1, sigma2


def _arma_case(T, seed=0):
    import statsmodels.api as sm

    ar1, ar2, ma1, s2 = PARAMS
    rng = np.random.default_rng(seed)
    y = sm.tsa.arma_generate_sample([1, -ar1, -ar2], [1, ma1], T, scale=np.sqrt(s2), distrvs=rng.standard_normal)
    y[rng.uniform(size=T) < 0.15] = np.nan
    mod = sm.tsa.statespace.SARIMAX(y, order=(2, 0, 1), trend="n")
    res = mod.smooth(np.array(PARAMS))
    fr = res.filter_results
    sel = mod.ssm["selection"].reshape(2, 1)
    ssm = dict(
        initial_mean=fr.initial_state,
        initial_cov=fr.initial_state_cov,
        transition_matrix=mod.ssm["transition"].reshape(2, 2),
        transition_cov=sel @ sel.T * s2,
        emission_matrix=mod.ssm["design"].reshape(1, 2),
        emission_cov=np.zeros((1, 1)),
    )
    assert np.all(mod.ssm["obs_cov"] == 0)
    ref = dict(
        ll=res.llf,
        fm=fr.filtered_state.T,
        fc=fr.filtered_state_cov.transpose(2, 0, 1),
        sm=res.smoothed_state.T,
        sc=res.smoothed_state_cov.transpose(2, 0, 1),
    )
    return ssm, y, ref


def _run(ssm, y, dtype, parallel):
    m = LinearGaussianSSM(**{k: jnp.asarray(v, dtype) for k, v in ssm.items()})
    s = kalman.smoother(m, jnp.asarray(y, dtype)[:, None], parallel=parallel)
    return dict(
        ll=float(s.log_likelihood),
        fm=np.asarray(s.filtered.mean, float),
        fc=np.asarray(s.filtered.cov, float),
        sm=np.asarray(s.mean, float),
        sc=np.asarray(s.cov, float),
    )


def _dense_general(A, Q, H, R, m0, P0, y):
    """Smoothed means and marginal covariances of a time-invariant model with NaN-missing
    entries of a multivariate ``y`` (T, p), by dense joint-Gaussian conditioning."""
    T, p = y.shape
    d = A.shape[0]
    P = [P0]
    for _ in range(T - 1):
        P.append(A @ P[-1] @ A.T + Q)
    S = np.zeros((T * d, T * d))
    for t in range(T):
        M = P[t]
        for u in range(t, T):
            S[u * d : (u + 1) * d, t * d : (t + 1) * d] = M
            S[t * d : (t + 1) * d, u * d : (u + 1) * d] = M.T
            M = A @ M
    Hb, Rb = np.kron(np.eye(T), H), np.kron(np.eye(T), R)
    obs = np.flatnonzero(~np.isnan(y.ravel()))
    G = Hb[obs]
    mu = np.tile(m0, T)
    C = G @ S @ G.T + Rb[np.ix_(obs, obs)]
    K = np.linalg.solve(C, G @ S).T
    m, V = mu + K @ (y.ravel()[obs] - G @ mu), S - K @ G @ S
    return m.reshape(T, d), np.stack([V[t * d : (t + 1) * d, t * d : (t + 1) * d] for t in range(T)])


def test_exact_observations_match_dense_conditioning():
    """T = 300: both schedules' smoothed moments against dense joint-Gaussian algebra."""
    ssm, y, ref = _arma_case(300)
    dm, dc = _dense_general(
        ssm["transition_matrix"],
        ssm["transition_cov"],
        ssm["emission_matrix"],
        ssm["emission_cov"],
        ssm["initial_mean"],
        ssm["initial_cov"],
        y[:, None],
    )
    np.testing.assert_allclose(ref["sm"], dm, atol=1e-8)  # the two references agree
    for parallel in (False, True):
        out = _run(ssm, y, jnp.float64, parallel)
        np.testing.assert_allclose(out["sm"], dm, atol=1e-7, err_msg=f"parallel={parallel}")
        np.testing.assert_allclose(out["sc"], dc, atol=1e-12, err_msg=f"parallel={parallel}")


@pytest.mark.parametrize(
    "T,dtype",
    [
        (300, "float64"),
        pytest.param(300, "float32", marks=pytest.mark.slow),
        pytest.param(3000, "float64", marks=pytest.mark.slow),
        pytest.param(3000, "float32", marks=pytest.mark.slow),
    ],
)
def test_exact_observations_parallel_sequential_statsmodels(T, dtype):
    """Log-likelihood, filtered and smoothed moments of both schedules against statsmodels.

    float64: statsmodels' own precision (~3e-10 against dense algebra) and the sequential
    smoother's (2e-8 on means of scale ~1.5 at T = 3000: its RTS gains grow by 1/theta =
    2.5 per step over observed stretches and amplify rounding; the parallel smoother's
    adjoint form does not, 9e-10). float32 (eps32 = 1.2e-7, measured worst of T = 300,
    3000): log-likelihood (~ -T) 3e-4 absolute over T = 3000 steps (2e-5 relative),
    filtered moments 6e-7, smoothed means 6e-4 sequential (the same amplification) and
    6e-7 parallel, smoothed covariances 1.1e-6 sequential and 3.4e-7 parallel.
    """
    ssm, y, ref = _arma_case(T, seed=T)
    seq, par = (_run(ssm, y, jnp.dtype(dtype), p) for p in (False, True))
    if dtype == "float64":
        tol = dict(ll=1e-9, f=2e-9, c=1e-9, sequential=1e-7, parallel=1e-8)
    else:
        tol = dict(ll=2e-5, f=2e-6, c=5e-6, sequential=2e-3, parallel=3e-6)
    for name, out in (("sequential", seq), ("parallel", par)):
        np.testing.assert_allclose(out["ll"], ref["ll"], rtol=tol["ll"], err_msg=name)
        for k in ("fm", "fc", "sc"):
            np.testing.assert_allclose(out[k], ref[k], atol=tol["f" if k[0] == "f" else "c"], err_msg=f"{name} {k}")
        np.testing.assert_allclose(out["sm"], ref["sm"], atol=tol[name], err_msg=f"{name} sm")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_partly_exact_multivariate_observations_match_dense(dtype):
    """Three states, rank-two process noise, two observed coordinates of which one is exact
    (``R = diag(0, 0.3)``), missing entries one coordinate at a time: both schedules'
    smoothed moments against dense conditioning. Measured worst (means of scale ~2.4,
    covariances ~0.8): float64 7e-15; float32 1.2e-6 (sequential) and 6e-7 (parallel)."""
    rng = np.random.default_rng(7)
    T, d = 150, 3
    A = np.array([[0.9, 0.3, 0.0], [-0.2, 0.7, 0.1], [0.0, 0.2, 0.5]])
    L = rng.normal(size=(d, 2)) * 0.5
    Q, H, R = L @ L.T, rng.normal(size=(2, d)), np.diag([0.0, 0.3])
    m0, P0 = np.zeros(d), np.eye(d)
    x, y = rng.multivariate_normal(m0, P0), np.zeros((T, 2))
    for t in range(T):
        y[t] = H @ x + np.sqrt(np.diag(R)) * rng.normal(size=2)
        x = A @ x + L @ rng.normal(size=2)
    y[rng.uniform(size=(T, 2)) < 0.2] = np.nan
    dm, dc = _dense_general(A, Q, H, R, m0, P0, y)
    c = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    ssm = LinearGaussianSSM(
        initial_mean=c(m0),
        initial_cov=c(P0),
        transition_matrix=c(A),
        transition_cov=c(Q),
        emission_matrix=c(H),
        emission_cov=c(R),
    )
    tol = 1e-12 if dtype == "float64" else 5e-6
    for parallel in (False, True):
        s = kalman.smoother(ssm, c(y), parallel=parallel)
        np.testing.assert_allclose(np.asarray(s.mean, float), dm, atol=tol, err_msg=f"parallel={parallel}")
        np.testing.assert_allclose(np.asarray(s.cov, float), dc, atol=tol, err_msg=f"parallel={parallel}")
