"""Deprecated path: moved to :mod:`probdyn.models.sde_posteriors.observed`; this module
re-exports it for one release."""

import warnings

from probdyn.models.sde_posteriors.observed import *  # noqa: F401,F403

warnings.warn(
    "probdyn.models.sde_data is deprecated and will be removed in the next release; "
    "import probdyn.models.sde_posteriors.observed instead",
    DeprecationWarning,
    stacklevel=2,
)
