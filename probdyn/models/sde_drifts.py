"""Deprecated path: moved to :mod:`probdyn.models.sde_posteriors.drifts`; this module re-exports it for one release."""

import warnings

from probdyn.models.sde_posteriors.drifts import *  # noqa: F401,F403

warnings.warn(
    "probdyn.models.sde_drifts is deprecated and will be removed in the next release; "
    "import probdyn.models.sde_posteriors.drifts instead",
    DeprecationWarning,
    stacklevel=2,
)
