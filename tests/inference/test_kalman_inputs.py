"""Bad model inputs raise a clear ``ValueError``; degenerate (exact, deterministic) models
return documented values.

References: ``scipy.stats.norm`` for the one random quantity of a model whose later
observations are exact functions of the first; the point-mass convention of
:func:`probdyn.inference.kalman.filter` for the rest.
"""

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from probdyn import LinearGaussianSSM, MarkovGP, kernels  # noqa: E402
from probdyn.inference import kalman  # noqa: E402

I2 = np.eye(2)
GOOD = dict(
    initial_mean=np.zeros(2),
    initial_cov=I2,
    transition_matrix=0.9 * I2,
    transition_cov=0.1 * I2,
    emission_matrix=np.ones((1, 2)),
    emission_cov=np.eye(1),
)
Y = np.array([[0.3], [np.nan], [-0.2], [0.5]])


def ssm(**changes):
    return LinearGaussianSSM(**{k: jnp.asarray(v) for k, v in {**GOOD, **changes}.items()})


def gp():
    return MarkovGP(kernels.Matern32(1.0, 1.0), jnp.linspace(0.0, 1.0, 4), noise=0.1)


# (case, call, expected exception, message fragment)
CASES = [
    # model arrays, checked when the model is built
    (
        "indefinite transition_cov",
        lambda: ssm(transition_cov=np.diag([0.1, -0.05])),
        ValueError,
        "transition_cov is not positive semi-definite",
    ),
    (
        "non-symmetric transition_cov",
        lambda: ssm(transition_cov=np.array([[0.1, 0.05], [0.0, 0.1]])),
        ValueError,
        "transition_cov is not symmetric",
    ),
    (
        "negative emission_cov",
        lambda: ssm(emission_cov=-np.eye(1)),
        ValueError,
        "emission_cov is not positive semi-definite",
    ),
    (
        "indefinite initial_cov",
        lambda: ssm(initial_cov=np.array([[1.0, 2.0], [2.0, 1.0]])),
        ValueError,
        "initial_cov is not positive semi-definite",
    ),
    (
        "NaN inside transition_cov",
        lambda: ssm(transition_cov=np.array([[0.1, np.nan], [np.nan, 0.1]])),
        ValueError,
        "transition_cov contains NaN or inf",
    ),
    (
        "inf in transition_matrix",
        lambda: ssm(transition_matrix=np.array([[np.inf, 0], [0, 1.0]])),
        ValueError,
        "transition_matrix contains NaN or inf",
    ),
    (
        "NaN in initial_mean",
        lambda: ssm(initial_mean=np.array([np.nan, 0.0])),
        ValueError,
        "initial_mean contains NaN or inf",
    ),
    (
        "one indefinite matrix of a stack",
        lambda: ssm(transition_cov=np.stack([0.1 * I2, np.diag([0.1, -1.0]), 0.1 * I2])),
        ValueError,
        "transition_cov[1] is not positive semi-definite",
    ),
    ("shape mismatch", lambda: ssm(initial_cov=np.eye(3)), ValueError, "initial_cov"),
    # engine calls
    (
        "num_samples = -1",
        lambda: kalman.sample(jax.random.PRNGKey(0), ssm(), Y, num_samples=-1),
        ValueError,
        "num_samples must be a positive integer",
    ),
    (
        "num_samples = 0",
        lambda: kalman.sample(jax.random.PRNGKey(0), ssm(), Y, num_samples=0),
        ValueError,
        "num_samples must be a positive integer",
    ),
    (
        "num_samples = 2.5",
        lambda: kalman.sample(jax.random.PRNGKey(0), ssm(), Y, num_samples=2.5),
        ValueError,
        "num_samples must be a positive integer",
    ),
    ("inf in y", lambda: kalman.filter(ssm(), np.where(np.isnan(Y), np.inf, Y)), ValueError, "infinite"),
    ("wrong observation dimension", lambda: kalman.filter(ssm(), np.zeros((4, 2))), ValueError, ""),
    ("not a model", lambda: kalman.filter("not an ssm", Y), TypeError, ""),
    # MarkovGP
    (
        "NaN test time",
        lambda: gp().predict(jnp.zeros(4), jnp.array([0.5, jnp.nan])),
        ValueError,
        "test_times must be finite, got test_times[1] = nan",
    ),
    (
        "inf test time",
        lambda: gp().predict(jnp.zeros(4), jnp.array([jnp.inf])),
        ValueError,
        "test_times must be finite",
    ),
    (
        "2-D test times",
        lambda: gp().predict(jnp.zeros(4), jnp.zeros((2, 2))),
        ValueError,
        "test_times must be a scalar or one-dimensional",
    ),
    (
        "MarkovGP num_samples = -1",
        lambda: gp().sample(jax.random.PRNGKey(0), -1),
        ValueError,
        "num_samples must be a positive integer",
    ),
    (
        "MarkovGP NaN sample test time",
        lambda: gp().sample(jax.random.PRNGKey(0), 2, test_times=jnp.array([jnp.nan])),
        ValueError,
        "test_times must be finite",
    ),
    (
        "unsorted data times",
        lambda: MarkovGP(kernels.Matern32(1.0, 1.0), jnp.array([0.0, 2.0, 1.0])),
        ValueError,
        "times",
    ),
]


@pytest.mark.parametrize("case,call,exc,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(case, call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value), str(info.value)


def test_valid_singular_and_rounding_level_inputs_pass():
    """Singular covariances (zero process noise, exact observations) and rounding-level
    asymmetry or indefiniteness are valid models, in float64 and float32."""
    for dtype in (np.float64, np.float32):
        eps = np.finfo(dtype).eps
        m = LinearGaussianSSM(
            *(
                jnp.asarray(v, dtype)
                for v in (
                    GOOD["initial_mean"],
                    GOOD["initial_cov"],
                    GOOD["transition_matrix"],
                    np.array([[0.1, 0.1 + 4 * eps * 0.1], [0.1, 0.1 - 2 * eps * 0.1]]),  # rank one up to rounding
                    GOOD["emission_matrix"],
                    np.zeros((1, 1)),
                )
            )
        )
        assert np.isfinite(float(kalman.log_likelihood(m, jnp.asarray(Y, dtype), parallel=False)))


@pytest.mark.parametrize("parallel", [False, True])
def test_traced_infinite_observation_makes_results_nan(parallel):
    """A concrete infinite observation raises (see BAD); inside jit, by default, it cannot
    (no host callback on the hot path, see _checks.check_observations): the log-likelihood
    is NaN, never a finite number that silently dropped it."""
    f = jax.jit(lambda y: kalman.log_likelihood(ssm(), y, parallel=parallel))
    assert np.isnan(float(f(jnp.asarray(np.where(np.isnan(Y), np.inf, Y)))))
    assert np.isfinite(float(f(jnp.asarray(Y))))


@pytest.mark.parametrize("parallel", [False, True])
def test_traced_infinite_observation_raises_when_checked(parallel, monkeypatch):
    """With ``PROBDYN_CHECK_TRACED=1`` the compiled program raises the eager check's message
    when it meets an infinite observation (``equinox.error_if``), under ``jit`` and ``vmap``,
    and finite data gives the unchecked numbers."""
    monkeypatch.setenv("PROBDYN_CHECK_TRACED", "1")
    jax.clear_caches()  # programs compiled without the check are cached
    bad = jnp.asarray(np.where(np.isnan(Y), np.inf, Y))
    f = jax.jit(lambda y: kalman.log_likelihood(ssm(), y, parallel=parallel))
    with pytest.raises((ValueError, RuntimeError), match="y contains infinite values"):
        f(bad).block_until_ready()
    g = eqx.filter_jit(jax.vmap(lambda y: kalman.filter(ssm(), y, parallel=parallel).log_likelihood))
    with pytest.raises((ValueError, RuntimeError), match="y contains infinite values"):
        g(jnp.stack([jnp.asarray(Y), -bad])).block_until_ready()
    ok = float(f(jnp.asarray(Y)))
    np.testing.assert_allclose(ok, float(kalman.log_likelihood(ssm(), jnp.asarray(Y), parallel=parallel)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g(jnp.stack([jnp.asarray(Y)] * 2))), ok, rtol=1e-12)


@pytest.mark.parametrize("traced_nan", ["transition_cov", "emission_cov", "initial_cov"])
def test_traced_nan_covariance_makes_results_nan(traced_nan):
    """Inside jit a NaN covariance cannot raise: every mean and the log-likelihood are NaN
    (the documented contract), never a finite number that silently dropped it."""

    def f(c):
        bad = jnp.asarray(GOOD[traced_nan]).at[0, 0].set(c)
        return kalman.filter(ssm(**{traced_nan: bad}), jnp.asarray(Y), parallel=False)

    out = jax.jit(f)(jnp.nan)
    assert np.isnan(float(out.log_likelihood)) and np.all(np.isnan(out.mean))
    ok = jax.jit(f)(jnp.asarray(GOOD[traced_nan])[0, 0])
    assert np.isfinite(float(ok.log_likelihood))


@pytest.mark.parametrize("parallel", [False, True])
def test_exact_observations_of_deterministic_states(parallel):
    """``Q = 0``, ``R = 0``: after ``y_0`` pins the state, every observation is a
    deterministic function of it. The engine takes each such density with respect to a point
    mass at its prediction: 0 if it equals the prediction, ``-inf`` otherwise (never
    ``+inf``), so the log-likelihood is that of ``y_0`` alone (scipy)."""
    a, p0 = 0.5, 4.0
    m = LinearGaussianSSM(
        jnp.zeros(1), p0 * jnp.eye(1), a * jnp.eye(1), jnp.zeros((1, 1)), jnp.eye(1), jnp.zeros((1, 1))
    )
    y = 3.0 * a ** np.arange(6)  # exact in binary: the consistent path
    y_nan = y.copy()
    y_nan[2] = np.nan
    for obs in (y, y_nan):
        ll = float(kalman.log_likelihood(m, jnp.asarray(obs)[:, None], parallel=parallel))
        np.testing.assert_allclose(ll, stats.norm.logpdf(3.0, 0.0, np.sqrt(p0)), rtol=1e-12)
        f = kalman.filter(m, jnp.asarray(obs)[:, None], parallel=parallel)
        np.testing.assert_allclose(f.mean[:, 0], y, rtol=1e-12)
        np.testing.assert_array_equal(f.cov, 0.0)
    # an inconsistent observation is impossible under the model: -inf, not +inf or NaN
    bad = y.copy()
    bad[3] += 1e-3
    assert float(kalman.log_likelihood(m, jnp.asarray(bad)[:, None], parallel=parallel)) == -np.inf
    # fully deterministic (P0 = 0 too): the whole likelihood is a point mass
    m0 = LinearGaussianSSM(
        jnp.ones(1), jnp.zeros((1, 1)), a * jnp.eye(1), jnp.zeros((1, 1)), jnp.eye(1), jnp.zeros((1, 1))
    )
    assert float(kalman.log_likelihood(m0, jnp.asarray(a ** np.arange(6))[:, None], parallel=parallel)) == 0.0
    assert float(kalman.log_likelihood(m0, jnp.asarray(2 * a ** np.arange(6))[:, None], parallel=parallel)) == -np.inf
