"""SDEs driven by Markov-approximate fractional Brownian motion (Daems, Opper, Crevecoeur &
Birdal, ICLR 2024).

* :mod:`probdyn.models.fractional.neural_sde`: the variational neural SDE
  (:class:`FractionalSDE`, its controls, ELBO, sampling, training);
* :mod:`probdyn.models.fractional.fou`: exact likelihoods of the fractional OU process
  through the Kalman engine (maximum likelihood, numpyro model, posterior marginals);
* :mod:`probdyn.models.fractional.video`: the latent fractional SDE for video sequences.

The objective of the variational model is the paper's ELBO,
``E_q[log p(obs | X)] - KL(q(z_0) || p(z_0)) - E_q int |u|^2 / 2 dt`` (the last term the
Girsanov KL of the control on the MA-fBM-augmented state), :func:`elbo` in
:mod:`~probdyn.models.fractional.neural_sde`; the fOU tools maximise the exact Kalman
log-likelihood (:mod:`~probdyn.models.fractional.fou`).

The neural SDE and fOU names are re-exported here: ``from probdyn.models import fractional
as fs``; the video model is ``from probdyn.models.fractional import video``.
"""

from probdyn.models.fractional import fou as _fou
from probdyn.models.fractional import neural_sde as _neural_sde
from probdyn.models.fractional.fou import *  # noqa: F401,F403
from probdyn.models.fractional.neural_sde import *  # noqa: F401,F403

__all__ = list(_neural_sde.__all__) + list(_fou.__all__)
