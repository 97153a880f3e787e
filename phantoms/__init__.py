"""Phantom simulator: parametric head/chest anatomy + acquisition model, with ground truth for every IQM."""

from phantoms.simulate import Phantom, simulate, write_phantom

__all__ = ["Phantom", "simulate", "write_phantom"]
