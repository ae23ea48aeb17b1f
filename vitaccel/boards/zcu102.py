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

from .base import register_board, user_io_resources
from .devices import DEVICES

__all__ = ["ZCU102Platform"]


@register_board
class ZCU102Platform(XilinxPlatform):
    budget = DEVICES["zcu102"]
    # the part is the device table's, so the platform cannot disagree with it
    device, package, speed = budget.device, budget.package, budget.speed
    default_clk = "clk125"
    default_rst = "rst"

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
