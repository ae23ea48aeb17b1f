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

from .base import register_board, user_io_resources
from .devices import DEVICES

__all__ = ["ZCU104Platform"]


@register_board
class ZCU104Platform(XilinxPlatform):
    budget = DEVICES["zcu104"]
    # the part is the device table's, so the platform cannot disagree with it
    device, package, speed = budget.device, budget.package, budget.speed
    default_clk = "clk125"
    default_rst = "rst"

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
