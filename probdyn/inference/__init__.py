"""Inference engines: the Kalman engine (:mod:`kalman`) and those built on it."""

from probdyn.inference import kalman

__all__ = ["kalman"]
