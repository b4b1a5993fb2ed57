"""The `probdyn` command: error paths (one line, non-zero exit, no traceback), --force,
tutorial listing, and `fit` end to end on a small CSV (MAP hyperparameters compared with
an independent dense-GP optimisation)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, STRICT_RUN, subprocess_env


def cli(*args, cwd):
    env = subprocess_env()
    return subprocess.run(
        [sys.executable, STRICT_RUN, "-m", "probdyn", *args],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture
def cli_inproc(capsys, monkeypatch):
    """``probdyn.cli.main`` in this process (for the quick error and help paths: saves a
    Python + JAX start-up per call; the end-to-end tests below run the real command)."""
    from probdyn.cli import main

    def run(*args, cwd):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse's --help and usage errors
            rc = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), rc, out.out, out.err)

    return run


def write_csv(path, rows, header="t,y"):
    path.write_text(header + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "column",
        "nonnumeric",
        "unsorted",
        "few",
        "kernel",
        "notime",
        "horizon",
        "both",
        "drift",
        "chains",
        "system",
        "spacing",
        "sde_columns",
    ],
)
def test_bad_input_one_line_error(tmp_path, case, cli_inproc):
    good = [(i, np.sin(i)) for i in range(20)]
    args = {
        "missing": ["fit", "--csv", "nope.csv"],
        "column": ["fit", "--csv", "d.csv", "--columns", "z"],
        "nonnumeric": ["fit", "--csv", "d.csv"],
        "unsorted": ["fit", "--csv", "d.csv"],
        "few": ["fit", "--csv", "d.csv"],
        "kernel": ["fit", "--csv", "d.csv", "--kernel", "matern32+rbf"],
        "notime": ["fit", "--csv", "d.csv", "--time-col", "time"],
        "horizon": ["fit", "--csv", "d.csv", "--horizon", "-1"],
        "both": ["fit", "--csv", "d.csv", "--dataset", "co2"],
        "drift": ["fit", "--csv", "d.csv", "--model", "sde", "--drift", "lorenz"],
        "chains": ["fit", "--csv", "d.csv", "--chains", "0"],
        "system": ["compare", "--system", "lorenz"],
        "spacing": ["compare", "--test-spacing", "-0.5"],
        "sde_columns": ["fit", "--dataset", "lynx_hare", "--model", "sde", "--drift", "double_well"],
    }[case]
    rows = {
        "nonnumeric": good[:5] + [(5, "abc")] + good[6:],
        "unsorted": good[:5] + [(3, 0.1)] + good[6:],
        "few": good[:3],
    }.get(case, good)
    write_csv(tmp_path / "d.csv", rows)
    r = (cli if case == "missing" else cli_inproc)(*args, cwd=tmp_path)  # one through the real command
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probdyn: error:"), r.stderr
    assert "Traceback" not in r.stderr
    expect = {
        "missing": "not found",
        "column": "unknown column",
        "nonnumeric": "non-numeric",
        "unsorted": "increasing",
        "few": "too few",
        "kernel": "unknown kernel",
        "notime": "unknown time column",
        "horizon": "--horizon must be a finite number >= 0",
        "both": "--csv and --dataset are alternatives",
        "drift": "unknown --drift",
        "chains": "--chains must be >= 1",
        "system": "unknown system 'lorenz'",
        "spacing": "--test-spacing must be positive",
        "sde_columns": "observes 1 coordinate",
    }[case]
    assert expect in err[0]


def test_tutorials_listed_and_unknown_tutorial(tmp_path, cli_inproc):
    r = cli_inproc("tutorials", cwd=tmp_path)
    assert r.returncode == 0
    names = [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()]
    on_disk = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "tutorials")) if f.endswith(".py"))
    assert names == on_disk
    r = cli_inproc("run", "no_such_tutorial", cwd=tmp_path)
    assert r.returncode == 2 and "unknown tutorial" in r.stderr


def test_help_has_examples(tmp_path, cli_inproc):
    for sub in ("compare", "fit", "run"):
        r = cli_inproc(sub, "--help", cwd=tmp_path)
        assert r.returncode == 0 and "example" in r.stdout


@pytest.mark.slow
def test_fit_csv_end_to_end_and_no_overwrite(tmp_path):
    """MAP fit of a Matern-3/2 GP: the CLI's hyperparameters maximise the same posterior as a
    dense-Cholesky objective optimised independently with scipy."""
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 20, 60))
    y = np.sin(0.7 * t) + 0.2 * rng.normal(size=60)
    y[[10, 11, 30]] = np.nan
    rows = [(a, "" if np.isnan(b) else b) for a, b in zip(t, y)]
    write_csv(tmp_path / "d.csv", rows)
    r = cli(
        "fit",
        "--csv",
        "d.csv",
        "--kernel",
        "matern32",
        "--engine",
        "map",
        "--steps",
        "1500",
        "--lr",
        "0.05",
        "--no-progress",
        "--out",
        "out",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    for f in ("posterior.nc", "summary.csv", "summary.md", "forecast.png", "fit.json"):
        assert (out / f).stat().st_size > 0, f
    summ = {ln.split(",")[0]: float(ln.split(",")[1]) for ln in (out / "summary.csv").read_text().splitlines()[1:]}

    # independent reference: dense GP log posterior (same priors) maximised by scipy
    from scipy import optimize, stats

    z = (y - np.nanmean(y)) / np.nanstd(y)
    ok = ~np.isnan(z)
    tt, zz = t[ok], z[ok]
    span = t[-1] - t[0]
    sp = np.median(np.diff(t))  # lengthscale prior: 1 % below the median spacing, 1 % above the span
    ell_loc, ell_sd = 0.5 * np.log(sp * span), np.log(span / sp) / (2 * 2.3263479)

    def neg_log_post(log_p):
        ell, amp, sn = np.exp(log_p)
        r_ = np.abs(tt[:, None] - tt[None]) * np.sqrt(3) / ell
        K = amp**2 * (1 + r_) * np.exp(-r_) + sn**2 * np.eye(len(tt))
        L = np.linalg.cholesky(K)
        a = np.linalg.solve(L, zz)
        ll = -0.5 * a @ a - np.log(np.diag(L)).sum() - 0.5 * len(tt) * np.log(2 * np.pi)
        lp = (
            stats.lognorm(ell_sd, scale=np.exp(ell_loc)).logpdf(ell)
            + stats.lognorm(1.0, scale=1.0).logpdf(amp)
            + stats.lognorm(1.0, scale=0.1).logpdf(sn)
        )
        return -(ll + lp)  # MAP in the constrained space, as numpyro's AutoDelta reports it

    ref = optimize.minimize(
        neg_log_post, np.log([2.0, 1.0, 0.3]), method="Nelder-Mead", options=dict(xatol=1e-8, fatol=1e-10, maxiter=5000)
    ).x
    got = np.log([summ["matern32_lengthscale"], summ["amplitude_0"], summ["noise_sd"]])
    np.testing.assert_allclose(got, ref, atol=0.03)

    r2 = cli("fit", "--csv", "d.csv", "--steps", "10", "--no-progress", "--out", "out", cwd=tmp_path)
    assert r2.returncode == 2 and "--force" in r2.stderr
    meta = json.loads((out / "fit.json").read_text())
    assert meta["n_points"] == 60 and meta["engine"] == "map"


@pytest.mark.slow
def test_compare_quick_end_to_end(tmp_path):
    """The main job on --quick settings: report, figures and a table with both model kinds;
    the naive discrete model must be worse than the continuous one at the test spacing."""
    r = cli("compare", "--quick", "--no-progress", "--out", "cmp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "cmp"
    for f in ("report.md", "comparison.csv", "scores.png", "forecasts.png"):
        assert (out / f).stat().st_size > 0, f
    import pandas as pd

    df = pd.read_csv(out / "comparison.csv")
    assert set(df["kind"]) == {"continuous", "discrete"}
    test = df[df["spacing"] == "test"]
    far = test["horizon_time"].max()
    cont = test[(test["kind"] == "continuous") & (test["horizon_time"] == far)]["nlpd"].min()
    naive = test[(test["model"].str.contains("naive")) & (test["horizon_time"] == far)]["nlpd"].min()
    assert naive > cont + 1.0
    assert "continuous" in (out / "report.md").read_text()
    r2 = cli("compare", "--quick", "--out", "cmp", cwd=tmp_path)
    assert r2.returncode == 2 and "--force" in r2.stderr


@pytest.mark.slow
def test_fit_sde_lynx_hare_map(tmp_path):
    """`fit --model sde` end to end: the stochastic Lotka–Volterra drift family fitted to the
    bundled lynx–hare data by the continuous–discrete EKF writes its outputs, and a drift
    family observing the wrong number of coordinates is a one-line error. (The fit starts
    from the built-in parameters, which are near the posteriordb posterior, so the bounds
    below are a plausibility check only; parameter recovery is tested in test_sysid.py.)"""
    r = cli(
        "fit",
        "--dataset",
        "lynx_hare",
        "--model",
        "sde",
        "--drift",
        "lotka_volterra",
        "--steps",
        "150",
        "--lr",
        "0.05",
        "--no-progress",
        "--out",
        "sde",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "sde" / "fit.json").read_text())
    p = meta["map_parameters"]
    assert 0.3 < p["alpha"] < 0.9 and 0.5 < p["gamma"] < 1.2
    assert (tmp_path / "sde" / "forecast.png").stat().st_size > 0
    r2 = cli("fit", "--dataset", "lynx_hare", "--model", "sde", "--drift", "double_well", "--out", "x", cwd=tmp_path)
    assert r2.returncode == 2 and "observes 1 coordinate" in r2.stderr


def _ou_reference_posterior(t, y, obs_sd, prior_loc):
    """Dense reference for `fit --model sde --drift ornstein_uhlenbeck`: the exact Gaussian
    likelihood of OU data (x(t0) ~ N(y0, 1), as the CLI's filter starts) on a 2-D grid of
    (log lam, log sigma) with the CLI's LogNormal(log nominal, 1) priors; returns the
    posterior mean and sd of lam and sigma by quadrature."""
    from scipy.stats import multivariate_normal

    dt = t - t[0]
    u = np.linspace(-4.0, 1.5, 111)
    logp = np.empty((u.size, u.size))
    for i, ul in enumerate(u):
        for j, us in enumerate(u):
            lam, sig = np.exp(ul), np.exp(us)
            v = np.exp(-2 * lam * dt) * 1.0 + sig**2 / (2 * lam) * (1 - np.exp(-2 * lam * dt))
            lo = np.minimum.outer(np.arange(t.size), np.arange(t.size))
            C = v[lo] * np.exp(-lam * np.abs(t[:, None] - t[None]))
            logp[i, j] = (
                multivariate_normal.logpdf(y, y[0] * np.exp(-lam * dt), C + obs_sd**2 * np.eye(t.size))
                - 0.5 * (ul - prior_loc[0]) ** 2
                - 0.5 * (us - prior_loc[1]) ** 2
            )
    w = np.exp(logp - logp.max())
    w /= w.sum()
    out = {}
    for name, vals in (("lam", np.exp(u)[:, None]), ("diffusion_0", np.exp(u)[None, :])):
        m = float(np.sum(w * vals))
        out[name] = (m, float(np.sqrt(np.sum(w * (vals - m) ** 2))))
    return out


@pytest.mark.slow
def test_fit_sde_nuts_and_svi_match_dense_ou_posterior(tmp_path):
    """`fit --model sde --engine nuts|svi` on simulated Ornstein–Uhlenbeck data: the posterior
    over (lam, sigma) from NUTS through the continuous–discrete filter agrees with a dense
    quadrature reference within Monte Carlo error; the mean-field SVI posterior means are
    within half a reference sd of the reference (a Gaussian approximation in log space)."""
    import arviz as az

    rng = np.random.default_rng(3)
    lam, sig, obs_sd = 0.5, 0.5, 0.1
    t = np.sort(rng.uniform(0, 40, 60))
    x = [rng.normal(0, sig / np.sqrt(2 * lam))]
    for h in np.diff(t):
        a = np.exp(-lam * h)
        x.append(a * x[-1] + np.sqrt(sig**2 / (2 * lam) * (1 - a * a)) * rng.normal())
    y = np.asarray(x) + obs_sd * rng.normal(size=t.size)
    write_csv(tmp_path / "ou.csv", list(zip(t, y)))
    ref = _ou_reference_posterior(t, y, obs_sd, (np.log(0.5), np.log(0.5)))
    common = [
        "fit",
        "--csv",
        "ou.csv",
        "--model",
        "sde",
        "--drift",
        "ornstein_uhlenbeck",
        "--steps",
        "150",
        "--no-progress",
    ]
    r = cli(
        *common,
        "--engine",
        "nuts",
        "--chains",
        "2",
        "--warmup",
        "150",
        "--samples",
        "250",
        "--out",
        "nuts",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    post = az.from_netcdf(str(tmp_path / "nuts" / "posterior.nc")).posterior
    assert post["lam"].shape == (2, 250)
    for name, (m, sd) in ref.items():
        d = post[name].values.ravel()
        ess = float(az.ess(post[name].values))
        assert ess > 80, (name, ess)
        assert abs(d.mean() - m) < 4 * sd / np.sqrt(ess), (name, d.mean(), m, sd, ess)
        assert abs(d.std() - sd) < 0.25 * sd, (name, d.std(), sd)
    assert "r_hat" in (tmp_path / "nuts" / "summary.md").read_text()
    r = cli(*common, "--engine", "svi", "--lr", "0.02", "--out", "svi", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    post = az.from_netcdf(str(tmp_path / "svi" / "posterior.nc")).posterior
    for name, (m, sd) in ref.items():
        assert abs(float(post[name].mean()) - m) < 0.5 * sd, (name, float(post[name].mean()), m, sd)
    assert json.loads((tmp_path / "svi" / "fit.json").read_text())["engine"] == "svi"


@pytest.mark.slow
def test_fit_times_with_a_huge_offset(tmp_path):
    """Times in Unix-like seconds (offset 1e12, spacing 1): the command runs in float32, where
    1e12 + k cannot be told apart; times are shifted internally, so the MAP fit equals the fit
    of the same data with times starting at 0."""
    rng = np.random.default_rng(0)
    t = np.arange(40.0)
    y = np.sin(t / 4) + 0.1 * rng.normal(size=40)
    write_csv(tmp_path / "big.csv", [(f"{1e12 + a:.1f}", b) for a, b in zip(t, y)])
    write_csv(tmp_path / "zero.csv", list(zip(t, y)))
    summ = {}
    for name in ("big", "zero"):
        r = cli("fit", "--csv", f"{name}.csv", "--steps", "200", "--no-progress", "--out", name, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        rows = (tmp_path / name / "summary.csv").read_text().splitlines()[1:]
        summ[name] = {ln.split(",")[0]: float(ln.split(",")[1]) for ln in rows}
    for k, v in summ["zero"].items():
        assert summ["big"][k] == pytest.approx(v, rel=1e-3), k


def test_interrupt_while_writing_keeps_earlier_results(tmp_path, cli_inproc, monkeypatch):
    """Ctrl-C after some outputs are written (simulated: the markdown summary raises
    KeyboardInterrupt): exit 130, the earlier results under the final names are untouched,
    no temporary file is left, and the message says what was kept."""
    import probdyn.cli as cli_mod

    rows = [(i, np.sin(i / 3)) for i in range(30)]
    write_csv(tmp_path / "d.csv", rows)
    out = tmp_path / "out"
    out.mkdir()
    earlier = {f: f"earlier {f}" for f in ("posterior.nc", "summary.csv", "summary.md", "forecast.png", "fit.json")}
    for f, text in earlier.items():
        (out / f).write_text(text)

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_mod, "markdown_table", interrupt)
    r = cli_inproc("fit", "--csv", "d.csv", "--steps", "20", "--no-progress", "--force", "--out", "out", cwd=tmp_path)
    assert r.returncode == 130
    assert {p.name: p.read_text() for p in out.iterdir()} == earlier  # nothing new, nothing partial
    assert "no file written" in r.stderr and "posterior.nc" in r.stderr and "kept" in r.stderr


@pytest.mark.slow
def test_sigint_during_nuts(tmp_path):
    """A real Ctrl-C (SIGINT to the process) during `fit --engine nuts`: exit 130, no file under
    a final name, no temporary file, and a line saying nothing was written."""
    import signal
    import time

    rows = [(i, np.sin(i / 3)) for i in range(40)]
    write_csv(tmp_path / "d.csv", rows)
    env = subprocess_env()
    p = subprocess.Popen(
        [sys.executable, "-m", "probdyn", "fit", "--csv", "d.csv", "--engine", "nuts", "--out", "out", "--no-progress"],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a process started in the background (CI, nohup, &) ignores SIGINT and its children
        # inherit that: restore the default so that Python turns it into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = p.stdout.readline()  # "fitting a Markov GP ..." : the run has started
    assert "fitting" in first, first
    time.sleep(3.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 130, err[-2000:]
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    assert "interrupted" in err and "Traceback" not in err


def test_tutorial_sections_time_each_section(capsys):
    """Sections against a scripted clock: each section gets the time between its start and
    the next one; time before the first start is 'setup'; the total is their sum."""
    from probdyn.tutorials import Sections

    ticks = iter([0.0, 1.5, 4.0, 4.25, 10.0])
    s = Sections(clock=lambda: next(ticks))
    s.start("fit")  # setup: 0 -> 1.5
    s.start("plot")  # fit: 1.5 -> 4.0
    s.start("fit")  # plot: 4.0 -> 4.25
    out = s.stop()  # fit again: 4.25 -> 10.0
    assert out == {"setup": 1.5, "fit": 2.5 + 5.75, "plot": 0.25, "total": 10.0}
    assert "[plot: 0.2 s]" in capsys.readouterr().out
