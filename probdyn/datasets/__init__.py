"""Offline datasets and simulators (nothing is downloaded at run time).

Each loader lives in its own module; names are imported lazily so that importing
``probdyn.datasets`` stays cheap.
"""

import importlib

_WHERE = {
    "lynx_hare": "probdyn.datasets.hudson_bay",
    "rotating_digits": "probdyn.datasets.digits_video",
    "pendulum_sensors": "probdyn.datasets.digits_video",
    "moving_digits": "probdyn.datasets.moving_digits_video",
    "load_series": "probdyn.datasets.series",
    "read_csv_series": "probdyn.datasets.series",
    "SERIES": "probdyn.datasets.series",
    "SERIES_UNITS": "probdyn.datasets.series",
    "vgpdp_split": "probdyn.datasets.vgpdp",
    "VGPDP_BUNDLED": "probdyn.datasets.vgpdp",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'probdyn.datasets' has no attribute {name!r}")
