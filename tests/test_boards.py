"""Boards: budgets, Amaranth platforms (build plans, no toolchain) and the Vivado project texts."""

from __future__ import annotations

import os
import stat

import pytest
from amaranth import Elaboratable, Module, Signal
from amaranth.back import verilog
from amaranth.build import Attrs, Pins, Resource, ResourceError
from amaranth.hdl import Instance
from amaranth.lib import io

from vitaccel.boards import (
    BOARDS,
    BoardBudget,
    BoardError,
    KV260Platform,
    ZCU102Platform,
    ZCU104Platform,
    get_board,
    get_budget,
)
from vitaccel.boards.vivado import (
    AcceleratorInterface,
    build_sh,
    check_top_ports,
    constraints_xdc,
    project_tcl,
    write_project,
)

BOARD_NAMES = sorted(BOARDS)

# First LED pin each board's blinky must land on (KV260: PMOD J2 pin 1, added by the test).
# A new board with LEDs needs no entry: the test then checks its own "led" 0 pin.
LED0_PIN = {"zcu102": "AG14", "zcu104": "D5", "kv260": "H12"}


class Blinky(Elaboratable):
    def elaborate(self, platform):
        m = Module()
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        counter = Signal(24)
        m.d.sync += counter.eq(counter + 1)
        m.d.comb += led.o.eq(counter[-1])
        return m


def test_registry_holds_the_three_boards():
    assert {"kv260", "zcu102", "zcu104"} <= set(BOARD_NAMES)
    assert get_board("zcu102") is ZCU102Platform
    assert get_board("zcu104") is ZCU104Platform
    assert get_board("kv260") is KV260Platform


def test_unknown_board_names_the_allowed_ones():
    with pytest.raises(BoardError) as info:
        get_board("nope")
    assert str(info.value) == f"unknown board 'nope'; choose one of: {', '.join(BOARD_NAMES)}"
    assert "choose one of: kv260, zcu102, zcu104" in str(info.value)  # today's three
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", BOARD_NAMES)
def test_budget_is_positive_and_matches_platform_part(name):
    platform_cls = get_board(name)
    budget = platform_cls.budget
    assert isinstance(budget, BoardBudget)
    assert budget.name == name
    for figure in (budget.dsp48e2, budget.lut, budget.ff, budget.bram36, budget.ddr_gbps):
        assert figure > 0
    assert budget.uram >= 0
    assert budget.part == f"{platform_cls.device}-{platform_cls.package}-{platform_cls.speed}"
    assert (budget.device, budget.package, budget.speed) == (
        platform_cls.device,
        platform_cls.package,
        platform_cls.speed,
    )
    assert platform_cls()._part == budget.part  # what Amaranth hands Vivado
    assert budget.ps == "zynq_ultra_ps_e"
    assert budget.vivado_board_part.startswith("xilinx.com:")
    assert budget.default_clock_mhz in budget.pl_clocks_mhz
    assert get_budget(name) is budget and get_budget(platform_cls()) is budget


def test_device_figures():
    # Device totals from the data sheets (docs/boards.md lists the sources).
    figures = {
        name: (b.dsp48e2, b.lut, b.ff, b.bram36, b.uram)
        for name, b in ((n, get_budget(n)) for n in BOARD_NAMES)
    }
    assert figures == {
        "zcu102": (2520, 274080, 548160, 912, 0),
        "zcu104": (1728, 230400, 460800, 312, 96),
        "kv260": (1248, 117120, 234240, 144, 64),
    }


def test_ddr_bandwidth_and_axi_ceiling():
    zcu102 = get_budget("zcu102")
    # DDR4-2133 x 64 bit = 17.06 GB/s peak, x 0.8 controller efficiency.
    assert zcu102.ddr_gbps == pytest.approx(13.65)
    assert get_budget("kv260").ddr_gbps == pytest.approx(15.36)
    # One 128-bit HP port at 200 MHz moves 3.2 GB/s; four at 300 MHz hit the DDR ceiling.
    assert zcu102.axi_gbps(200) == pytest.approx(3.2)
    assert zcu102.axi_gbps(300, ports=4) == zcu102.ddr_gbps
    with pytest.raises(ValueError, match="HP port data width"):
        zcu102.axi_gbps(200, data_bits=256)


def test_budget_validation_names_the_field():
    good = dict(get_budget("zcu102").__dict__)
    with pytest.raises(ValueError, match="dsp48e2"):
        BoardBudget(**{**good, "dsp48e2": 0})
    with pytest.raises(ValueError, match="default_clock_mhz"):
        BoardBudget(**{**good, "default_clock_mhz": 123.0})


@pytest.mark.parametrize("name", BOARD_NAMES)
def test_platform_build_plan(name):
    platform = get_board(name)()
    try:
        platform.lookup("led", 0)
    except ResourceError:
        # No PL LED (KV260): drive PMOD pin 1 instead.
        platform.add_resources(
            [Resource("led", 0, Pins("1", dir="o", conn=("pmod", 0)), Attrs(IOSTANDARD="LVCMOS33"))]
        )
    led_pin = LED0_PIN.get(name) or platform.lookup("led", 0).ios[0].names[0]
    plan = platform.build(Blinky(), name="blinky", do_build=False)
    tcl = plan.files["blinky.tcl"]
    xdc = plan.files["blinky.xdc"]
    assert f"create_project -force -name blinky -part {platform.budget.part}" in tcl
    assert f"set_property LOC {led_pin} [get_ports" in xdc
    assert "create_clock -name " in xdc
    assert f"-period {1e9 / platform.default_clk_frequency}" in xdc
    if name == "kv260":
        # No PL oscillator: the clock comes from the PS through BUFG_PS, at 100 MHz.
        assert "PS8" in plan.files["blinky.v"] and "BUFG_PS" in plan.files["blinky.v"]
        assert "-period 10.0" in xdc
    elif name in ("zcu102", "zcu104"):
        assert "-period 8.0" in xdc  # CLK_125


def test_zcu102_user_io_pins():
    platform = ZCU102Platform()
    leds = [platform.lookup("led", i).ios[0].names[0] for i in range(8)]
    assert leds == ["AG14", "AF13", "AE13", "AJ14", "AJ15", "AH13", "AH14", "AL12"]
    clk = platform.lookup("clk125", 0)
    assert (clk.ios[0].p.names, clk.ios[0].n.names) == (["G21"], ["F21"])
    assert clk.clock.frequency == 125e6


@pytest.mark.parametrize("name", BOARD_NAMES)
def test_project_tcl_structure(name):
    budget = get_budget(name)
    tcl = project_tcl(name, "vit_accel", ["../rtl/vit_accel.v"], 250)
    expected = [
        f"create_project -force $proj_name [file join $build_dir project] -part {budget.part}",
        f"set board_part {budget.vivado_board_part}",
        "create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e zynq_ultra_ps_e_0",
        'apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {apply_board_preset "1"}',
        "create_bd_cell -type module -reference $top accel_0",
        "set top        vit_accel",
        "[file join $script_dir ../rtl/vit_accel.v]",
        "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {250}",
        "CONFIG.PSU__SAXIGP2__DATA_WIDTH {128}",
        "connect_bd_intf_net [get_bd_intf_pins zynq_ultra_ps_e_0/M_AXI_HPM0_FPD] [get_bd_intf_pins smartconnect_ctrl/S00_AXI]",
        "connect_bd_intf_net [get_bd_intf_pins smartconnect_ctrl/M00_AXI] [get_bd_intf_pins accel_0/s_axil]",
        "connect_bd_intf_net [get_bd_intf_pins accel_0/m_axi] [get_bd_intf_pins smartconnect_mem/S00_AXI]",
        "connect_bd_intf_net [get_bd_intf_pins smartconnect_mem/M00_AXI] [get_bd_intf_pins zynq_ultra_ps_e_0/S_AXI_HP0_FPD]",
        "[get_bd_pins accel_0/clk]",
        "connect_bd_net [get_bd_pins proc_sys_reset_0/peripheral_reset] [get_bd_pins accel_0/rst]",
        "connect_bd_net [get_bd_pins accel_0/irq] [get_bd_pins zynq_ultra_ps_e_0/pl_ps_irq0]",
        "xilinx.com:ip:proc_sys_reset proc_sys_reset_0",
        "assign_bd_address -offset 0xA0000000 -range 64K",
        "validate_bd_design",
        "make_wrapper -files $bd_file -top",
        "launch_runs impl_1 -to_step write_bitstream",
        "write_hw_platform -fixed -include_bit -force -file [file join $build_dir $proj_name.xsa]",
    ]
    for text in expected:
        assert text in tcl, text
    # Order matters: the wrapper comes after validation, the .xsa after the bitstream.
    assert (
        tcl.index("validate_bd_design") < tcl.index("make_wrapper") < tcl.index("write_bitstream")
    )
    assert tcl.index("write_bitstream") < tcl.index("write_hw_platform")
    # No trace of where or when it was generated.
    assert "/work" not in tcl and "20" + "25" not in tcl
    assert tcl.count("{") == tcl.count("}")


def test_project_tcl_follows_interface_widths():
    interface = AcceleratorInterface(s_axil_addr_width=12, m_axi_data_width=64)
    tcl = project_tcl("zcu104", "top", ["top.v"], interface=interface)
    assert "-range 4K" in tcl
    assert "CONFIG.PSU__SAXIGP2__DATA_WIDTH {64}" in tcl
    assert "PL0_REF_CTRL__FREQMHZ {200}" in tcl  # board default clock


def test_generated_texts_are_deterministic():
    for name in BOARD_NAMES:
        first = (
            project_tcl(name, "vit_accel", ["../rtl/vit_accel.v"], 200),
            constraints_xdc(name, 200),
            build_sh(name, "vit_accel", "vit_accel"),
        )
        second = (
            project_tcl(name, "vit_accel", ["../rtl/vit_accel.v"], 200),
            constraints_xdc(name, 200),
            build_sh(name, "vit_accel", "vit_accel"),
        )
        assert [t.encode() for t in first] == [t.encode() for t in second]


def test_constraints_and_build_script():
    xdc = constraints_xdc("zcu102", 250)
    assert "4.000 ns" in xdc and "pl_clk0" in xdc
    commands = [line for line in xdc.splitlines() if line and not line.startswith("#")]
    assert commands == ["set_property BITSTREAM.GENERAL.COMPRESS TRUE [current_design]"]
    script = build_sh("zcu102", "vit_accel")
    assert script.startswith("#!/bin/sh\n")
    assert "vivado -mode batch" in script and "-source project.tcl" in script


def test_bad_requests_are_refused():
    with pytest.raises(BoardError, match="choose one of: 100, 125, 150, 200, 250, 300"):
        project_tcl("zcu102", "top", ["top.v"], 333)
    with pytest.raises(BoardError, match="unknown board"):
        constraints_xdc("zcu106")
    with pytest.raises(ValueError, match="top_name"):
        project_tcl("zcu102", "top level", ["top.v"])
    with pytest.raises(ValueError, match="Verilog file path"):
        project_tcl("zcu102", "top", ["my rtl/top.v"])
    with pytest.raises(ValueError, match="s_axil_addr_width"):
        AcceleratorInterface(s_axil_addr_width=20)
    with pytest.raises(ValueError, match="m_axi_data_width"):
        AcceleratorInterface(m_axi_data_width=256)


class StubTop(Elaboratable):
    """Ports named by the convention, no logic: what check_top_ports sees from Amaranth."""

    def __init__(self, interface, drop=()):
        self.signals = {}
        for name, direction, width in interface.ports():
            if name not in drop:
                self.signals[name] = (direction, Signal(width, name=name))

    def elaborate(self, platform):
        m = Module()
        # A black box keeps every port alive through Yosys.
        ports = {}
        for name, (direction, signal) in self.signals.items():
            ports[("i_" if direction == "in" else "o_") + name] = signal
        m.submodules.core = Instance("core", **ports)
        return m


def _stub_verilog(interface, drop=()):
    top = StubTop(interface, drop)
    return verilog.convert(
        top, name="vit_accel", ports=[s for _, s in top.signals.values()], emit_src=False
    )


def test_check_top_ports_reads_amaranth_verilog():
    interface = AcceleratorInterface()
    assert check_top_ports(_stub_verilog(interface), "vit_accel", interface) == []
    problems = check_top_ports(
        _stub_verilog(interface, drop=("m_axi_rlast",)), "vit_accel", interface
    )
    assert problems == ["missing port m_axi_rlast (in, 1 bit)"]
    narrow = AcceleratorInterface(m_axi_data_width=64)
    problems = check_top_ports(_stub_verilog(interface), "vit_accel", narrow)
    assert "port m_axi_wdata is out 128 bit, expected out 64 bit" in problems
    assert check_top_ports("module other; endmodule", "vit_accel") == [
        "no module named 'vit_accel' in the Verilog"
    ]


def test_write_project(tmp_path):
    interface = AcceleratorInterface()
    text = _stub_verilog(interface)
    written = write_project("kv260", tmp_path / "out", "vit_accel", text, 150)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written.values()) == [
        "rtl/vit_accel.v",
        "vivado/build.sh",
        "vivado/constraints.xdc",
        "vivado/project.tcl",
    ]
    assert written["verilog"].read_text() == text
    assert written["tcl"].read_text() == project_tcl(
        "kv260", "vit_accel", ["../rtl/vit_accel.v"], 150
    )
    # The Tcl names the RTL relative to itself, and that file is there.
    assert (written["tcl"].parent / "../rtl/vit_accel.v").resolve() == written["verilog"].resolve()
    assert written["build_sh"].stat().st_mode & stat.S_IXUSR
    assert not [p for p in (tmp_path / "out").rglob(".*")]  # no temporary files left

    with pytest.raises(ValueError, match="missing port irq"):
        write_project(
            "kv260", tmp_path / "bad", "vit_accel", _stub_verilog(interface, drop=("irq",))
        )
    assert not os.path.exists(tmp_path / "bad")
