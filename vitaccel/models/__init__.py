"""Float models, zoo and data; the integer golden model lives in golden.py."""

from vitaccel.models.zoo import (
    ZOO,
    ModelError,
    ModelSpec,
    WeightsError,
    build_float_model,
    get_model,
    get_spec,
    load_weights,
)

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
