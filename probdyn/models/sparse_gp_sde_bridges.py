"""Deprecated path: moved to :mod:`probdyn.models.sde_posteriors.bridges`; this module re-exports it for one release."""

import warnings

from probdyn.models.sde_posteriors.bridges import *  # noqa: F401,F403

warnings.warn(
    "probdyn.models.sparse_gp_sde_bridges is deprecated and will be removed in the next release; "
    "import probdyn.models.sde_posteriors.bridges instead",
    DeprecationWarning,
    stacklevel=2,
)
