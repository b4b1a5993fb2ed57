"""Deprecated path: moved to :mod:`probdyn.inference.gaussian_filters.observations`; this
module re-exports it for one release."""

import warnings

from probdyn.inference.gaussian_filters.observations import *  # noqa: F401,F403

warnings.warn(
    "probdyn.observations is deprecated and will be removed in the next release; "
    "import probdyn.inference.gaussian_filters.observations instead",
    DeprecationWarning,
    stacklevel=2,
)
