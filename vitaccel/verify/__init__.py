"""Offline calibration and validation of the explorer's models against the real thing.

``python -m vitaccel.verify.calibrate`` regenerates the resource calibration (Yosys runs of
generated engines and units), ``python -m vitaccel.verify.validate`` compares the cycle and
resource models with Verilator and Yosys. They build and simulate RTL, so they live here, not
in :mod:`vitaccel.dse`, which imports nothing from ``rtl``, ``sim`` or ``flow``; their data
files stay in ``vitaccel/dse/data/``, where the explorer reads them.
"""
