"""Deprecated path: moved to :mod:`probdyn.models.fractional`; this module re-exports it for one release."""

import warnings

from probdyn.models.fractional import *  # noqa: F401,F403

warnings.warn(
    "probdyn.models.fractional_sde is deprecated and will be removed in the next release; "
    "import probdyn.models.fractional instead",
    DeprecationWarning,
    stacklevel=2,
)
