"""Compatibility alias: the ISA lives in :mod:`vitaccel.isa` (bottom layer)."""

from vitaccel.isa import *  # noqa: F403
from vitaccel.isa import __all__  # noqa: F401
