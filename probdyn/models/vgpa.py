"""Deprecated path: moved to :mod:`probdyn.models.sde_posteriors.vgpa`; this module re-exports it for one release."""

import warnings

from probdyn.models.sde_posteriors.vgpa import *  # noqa: F401,F403

warnings.warn(
    "probdyn.models.vgpa is deprecated and will be removed in the next release; "
    "import probdyn.models.sde_posteriors.vgpa instead",
    DeprecationWarning,
    stacklevel=2,
)
