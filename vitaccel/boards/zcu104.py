"""AMD/Xilinx ZCU104 evaluation board (Zynq UltraScale+ ZU7EV), written the amaranth-boards way.

Pins are the board's PL-side user I/O (UG1267 and the board's master XDC):
the 125 MHz CLK_125 oscillator, the USER_SI570 (300 MHz at power-up), the
CPU_RESET button, four GPIO LEDs, four push buttons, four DIP switches and the
two PMOD headers. The PL DDR4 SODIMM is not described: the accelerator reaches
the PS DDR through the HP ports, in the block design made by
:mod:`vitaccel.boards.vivado`.
"""

from __future__ import annotations

from amaranth.build import Connector
from amaranth.vendor import XilinxPlatform

from .base import BoardBudget, pl_ddr_gbps, register_board, user_io_resources

__all__ = ["ZCU104Platform"]


@register_board
class ZCU104Platform(XilinxPlatform):
    device = "xczu7ev"
    package = "ffvc1156"
    speed = "2-e"
    default_clk = "clk125"
    default_rst = "rst"

    budget = BoardBudget(
        name="zcu104",
        part="xczu7ev-ffvc1156-2-e",
        dsp48e2=1728,
        lut=230400,
        ff=460800,
        bram36=312,
        uram=96,
        # PS DDR4: 2 GB of x16 components on a 64-bit bus, run by the board
        # preset at DDR4-2133 (PSU__DDRC__SPEED_BIN DDR4_2133P): 17.06 GB/s
        # peak, 13.65 usable.
        ddr_mts=2133,
        ddr_bits=64,
        ddr_gbps=pl_ddr_gbps(ddr_mts=2133, ddr_bits=64),
        vivado_board_part="xilinx.com:zcu104:part0:1.1",
        pl_clocks_mhz=(100.0, 125.0, 150.0, 200.0, 250.0, 300.0),
        default_clock_mhz=200.0,
        sources=(
            "dsp48e2, lut, ff, bram36, uram: DS891 Zynq UltraScale+ MPSoC product overview, "
            "ZU7EV column (1728 DSP48E2, 230400 LUT, 460800 FF, 312 BRAM36, 96 URAM288)",
            "ddr_mts, ddr_bits: UG1267 ZCU104 board user guide (PS DDR4, 2 GB of x16 "
            "components, 64 bit) and the Vivado ZCU104 board preset "
            "(PSU__DDRC__SPEED_BIN DDR4_2133P)",
            "ddr_gbps: ddr_mts x ddr_bits / 8 x base.DDR_EFFICIENCY (0.8, a planning figure, "
            "not a measurement on the board)",
            "hp_ports, hp_data_bits: UG1085 Zynq UltraScale+ MPSoC TRM, the four 128-bit "
            "S_AXI_HP0..3_FPD PS slave ports",
            "pins: UG1267 GPIO pin table and the ZCU104 master XDC",
        ),
    )

    resources = user_io_resources(
        clk125=("F23", "E23", "LVDS"),
        clk300=("AH18", "AH17"),
        rst="M11",
        leds="D5 D6 A5 B5",
        buttons="B4 C4 B3 C3",
        switches="E4 D4 F5 F4",
    )
    # Pin tables stay one entry per line, as in amaranth-boards.
    # fmt: off
    connectors = [
        # J55 and J87, 3.3 V. Header pins 1/3/5/7 are PMOD pins 1-4, 2/4/6/8 are 7-10.
        Connector("pmod", 0, "G8 H8 G7 H7 - - G6 H6 J6 J7 - -"),
        Connector("pmod", 1, "J9 K9 K8 L8 - - L10 M10 M8 M9 - -"),
    ]
    # fmt: on
