"""Deprecated path: moved to :mod:`probdyn.models.mgpvae.nets`; this module re-exports it for one release."""

import warnings

from probdyn.models.mgpvae.nets import *  # noqa: F401,F403

warnings.warn(
    "probdyn.models.mgpvae_nets is deprecated and will be removed in the next release; "
    "import probdyn.models.mgpvae.nets instead",
    DeprecationWarning,
    stacklevel=2,
)
