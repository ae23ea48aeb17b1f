"""Verilog emission: one deterministic path from an Amaranth component to Verilog text.

``emit_src=False`` drops the ``(* src = "/abs/path:line" *)`` attributes, so the text depends
only on the design, not on where the checkout lives: the same design gives byte-identical
Verilog on every machine.
"""

from __future__ import annotations

from amaranth.back import verilog


def to_verilog(component, name: str) -> str:
    """Convert an Amaranth ``wiring.Component`` to Verilog with top module ``name``."""
    if not name.isidentifier():
        raise ValueError(f"Verilog module name must be an identifier, not {name!r}")
    return verilog.convert(component, name=name, emit_src=False)
