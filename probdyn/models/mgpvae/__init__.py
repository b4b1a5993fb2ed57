"""The Markovian GP-VAE family (Zhu, Balsells Rodas & Li, ICML 2023).

* :mod:`probdyn.models.mgpvae.model`: :class:`MarkovGPVAE` (Kalman-smoothed latent GP
  channels), the dense :class:`GPVAE` reference, the i.i.d. :class:`IIDVAE` baseline,
  training (:func:`fit`), ELBO, imputation and importance-weighted log-likelihoods;
* :mod:`probdyn.models.mgpvae.nets`: the encoders and decoders.

The objective is the paper's ELBO, ``E_q[log p(y | f)] - beta KL(q(f) || p(f))`` with ``q`` the
Kalman-smoothed latent posterior (the state-space GP prior times the encoder's Gaussian
sites), ``MarkovGPVAE.elbo`` / :func:`elbo_batch` in
:mod:`~probdyn.models.mgpvae.model`, maximised by :func:`fit`.

Everything public is re-exported here: ``from probdyn.models import mgpvae as mg``.
"""

from probdyn.models.mgpvae import model as _model
from probdyn.models.mgpvae import nets as _nets
from probdyn.models.mgpvae.model import *  # noqa: F401,F403
from probdyn.models.mgpvae.nets import *  # noqa: F401,F403

__all__ = list(_model.__all__) + list(_nets.__all__)
