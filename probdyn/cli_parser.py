"""The arguments of the ``probdyn`` command (:func:`build_parser`); :mod:`probdyn.cli` runs them."""

from __future__ import annotations

import argparse
import os

from probdyn.datasets.series import SERIES
from probdyn.gp_fit import KERNEL_NAMES

__all__ = ["build_parser"]

SYSTEMS_HELP = "ornstein_uhlenbeck, damped_pendulum, van_der_pol, lotka_volterra, double_well"
FMT = argparse.RawDescriptionHelpFormatter


def _common(sp) -> None:
    sp.add_argument(
        "--csv",
        help="CSV file with a header row; times are shifted to start at 0 internally, so any "
        "offset (e.g. Unix seconds) is fine, and keep their unit",
    )
    sp.add_argument("--time-col", help="name of the time column (default: the first column)")
    sp.add_argument("--columns", help="comma-separated value columns (default: all others)")
    sp.add_argument("--out", default="probdyn-out", help="output folder (default: ./probdyn-out)")
    sp.add_argument("--force", action="store_true", help="overwrite existing outputs")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_compare(sub) -> None:
    c = sub.add_parser(
        "compare",
        help="discrete- vs continuous-time models of one system (the main job)",
        formatter_class=FMT,
        description="Fit a continuous-time (SDE) and a discrete-time model to the same data with the same\n"
        "engine and compare forecasts (RMSE, NLPD vs horizon), parameters and run time.",
        epilog="examples:\n  probdyn compare --quick                      # simulated Lotka-Volterra\n"
        "  probdyn compare --system van_der_pol --out vdp\n"
        "  probdyn compare --csv data.csv --time-col t --columns a,b --system van_der_pol",
    )
    _common(c)
    c.add_argument(
        "--system",
        help=f"built-in system: {SYSTEMS_HELP} (default lotka_volterra, parameters of the "
        "lynx-hare posterior); with --csv: the drift family to fit",
    )
    c.add_argument("--test-spacing", type=float, help="observation spacing of the test data (simulated systems)")
    c.add_argument("--quick", action="store_true", help="small settings, about a minute")


def _add_fit(sub) -> None:
    f = sub.add_parser(
        "fit",
        help="fit a model to a CSV time series or an embedded dataset",
        formatter_class=FMT,
        epilog="examples:\n  probdyn fit --dataset co2 --kernel matern52+sho --engine map\n"
        "  probdyn fit --csv data.csv --time-col t --columns y --engine nuts --chains 4\n"
        "  probdyn fit --dataset lynx_hare --model sde --drift lotka_volterra --steps 300\n"
        "  probdyn fit --dataset lynx_hare --model sde --drift lotka_volterra --engine nuts --chains 2",
    )
    _common(f)
    f.add_argument("--dataset", choices=SERIES, help="embedded dataset, instead of --csv (default: nile)")
    f.add_argument("--model", choices=["markov-gp", "sde"], default="markov-gp")
    f.add_argument(
        "--kernel",
        default="matern32",
        help="sum/product of " + ", ".join(KERNEL_NAMES) + " (e.g. matern32+sho); priors on the "
        "standardised series: lengthscales and periods log-normal with 1%% of their mass below the "
        "median spacing (periods: twice it) and 1%% above the time span, amplitudes and SHO quality "
        "LogNormal(0 | log 3, 1), noise sd LogNormal(log 0.1, 1)",
    )
    f.add_argument(
        "--drift", default="ornstein_uhlenbeck", help=f"built-in drift family for --model sde: {SYSTEMS_HELP}"
    )
    f.add_argument(
        "--engine",
        choices=["map", "svi", "nuts"],
        default="map",
        help="map: maximum a posteriori (markov-gp) / maximum likelihood (sde); svi: mean-field "
        "normal guide; nuts: NUTS with --chains chains (sde: started at the ML fit)",
    )
    f.add_argument("--chains", type=int, default=4)
    f.add_argument("--warmup", type=int, default=500)
    f.add_argument("--samples", type=int, default=1000)
    f.add_argument("--steps", type=int, default=1500, help="optimisation steps (map, svi)")
    f.add_argument("--lr", type=float, default=0.02)
    f.add_argument("--horizon", type=float, help="forecast horizon >= 0 in time units (default: 10%% of the span)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``probdyn`` command; ``command`` names the sub-command (``None`` if none)."""
    p = argparse.ArgumentParser(
        prog="probdyn",
        description="probabilistic dynamical systems in JAX",
        formatter_class=FMT,
        epilog="examples:\n  probdyn compare --quick\n  probdyn fit --dataset co2 --kernel matern52+sho\n"
        "  probdyn tutorials\n  probdyn run markov_gp_regression --smoke",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_compare(sub)
    _add_fit(sub)
    sub.add_parser("tutorials", help="list the tutorials")
    r = sub.add_parser(
        "run",
        help="run a tutorial and collect its figures and metrics",
        formatter_class=FMT,
        epilog="example:\n  probdyn run markov_gp_regression --smoke --out runs",
    )
    r.add_argument("name")
    r.add_argument("--smoke", action="store_true", help="tiny sizes (PROBDYN_SMOKE=1)")
    r.add_argument("--out", default=os.path.join("probdyn-out", "tutorials"))
    r.add_argument("--force", action="store_true")
    return p
