"""Float models, zoo and data; the integer golden model lives in golden.py.

The shape-only names (``ModelSpec``, ``ZOO``, ``get_spec``, ``ModelError``) come from the
torch-free :mod:`vitaccel.models.specs`; the torch-backed ones load on first use, so that
``import vitaccel.models.specs`` (the DSE's path) does not pay for importing torch.
"""

from vitaccel.models.specs import ZOO, ModelError, ModelSpec, get_spec

_FROM_ZOO = ("WeightsError", "build_float_model", "get_model", "load_weights")

__all__ = [
    "ZOO",
    "ModelError",
    "ModelSpec",
    "WeightsError",
    "build_float_model",
    "get_model",
    "get_spec",
    "load_weights",
]


def __getattr__(name: str):
    if name in _FROM_ZOO:
        from vitaccel.models import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
