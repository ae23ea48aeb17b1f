"""vitaccel: FPGA accelerators for quantized Vision Transformers.

Layers (lower never imports higher): quant -> models -> rtl/boards -> dse -> compile -> sim -> flow/cli.
"""

__version__ = "0.1.0"
