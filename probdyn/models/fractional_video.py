"""Deprecated path: moved to :mod:`probdyn.models.fractional.video`; this module re-exports it for one release."""

import warnings

from probdyn.models.fractional.video import *  # noqa: F401,F403

warnings.warn(
    "probdyn.models.fractional_video is deprecated and will be removed in the next release; "
    "import probdyn.models.fractional.video instead",
    DeprecationWarning,
    stacklevel=2,
)
