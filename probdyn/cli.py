"""The ``probdyn`` command (also ``python -m probdyn``).

Sub-commands::

    probdyn compare   discrete- vs continuous-time models of one system (the main job)
    probdyn fit       fit a model to a CSV time series or an embedded dataset
    probdyn tutorials list the tutorials
    probdyn run NAME  run one tutorial and collect its figures and metrics

Wrong input exits with status 2 and a one-line explanation (``--debug`` shows the
traceback); nothing already on disk is overwritten without ``--force``.

Length: one concept (the command: parsing, I/O, the sub-commands' calls into the library),
kept in one module although it runs past 600 lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from probdyn.tables import markdown_table

__all__ = ["main", "CLIError", "read_series", "parse_kernel", "markdown_table"]

DATASETS = ("lynx_hare", "co2", "nile")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------
def read_series(csv: str, time_col: str | None, columns: str | None, min_points: int = 5):
    """Read ``(times (T,), values (T, k), names)`` from a CSV with a header row.

    Times must be numeric, finite and strictly increasing; values may be empty/NaN (missing).
    """
    import numpy as np
    import pandas as pd

    path = Path(csv)
    if not path.exists():
        raise CLIError(f"file not found: {csv}")
    try:
        df = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot read {csv} as CSV: {e}") from None
    if df.shape[1] < 2:
        raise CLIError(f"{csv} needs a time column and at least one value column (found {list(df.columns)})")
    tc = time_col or str(df.columns[0])
    if tc not in df.columns:
        raise CLIError(f"unknown time column {tc!r}; columns are {list(df.columns)}")
    names = [c.strip() for c in columns.split(",")] if columns else [c for c in df.columns if c != tc]
    for c in names:
        if c not in df.columns:
            raise CLIError(f"unknown column {c!r}; columns are {list(df.columns)}")
    t = pd.to_numeric(df[tc], errors="coerce").to_numpy(float)
    if not np.all(np.isfinite(t)):
        bad = int(np.argmax(~np.isfinite(t)))
        raise CLIError(f"time column {tc!r} must be numeric and finite (row {bad + 2}: {df[tc].iloc[bad]!r})")
    if np.any(np.diff(t) <= 0):
        bad = int(np.argmax(np.diff(t) <= 0))
        raise CLIError(f"times must be strictly increasing (rows {bad + 2} and {bad + 3}: {t[bad]} then {t[bad + 1]})")
    vals = []
    for c in names:
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() & df[c].notna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise CLIError(f"column {c!r} has a non-numeric value at row {i + 2}: {df[c].iloc[i]!r}")
        vals.append(v.to_numpy(float))
    y = np.stack(vals, axis=1)
    if np.any(np.isinf(y)):
        raise CLIError("values must be finite (leave a cell empty for a missing value)")
    n_obs = int(np.sum(np.any(np.isfinite(y), axis=1)))
    if n_obs < min_points:
        raise CLIError(f"too few points: {n_obs} observed rows, need at least {min_points}")
    return t, y, names


def load_dataset(name: str):
    """Embedded datasets as ``(times, values (T, k), names)``."""
    import numpy as np

    if name == "lynx_hare":
        from probdyn.datasets import lynx_hare

        d = lynx_hare()
        t = np.concatenate([[0.0], np.asarray(d.ts, float)])
        y = np.concatenate([np.asarray(d.y_init, float)[None], np.asarray(d.y, float)])
        return t, y, ["hare", "lynx"]
    if name == "co2":
        import statsmodels.api as sm

        df = sm.datasets.co2.load_pandas().data
        t = 1958.0 + np.arange(len(df)) * 7.0 / 365.25
        return t, df["co2"].to_numpy(float)[:, None], ["co2"]
    if name == "nile":
        import statsmodels.api as sm

        df = sm.datasets.nile.load_pandas().data
        return df["year"].to_numpy(float), df["volume"].to_numpy(float)[:, None], ["volume"]
    raise CLIError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def _prepare_out(out: str, files: list[str], force: bool) -> Path:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    clash = [f for f in files if (p / f).exists()]
    if clash and not force:
        raise CLIError(f"{p / clash[0]} already exists; use --force to overwrite or choose another --out")
    p.mkdir(parents=True, exist_ok=True)
    return p


# ----------------------------------------------------------------------------------
# Kernels from a spec string
# ----------------------------------------------------------------------------------
def parse_kernel(spec: str) -> list[list[str]]:
    """``"matern32+sho*periodic"`` -> ``[["matern32"], ["sho", "periodic"]]`` (sum of products);
    :func:`probdyn.gp_fit.parse_kernel` with a one-line :class:`CLIError`."""
    from probdyn import gp_fit

    try:
        return gp_fit.parse_kernel(spec)
    except ValueError as e:
        raise CLIError(str(e)) from None


# ----------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------
def _cmd_tutorials(a) -> int:
    for name, title in _tutorials().items():
        print(f"{name:<36} {title}")
    return 0


def _tutorial_dir() -> Path:
    env = os.environ.get("PROBDYN_TUTORIALS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "tutorials"


def _tutorials() -> dict[str, str]:
    d = _tutorial_dir()
    if not d.is_dir():
        raise CLIError(f"tutorial folder not found at {d} (set PROBDYN_TUTORIALS or install from a clone)")
    out = {}
    for f in sorted(d.glob("*.py")):
        title = ""
        for line in f.read_text().splitlines():
            m = re.match(r"#\s*#\s+(.*)", line)
            if m:
                title = m.group(1).strip()
                break
        out[f.stem] = title
    return out


def _cmd_run(a) -> int:
    tuts = _tutorials()
    name = a.name[:-3] if a.name.endswith(".py") else a.name
    if name not in tuts:
        raise CLIError(f"unknown tutorial {a.name!r}; `probdyn tutorials` lists: {', '.join(tuts)}")
    out = _prepare_out(os.path.join(a.out, name), ["metrics.json"], a.force)
    env = {**os.environ, "PROBDYN_OUT": str(out), "PROBDYN_METRICS": str(out / "metrics.json"), "MPLBACKEND": "Agg"}
    if a.smoke:
        env["PROBDYN_SMOKE"] = "1"
    root = str(_tutorial_dir().parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    print(f"running tutorial {name}{' (smoke)' if a.smoke else ''} -> {out}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(_tutorial_dir() / f"{name}.py")], env=env, cwd=str(out))
    if r.returncode != 0:
        raise CLIError(f"tutorial {name} failed with exit status {r.returncode} (see its output above)")
    figs = sorted(p.name for p in out.glob("*.png"))
    print(f"done in {time.perf_counter() - t0:.0f} s: {len(figs)} figures and metrics.json in {out}")
    return 0


def _cmd_fit(a) -> int:
    if a.csv:
        t, y, names = read_series(a.csv, a.time_col, a.columns)
    else:
        t, y, names = load_dataset(a.dataset)
    if a.model == "markov-gp":
        return _fit_markov_gp(a, t, y, names)
    return _fit_sde(a, t, y, names)


def _write_fit_outputs(out: Path, idata, extra: dict, point_estimate: bool = False) -> None:
    import warnings

    with warnings.catch_warnings():  # arviz's notes on a single draw (a point estimate)
        warnings.simplefilter("ignore", UserWarning)
        import arviz as az

        idata.to_netcdf(str(out / "posterior.nc"))
        summ = az.summary(idata, kind="all" if idata.posterior.sizes.get("chain", 1) > 1 else "stats")
    if point_estimate:
        summ = summ[["mean"]].rename(columns={"mean": "MAP"})
    summ.to_csv(out / "summary.csv")
    (out / "summary.md").write_text(markdown_table(summ))
    print(summ.to_string())
    (out / "fit.json").write_text(json.dumps(extra, indent=2))


def _fit_markov_gp(a, t, y, names) -> int:
    import jax
    import numpy as np

    from probdyn import gp_fit, plotting

    if y.shape[1] != 1:
        raise CLIError(f"--model markov-gp fits one series; pick one with --columns (got {', '.join(names)})")
    parse_kernel(a.kernel)
    files = ["posterior.nc", "summary.csv", "summary.md", "forecast.png", "fit.json"]
    out = _prepare_out(a.out, files, a.force)
    print(f"fitting a Markov GP ({a.kernel}) to {names[0]} ({len(t)} points) with engine={a.engine}", flush=True)
    try:
        fit = gp_fit.fit_gp(t, y[:, 0], jax.random.PRNGKey(a.seed), kernel=a.kernel, engine=a.engine,
                            num_steps=a.steps, learning_rate=a.lr, num_warmup=a.warmup, num_samples=a.samples,
                            num_chains=a.chains, progress_bar=not a.no_progress)
    except ValueError as e:
        raise CLIError(str(e)) from None
    horizon = a.horizon if a.horizon is not None else 0.1 * fit.span
    grid = np.linspace(t[0], t[-1] + horizon, 400)
    mean, sd = gp_fit.predict_gp(fit, t, y[:, 0], grid)
    plotting.gp_forecast(out / "forecast.png", t, y[:, 0], grid, mean, sd, names[0], f"Markov GP ({a.engine})")
    _write_fit_outputs(out, fit.idata, {"model": "markov-gp", "kernel": a.kernel, "engine": a.engine,
                                        "series": names[0], "n_points": int(len(t)), "wall_time_s": fit.wall_time_s,
                                        "standardisation": {"mean": fit.loc, "sd": fit.scale}},
                       point_estimate=a.engine == "map")
    print(f"\nwrote {', '.join(str(out / f) for f in files)}")
    return 0


def _fit_sde(a, t, y, names) -> int:
    """Fit a built-in mechanistic SDE drift family by its continuous–discrete EKF likelihood:
    maximum likelihood (``map``), or NUTS / SVI started there (``nuts``, ``svi``)."""
    import jax

    from probdyn import plotting
    from probdyn.models import sysid

    try:
        system = sysid.get_system(a.drift)
    except ValueError as e:
        raise CLIError(f"unknown --drift: {e}") from None
    p = system.H.shape[0]
    if p != y.shape[1]:
        raise CLIError(f"--drift {a.drift} observes {p} coordinate(s) but the data have {y.shape[1]} "
                       f"column(s) ({', '.join(names)}); choose them with --columns")
    files = ["posterior.nc", "summary.csv", "summary.md", "forecast.png", "fit.json"]
    out = _prepare_out(a.out, files, a.force)
    print(f"fitting the {a.drift} SDE drift family to {', '.join(names)} ({len(t)} points) by the "
          f"continuous-discrete EKF likelihood{'' if a.engine == 'map' else f', then its posterior by {a.engine}'}",
          flush=True)
    try:
        fit = sysid.fit_sde(system, t, y, jax.random.PRNGKey(a.seed), engine=a.engine, num_steps=a.steps,
                            learning_rate=a.lr, num_warmup=a.warmup, num_samples=a.samples, num_chains=a.chains,
                            progress_bar=not a.no_progress)
    except ValueError as e:
        raise CLIError(str(e)) from None
    fc = sysid.forecast_sde(fit, t, y, a.horizon)
    plotting.sde_forecast(out / "forecast.png", t, y, fc, names, f"{a.drift} SDE (smoothed / forecast)")
    _write_fit_outputs(out, fit.idata, {"model": "sde", "drift": a.drift, "engine": a.engine, "series": names,
                                        "n_points": int(len(t)), "wall_time_s": fit.wall_time_s,
                                        "map_log_likelihood": float(fit.map.log_likelihood),
                                        "map_parameters": fit.parameters},
                       point_estimate=a.engine == "map")
    print(f"\nwrote {', '.join(str(out / f) for f in files)}")
    return 0


def _compare_figures(res, out: Path, names=None) -> list[Path]:
    """NLPD/RMSE against lead time, and the forecasts at the test spacing."""
    from probdyn import plotting

    figs = [out / "scores.png"]
    plotting.compare_scores(figs[-1], res.table)
    if any(k[1] == "test" for k in res.forecasts):
        figs.append(out / "forecasts.png")
        plotting.compare_forecasts(figs[-1], res.forecasts, names)
    return figs


def _cmd_compare(a) -> int:
    from probdyn.models import sysid

    files = ["report.md", "comparison.csv", "scores.png", "forecasts.png"]
    out = _prepare_out(a.out, files, a.force)
    kwargs = dict(quick=a.quick, key=a.seed)
    if a.csv:
        t, y, names = read_series(a.csv, a.time_col, a.columns, min_points=30)
        name = a.system or ("ornstein_uhlenbeck" if y.shape[1] == 1 else "van_der_pol")
        try:
            system = sysid.get_system(name)
        except ValueError as e:
            raise CLIError(str(e)) from None
        if system.H.shape[0] != y.shape[1]:
            raise CLIError(f"--system {name} observes {system.H.shape[0]} coordinate(s) but the CSV gives "
                           f"{y.shape[1]} column(s) ({', '.join(names)})")
        kwargs.update(system=system, times=t, y=y)
        title = f"{a.csv} ({', '.join(names)}), {name} drift family"
        coords = names
    else:
        name = a.system or "lotka_volterra"
        try:
            sysid.get_system(name)
        except ValueError as e:
            raise CLIError(str(e)) from None
        kwargs.update(system=name)
        if a.test_spacing is not None:
            if a.test_spacing <= 0:
                raise CLIError("--test-spacing must be positive")
            kwargs["dt_test"] = a.test_spacing
        title = f"simulated {name}"
        coords = None
    print(f"probdyn compare: {title}{' (quick)' if a.quick else ''}", flush=True)
    t0 = time.perf_counter()
    res = sysid.compare(**kwargs)
    elapsed = time.perf_counter() - t0
    table = res.to_markdown()
    print(table)
    res.table.to_csv(out / "comparison.csv", index=False)
    figs = _compare_figures(res, out, coords)
    lines = [f"# probdyn compare: {title}", "",
             "Continuous-time (SDE, continuous-discrete filter) and discrete-time models fitted by the same",
             "engine (maximum likelihood of their Gaussian-filter likelihoods); forecasts scored against",
             "held-out data at the training spacing and at a different test spacing.", "", table, "",
             "One row per model, spacing and lead time: `comparison.csv`.", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figs]
    lines += ["", f"Run time: {elapsed:.0f} s."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out / 'report.md'}, {out / 'comparison.csv'} and {len(figs)} figures in {out}")
    return 0


# ----------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    from probdyn.gp_fit import KERNEL_NAMES

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="probdyn", description="probabilistic dynamical systems in JAX", formatter_class=fmt,
                                epilog="examples:\n  probdyn compare --quick\n  probdyn fit --dataset co2 --kernel matern52+sho\n"
                                       "  probdyn tutorials\n  probdyn run markov_gp_regression --smoke")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp):
        sp.add_argument("--csv", help="CSV file with a header row")
        sp.add_argument("--time-col", help="name of the time column (default: the first column)")
        sp.add_argument("--columns", help="comma-separated value columns (default: all others)")
        sp.add_argument("--out", default="probdyn-out", help="output folder (default: ./probdyn-out)")
        sp.add_argument("--force", action="store_true", help="overwrite existing outputs")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--no-progress", action="store_true", help="hide progress bars")

    c = sub.add_parser("compare", help="discrete- vs continuous-time models of one system (the main job)", formatter_class=fmt,
                       description="Fit a continuous-time (SDE) and a discrete-time model to the same data with the same\n"
                                   "engine and compare forecasts (RMSE, NLPD vs horizon), parameters and run time.",
                       epilog="examples:\n  probdyn compare --quick                      # simulated Lotka-Volterra\n"
                              "  probdyn compare --system van_der_pol --out vdp\n"
                              "  probdyn compare --csv data.csv --time-col t --columns a,b --system van_der_pol")
    common(c)
    c.add_argument("--system", help="built-in system: ornstein_uhlenbeck, damped_pendulum, van_der_pol, "
                                    "lotka_volterra (default; parameters of the lynx-hare posterior), double_well; "
                                    "with --csv: the drift family to fit")
    c.add_argument("--test-spacing", type=float, help="observation spacing of the test data (simulated systems)")
    c.add_argument("--quick", action="store_true", help="small settings, about a minute")
    c.set_defaults(func=_cmd_compare)

    f = sub.add_parser("fit", help="fit a model to a CSV time series or an embedded dataset", formatter_class=fmt,
                       epilog="examples:\n  probdyn fit --dataset co2 --kernel matern52+sho --engine map\n"
                              "  probdyn fit --csv data.csv --time-col t --columns y --engine nuts --chains 4\n"
                              "  probdyn fit --dataset lynx_hare --model sde --drift lotka_volterra --steps 300\n"
                              "  probdyn fit --dataset lynx_hare --model sde --drift lotka_volterra --engine nuts --chains 2")
    common(f)
    f.add_argument("--dataset", choices=DATASETS, default="nile", help="embedded dataset when no --csv (default: nile)")
    f.add_argument("--model", choices=["markov-gp", "sde"], default="markov-gp")
    f.add_argument("--kernel", default="matern32", help="sum/product of " + ", ".join(KERNEL_NAMES) + " (e.g. matern32+sho)")
    f.add_argument("--drift", default="ornstein_uhlenbeck",
                   help="built-in drift family for --model sde: ornstein_uhlenbeck, damped_pendulum, van_der_pol, "
                        "lotka_volterra, double_well")
    f.add_argument("--engine", choices=["map", "svi", "nuts"], default="map",
                   help="map: maximum a posteriori (markov-gp) / maximum likelihood (sde); svi: mean-field "
                        "normal guide; nuts: NUTS with --chains chains (sde: started at the ML fit)")
    f.add_argument("--chains", type=int, default=4)
    f.add_argument("--warmup", type=int, default=500)
    f.add_argument("--samples", type=int, default=500)
    f.add_argument("--steps", type=int, default=1500, help="optimisation steps (map, svi)")
    f.add_argument("--lr", type=float, default=0.02)
    f.add_argument("--horizon", type=float, help="forecast horizon in time units (default: 10%% of the span)")
    f.set_defaults(func=_cmd_fit)

    t = sub.add_parser("tutorials", help="list the tutorials")
    t.set_defaults(func=_cmd_tutorials)
    r = sub.add_parser("run", help="run a tutorial and collect its figures and metrics", formatter_class=fmt,
                       epilog="example:\n  probdyn run markov_gp_regression --smoke --out runs")
    r.add_argument("name")
    r.add_argument("--smoke", action="store_true", help="tiny sizes (PROBDYN_SMOKE=1)")
    r.add_argument("--out", default=os.path.join("probdyn-out", "tutorials"))
    r.add_argument("--force", action="store_true")
    r.set_defaults(func=_cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``probdyn`` command; returns the exit status (0 ok, 2 bad input)."""
    p = _parser()
    a = p.parse_args(argv)
    if a.command is None:
        p.print_help()
        return 2
    if getattr(a, "chains", 1) is not None and getattr(a, "chains", 1) < 1:
        print("probdyn: error: --chains must be >= 1", file=sys.stderr)
        return 2
    try:
        return int(a.func(a) or 0)
    except CLIError as e:
        if a.debug:
            raise
        print(f"probdyn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probdyn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, never a traceback, unless --debug
        if a.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"probdyn: error: {type(e).__name__}: {msg} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
