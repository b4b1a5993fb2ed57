"""Model families built on the Kalman engine and the inference engines.

Import the family you need: ``from probdyn.models import sysid, mgpvae, sde_posteriors,
fractional``.
"""

import importlib

_FAMILIES = ("sysid", "mgpvae", "sde_posteriors", "fractional")
__all__ = list(_FAMILIES)


def __getattr__(name):
    if name in _FAMILIES:
        return importlib.import_module(f"probdyn.models.{name}")
    raise AttributeError(f"module 'probdyn.models' has no attribute {name!r}")
