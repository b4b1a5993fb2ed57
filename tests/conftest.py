"""Test-suite scheduling only (no fixtures): the heaviest files run first.

With ``pytest -n 2 --dist loadfile`` files are handed to workers in collection order, so
the long tutorial smoke tests and CLI end-to-end runs (30-90 s each, mostly XLA
compilation) are collected first; the short tests then fill in and both workers finish
together instead of one idling while the other runs the last tutorial.
"""

HEAVY_FIRST = ("test_tutorial_", "test_cli", "test_kalman", "test_mcmc", "test_sparse_gp_sde")


def _rank(item) -> int:
    name = item.path.name
    return next((i for i, p in enumerate(HEAVY_FIRST) if name.startswith(p)), len(HEAVY_FIRST))


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_rank)  # stable: the order within each file is kept
