r"""NUTS/HMC for numpyro programs, with numpyro's or blackjax's kernels, -> ArviZ ``xarray.DataTree``.

One driver serves both backends: the numpyro model is turned into a potential on an
unconstrained space (numpyro's initialisation utilities and transforms), chains are
initialised from the prior (``init_strategy``), warmed up and sampled *vectorised* on one
device, and split across devices with jax sharding when several are present (the chain
axis is sharded over a 1-D mesh). Compile time is measured apart from run time.

* ``backend="numpyro"``: :class:`numpyro.infer.NUTS` / :class:`~numpyro.infer.HMC` kernels
  (Stan-style windowed adaptation inside the kernel);
* ``backend="blackjax"``: :func:`blackjax.nuts` / :func:`blackjax.hmc` with
  :func:`blackjax.window_adaptation` on the numpyro model's potential.

The result has groups ``posterior`` (numpyro site names, constrained values and
deterministic sites), ``sample_stats`` (``diverging``, ``energy``, ``step_size``,
``tree_depth``, ``n_steps``, ``acceptance_rate``, ``lp``), ``observed_data`` and
``log_likelihood`` (pointwise ``log p(y_t | y_{<t})`` for probdyn distributions, else the
site's ``log_prob``). Timings and device counts are in ``idata.attrs``. The result is
what ArviZ >= 1.0 builds and reads (an ``xarray.DataTree``; ``idata.to_netcdf(path)`` and
``arviz.from_netcdf(path)`` round-trip it); diagnostics come from arviz-stats.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any, SupportsInt

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from numpyro import handlers
from numpyro.distributions import ExpandedDistribution
from numpyro.infer.util import init_to_uniform, initialize_model

from probdyn._checks import as_key, check_int, fix_lazy_numpyro, is_concrete
from probdyn._typing import KeyInput

fix_lazy_numpyro()

__all__ = ["sample", "diagnostics", "to_inference_data", "model_sites", "ConvergenceWarning", "BACKENDS", "SAMPLERS"]

BACKENDS = ("numpyro", "blackjax")
SAMPLERS = ("nuts", "hmc")
CHAIN_METHODS = ("vectorized", "sequential")


class ConvergenceWarning(UserWarning):
    """R-hat above threshold or divergent transitions after sampling."""


# ----------------------------------------------------------------------------------
# small utilities
# ----------------------------------------------------------------------------------
def _chain_sharding(num_chains: int):
    """NamedSharding over the chain axis on as many local devices as divide num_chains."""
    n = math.gcd(num_chains, jax.local_device_count())
    if n <= 1:
        return None, 1
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:n]), ("chains",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("chains")), n


def _put(tree, sharding):
    if sharding is None:
        return tree
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if jnp.ndim(x) > 0 else x, tree)


class _Progress:
    """tqdm bar driven from inside compiled scans through ``jax.debug.callback``."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.enabled, self.total, self.desc, self.bar = enabled, total, desc, None
        self.rate = max(1, total // 20)

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, leave=True)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.n = self.total
            self.bar.refresh()
            self.bar.close()

    def _update(self, i):
        if self.bar is not None:
            self.bar.n = int(i) + 1
            self.bar.refresh()

    def tick(self, i):
        """Call inside a scan body with the (unbatched) step index."""
        if not self.enabled:
            return
        jax.lax.cond((i + 1) % self.rate == 0, lambda: jax.debug.callback(self._update, i), lambda: None)


class _Clock:
    """Wall-clock stamps taken from inside a compiled scan: the end of chain ``c``'s warmup and
    of its last draw (host callbacks at those two steps only), so warmup and sampling times are
    measured, not apportioned."""

    def __init__(self):
        self.stamps = {}

    def _record(self, chain, kind, _after):
        key, now = (int(np.max(chain)), int(kind)), time.perf_counter()
        self.stamps[key] = max(self.stamps.get(key, now), now)  # sharded chains call once per device

    def stamp(self, i, chain, last_warmup: int, last: int, after):
        """Inside a scan body, after step ``i`` produced ``after`` (so the stamp follows it)."""
        for step, kind in ((last_warmup, 0), (last, 1)):
            if step >= 0:
                jax.lax.cond(i == step, lambda k=kind: jax.debug.callback(self._record, chain, k, after), lambda: None)

    def split(self, start: float, num_chains: int) -> tuple[float, float]:
        """(warmup, sampling) seconds summed over chains run one after another from ``start``."""
        warm = samp = 0.0
        for c in range(num_chains):
            end = self.stamps.get((c, 1), start)
            mid = self.stamps.get((c, 0), start)
            warm, samp, start = warm + mid - start, samp + end - mid, end
        return warm, samp


def _batched_map(fn, xs, n: int, max_batch: int = 256):
    """``vmap(fn)(xs)`` over a leading axis of size n, in jit-compiled chunks of a divisor of n."""
    b = max(d for d in range(1, min(n, max_batch) + 1) if n % d == 0)
    return jax.jit(lambda x: jax.lax.map(fn, x, batch_size=b))(xs)


def _timed_compile(fn, *args):
    """``jit(fn)(*args)`` -> (out, compile seconds, run seconds, time.perf_counter() at the run's start)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    t1 = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    return out, t1 - t0, time.perf_counter() - t1, t1


def check_initial_points(model, args, kwargs, z, potential_energy) -> None:
    """``ValueError`` when a chain starts where the log density is not finite (numpyro's
    initialisation found no valid point), naming the sample sites whose log density is NaN or
    ``-inf`` there. ``z``: the chains' unconstrained initial points (leading axis chains),
    ``potential_energy`` (chains,)."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(potential_energy)))
    if bad.size:
        from numpyro.infer.util import constrain_fn

        params = constrain_fn(model, args, kwargs, jax.tree.map(lambda x: x[bad[0]], z))
        _no_valid_start(model, args, kwargs, params, f"{bad.size} of {np.size(potential_energy)} chain(s)")


def _no_valid_start(model, args, kwargs, params: dict, chains: str):
    from numpyro.infer.util import log_density

    with warnings.catch_warnings():  # numpyro's out-of-support notes: the error below says it
        warnings.simplefilter("ignore")
        _, tr = log_density(model, args, kwargs, params)
        sites = [
            name
            for name, site in tr.items()
            if site["type"] == "sample" and not np.all(np.isfinite(np.asarray(site["fn"].log_prob(site["value"]))))
        ]
    where = f"at site(s) {', '.join(map(repr, sites))}" if sites else "in a factor or a transform's Jacobian"
    raise ValueError(
        f"the model's log density is not finite at the initial point of {chains} (no valid "
        f"starting point was found); it is NaN or -inf {where}: check those sites' parameters, "
        "priors and observed values, or pass an init_strategy"
    )


# ----------------------------------------------------------------------------------
# backends: each returns (z (chain, draw, ...), stats dict (chain, draw), timings)
# ----------------------------------------------------------------------------------
def _run_numpyro(
    model,
    key,
    args,
    kwargs,
    sampler,
    num_warmup,
    num_samples,
    num_chains,
    progress_bar,
    sampler_kwargs,
    init_strategy,
    sharding,
    chain_method="vectorized",
):
    from numpyro.infer import HMC, NUTS

    kern = (NUTS if sampler == "nuts" else HMC)(model, init_strategy=init_strategy, **sampler_kwargs)
    keys = jax.random.split(key, num_chains)
    total = num_warmup + num_samples
    sequential = chain_method == "sequential"

    def init(k):  # one key (2,) -> one chain's state; keys (C, 2) -> a vectorised state
        return kern.init(k, num_warmup, None, model_args=args, model_kwargs=kwargs)

    # One scan over warmup + sampling (numpyro's kernel adapts while state.i < num_warmup), so
    # the potential's gradient is compiled once; draws after warmup are kept.
    clock = _Clock()

    def run(state, c=0):
        def body(st, i):
            st = kern.sample(st, args, kwargs)
            prog.tick(c * total + i)
            clock.stamp(i, c, num_warmup - 1, total - 1, st.potential_energy)
            return st, (
                st.z,
                dict(
                    diverging=st.diverging,
                    energy=st.energy,
                    n_steps=st.num_steps,
                    step_size=st.adapt_state.step_size,
                    acceptance_rate=st.accept_prob,
                    lp=-st.potential_energy,
                ),
            )

        st, out = jax.lax.scan(body, state, jnp.arange(total))
        return jax.tree.map(lambda x: x[num_warmup:], out)

    t0 = time.perf_counter()
    if sequential:  # chains one after another inside one program: no lock-step across chains
        init_time = 0.0  # each chain's initialisation runs inside the compiled program
        seq = lambda ks: jax.lax.map(lambda a: run(init(a[0]), a[1]), (ks, jnp.arange(num_chains)))  # noqa: E731
        with _Progress(
            progress_bar, total * num_chains, f"{num_chains} chains in sequence (numpyro, {num_warmup} warmup each)"
        ) as prog:
            (z, stats), comp, _, start = _timed_compile(seq, keys)
    else:
        # init under jit: numpyro's initialisation otherwise evaluates the potential's gradient eagerly
        state = jax.jit(init)(keys)
        jax.block_until_ready(state)
        init_time = time.perf_counter() - t0
        check_initial_points(model, args, kwargs, state.z, state.potential_energy)
        state = _put(state, sharding)
        with _Progress(progress_bar, total, f"warmup+sample (numpyro, {num_warmup} warmup)") as prog:
            (z, stats), comp, _, start = _timed_compile(run, state)
        swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731  (draw, chain) -> (chain, draw)
        z, stats = jax.tree.map(swap, z), jax.tree.map(swap, stats)
    if sampler == "nuts":
        stats["tree_depth"] = jnp.ceil(jnp.log2(stats["n_steps"] + 1.0)).astype(jnp.int32)
    warm, samp = clock.split(start, num_chains if sequential else 1)
    timings = dict(init=init_time, compile_warmup=comp, warmup=warm, compile_sample=0.0, sample=samp)
    post = kern.postprocess_fn(args, kwargs)
    return z, stats, post, timings


def _run_blackjax(
    model,
    key,
    args,
    kwargs,
    sampler,
    num_warmup,
    num_samples,
    num_chains,
    progress_bar,
    sampler_kwargs,
    init_strategy,
    sharding,
):
    import blackjax

    kinit, kwarm, ksamp = jax.random.split(key, 3)
    t0 = time.perf_counter()
    try:
        info = initialize_model(
            jax.random.split(kinit, num_chains),
            model,
            init_strategy=init_strategy,
            dynamic_args=True,
            model_args=args,
            model_kwargs=kwargs,
        )
    except RuntimeError as e:  # numpyro: "Cannot find valid initial parameters"
        tr = handlers.trace(handlers.seed(model, kinit)).get_trace(*args, **kwargs)
        prior = {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v.get("is_observed")}
        _no_valid_start(model, args, kwargs, prior, f"all {num_chains} chain(s)")
        raise e
    init_time = time.perf_counter() - t0
    check_initial_points(model, args, kwargs, info.param_info.z, info.param_info.potential_energy)
    potential = info.potential_fn(*args, **kwargs)
    post_gen = info.postprocess_fn
    logdensity = lambda z: -potential(z)  # noqa: E731
    skw = dict(sampler_kwargs)
    target = skw.pop("target_accept_prob", skw.pop("target_acceptance_rate", 0.8))
    dense = skw.pop("dense_mass", False)
    if sampler == "hmc":
        skw.setdefault("num_integration_steps", 16)
    algo = blackjax.nuts if sampler == "nuts" else blackjax.hmc
    z0 = _put(info.param_info.z, sharding)
    wkeys = _put(jax.random.split(kwarm, num_chains), sharding)

    def warm(z0, wkeys):
        def one(k, z):
            wa = blackjax.window_adaptation(
                algo, logdensity, is_mass_matrix_diagonal=not dense, target_acceptance_rate=target, **skw
            )
            # blackjax annotates AdaptationAlgorithm.run without its keyword arguments
            (st, params), _ = wa.run(k, z, num_steps=num_warmup)  # pyright: ignore[reportCallIssue]
            return st, params

        return jax.vmap(one)(wkeys, z0)

    if progress_bar:
        print(f"warmup (blackjax): {num_chains} chains x {num_warmup} steps ...", flush=True)
    (state, params), cw, tw, _ = _timed_compile(warm, z0, wkeys)
    skeys = _put(jax.random.split(ksamp, num_chains), sharding)

    def draw(prog):
        def run(state, params, skeys):
            def step1(st, prm, k) -> Any:  # blackjax annotates the generic State / Info bases
                kern = algo(logdensity, **prm)
                return kern.step(k, st)

            def body(st, i):
                ks = jax.vmap(lambda k: jax.random.fold_in(k, i))(skeys)
                st, inf = jax.vmap(step1)(st, params, ks)
                prog.tick(i)
                out = dict(
                    diverging=inf.is_divergent,
                    energy=inf.energy,
                    acceptance_rate=inf.acceptance_rate,
                    lp=st.logdensity,
                    n_steps=inf.num_integration_steps,
                )
                if sampler == "nuts":
                    out["tree_depth"] = inf.num_trajectory_expansions
                return st, (st.position, out)

            return jax.lax.scan(body, state, jnp.arange(num_samples))

        return run

    with _Progress(progress_bar, num_samples, "sample (blackjax)") as prog:
        (state, (z, stats)), cs, ts, _ = _timed_compile(draw(prog), state, params, skeys)
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    z, stats = jax.tree.map(swap, z), jax.tree.map(swap, stats)
    stats["step_size"] = jnp.broadcast_to(params["step_size"][:, None], (num_chains, num_samples))
    post = post_gen(*args, **kwargs)
    return z, stats, post, dict(init=init_time, compile_warmup=cw, warmup=tw, compile_sample=cs, sample=ts)


# ----------------------------------------------------------------------------------
# DataTree assembly
# ----------------------------------------------------------------------------------
def _site_log_lik(fn, value):
    base = fn.base_dist if isinstance(fn, ExpandedDistribution) else fn
    if hasattr(base, "pointwise_log_prob"):
        lp = base.pointwise_log_prob(value)  # pyright: ignore[reportAttributeAccessIssue]  (hasattr above)
        if base is not fn:
            lp = jnp.broadcast_to(lp, fn.batch_shape + lp.shape[len(base.batch_shape) :])
        return lp
    return fn.log_prob(value)


def model_sites(model: Callable, args: tuple = (), kwargs: dict | None = None) -> tuple[list[str], dict]:
    """Latent sample-site names and observed values of ``model(*args, **kwargs)``.

    The model is traced abstractly (``jax.eval_shape``: nothing is computed), and only run
    eagerly, once, when an observed value is not a concrete array there (computed inside
    the model) or the model cannot be traced abstractly.
    """
    kwargs = kwargs or {}
    found = {}

    def trace_once():
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
        found["latent"] = [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
        found["observed"] = {n: s["value"] for n, s in tr.items() if s["type"] == "sample" and s["is_observed"]}

    try:
        jax.eval_shape(trace_once)
        if all(is_concrete(v) for v in found["observed"].values()):
            return found["latent"], found["observed"]
    except Exception:  # noqa: BLE001 - value-dependent Python in the model: trace it eagerly below
        pass
    trace_once()
    return found["latent"], found["observed"]


def _log_likelihood(model, samples: dict, args, kwargs, num_chains: int, num_draws: int):
    flat = jax.tree.map(lambda x: x.reshape((num_chains * num_draws,) + x.shape[2:]), samples)

    def one(params):
        tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=params)).get_trace(*args, **kwargs)
        out = {}
        for name, s in tr.items():
            if s["type"] == "sample" and s["is_observed"]:
                lp = _site_log_lik(s["fn"], s["value"])
                if s.get("scale") is not None:
                    lp = lp * s["scale"]
                out[name] = lp
        return out

    ll = _batched_map(one, flat, num_chains * num_draws)
    return jax.tree.map(lambda x: x.reshape((num_chains, num_draws) + x.shape[1:]), ll)


def to_inference_data(
    model: Callable,
    samples: dict,
    *args: Any,
    sample_stats: dict | None = None,
    log_likelihood: bool = True,
    **kwargs: Any,
) -> xr.DataTree:
    """ArviZ results (``xarray.DataTree``) from constrained site values ``samples`` (chain, draw, ...).

    Adds ``observed_data`` and (optionally) the pointwise ``log_likelihood`` of every
    observed site of ``model(*args, **kwargs)``. Used by MCMC and by SVI.
    """
    return _inference_data(model, samples, args, kwargs, model_sites(model, args, kwargs), sample_stats, log_likelihood)


def _inference_data(model, samples, args, kwargs, sites, sample_stats, log_likelihood) -> xr.DataTree:
    """:func:`to_inference_data` with the :func:`model_sites` ``(latent, observed)`` already found."""
    latent, observed = sites
    first = np.shape(samples[latent[0]]) if latent else np.shape(next(iter(samples.values())))
    num_chains, num_draws = first[:2]
    posterior = {k: np.asarray(v) for k, v in samples.items() if k not in observed}
    groups = dict(posterior=posterior)
    if sample_stats is not None:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in sample_stats.items()}
    if observed:
        groups["observed_data"] = {k: np.asarray(v) for k, v in observed.items()}
        if log_likelihood:
            ll = _log_likelihood(
                model, {k: samples[k] for k in latent if k in samples}, args, kwargs, num_chains, num_draws
            )
            groups["log_likelihood"] = {k: np.asarray(v) for k, v in ll.items()}
    return az.from_dict(groups)


def diagnostics(idata: xr.DataTree, var_names=None) -> pd.DataFrame:
    """arviz-stats' diagnostics table (``ess_bulk``, ``ess_tail``, ``r_hat``, ``mcse_mean``,
    ``mcse_sd``) per scalar parameter (a pandas DataFrame)."""
    table = az.summary(idata, var_names=var_names, kind="diagnostics", round_to="none")
    assert isinstance(table, pd.DataFrame)  # a DataFrame for kind='diagnostics'
    return table


def _report(idata, num_chains: int, rhat_threshold: float, verbose: bool):
    table = diagnostics(idata)
    ndiv = int(np.asarray(idata.sample_stats["diverging"]).sum())
    ntot = int(np.asarray(idata.sample_stats["diverging"]).size)
    if verbose:
        print(table.round(3).to_string())
        print(f"divergences: {ndiv} / {ntot}")
    msgs = []
    if num_chains > 1:
        rh = table["r_hat"]
        bad = rh.loc[rh > rhat_threshold]
        if len(bad):
            msgs.append(f"R-hat > {rhat_threshold} for {list(bad.index)} (max {bad.max():.3f})")
    if ndiv:
        msgs.append(f"{ndiv} divergent transitions out of {ntot} (raise target_accept_prob or reparameterise)")
    for m in msgs:
        warnings.warn(f"MCMC convergence: {m}", ConvergenceWarning, stacklevel=3)
    return table, ndiv


# ----------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------
def sample(
    model: Callable,
    key: KeyInput,
    *args: Any,
    backend: str = "numpyro",
    sampler: str = "nuts",
    num_warmup: SupportsInt = 500,
    num_samples: SupportsInt = 500,
    num_chains: SupportsInt = 4,
    progress_bar: bool = True,
    sampler_kwargs: dict | None = None,
    init_strategy: Callable = init_to_uniform,
    chain_method: str = "vectorized",
    log_likelihood: bool = True,
    report: bool = True,
    rhat_threshold: float = 1.01,
    **kwargs: Any,
) -> xr.DataTree:
    """Run NUTS/HMC on a numpyro ``model(*args, **kwargs)``; ArviZ results as ``xarray.DataTree``.

    Args:
        model: numpyro program; observed sites give ``observed_data``/``log_likelihood``.
        key: jax PRNG key.
        backend: ``"numpyro"`` or ``"blackjax"``.
        sampler: ``"nuts"`` or ``"hmc"``.
        num_warmup, num_samples, num_chains: sizes (chains run vectorised / sharded).
        progress_bar: tqdm bars for warmup and sampling.
        sampler_kwargs: kernel options, e.g. ``target_accept_prob``, ``dense_mass``,
            ``max_tree_depth`` (numpyro), ``num_integration_steps`` (hmc).
        init_strategy: numpyro init strategy for the chains' initial points.
        chain_method: ``"vectorized"`` (chains vmapped in lock-step and sharded over the
            local devices) or ``"sequential"`` (numpyro backend: chains one after another in
            one compiled program, each with its own tree sizes and inner solver steps; faster
            on CPU for models with adaptive inner loops such as ODE solves).
        log_likelihood: compute the ``log_likelihood`` group.
        report: print the diagnostics table; warnings (:class:`ConvergenceWarning`) for
            R-hat > ``rhat_threshold`` and divergences are always issued.
        **kwargs: keyword arguments of ``model``.

    Returns:
        ``xarray.DataTree`` (posterior arrays (chain, draw, *site_shape)); ``attrs`` hold
        ``backend``, ``num_devices``, timings (``compile_time_s``, ``warmup_time_s``,
        ``sampling_time_s``) and ``num_divergences``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if not callable(model):
        raise TypeError("model must be a callable numpyro program")
    num_warmup = check_int(num_warmup, "num_warmup", 0)
    num_samples = check_int(num_samples, "num_samples", 1)
    num_chains = check_int(num_chains, "num_chains", 1)
    sampler_kwargs = dict(sampler_kwargs or {})
    if backend == "blackjax" and num_warmup == 0:
        raise ValueError("backend='blackjax' needs num_warmup >= 1 (window adaptation tunes the step size)")
    key = as_key(key)

    sites = model_sites(model, args, kwargs)
    if not sites[0]:
        raise ValueError("model has no latent sample sites to infer")
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"unknown chain_method {chain_method!r}; choose one of {CHAIN_METHODS}")
    if chain_method == "sequential" and backend != "numpyro":
        raise ValueError("chain_method='sequential' is available with backend='numpyro'")
    sharding, ndev = _chain_sharding(num_chains) if chain_method == "vectorized" else (None, 1)
    if backend == "numpyro":
        z, stats, post, times = _run_numpyro(
            model,
            key,
            args,
            kwargs,
            sampler,
            num_warmup,
            num_samples,
            num_chains,
            progress_bar,
            sampler_kwargs,
            init_strategy,
            sharding,
            chain_method,
        )
    else:
        z, stats, post, times = _run_blackjax(
            model,
            key,
            args,
            kwargs,
            sampler,
            num_warmup,
            num_samples,
            num_chains,
            progress_bar,
            sampler_kwargs,
            init_strategy,
            sharding,
        )
    out_devices = len(jax.tree.leaves(z)[0].sharding.device_set)

    def constrain(zz):
        flat = jax.tree.map(lambda x: x.reshape((num_chains * num_samples,) + x.shape[2:]), zz)
        c = _batched_map(post, flat, num_chains * num_samples)
        return jax.tree.map(lambda x: x.reshape((num_chains, num_samples) + x.shape[1:]), c)

    samples = constrain(z)
    idata = _inference_data(model, samples, args, kwargs, sites, stats, log_likelihood)
    compile_time = times["compile_warmup"] + times["compile_sample"]
    idata.attrs.update(
        backend=backend,
        sampler=sampler,
        chain_method=chain_method,
        num_chains=num_chains,
        num_devices=int(ndev),
        output_devices=int(out_devices),
        init_time_s=float(times["init"]),
        compile_time_s=float(compile_time),
        warmup_time_s=float(times["warmup"]),
        sampling_time_s=float(times["sample"]),
    )
    _, ndiv = _report(idata, num_chains, rhat_threshold, report)
    idata.attrs["num_divergences"] = ndiv
    return idata
