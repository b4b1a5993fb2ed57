"""Inference engines: the Kalman engine (:mod:`kalman`) and those built on it."""

from probdyn.inference import kalman

__all__ = ["kalman"]
__all__ += ["mcmc", "variational", "optimize", "gaussian_filters"]


def __getattr__(name):  # lazy: mcmc/variational import numpyro, blackjax and arviz
    if name in ("mcmc", "variational", "optimize", "gaussian_filters"):
        import importlib

        return importlib.import_module(f"probdyn.inference.{name}")
    raise AttributeError(f"module 'probdyn.inference' has no attribute {name!r}")
