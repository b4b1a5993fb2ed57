"""Deprecated path: moved to :mod:`probdyn.models.sysid.systems`; this module re-exports it for one release."""

import warnings

from probdyn.models.sysid.systems import *  # noqa: F401,F403

warnings.warn(
    "probdyn.models.sysid_systems is deprecated and will be removed in the next release; "
    "import probdyn.models.sysid.systems instead",
    DeprecationWarning,
    stacklevel=2,
)
