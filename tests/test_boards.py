"""Boards: budgets, Amaranth platforms (build plans, no toolchain) and the Vivado project texts."""

from __future__ import annotations

import functools
import hashlib
import os
import re
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
    check_hp_ports,
    check_top_ports,
    constraints_xdc,
    project_tcl,
    write_project,
)
from vitaccel.design import ArrayConfig, Design, NonlinearConfig
from vitaccel.rtl.top import top_verilog

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


def test_every_figure_has_a_source():
    # What a user needs to choose a board, each figure with where it comes from.
    for name in BOARD_NAMES:
        cited = " ".join(s.split(":")[0] for s in get_budget(name).sources)
        for figure in ("dsp48e2", "lut", "ff", "bram36", "uram", "ddr_mts", "ddr_bits",
                       "ddr_gbps", "hp_ports", "hp_data_bits"):  # fmt: skip
            assert figure in cited.replace(",", " ").split(), (name, figure)


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


# SHA-256 of project_tcl(board, "vit_accel", ["../rtl/vit_accel.v"], 200) and of
# constraints_xdc(board, 200) as generated before weight ports existed: a one-port design
# must still get exactly these texts. Change them only with an intended change to the
# one-port block design.
ONE_PORT_DIGESTS = {
    "kv260": (
        "aaabce08e498dacc97824264c76d6ede3065302aa8751c286706b55b34a7088f",
        "6307d77a7e4c0b7f242d6278f8873a719ccaecc8ee980820ae86ed6d53d35ab0",
    ),
    "zcu102": (
        "bfba303e2193dff592067a64a25c6690cd1135ffcf26c6b287efcb45e15f8928",
        "c13b9e5db512f007d7fa4389563d02ae424c0e0917b730804cb06325cb7c12ae",
    ),
    "zcu104": (
        "bd9a44fd5d7ba4f28d76d6354311c18c3560e27013783a648473a963088fbd78",
        "67097718dc3c7a241b70251866bfddafa72c20c4b832d5e15691a661daa99b95",
    ),
}


@pytest.mark.parametrize("name", sorted(ONE_PORT_DIGESTS))
def test_one_weight_port_keeps_the_tcl_unchanged(name):
    one = AcceleratorInterface(weight_ports=1)
    tcl = project_tcl(name, "vit_accel", ["../rtl/vit_accel.v"], 200, interface=one)
    xdc = constraints_xdc(name, 200, interface=one)
    assert tcl == project_tcl(name, "vit_accel", ["../rtl/vit_accel.v"], 200)
    digests = tuple(hashlib.sha256(t.encode()).hexdigest() for t in (tcl, xdc))
    assert digests == ONE_PORT_DIGESTS[name]
    assert "m_axi_w" not in tcl and "smartconnect_w" not in tcl and "S_AXI_GP3" not in tcl
    assert "clk CONFIG.ASSOCIATED_BUSIF s_axil:m_axi\n" in tcl


@pytest.mark.parametrize("name", BOARD_NAMES)
@pytest.mark.parametrize("ports", [2, 4])
def test_project_tcl_weight_ports(name, ports):
    interface = AcceleratorInterface(weight_ports=ports)
    tcl = project_tcl(name, "vit_accel", ["../rtl/vit_accel.v"], 200, interface=interface)
    ps = "zynq_ultra_ps_e_0"
    extra = range(1, ports)  # m_axi_w<q> -> HP<q> = PS8 slave S_AXI_GP<q+2>
    # PS: one more HP port per weight master, at the master's width; HP0 as before.
    assert (
        "CONFIG.PSU__USE__S_AXI_GP2 {1}" in tcl and "CONFIG.PSU__SAXIGP2__DATA_WIDTH {128}" in tcl
    )
    ps_config = tcl[tcl.index("set_property -dict [list \\\n    CONFIG.PSU__USE__M_AXI_GP0") :]
    ps_config = ps_config[: ps_config.index("] $ps")]
    for gp in range(3, 6):
        used = gp - 2 < ports
        assert (f"CONFIG.PSU__USE__S_AXI_GP{gp} {{1}} \\\n" in ps_config) is used, gp
        assert (f"CONFIG.PSU__SAXIGP{gp}__DATA_WIDTH {{128}} \\\n" in ps_config) is used, gp
    # One SmartConnect per weight master, wired master -> SmartConnect -> its own HP port.
    assert tcl.count("create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect ") == 2 + len(extra)
    for q in extra:
        assert tcl.count(f"xilinx.com:ip:smartconnect smartconnect_w{q}]") == 1
        assert tcl.count(f"CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $smc_w{q}\n") == 1
        assert tcl.count(f"[get_bd_intf_pins accel_0/m_axi_w{q}]") == 1  # the connection
        assert (
            f"connect_bd_intf_net [get_bd_intf_pins accel_0/m_axi_w{q}] "
            f"[get_bd_intf_pins smartconnect_w{q}/S00_AXI]\n"
        ) in tcl
        assert tcl.count(f"[get_bd_intf_pins {ps}/S_AXI_HP{q}_FPD]") == 1
        assert (
            f"connect_bd_intf_net [get_bd_intf_pins smartconnect_w{q}/M00_AXI] "
            f"[get_bd_intf_pins {ps}/S_AXI_HP{q}_FPD]\n"
        ) in tcl
        # Same clock and interconnect reset as everything else.
        assert tcl.count(f"[get_bd_pins {ps}/saxihp{q}_fpd_aclk]") == 1
        assert tcl.count(f"[get_bd_pins smartconnect_w{q}/aclk]") == 1
        assert tcl.count(f"[get_bd_pins smartconnect_w{q}/aresetn]") == 1
        # Its DDR windows through its own HP port.
        assert f"m_axi_w{q} smartconnect_w{q} SAXIGP{q + 2} HP{q}" in tcl
    assert f"S_AXI_HP{ports}_FPD" not in tcl and f"smartconnect_w{ports}" not in tcl
    # Inference check names every weight master and the read-only port convention.
    names = " ".join(f"m_axi_w{q}" for q in extra)
    assert f"foreach intf {{{names}}} {{\n" in tcl
    check = tcl[tcl.index(f"foreach intf {{{names}}}") :]
    check = check[: check.index("\n}\n")]
    assert "error \"vitaccel: Vivado inferred no '$intf' interface on $top; a weight port" in check
    assert "${intf}_<name>" in check
    assert "araddr arlen arsize arburst arvalid arready rdata rresp rlast rvalid rready" in check
    assert "clk CONFIG.ASSOCIATED_BUSIF s_axil:m_axi:" + names.replace(" ", ":") + "\n" in tcl
    # Address segments: per-port DDR windows before the catch-all assign_bd_address.
    assert "foreach window {DDR_LOW DDR_HIGH} {" in tcl
    assert f"get_bd_addr_segs -quiet {ps}/$saxi/${{hp}}_$window" in tcl
    assert "assign_bd_address -target_address_space $space $seg -force" in tcl
    assert (
        tcl.index("accel_0/s_axil]] -force")
        < tcl.index("foreach {intf smc saxi hp}")
        < tcl.index("\nassign_bd_address\n")
        < tcl.index("validate_bd_design")
    )
    # The ports are created, configured and connected in that order.
    assert (
        tcl.index("PSU__USE__S_AXI_GP3")
        < tcl.index("foreach intf {m_axi_w1")
        < tcl.index("smartconnect smartconnect_w1]")
        < tcl.index("accel_0/m_axi_w1] [get_bd_intf_pins smartconnect_w1/S00_AXI]")
    )
    assert tcl.count("{") == tcl.count("}")
    assert tcl == project_tcl(name, "vit_accel", ["../rtl/vit_accel.v"], 200, interface=interface)
    hp = "HP0_FPD..HP1_FPD" if ports == 2 else "HP0_FPD..HP3_FPD"
    assert f"(HPM0_FPD, {hp}," in constraints_xdc(name, 200, interface=interface)


def test_weight_ports_follow_the_interface_widths():
    interface = AcceleratorInterface(m_axi_data_width=64, weight_ports=3)
    tcl = project_tcl("zcu104", "top", ["top.v"], interface=interface)
    for gp in (2, 3, 4):
        assert f"CONFIG.PSU__SAXIGP{gp}__DATA_WIDTH {{64}}" in tcl
    assert "S_AXI_GP5" not in tcl


def test_weight_ports_beyond_the_board_are_refused(tmp_path):
    for bad in (0, 5, 2.0, True, "2"):
        with pytest.raises(ValueError, match=r"^weight_ports must be 1, 2, 3 or 4, not "):
            AcceleratorInterface(weight_ports=bad)
    two_hp = BoardBudget(**{**get_budget("zcu102").__dict__, "hp_ports": 2})
    interface = AcceleratorInterface(weight_ports=3)
    message = (
        "weight_ports 3 needs 3 HP ports, but board 'zcu102' has 2; choose weight_ports 1 to 2"
    )
    for call in (
        lambda: project_tcl(two_hp, "top", ["top.v"], interface=interface),
        lambda: constraints_xdc(two_hp, interface=interface),
        lambda: check_hp_ports(two_hp, interface),
    ):
        with pytest.raises(BoardError) as info:
            call()
        assert str(info.value) == message
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert check_hp_ports(two_hp, AcceleratorInterface(weight_ports=2)) is two_hp
    with pytest.raises(BoardError, match="weight_ports 3 needs 3 HP ports"):
        write_project(
            two_hp, tmp_path / "out", "vit_accel", _stub_verilog(interface), interface=interface
        )
    assert not os.path.exists(tmp_path / "out")


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


WEIGHT_PORT_DESIGN = Design(
    array=ArrayConfig(groups=1, rows=2, cols=2, vector=4),
    nonlinear=NonlinearConfig(
        gelu_lanes=2, softmax_lanes=2, layernorm_lanes=2, max_tokens=16, max_channels=32
    ),
    spm_kib=1,
    input_buffer_kib=1,
    weight_buffer_kib=1,
    weight_ports=2,
)


@functools.lru_cache(maxsize=1)
def _weight_port_top():
    return top_verilog(WEIGHT_PORT_DESIGN, "vitaccel_top")


def test_check_top_ports_reads_the_weight_ports_of_the_real_top(tmp_path):
    text = _weight_port_top()
    two = AcceleratorInterface(weight_ports=WEIGHT_PORT_DESIGN.weight_ports)
    assert check_top_ports(text, "vitaccel_top", two) == []
    assert check_top_ports(text, "vitaccel_top") == []  # extra ports are not the check's business
    without_rdata = re.sub(r"\bm_axi_w1_rdata\b", "m_axi_w1_data", text)
    assert check_top_ports(without_rdata, "vitaccel_top", two) == [
        "missing port m_axi_w1_rdata (in, 128 bit)"
    ]
    problems = check_top_ports(text, "vitaccel_top", AcceleratorInterface(weight_ports=3))
    assert problems and all(p.startswith("missing port m_axi_w2_") for p in problems)
    assert len(problems) == 11  # every port of the read-only master
    # write_project checks them too, before it writes anything.
    with pytest.raises(ValueError, match="missing port m_axi_w1_rdata"):
        write_project("zcu102", tmp_path / "out", "vitaccel_top", without_rdata, interface=two)
    assert not os.path.exists(tmp_path / "out")


def test_weight_port_ports_and_stub_top(tmp_path):
    interface = AcceleratorInterface(weight_ports=4)
    ports = {name: (d, w) for name, d, w in interface.ports()}
    for q in (1, 2, 3):
        assert ports[f"m_axi_w{q}_araddr"] == ("out", 40)
        assert ports[f"m_axi_w{q}_rdata"] == ("in", 128)
        assert ports[f"m_axi_w{q}_rready"] == ("out", 1)
        assert f"m_axi_w{q}_awaddr" not in ports and f"m_axi_w{q}_arid" not in ports
    assert "m_axi_w4_araddr" not in ports
    assert interface.weight_hp_ports() == (
        ("m_axi_w1", 1, 3),
        ("m_axi_w2", 2, 4),
        ("m_axi_w3", 3, 5),
    )
    problems = check_top_ports(
        _stub_verilog(interface, drop=("m_axi_w3_rlast",)), "vit_accel", interface
    )
    assert problems == ["missing port m_axi_w3_rlast (in, 1 bit)"]
    written = write_project(
        "zcu104", tmp_path / "out", "vit_accel", _stub_verilog(interface), interface=interface
    )
    assert written["tcl"].read_text() == project_tcl(
        "zcu104", "vit_accel", ["../rtl/vit_accel.v"], interface=interface
    )
    assert written["xdc"].read_text() == constraints_xdc("zcu104", interface=interface)


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


def test_explorer_reads_the_device_table_without_amaranth():
    # The budgets are pure data (boards/devices.py): the explorer runs without Amaranth.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from vitaccel.dse.search import explain_unfit, search\n"
        "search('digits-vit', 'kv260')\n"
        "explain_unfit('deit-base', 'kv260')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0].startswith('amaranth'))\n"
        "print(' '.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"the explorer imported {out.stdout.strip()}"


def test_platform_budgets_are_the_device_table():
    from vitaccel.boards import DEVICES

    assert sorted(DEVICES) == BOARD_NAMES
    for name, budget in DEVICES.items():
        assert get_board(name).budget is budget
        assert get_budget(name) is budget
        covered = " ".join(budget.sources)
        for field_name in ("dsp48e2", "ddr_mts", "ddr_gbps", "hp_ports", "pl_clocks_mhz"):
            assert field_name in covered, f"{name}: no source for {field_name}"
