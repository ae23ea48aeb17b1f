"""Integer numerics: the reference functions (:mod:`.ref`) and compile-time quantisers (:mod:`.scales`).

numpy only; every other layer of vitaccel may import this one.
"""

from . import ref, scales

__all__ = ["ref", "scales"]
