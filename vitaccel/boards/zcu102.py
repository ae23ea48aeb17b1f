"""AMD/Xilinx ZCU102 evaluation board (Zynq UltraScale+ ZU9EG), written the amaranth-boards way.

Pins are the board's PL-side user I/O (UG1182 and the board's master XDC):
the 125 MHz CLK_125 oscillator, the USER_SI570 (300 MHz at power-up), the
CPU_RESET button, eight GPIO LEDs, five push buttons, eight DIP switches and the
two PMOD headers. The accelerator itself is not built with ``build()``: it runs
on the PS clock inside the block design made by :mod:`vitaccel.boards.vivado`.
The platform is there for bring-up designs and so that the part, pins and
budget of a board live in one file.
"""

from __future__ import annotations

from amaranth.build import Connector
from amaranth.vendor import XilinxPlatform

from .base import BoardBudget, pl_ddr_gbps, register_board, user_io_resources

__all__ = ["ZCU102Platform"]


@register_board
class ZCU102Platform(XilinxPlatform):
    device = "xczu9eg"
    package = "ffvb1156"
    speed = "2-e"
    default_clk = "clk125"
    default_rst = "rst"

    budget = BoardBudget(
        name="zcu102",
        part="xczu9eg-ffvb1156-2-e",
        dsp48e2=2520,
        lut=274080,
        ff=548160,
        bram36=912,
        uram=0,
        # PS DDR4: 64-bit SODIMM, run by the board preset at DDR4-2133
        # (PSU__DDRC__SPEED_BIN DDR4_2133P): 17.06 GB/s peak, 13.65 usable.
        ddr_mts=2133,
        ddr_bits=64,
        ddr_gbps=pl_ddr_gbps(ddr_mts=2133, ddr_bits=64),
        vivado_board_part="xilinx.com:zcu102:part0:3.4",
        pl_clocks_mhz=(100.0, 125.0, 150.0, 200.0, 250.0, 300.0),
        default_clock_mhz=200.0,
        sources=(
            "dsp48e2, lut, ff, bram36, uram: DS891 Zynq UltraScale+ MPSoC product overview, "
            "ZU9EG column (2520 DSP48E2, 274080 LUT, 548160 FF, 912 BRAM36, no UltraRAM)",
            "ddr_mts, ddr_bits: UG1182 ZCU102 board user guide (PS DDR4, 64-bit SODIMM) and the "
            "Vivado ZCU102 board preset (PSU__DDRC__SPEED_BIN DDR4_2133P)",
            "ddr_gbps: ddr_mts x ddr_bits / 8 x base.DDR_EFFICIENCY (0.8, a planning figure, "
            "not a measurement on the board)",
            "hp_ports, hp_data_bits: UG1085 Zynq UltraScale+ MPSoC TRM, the four 128-bit "
            "S_AXI_HP0..3_FPD PS slave ports",
            "pins: UG1182 GPIO pin table and the ZCU102 master XDC",
        ),
    )

    resources = user_io_resources(
        # CLK_125 from the SI5341B clock generator, in an HD bank (hence LVDS_25, as in
        # the board's XDC).
        clk125=("G21", "F21", "LVDS_25"),
        clk300=("AL8", "AL7"),
        rst="AM13",
        leds="AG14 AF13 AE13 AJ14 AJ15 AH13 AH14 AL12",
        buttons="AG15 AE14 AF15 AE15 AG13",  # GPIO_SW_N, _E, _W, _S, _C
        switches="AN14 AP14 AM14 AN13 AN12 AP12 AL13 AK13",
    )
    # Pin tables stay one entry per line, as in amaranth-boards.
    # fmt: off
    connectors = [
        # J55 and J87, 3.3 V. Header pins 1/3/5/7 are PMOD pins 1-4, 2/4/6/8 are 7-10.
        Connector("pmod", 0, "A20 B20 A22 A21 - - B21 C21 C22 D21 - -"),
        Connector("pmod", 1, "D20 E20 D22 E22 - - F20 G20 J20 J19 - -"),
    ]
    # fmt: on
