"""Where each layer's cycles go: :mod:`vitaccel.dse.causes` (the explorer's binding
diagnosis prices the same split), named here for the report's modules."""

from vitaccel.dse.causes import CAUSES, group_layers, layer_causes

__all__ = ["CAUSES", "layer_causes", "group_layers"]
