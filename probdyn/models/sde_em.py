"""Deprecated path: moved to :mod:`probdyn.models.sde_posteriors.em`; this module re-exports it for one release."""

import warnings

from probdyn.models.sde_posteriors.em import *  # noqa: F401,F403

warnings.warn(
    "probdyn.models.sde_em is deprecated and will be removed in the next release; "
    "import probdyn.models.sde_posteriors.em instead",
    DeprecationWarning,
    stacklevel=2,
)
