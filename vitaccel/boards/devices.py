"""Every board's device figures, as pure data: the one table the explorer and the platforms read.

The design-space explorer (:mod:`vitaccel.dse`) needs only these numbers, so this module
imports no Amaranth; the Amaranth platform classes (``zcu102.py`` ...) take their
``budget`` from here. Adding a board is a row in :data:`_ROWS`, its sources in
:data:`_SOURCES` and its platform file (docs/boards.md).
"""

from __future__ import annotations

from .base import BoardBudget, BoardError, pl_ddr_gbps

__all__ = ["DEVICES", "device_budget"]

# Every board here can clock its PL from the PS PLLs at these frequencies.
_PL_CLOCKS_MHZ = (100.0, 125.0, 150.0, 200.0, 250.0, 300.0)

# fmt: off
# name, part, (dsp48e2, lut, ff, bram36, uram), (PS DDR MT/s, bus bits, GiB), Vivado board part
_ROWS = (
    ("zcu102", "xczu9eg-ffvb1156-2-e", (2520, 274080, 548160, 912, 0), (2133, 64, 4), "xilinx.com:zcu102:part0:3.4"),
    ("zcu104", "xczu7ev-ffvc1156-2-e", (1728, 230400, 460800, 312, 96), (2133, 64, 2), "xilinx.com:zcu104:part0:1.1"),
    ("kv260", "xck26-sfvc784-2LV-c", (1248, 117120, 234240, 144, 64), (2400, 64, 4), "xilinx.com:kv260_som:part0:1.4"),
)
# fmt: on

_SOURCES = {
    "zcu102": (
        "dsp48e2, lut, ff, bram36, uram: DS891 Zynq UltraScale+ MPSoC product overview, "
        "ZU9EG column (2520 DSP48E2, 274080 LUT, 548160 FF, 912 BRAM36, no UltraRAM)",
        # PSU__DDRC__SPEED_BIN DDR4_2133P: 17.06 GB/s peak, 13.65 usable.
        "ddr_mts, ddr_bits, ddr_gib: UG1182 ZCU102 board user guide (PS DDR4, 4 GB 64-bit "
        "SODIMM) and the "
        "Vivado ZCU102 board preset (PSU__DDRC__SPEED_BIN DDR4_2133P)",
        "pins: UG1182 GPIO pin table and the ZCU102 master XDC",
    ),
    "zcu104": (
        "dsp48e2, lut, ff, bram36, uram: DS891 Zynq UltraScale+ MPSoC product overview, "
        "ZU7EV column (1728 DSP48E2, 230400 LUT, 460800 FF, 312 BRAM36, 96 URAM288)",
        "ddr_mts, ddr_bits, ddr_gib: UG1267 ZCU104 board user guide (PS DDR4, 2 GB of x16 "
        "components, 64 bit) and the Vivado ZCU104 board preset "
        "(PSU__DDRC__SPEED_BIN DDR4_2133P)",
        "pins: UG1267 GPIO pin table and the ZCU104 master XDC",
    ),
    "kv260": (
        "dsp48e2, lut, ff, bram36, uram: DS987 Kria K26 SOM data sheet and the Kria KV260 "
        "app docs resource table (1248 DSP48E2, 117120 LUT, 234240 FF, 144 BRAM36, "
        "64 URAM288)",
        # 4 GB of x16 components at the K26 preset's DDR4-2400: 19.2 GB/s peak, 15.36 usable.
        "ddr_mts, ddr_bits, ddr_gib: DS987 (4 GB DDR4, 64 bit) and the Vivado kv260_som board "
        "preset (DDR4 2400, 64 bit)",
        "pins: public KV260 XDCs (PMOD J2, fan enable)",
    ),
}

# Sources every board here shares.
_COMMON_SOURCES = (
    "ddr_gbps: ddr_mts x ddr_bits / 8 x base.DDR_EFFICIENCY (0.8, a planning figure, "
    "not a measurement on the board)",
    "hp_ports, hp_data_bits: UG1085 Zynq UltraScale+ MPSoC TRM, the four 128-bit "
    "S_AXI_HP0..3_FPD PS slave ports of every Zynq UltraScale+ (the K26 is ZU5EV-class)",
    f"pl_clocks_mhz: the PS PLL settings the Vivado presets reach for pl_clk0 "
    f"({', '.join(f'{f:g}' for f in _PL_CLOCKS_MHZ)} MHz)",
)


def _budget(name, part, resources, ddr, vivado_board_part) -> BoardBudget:
    dsp48e2, lut, ff, bram36, uram = resources
    ddr_mts, ddr_bits, ddr_gib = ddr
    return BoardBudget(
        name=name,
        part=part,
        dsp48e2=dsp48e2,
        lut=lut,
        ff=ff,
        bram36=bram36,
        uram=uram,
        ddr_mts=ddr_mts,
        ddr_bits=ddr_bits,
        ddr_gib=ddr_gib,
        ddr_gbps=pl_ddr_gbps(ddr_mts=ddr_mts, ddr_bits=ddr_bits),
        vivado_board_part=vivado_board_part,
        pl_clocks_mhz=_PL_CLOCKS_MHZ,
        default_clock_mhz=200.0,
        sources=_SOURCES[name] + _COMMON_SOURCES,
    )


DEVICES: dict[str, BoardBudget] = {row[0]: _budget(*row) for row in _ROWS}
"""Board name -> :class:`BoardBudget`: every board the project knows."""


def device_budget(name: str) -> BoardBudget:
    """The budget of the board called ``name``.

    Raises
    ------
    BoardError
        If no board has that name; the message lists the known ones.
    """
    try:
        return DEVICES[name]
    except (KeyError, TypeError):
        raise BoardError(
            f"unknown board {name!r}; choose one of: {', '.join(sorted(DEVICES))}"
        ) from None
