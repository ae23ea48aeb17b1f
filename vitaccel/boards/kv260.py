"""AMD Kria KV260 Vision AI starter kit (K26 SOM, XCK26), written the amaranth-boards way.

The carrier wires almost nothing to PL I/O: the PMOD header J2 and the fan
enable are what public KV260 XDCs show, and there is no PL oscillator or
button. So the platform's ``sync`` domain runs from the PS: ``pl_clk0`` of a
bare ``PS8`` instance through a ``BUFG_PS``, at the 100 MHz the boot firmware
(or a ``.dtbo`` loaded with the bitstream) sets. That is enough for bring-up
designs; the accelerator itself runs inside the block design made by
:mod:`vitaccel.boards.vivado`, where the PS preset sets pl_clk0 to the design
clock.
"""

from __future__ import annotations

from amaranth.build import Attrs, Clock, Connector, PinsN, Resource
from amaranth.hdl import ClockDomain, ClockSignal, Const, Instance, Module, Signal
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.vendor import XilinxPlatform

from .base import register_board
from .devices import DEVICES

__all__ = ["KV260Platform"]


@register_board
class KV260Platform(XilinxPlatform):
    budget = DEVICES["kv260"]
    # the part is the device table's, so the platform cannot disagree with it
    device, package, speed = budget.device, budget.package, budget.speed
    # No PL clock pin: see create_missing_domain.
    default_clk = None
    default_rst = None
    ps_clk_frequency = 100e6

    # Pin tables stay one resource per line, as in amaranth-boards.
    # fmt: off
    resources = [
        # Fan enable (HDA20), active low. A bitstream that leaves it undriven
        # runs the fan at full speed, which is what a busy PL wants.
        Resource("fan_en", 0, PinsN("A12", dir="o"), Attrs(IOSTANDARD="LVCMOS33")),
    ]
    connectors = [
        # J2, 3.3 V (HDA11..HDA18). Header pins 1/3/5/7 are PMOD pins 1-4,
        # 2/4/6/8 are PMOD pins 7-10.
        Connector("pmod", 0, "H12 E10 D10 C11 - - B10 E12 D11 B11 - -"),
    ]
    # fmt: on

    @property
    def default_clk_constraint(self):
        return Clock(self.ps_clk_frequency)

    def create_missing_domain(self, name):
        if name != "sync":
            return super().create_missing_domain(name)
        m = Module()
        pl_clk = Signal(4)
        pl_clk0 = Signal()
        m.submodules.ps8 = Instance("PS8", o_PLCLK=pl_clk)
        m.submodules.pl_clk0_buf = Instance("BUFG_PS", i_I=pl_clk[0], o_O=pl_clk0)
        # A bare PS8 carries no timing constraint of its own (the PS IP adds one).
        self.add_clock_constraint(pl_clk0, self.ps_clk_frequency)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(pl_clk0)
        # The synchroniser's flops come out of configuration set, so the domain
        # sees a short reset once the PS starts the clock.
        m.submodules.reset_sync = ResetSynchronizer(Const(0), domain="sync")
        return m
