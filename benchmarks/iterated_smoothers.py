"""Iterated smoothers (``probdyn.inference.gaussian_filters``) on a pendulum observed through sin.

Model (Särkkä's pendulum): x = (angle, rate), Euler step ``dt = 0.0125``,
``x_{k+1} = (x0 + dt x1, x1 - 9.81 sin(x0) dt) + N(0, q [[dt^3/3, dt^2/2], [dt^2/2, dt]])``,
``y_k = sin(x0_k) + N(0, r)``, x_0 ~ N((1.5, 0), 0.1 I), simulated with a fixed seed.

For each length T and observation variance r it prints, side by side:
  * single-pass smoothers: the EKS (EKF + RTS with Jacobians at the filtered means; the
    iterations' default start, ``iterated_smoother(..., num_iters=0)``)
    and one posterior-linearisation pass from the EKS (the IPLS's first iterate);
  * IEKS (Gauss–Newton + Levenberg–Marquardt) and IPLS (cubature SLR), sequential and
    parallel-in-time Kalman schedules: iterations to convergence, wall time (compiled, median of
    ``--reps`` runs after a warm-up, including the EKS that starts them) and time per iteration;
  * accuracy: RMSE of the angle against the simulated path, and the MAP objective J of each
    mean path (the IEKS minimises J).

Run: ``PYTHONPATH=. nice -n 15 python benchmarks/iterated_smoothers.py [--quick]`` (float64;
``--quick``: T = 1000 only); writes ``benchmarks/iterated_smoothers_results.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from probdyn.inference.gaussian_filters import (  # noqa: E402
    iterated_posterior_linearisation_smoother,
    iterated_smoother,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DT, G = 0.0125, 9.81


def pendulum(T, r, q=0.3, seed=0):
    Q = q * np.array([[DT**3 / 3, DT**2 / 2], [DT**2 / 2, DT]])
    rng = np.random.default_rng(seed)
    x = np.zeros((T, 2))
    x[0] = [1.5, 0.0]
    L = np.linalg.cholesky(Q)
    for k in range(T - 1):
        x[k + 1] = [x[k, 0] + DT * x[k, 1], x[k, 1] - G * np.sin(x[k, 0]) * DT] + L @ rng.normal(size=2)
    y = np.sin(x[:, :1]) + np.sqrt(r) * rng.normal(size=(T, 1))
    return Q, y, x


def f(x, k):
    return jnp.stack([x[0] + DT * x[1], x[1] - G * jnp.sin(x[0]) * DT])


def h(x, k):
    return jnp.sin(x[:1])


def objective(m, Q, R, y, m0, P0):
    """The MAP objective J of a path (the IEKS's)."""
    k = jnp.arange(m.shape[0])
    rf = m[1:] - jax.vmap(f)(m[:-1], k[:-1])
    rh = y - jax.vmap(h)(m, k)
    e0 = m[0] - m0
    return 0.5 * float(
        e0 @ np.linalg.solve(P0, e0)
        + jnp.einsum("ki,ij,kj->", rf, jnp.asarray(np.linalg.inv(Q)), rf)
        + jnp.sum(rh**2) / R[0, 0]
    )


def timed(fn, reps):
    fn()  # compile
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out.mean)
        ts.append(time.perf_counter() - t0)
    return out, float(np.median(ts))


def eks(Q, R, y, m0, P0):
    """Single-pass extended Kalman smoother: the iterations' default start, returned by
    ``iterated_smoother`` with ``num_iters=0`` (EKF, then RTS with the transition linearised at
    the filtered means)."""
    return iterated_smoother(f, Q, h, R, y, m0, P0, num_iters=0, parallel=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    sizes = [1000] if a.quick else [1000, 10000]
    rows = []
    m0, P0 = np.array([1.5, 0.0]), 0.1 * np.eye(2)
    for T in sizes:
        for r in (0.1, 0.01):
            Q, y, x = pendulum(T, r)
            R = np.array([[r]])
            row = {"T": T, "r": r}
            for name, par in (("sequential", False), ("parallel", True)):
                res, t = timed(lambda: iterated_smoother(f, Q, h, R, y, m0, P0, num_iters=200, parallel=par), a.reps)
                row[f"ieks {name}"] = (len(res.objective) - 1, res.num_rejected, t, res.mean, res.converged)
                res, t = timed(
                    lambda: iterated_posterior_linearisation_smoother(
                        f, Q, h, R, y, m0, P0, num_iters=200, parallel=par
                    ),
                    a.reps,
                )
                row[f"ipls {name}"] = (len(res.change), 0, t, res.mean, res.converged)
            res, t = timed(lambda: eks(Q, R, y, m0, P0), a.reps)
            row["EKS (single pass)"] = (1, 0, t, res.mean, True)
            one = iterated_posterior_linearisation_smoother(f, Q, h, R, y, m0, P0, num_iters=1, parallel=False)
            row["one posterior-linearisation pass from the EKS"] = (1, 0, float("nan"), one.mean, False)
            row["rmse"] = {
                k: float(np.sqrt(np.mean((np.asarray(v[3][:, 0]) - x[:, 0]) ** 2)))
                for k, v in row.items()
                if isinstance(v, tuple)
            }
            row["J"] = {
                k: objective(jnp.asarray(v[3]), Q, R, jnp.asarray(y), m0, P0)
                for k, v in row.items()
                if isinstance(v, tuple)
            }
            rows.append(row)
            print(
                T,
                r,
                {k: (v[0], v[1], round(v[2], 3)) for k, v in row.items() if isinstance(v, tuple)},
                row["rmse"],
                flush=True,
            )
    head = [
        f"{time.strftime('%Y-%m-%d')}; machine: {platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__};"
        f" float64; wall times are medians of {a.reps} compiled runs (including the host loop).",
        "",
        "| T | r | smoother | iterations (rejected) | converged | wall s | ms / iteration | angle RMSE"
        " | J (MAP objective) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for k, v in row.items():
            if not isinstance(v, tuple):
                continue
            per = 1e3 * v[2] / max(v[0], 1)
            head.append(
                f"| {row['T']} | {row['r']} | {k} | {v[0]} ({v[1]}) | {v[4]} | {v[2]:.3f} | {per:.2f} |"
                f" {row['rmse'][k]:.4f} | {row['J'][k]:.2f} |"
            )
    out = "\n".join(head)
    print(out)
    with open(os.path.join(ROOT, "benchmarks", "iterated_smoothers_results.md"), "w") as fh:
        fh.write("# Iterated smoothers on the pendulum (`benchmarks/iterated_smoothers.py`)\n\n" + out + "\n")


if __name__ == "__main__":
    main()
