"""Test-suite plumbing: XLA compile settings, the heaviest files first, and releasing compiled
programs before a worker runs out of memory maps. The folders under ``tests/`` mirror the
package; shared helpers (the repository root, the subprocess environment, the executed docs build)
are in ``tests/helpers.py``.

With ``pytest -n 2 --dist loadfile`` files are handed to workers in collection order, so
the tutorials' smoke runs (one executed docs build) and the CLI end-to-end runs (mostly XLA
compilation) are collected first; the short tests then fill in and both workers finish
together instead of one idling while the other runs the last tutorial.
"""

import gc
import os
import sys

# Most of the suite's time is XLA compiling small programs, not running them. LLVM's
# optimisation level 0 cuts compile time by 15-25 % here (measured: CLI end-to-end tests
# 84 s -> 64 s) and leaves the numerics alone (no fast-math either way). Set before any
# backend starts; inherited by the tutorial and CLI subprocesses. Library code and users'
# programs are untouched.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# Largest first (approximate seconds summed over a file's tests, 2-core VM, 2026-12-02).
HEAVY_FIRST = (
    "test_tutorials",  # ~320: the executed docs build runs all seven tutorials (2026-12-07)
    "test_cli",  # 150
    "test_kalman",
    "test_fractional_sde",
    "test_mcmc",
    "test_sparse_gp_sde",  # 55-100
    "test_kernels",
    "test_gp",
)


def _rank(item) -> int:
    name = item.path.name
    return next((i for i, p in enumerate(HEAVY_FIRST) if name.startswith(p)), len(HEAVY_FIRST))


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_rank)  # stable: the order within each file is kept


# Every XLA executable jax keeps cached holds its JIT-compiled code in memory maps, and Linux
# caps a process at vm.max_map_count of them (65530 by default). A long-lived xdist worker that
# runs half the suite passes that cap (measured: test_kalman_exact_obs adds 10 000 maps,
# test_gp 18 000), and from then on every compilation fails with "LLVM compilation error:
# Cannot allocate memory". After any test that leaves the worker above MAX_MAPS, drop jax's
# caches (measured: 23 500 -> 1 600 maps); the next tests recompile what they need.
MAX_MAPS = 20_000
_MAPS = "/proc/self/maps"


def pytest_runtest_teardown(item, nextitem):
    if "jax" not in sys.modules or not os.path.exists(_MAPS):
        return
    with open(_MAPS) as f:
        num_maps = sum(1 for _ in f)
    if num_maps > MAX_MAPS:
        sys.modules["jax"].clear_caches()
        gc.collect()
