"""Compiler from the golden model to the accelerator program and memory image (docs/isa.md)."""
