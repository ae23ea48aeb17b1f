"""The accelerator program (docs/isa.md): ``schedule`` (shape only, no torch: what the cost
model prices), ``compiler`` (packs a golden model into the DDR image), ``interp`` (the
executable specification), ``driver`` (the host side)."""
