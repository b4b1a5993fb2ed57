"""The comparison harness: continuous- vs discrete-time models of one system, fitted by the
same engine and scored on the same forecasts.

:func:`compare` runs four public steps in sequence, each usable on its own:
:func:`simulate_data` (simulated or user data, split into training and test series) ->
:func:`fit_models` (every candidate model by :func:`~probdyn.models.sysid.fit.fit_map`) ->
:func:`score_forecasts` (RMSE / NLPD by lead time from several forecast origins) ->
:func:`report` (the long table, fitted parameters and the OU / AR(1) extras).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from probdyn.inference.gaussian_filters import observations as obs_lib
from probdyn.models.sysid.drifts import AR1Map, MechanisticDrift, ResidualMLP
from probdyn.models.sysid.equivalence import ou_ar1_check
from probdyn.models.sysid.fit import FitInfo, fit_map, fitted_params, forecast
from probdyn.models.sysid.models import DiscreteModel, ODEModel, SDEModel, check_data, simulate_observations
from probdyn.models.sysid.systems import SYSTEMS, System, get_system
from probdyn.sde import SDE, euler_maruyama

__all__ = ["CompareData", "CompareResult", "simulate_data", "fit_models", "score_forecasts", "report", "compare"]

P0_SCALE = 1.0  # prior sd of the initial state around the least-squares fill of y[0]


class CompareData(NamedTuple):
    """Output of :func:`simulate_data`.

    ``train``: ``(times (T,), y (T, p))`` training series; ``tests``: ``{"train": ..., "test":
    ...}`` test series at the training spacing and at ``dt_test``; ``truth``: the simulating
    parameters (``None`` for user data); ``observation``: the
    :class:`~probdyn.inference.gaussian_filters.observations.LinearGaussian` of the system.
    """

    system: System
    observation: Any
    train: tuple
    tests: dict
    dt_train: float
    dt_test: float
    truth: dict | None
    irregular: bool


class CompareResult(NamedTuple):
    """Output of :func:`compare`.

    ``table``: pandas DataFrame in long format — one row per (model, test spacing, horizon)
    with columns ``system, model, kind ("continuous"/"discrete"), spacing ("train"/"test"),
    dt, horizon_time, horizon_steps, rmse, nlpd, diverged, param_rel_error, fit_time_s,
    train_loglik``; a diverged forecast (non-finite or non-positive-definite predictive
    moments) has ``diverged = True`` and ``inf`` scores, never NaN.
    ``params``: fitted mechanistic parameters per model (and ``"truth"``); ``extras``: e.g.
    ``ou_ar1_max_abs_diff`` and the AR(1)/OU parameter match; ``forecasts``: per model and
    spacing ``(mean, cov, truth, times)`` of the first origins for plotting; ``data``.
    """

    table: Any
    params: dict
    extras: dict
    forecasts: dict
    data: dict
    models: dict

    def summary(self):
        """NLPD/RMSE pivot: rows model x spacing, columns horizon_time."""
        return self.table.pivot_table(
            index=["model", "kind", "spacing"], columns="horizon_time", values=["nlpd", "rmse"]
        )

    def scores(self, metric: str):
        """``metric`` (``"nlpd"`` or ``"rmse"``) as model x spacing (rows in the table's order,
        the spacing labelled with its ``dt``) by lead time (columns)."""
        t = self.table.assign(spacing=[f"{s} (dt {d:g})" for s, d in zip(self.table["spacing"], self.table["dt"])])
        out = t.pivot(index=["model", "spacing"], columns="horizon_time", values=metric)
        out = out.loc[list(dict.fromkeys(zip(t["model"], t["spacing"])))]
        out.columns.name = None
        return out

    def per_model(self):
        """One row per model: ``kind``, ``param_rel_error``, ``fit_time_s``, ``train_loglik``."""
        cols = ["model", "kind", "param_rel_error", "fit_time_s", "train_loglik"]
        return self.table[cols].drop_duplicates("model").set_index("model")

    def to_markdown(self, floatfmt: str = ".3f", long: bool = False) -> str:
        """What a person reads at a glance, as GitHub markdown: NLPD and RMSE as model x
        spacing by lead time (a diverged forecast shows ``diverged``), one row per model for
        the per-model quantities, and the extras. ``long=True``: the long table instead (one row
        per model, spacing and lead time, as in ``comparison.csv``)."""
        from probdyn.tables import markdown_table

        if long:
            lines = [markdown_table(self.table, floatfmt, index=False)]
        else:
            div = lambda df: df.map(lambda v: "diverged" if np.isinf(v) else v)  # noqa: E731
            lines = [
                "NLPD (nats per observation) by lead time (columns, in time units of the data):",
                "",
                markdown_table(div(self.scores("nlpd")), floatfmt),
                "",
                "RMSE by lead time:",
                "",
                markdown_table(div(self.scores("rmse")), floatfmt),
                "",
                "Per model:",
                "",
                markdown_table(self.per_model(), floatfmt),
            ]
        extra = [f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in self.extras.items()]
        return "\n".join(lines + ([""] + extra if extra else []))


def _scores(mean, cov, truth):
    """RMSE, NLPD (per observation vector; missing truth skipped) and a diverged flag by
    horizon. A horizon has diverged when, from any origin, the predictive mean or covariance
    is not finite, the covariance is not positive definite, or a score overflows: its RMSE
    and NLPD are then ``inf``, never NaN."""
    err = truth - mean
    ok = ~jnp.isnan(truth)
    rmse = jnp.sqrt(jnp.nanmean(jnp.where(ok, err, jnp.nan) ** 2, axis=(0, 2)))

    def nlpd1(e, C):
        L = jnp.linalg.cholesky(C)
        z = jax.scipy.linalg.solve_triangular(L, e, lower=True)
        return 0.5 * jnp.sum(z**2) + jnp.sum(jnp.log(jnp.diag(L))) + 0.5 * e.shape[0] * jnp.log(2 * jnp.pi)

    nl = jax.vmap(jax.vmap(nlpd1))(jnp.where(ok, err, 0.0), cov)
    moments_ok = jnp.all(jnp.isfinite(mean), axis=-1) & jnp.all(jnp.isfinite(cov), axis=(-2, -1))
    nlpd = jnp.mean(nl, axis=0)
    diverged = ~jnp.all(moments_ok & jnp.isfinite(nl), axis=0) | ~jnp.isfinite(rmse) | ~jnp.isfinite(nlpd)
    inf = jnp.asarray(jnp.inf, nlpd.dtype)
    return (
        np.asarray(jnp.where(diverged, inf, rmse)),
        np.asarray(jnp.where(diverged, inf, nlpd)),
        np.asarray(diverged),
    )


def _simulate_series(system: System, key, t_end, dt, x0, irregular: bool, num_substeps: int = 20):
    kt, kx = jax.random.split(key)
    n = int(round(t_end / dt))
    if irregular:
        gaps = dt * np.asarray(jax.random.uniform(kt, (n,), minval=0.4, maxval=1.6))
        times = np.concatenate([[0.0], np.cumsum(gaps)])
    else:
        times = dt * np.arange(n + 1)
    sde = SDE(
        lambda x, t: system.drift(x, t, {k: jnp.asarray(v) for k, v in system.params.items()}),
        jnp.asarray(system.diffusion),
        system.state_dim,
    )
    xs = euler_maruyama(sde, jnp.asarray(x0), jnp.asarray(times), kx, num_substeps)
    return jnp.asarray(times), xs


def _models_for(system_like, dt_train, key, init_params: dict, diffusion0, neural: bool):
    d, f = system_like.state_dim, system_like.drift
    models = {
        "continuous (SDE)": SDEModel(MechanisticDrift(f, init_params), diffusion0, d),
        "discrete naive Euler": DiscreteModel(
            MechanisticDrift(f, init_params), diffusion0 * np.sqrt(dt_train), d, "euler", dt_train
        ),
        "discrete time-aware": DiscreteModel(
            MechanisticDrift(f, init_params), diffusion0, d, "time_aware", dt_train, num_substeps=4
        ),
    }
    if system_like.linear and d == 1:  # the AR(1): g(x) = a x learnt directly
        a0 = float(np.exp(-list(init_params.values())[0] * dt_train))
        models["discrete AR(1)"] = DiscreteModel(AR1Map(a0), diffusion0 * np.sqrt(dt_train), d, "direct", dt_train)
    if neural:
        models["discrete neural (direct MLP)"] = DiscreteModel(
            ResidualMLP(d, key), diffusion0 * np.sqrt(dt_train), d, "direct", dt_train
        )
    return models


def _kind(model) -> str:
    return "continuous" if isinstance(model, (SDEModel, ODEModel)) else "discrete"


def _filter_kwargs(model, system: System) -> dict:
    if _kind(model) != "continuous":
        return {}
    return dict(num_substeps=5, propagation="linearised" if system.linear else "moments")


def simulate_data(
    system: str | System = "van_der_pol",
    key: PRNGKeyArray | int = 0,
    *,
    times=None,
    y=None,
    quick: bool = False,
    dt_train: float | None = None,
    dt_test: float | None = None,
    irregular: bool = False,
    missing: float = 0.1,
) -> CompareData:
    """Training and test series of one system (step 1 of :func:`compare`).

    With a built-in ``system`` (:data:`SYSTEMS` key or a :class:`System`), data are simulated
    from the ground-truth SDE (Euler–Maruyama, 20 sub-steps per interval) after a burn-in of
    10 intervals: a training series of length ``system.T_train`` (half with ``quick``) at
    spacing ``dt_train`` (``irregular=True``: gaps uniform in [0.4, 1.6] x dt_train; a fraction
    ``missing`` of entries NaN) and two test series continuing the process, observed at
    ``dt_train`` ("train" spacing) and at ``dt_test`` ("test" spacing). With user data
    (``times`` (T,), ``y`` (T, p); ``system`` must then be a :class:`System` giving the drift
    family and initial parameters), the first 70 % is training data and the rest test data,
    observed as given ("train") and with every other point dropped ("test", twice the spacing);
    user times are shifted to start at 0.
    """
    key = jax.random.PRNGKey(key) if isinstance(key, int) else key
    user = times is not None or y is not None
    if isinstance(system, str):
        if user:
            raise ValueError("with user data pass system=System(...) giving the drift family and initial params")
        system = get_system(system)
    if not isinstance(system, System):
        raise TypeError(f"system must be a name in {sorted(SYSTEMS)} or a System, got {type(system).__name__}")
    d = system.state_dim
    H = jnp.asarray(system.H, float)
    if H.ndim != 2 or H.shape[1] != d:
        raise ValueError(f"system.H must have shape (p, {d}), got {H.shape}")
    ob = obs_lib.LinearGaussian(H, system.obs_sd**2 * jnp.ones(H.shape[0]))
    if user:
        if times is not None:  # shifted to start at 0: an offset (e.g. Unix seconds) keeps its spacings
            times = np.asarray(times, float) - float(np.asarray(times, float)[0])
        times, y = check_data(times, y, H.shape[0])
        if times.shape[0] < 30:
            raise ValueError("need at least 30 observations to split into training and test data")
        n_tr = int(0.7 * times.shape[0])
        tr_t, tr_y = times[:n_tr], y[:n_tr]
        dt_train = float(np.median(np.diff(np.asarray(tr_t))))
        te_t, te_y = times[n_tr:], y[n_tr:]
        tests = {"train": (te_t, te_y), "test": (te_t[::2], te_y[::2])}
        return CompareData(system, ob, (tr_t, tr_y), tests, dt_train, 2 * dt_train, None, irregular)
    dt_train = float(dt_train or system.dt_train)
    dt_test = float(dt_test or system.dt_test)
    t_train = system.T_train * (0.5 if quick else 1.0)
    t_test = 20 * dt_train * (3 if quick else 5)
    k1, k2, k3, k4, k5, k6 = jax.random.split(key, 6)
    burn_t, burn = _simulate_series(system, k1, 10 * dt_train, dt_train, system.x0, False)
    tr_t, tr_x = _simulate_series(system, k2, t_train, dt_train, burn[-1], irregular)
    tr_y = simulate_observations(ob, tr_x, k3, missing)
    tests = {}
    for name, dt, kk in (("train", dt_train, k4), ("test", dt_test, k5)):
        tt, tx = _simulate_series(system, kk, t_test, dt, tr_x[-1], False)
        tests[name] = (tt, simulate_observations(ob, tx, jax.random.fold_in(k6, int(dt * 1e6))))
    return CompareData(system, ob, (tr_t, tr_y), tests, dt_train, dt_test, dict(system.params), irregular)


def fit_models(
    data: CompareData,
    key: PRNGKeyArray,
    init_key: PRNGKeyArray,
    *,
    quick: bool = False,
    num_steps: int | None = None,
    neural: bool = False,
    verbose: bool = False,
) -> dict[str, FitInfo]:
    """Fit every candidate model on ``data.train`` (step 2 of :func:`compare`).

    Candidates, all with the same drift family and fitted by :func:`fit_map` (maximum
    likelihood of their Gaussian-filter likelihoods, same optimiser): the continuous SDE, the
    naive Euler discrete model, the time-aware discrete model (4 sub-steps), for a linear 1-d
    system the AR(1) map learnt directly, and with ``neural=True`` a residual-MLP map.
    Initial parameters are the truth perturbed by a factor ``exp(+-0.4)`` drawn with
    ``init_key`` (simulated data), else ``system.params``; ``key`` drives the optimiser.
    ``num_steps`` defaults to 300 (150 with ``quick``).

    Returns:
        ``{model name: FitInfo}`` in the candidates' order.
    """
    system, truth = data.system, data.truth
    steps = num_steps if num_steps is not None else (150 if quick else 300)
    rng = np.random.default_rng(int(jax.random.randint(init_key, (), 0, 2**31 - 1)))
    init = {
        k: float(v) * (float(np.exp(rng.choice([-0.4, 0.4]))) if truth is not None else 1.0)
        for k, v in system.params.items()
    }
    diff0 = float(np.mean(system.diffusion))
    models = _models_for(system, data.dt_train, init_key, init, diff0, neural)
    tr_t, tr_y = data.train
    fits = {}
    for name, model in models.items():
        info = fit_map(
            model,
            data.observation,
            tr_t,
            tr_y,
            key,
            num_steps=steps,
            P0_scale=P0_SCALE,
            filter_kwargs=_filter_kwargs(model, system),
        )
        fits[name] = info
        if verbose:
            print(
                f"{name}: fit {info.time_s:.1f} s, loglik {info.log_likelihood:.2f}, params {fitted_params(info.model)}"
            )
    return fits


def score_forecasts(
    data: CompareData, fits: dict[str, FitInfo], *, quick: bool = False, horizons: tuple | None = None
) -> tuple[list[dict], dict]:
    """RMSE and NLPD of every fitted model's forecasts on both test series (step 3).

    From 12 (quick 8) origins per test series, each model filters a context window of
    ``10 dt_train`` and predicts the next horizon; ``horizons`` (default ``(1, 2, 5, 10)``,
    quick ``(1, 2, 5)``) are lead times in multiples of ``dt_train``, so both spacings are
    scored at the same physical lead times.

    Returns:
        ``(rows, forecasts)``: one dict per (model, spacing, lead time) with keys ``model,
        kind, spacing, dt, horizon_time, horizon_steps, rmse, nlpd, diverged`` (a diverged
        forecast scores ``inf``, see :func:`_scores`); and per ``(model,
        spacing)`` the first origin's forecast (``mean, cov, truth, times, ctx_times, ctx_y``)
        for plotting.
    """
    if horizons is None:
        horizons = (1, 2, 5) if quick else (1, 2, 5, 10)
    horizons = tuple(int(h) for h in horizons)
    dt_train, ob = data.dt_train, data.observation
    rows, forecasts = [], {}
    for name, info in fits.items():
        fkw = _filter_kwargs(info.model, data.system)
        for spacing, (tt, ty) in data.tests.items():
            dt = dt_train if spacing == "train" else data.dt_test
            hsteps = [max(1, int(round(h * dt_train / dt))) for h in horizons]
            H_max, ctx = max(hsteps), max(10, int(round(10 * dt_train / dt)))
            n_orig = 8 if quick else 12
            last = ty.shape[0] - H_max - 1
            origins = np.unique(np.linspace(ctx - 1, last, n_orig).astype(int))
            mean, cov, tru = forecast(info.model, ob, tt, ty, origins, H_max, ctx, P0_SCALE, fkw)
            rmse, nlpd, diverged = _scores(mean, cov, tru)
            forecasts[(name, spacing)] = dict(
                mean=np.asarray(mean[0]),
                cov=np.asarray(cov[0]),
                truth=np.asarray(tru[0]),
                times=np.asarray(tt[origins[0] + 1 : origins[0] + 1 + H_max]),
                ctx_times=np.asarray(tt[origins[0] - ctx + 1 : origins[0] + 1]),
                ctx_y=np.asarray(ty[origins[0] - ctx + 1 : origins[0] + 1]),
            )
            for hs in sorted(set(hsteps)):  # lead time actually scored: hs steps of this spacing
                rows.append(
                    dict(
                        model=name,
                        kind=_kind(info.model),
                        spacing=spacing,
                        dt=dt,
                        horizon_time=round(hs * dt, 10),
                        horizon_steps=hs,
                        rmse=float(rmse[hs - 1]),
                        nlpd=float(nlpd[hs - 1]),
                        diverged=bool(diverged[hs - 1]),
                    )
                )
    return rows, forecasts


def report(data: CompareData, fits: dict[str, FitInfo], rows: list[dict], forecasts: dict) -> CompareResult:
    """Assemble the :class:`CompareResult` (step 4): the long table (score rows plus each
    model's mean relative parameter error against the truth, fit time and training
    log-likelihood), the fitted parameters, and for the OU on regular data the AR(1)
    extras — fitted ``a`` vs ``exp(-lam dt)``, the fitted log-likelihood gap, and
    :func:`ou_ar1_check` on the regular test series."""
    import pandas as pd

    system, truth, dt_train = data.system, data.truth, data.dt_train
    fitted: dict[str, Any] = {"truth": truth}
    perr = {}
    for name, info in fits.items():
        fitted[name] = fitted_params(info.model)
        perr[name] = np.nan
        if truth is not None and set(fitted[name]) == set(truth):
            perr[name] = float(np.mean([abs(fitted[name][k] - truth[k]) / abs(truth[k]) for k in truth]))
    table = pd.DataFrame(
        [
            dict(
                system=system.name,
                **r,
                param_rel_error=perr[r["model"]],
                fit_time_s=fits[r["model"]].time_s,
                train_loglik=fits[r["model"]].log_likelihood,
            )
            for r in rows
        ]
    )
    extras = {}
    if system.linear and system.state_dim == 1 and "discrete AR(1)" in fitted and not data.irregular:
        lam = fitted["continuous (SDE)"]["lam"]
        extras["ar1_a_fitted"] = fitted["discrete AR(1)"]["a"]
        extras["ou_exp_minus_lam_dt"] = float(np.exp(-lam * dt_train))
        extras["ou_vs_ar1_fitted_loglik_diff"] = abs(
            fits["continuous (SDE)"].log_likelihood - fits["discrete AR(1)"].log_likelihood
        )
        sd = float(jnp.exp(fits["continuous (SDE)"].model.log_diffusion[0])) / np.sqrt(2 * lam)
        # exact equivalence on a regular, complete series (the test series at the training spacing)
        chk = ou_ar1_check(data.tests["train"][1], dt_train, [lam, 0.3, 1.0], [sd, 1.0, 0.5], system.obs_sd**2)
        extras["ou_ar1_max_abs_diff"] = chk["max_abs_diff"]
    tr_t, tr_y = data.train
    return CompareResult(
        table,
        fitted,
        extras,
        forecasts,
        dict(
            fit=(np.asarray(tr_t), np.asarray(tr_y)),
            **{f"test_{k}": (np.asarray(a), np.asarray(b)) for k, (a, b) in data.tests.items()},
        ),
        {k: v.model for k, v in fits.items()},
    )


def compare(
    system: str | System = "van_der_pol",
    *,
    times=None,
    y=None,
    quick: bool = False,
    key: PRNGKeyArray | int = 0,
    dt_train: float | None = None,
    dt_test: float | None = None,
    irregular: bool = False,
    missing: float = 0.1,
    horizons: tuple | None = None,
    num_steps: int | None = None,
    neural: bool = False,
    engine: str = "map",
    verbose: bool = False,
) -> CompareResult:
    """Fit continuous- and discrete-time models of one system with the same engine and compare.

    Runs :func:`simulate_data` -> :func:`fit_models` -> :func:`score_forecasts` ->
    :func:`report` (see each for the data, the candidate models, the forecasts and the
    table); ``key`` is split into the data, fitting and initialisation keys.
    ``engine``: ``"map"`` (default). ``quick=True`` uses shorter series and fewer steps.

    Returns:
        :class:`CompareResult` (``.table`` DataFrame, ``.to_markdown()``, ``.scores(metric)``,
        ``.per_model()``, ``.summary()``).
    """
    if engine != "map":
        raise ValueError(
            "engine must be 'map' (fit by the filters' likelihoods with optimize.fit); "
            "for NUTS build the numpyro program with SDEFilterDistribution / "
            "DiscreteFilterDistribution and call mcmc.sample"
        )
    key = jax.random.PRNGKey(key) if isinstance(key, int) else key
    kdata, kfit, kinit = jax.random.split(key, 3)
    data = simulate_data(
        system,
        kdata,
        times=times,
        y=y,
        quick=quick,
        dt_train=dt_train,
        dt_test=dt_test,
        irregular=irregular,
        missing=missing,
    )
    fits = fit_models(data, kfit, kinit, quick=quick, num_steps=num_steps, neural=neural, verbose=verbose)
    rows, forecasts = score_forecasts(data, fits, quick=quick, horizons=horizons)
    return report(data, fits, rows, forecasts)
