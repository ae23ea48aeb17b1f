"""Vivado project, block design and build script for an accelerator on a Zynq UltraScale+ board.

Everything here is a pure function returning text (deterministic, no dates, no
absolute paths) except :func:`write_project`, which puts the texts on disk
atomically. There is no Vivado on the machines that generate these files; the
tests check their structure, the user runs them (``docs/boards.md``).

The block design is what users build by hand in IP integrator::

    zynq_ultra_ps_e_0 (board preset)
      M_AXI_HPM0_FPD --> smartconnect_ctrl --> accel_0/s_axil   (registers, 0xA000_0000)
      S_AXI_HP0_FPD  <-- smartconnect_mem  <-- accel_0/m_axi    (DDR)
      S_AXI_HP1_FPD  <-- smartconnect_w1   <-- accel_0/m_axi_w1 (DDR, weights; weight_ports >= 2)
      S_AXI_HP2_FPD  <-- smartconnect_w2   <-- accel_0/m_axi_w2 (weight_ports >= 3)
      S_AXI_HP3_FPD  <-- smartconnect_w3   <-- accel_0/m_axi_w3 (weight_ports = 4)
      pl_clk0 (design clock) --> every clk / aclk
      pl_resetn0 --> proc_sys_reset_0 --> accel_0/rst (active high), interconnect resets
      pl_ps_irq0 <-- accel_0/irq

Interface convention of the accelerator top
-------------------------------------------
The top module (one Verilog module, added as a block-design *module reference*)
has exactly these ports; widths in brackets are :class:`AcceleratorInterface`
parameters:

- ``clk`` (in): the only clock, pl_clk0 at the design clock.
- ``rst`` (in): synchronous, **active-high** reset (proc_sys_reset's
  ``peripheral_reset``).
- ``irq`` (out): level-high interrupt to the PS (``pl_ps_irq0[0]``, GIC interrupt ID 121).
- AXI4-Lite slave, prefix ``s_axil_``, 32-bit data, [12..16]-bit byte address:
  ``awaddr awvalid awready wdata wstrb wvalid wready bresp bvalid bready
  araddr arvalid arready rdata rresp rvalid rready``.
- AXI4 master, prefix ``m_axi_``, [32/64/128]-bit data (128 by default),
  [32..49]-bit address (40 by default), full read and write channels:
  ``awaddr awlen awsize awburst awvalid awready wdata wstrb wlast wvalid
  wready bresp bvalid bready araddr arlen arsize arburst arvalid arready rdata
  rresp rlast rvalid rready``; optional ``awid/bid/arid/rid`` (when
  ``id_width`` > 0) and ``awcache awprot arcache arprot``.
- With ``weight_ports`` = P > 1: P-1 read-only AXI4 masters, prefixes
  ``m_axi_w1_`` .. ``m_axi_w3_``, with m_axi's address and data widths and no
  ID ports: ``araddr arlen arsize arburst arvalid arready rdata rresp rlast
  rvalid rready``; optional ``arcache arprot``. ``m_axi_w<q>`` goes to
  S_AXI_HP<q>_FPD (PS8 slave S_AXI_GP<q+2>), so the weight streams and m_axi
  each have a port of their own; all of them share the PS DDR.

The names carry no ``X_INTERFACE_INFO`` attributes: Vivado infers the AXI
interfaces from the ``s_axil_``/``m_axi_``/``m_axi_w<q>_`` prefixes and the
standard signal names (UG994, "Inferring AXI interfaces"), the clock from ``clk``
and the reset from ``rst``. The Tcl checks that the inference happened (and stops
with a message naming the port convention if not), then states the clock
association and reset polarity explicitly. Amaranth flattens a ``wiring`` signature as
``s_axil__awaddr`` (two underscores), so the top must name its ports itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..util import atomic_write_text
from .base import BoardBudget, BoardError, get_budget

__all__ = [
    "AcceleratorInterface",
    "build_sh",
    "check_hp_ports",
    "check_top_ports",
    "constraints_xdc",
    "project_tcl",
    "write_project",
]

# HPM0_FPD's low window starts here (UG1085 address map); the register block
# sits at its bottom so host code can rely on one address on every board.
CTRL_BASE = 0xA000_0000

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TCL_UNSAFE = re.compile(r'[\s{}\[\]$"\\;]')


@dataclass(frozen=True)
class AcceleratorInterface:
    """Port widths of the accelerator top that the block design is built for.

    Parameters
    ----------
    s_axil_addr_width : int
        Byte-address width of the AXI4-Lite register slave, 12 to 16 (4 KiB to
        64 KiB of registers). Its data width is 32.
    m_axi_addr_width : int
        Byte-address width of the AXI4 master, 32 to 49 (S_AXI_HP0_FPD takes 49).
        40 reaches all of DDR on every board here.
    m_axi_data_width : int
        Data width of the AXI4 master, 32, 64 or 128 (the HP port is set to the
        same width, so nothing converts widths on the data path).
    m_axi_id_width : int
        Width of ``m_axi_awid/bid/arid/rid``; 0 means the top has no ID ports.
    weight_ports : int
        AXI masters that stream weights, 1 to 4 (``Design.weight_ports``): m_axi
        plus ``weight_ports - 1`` read-only masters ``m_axi_w1`` .. ``m_axi_w3``
        with m_axi's address and data widths and no ID ports, one HP port each.
    """

    s_axil_addr_width: int = 16
    m_axi_addr_width: int = 40
    m_axi_data_width: int = 128
    m_axi_id_width: int = 0
    weight_ports: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.s_axil_addr_width, int) or not 12 <= self.s_axil_addr_width <= 16:
            raise ValueError(
                f"s_axil_addr_width must be 12 to 16 bits, not {self.s_axil_addr_width!r}"
            )
        if not isinstance(self.m_axi_addr_width, int) or not 32 <= self.m_axi_addr_width <= 49:
            raise ValueError(
                f"m_axi_addr_width must be 32 to 49 bits, not {self.m_axi_addr_width!r}"
            )
        if self.m_axi_data_width not in (32, 64, 128):
            raise ValueError(
                f"m_axi_data_width must be 32, 64 or 128 bits, not {self.m_axi_data_width!r}"
            )
        if not isinstance(self.m_axi_id_width, int) or not 0 <= self.m_axi_id_width <= 6:
            raise ValueError(f"m_axi_id_width must be 0 to 6 bits, not {self.m_axi_id_width!r}")
        # Four: the PS8 has four HP ports (HP0..HP3) and each master gets one of its own.
        if (
            not isinstance(self.weight_ports, int)
            or isinstance(self.weight_ports, bool)
            or not 1 <= self.weight_ports <= 4
        ):
            raise ValueError(f"weight_ports must be 1, 2, 3 or 4, not {self.weight_ports!r}")

    @property
    def ctrl_range(self) -> int:
        """Bytes of register space the AXI4-Lite slave decodes."""
        return 1 << self.s_axil_addr_width

    def ports(self) -> tuple[tuple[str, str, int], ...]:
        """Required ports of the top as (name, "in"/"out", width), in a fixed order."""
        a, d, dm = self.s_axil_addr_width, 32, self.m_axi_data_width
        am = self.m_axi_addr_width
        ports = [("clk", "in", 1), ("rst", "in", 1), ("irq", "out", 1)]
        ports += [
            ("s_axil_awaddr", "in", a), ("s_axil_awvalid", "in", 1), ("s_axil_awready", "out", 1),
            ("s_axil_wdata", "in", d), ("s_axil_wstrb", "in", d // 8),
            ("s_axil_wvalid", "in", 1), ("s_axil_wready", "out", 1),
            ("s_axil_bresp", "out", 2), ("s_axil_bvalid", "out", 1), ("s_axil_bready", "in", 1),
            ("s_axil_araddr", "in", a), ("s_axil_arvalid", "in", 1), ("s_axil_arready", "out", 1),
            ("s_axil_rdata", "out", d), ("s_axil_rresp", "out", 2),
            ("s_axil_rvalid", "out", 1), ("s_axil_rready", "in", 1),
        ]  # fmt: skip
        ports += [
            ("m_axi_awaddr", "out", am), ("m_axi_awlen", "out", 8), ("m_axi_awsize", "out", 3),
            ("m_axi_awburst", "out", 2), ("m_axi_awvalid", "out", 1), ("m_axi_awready", "in", 1),
            ("m_axi_wdata", "out", dm), ("m_axi_wstrb", "out", dm // 8), ("m_axi_wlast", "out", 1),
            ("m_axi_wvalid", "out", 1), ("m_axi_wready", "in", 1),
            ("m_axi_bresp", "in", 2), ("m_axi_bvalid", "in", 1), ("m_axi_bready", "out", 1),
            ("m_axi_araddr", "out", am), ("m_axi_arlen", "out", 8), ("m_axi_arsize", "out", 3),
            ("m_axi_arburst", "out", 2), ("m_axi_arvalid", "out", 1), ("m_axi_arready", "in", 1),
            ("m_axi_rdata", "in", dm), ("m_axi_rresp", "in", 2), ("m_axi_rlast", "in", 1),
            ("m_axi_rvalid", "in", 1), ("m_axi_rready", "out", 1),
        ]  # fmt: skip
        if self.m_axi_id_width:
            i = self.m_axi_id_width
            ports += [("m_axi_awid", "out", i), ("m_axi_bid", "in", i),
                      ("m_axi_arid", "out", i), ("m_axi_rid", "in", i)]  # fmt: skip
        for q in range(1, self.weight_ports):
            w = f"m_axi_w{q}_"
            ports += [
                (w + "araddr", "out", am), (w + "arlen", "out", 8), (w + "arsize", "out", 3),
                (w + "arburst", "out", 2), (w + "arvalid", "out", 1), (w + "arready", "in", 1),
                (w + "rdata", "in", dm), (w + "rresp", "in", 2), (w + "rlast", "in", 1),
                (w + "rvalid", "in", 1), (w + "rready", "out", 1),
            ]  # fmt: skip
        return tuple(ports)

    def weight_hp_ports(self) -> tuple[tuple[str, int, int], ...]:
        """The extra weight masters and their PS8 ports, as (interface, HP index, S_AXI_GP index).

        m_axi has HP0 (S_AXI_GP2); ``m_axi_w<q>`` takes HP<q>, which the PS8
        calls S_AXI_GP<q+2> in its CONFIG keys (GP0/GP1 are HPC0/HPC1).
        """
        return tuple((f"m_axi_w{q}", q, q + 2) for q in range(1, self.weight_ports))


_PORT_DECL = re.compile(
    r"\b(input|output|inout)\b\s+(?:(?:wire|reg|logic|signed)\s+)*"
    r"(?:\[\s*(\d+)\s*:\s*(\d+)\s*\]\s*)?([A-Za-z_][A-Za-z0-9_$]*)"
)


def check_top_ports(
    verilog_text: str, top_name: str, interface: AcceleratorInterface = AcceleratorInterface()
) -> list[str]:
    """Problems with the top module's ports against the convention; empty if it follows it.

    Reads the port declarations of ``module top_name`` (Yosys/Amaranth style
    ``input [15:0] s_axil_awaddr;`` or ANSI headers); it is a structural check,
    not a Verilog parser.
    """
    match = re.search(rf"\bmodule\s+{re.escape(top_name)}\b(.*?)\bendmodule\b", verilog_text, re.S)
    if match is None:
        return [f"no module named {top_name!r} in the Verilog"]
    declared: dict[str, tuple[str, int]] = {}
    for m in _PORT_DECL.finditer(match.group(1)):
        direction = {"input": "in", "output": "out", "inout": "inout"}[m.group(1)]
        width = abs(int(m.group(2)) - int(m.group(3))) + 1 if m.group(2) else 1
        declared.setdefault(m.group(4), (direction, width))
    problems = []
    for name, direction, width in interface.ports():
        if name not in declared:
            problems.append(f"missing port {name} ({direction}, {width} bit)")
        elif declared[name] != (direction, width):
            got_dir, got_width = declared[name]
            problems.append(
                f"port {name} is {got_dir} {got_width} bit, expected {direction} {width} bit"
            )
    return problems


def _tcl_word(text: str, what: str) -> str:
    if not text or _TCL_UNSAFE.search(text):
        raise ValueError(f"{what} must be non-empty, without spaces or Tcl specials, not {text!r}")
    return text


def _range(nbytes: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= size and nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    raise ValueError(f"Address range must be a whole number of KiB, not {nbytes!r}")


def _clock(budget: BoardBudget, clock_mhz: float | None) -> float:
    return budget.check_clock(budget.default_clock_mhz if clock_mhz is None else clock_mhz)


def check_hp_ports(board: object, interface: AcceleratorInterface) -> BoardBudget:
    """The board's budget if it has an HP port for each of ``interface``'s weight masters.

    Raises :class:`~vitaccel.boards.base.BoardError` (a ``ValueError``) naming
    ``weight_ports`` and the board's HP port count otherwise.
    """
    budget = get_budget(board)
    # Every weight master has an HP port of its own (m_axi on HP0): more masters than
    # ports would need an interconnect merging them, which is what the ports avoid.
    if interface.weight_ports > budget.hp_ports:
        raise BoardError(
            f"weight_ports {interface.weight_ports} needs {interface.weight_ports} HP ports, "
            f"but board {budget.name!r} has {budget.hp_ports}; choose weight_ports 1 to "
            f"{budget.hp_ports}"
        )
    return budget


def _weight_port_tcl(ps: str, interface: AcceleratorInterface) -> dict[str, str]:
    """Block-design fragments for the weight masters ``m_axi_w1..``, keyed by where they go.

    All of them are empty when ``weight_ports`` is 1, which keeps the Tcl of a one-port
    design byte-identical to the Tcl from before weight ports existed.
    """
    ports = interface.weight_hp_ports()
    names = [intf for intf, _, _ in ports]
    last = ports[-1][1] if ports else 0
    hp_span = "HP1_FPD" if last == 1 else f"HP1_FPD..HP{last}_FPD"
    gp_span = "S_AXI_GP3" if last == 1 else f"S_AXI_GP3..GP{last + 2}"
    w_span = " ".join(names[:1]) if len(names) <= 1 else f"{names[0]}..{names[-1]}"
    signals = "araddr arlen arsize arburst arvalid arready rdata rresp rlast rvalid rready"
    address_rows = " ".join(
        f"{intf} smartconnect_w{hp} SAXIGP{gp} HP{hp}" for intf, hp, gp in ports
    )
    fragments = {
        "ps_comment": (
            f"# Weight ports: {w_span} on {hp_span} ({gp_span}), an HP port per master so\n"
            "# the weight streams do not queue behind m_axi; all HP ports share the PS DDR.\n"
        ),
        "ps_config": "".join(
            f"    CONFIG.PSU__USE__S_AXI_GP{gp} {{1}} \\\n"
            f"    CONFIG.PSU__SAXIGP{gp}__DATA_WIDTH {{{interface.m_axi_data_width}}} \\\n"
            for _, _, gp in ports
        ),
        "infer_comment": f"# Vivado infers the read-only weight masters ({w_span}) the same way.\n",
        "infer_check": (
            f"foreach intf {{{' '.join(names)}}} {{\n"
            "    if {[llength [get_bd_intf_pins -quiet accel_0/$intf]] == 0} {\n"
            "        error \"vitaccel: Vivado inferred no '$intf' interface on $top; a weight port "
            f"is a read-only AXI4 master whose ports are ${{intf}}_<name> for <name> in: {signals} "
            '(docs/boards.md)"\n'
            "    }\n"
            "}\n"
        ),
        # Appended to "s_axil:m_axi" in the clock's ASSOCIATED_BUSIF.
        "busif": "".join(f":{intf}" for intf in names),
        "smartconnects": "".join(
            f"set smc_w{hp} [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect "
            f"smartconnect_w{hp}]\n"
            f"set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $smc_w{hp}\n"
            for _, hp, _ in ports
        ),
        "connections": (
            "# Weights: each read-only master -> its own SmartConnect -> its own HP port (DDR).\n"
            + "".join(
                f"connect_bd_intf_net [get_bd_intf_pins accel_0/{intf}] "
                f"[get_bd_intf_pins smartconnect_w{hp}/S00_AXI]\n"
                f"connect_bd_intf_net [get_bd_intf_pins smartconnect_w{hp}/M00_AXI] "
                f"[get_bd_intf_pins {ps}/S_AXI_HP{hp}_FPD]\n"
                for intf, hp, _ in ports
            )
        ),
        "clocks_ps": "".join(
            f"    [get_bd_pins {ps}/saxihp{hp}_fpd_aclk] \\\n" for _, hp, _ in ports
        ),
        "clocks_smc": "".join(
            f"    [get_bd_pins smartconnect_w{hp}/aclk] \\\n" for _, hp, _ in ports
        ),
        # Continues the interconnect_aresetn net after smartconnect_mem/aresetn.
        "resets": "".join(
            f" \\\n    [get_bd_pins smartconnect_w{hp}/aresetn]" for _, hp, _ in ports
        ),
        "addresses": (
            "# Each weight master sees DDR at the same physical addresses as m_axi, through\n"
            "# its own HP port. Its DDR windows are mapped by name (DDR_HIGH only if the PS\n"
            "# offers it) so that a port reaching no DDR stops the build here, not at the\n"
            "# first weight fetch on the board; assign_bd_address below maps the rest as for HP0.\n"
            f"foreach {{intf smc saxi hp}} {{{address_rows}}} {{\n"
            "    set space [get_bd_addr_spaces -quiet -of_objects [get_bd_intf_pins accel_0/$intf]]\n"
            "    if {[llength $space] == 0} {\n"
            '        error "vitaccel: Vivado made no address space for accel_0/$intf; it must be an '
            'AXI4 master (ports ${intf}_araddr ... ${intf}_rready, docs/boards.md)"\n'
            "    }\n"
            "    set ddr [list]\n"
            "    foreach window {DDR_LOW DDR_HIGH} {\n"
            f"        lappend ddr {{*}}[get_bd_addr_segs -quiet {ps}/$saxi/${{hp}}_$window]\n"
            "    }\n"
            "    if {[llength $ddr] == 0} {\n"
            f'        error "vitaccel: {ps} has no segment $saxi/${{hp}}_DDR_LOW for accel_0/$intf '
            'through $smc: S_AXI_${hp}_FPD is not enabled on the PS"\n'
            "    }\n"
            "    foreach seg $ddr {\n"
            "        assign_bd_address -target_address_space $space $seg -force\n"
            "    }\n"
            "}\n"
        ),
    }
    if not ports:
        return dict.fromkeys(fragments, "")
    return fragments


def project_tcl(
    board: object,
    top_name: str,
    verilog_files: Sequence[str],
    clock_mhz: float | None = None,
    *,
    interface: AcceleratorInterface = AcceleratorInterface(),
    project_name: str | None = None,
    xdc_files: Sequence[str] = ("constraints.xdc",),
    jobs: int = 8,
) -> str:
    """Vivado batch Tcl: project, block design, bitstream and ``.xsa`` for the accelerator.

    Parameters
    ----------
    board : str, platform class or BoardBudget
        Target board (``"zcu102"``, ``"zcu104"``, ``"kv260"``).
    top_name : str
        Verilog module name of the accelerator top (see the module docstring).
    verilog_files : sequence of str
        Verilog sources, relative to the directory of the Tcl script.
    clock_mhz : float, optional
        PL clock (pl_clk0) and so the accelerator clock; one of the board's
        ``pl_clocks_mhz``; default the board's ``default_clock_mhz``.
    interface : AcceleratorInterface
        Port widths of the top; set the HP port width and the register range,
        and ``weight_ports`` adds HP1.. for ``m_axi_w1..`` (refused with a
        ``BoardError`` if the board has fewer HP ports).
    project_name : str, optional
        Vivado project name and basename of the products; default ``top_name``.
    xdc_files : sequence of str
        Constraint files, relative to the script directory.
    jobs : int
        Parallel jobs for synthesis and implementation (``VITACCEL_JOBS`` overrides).

    Returns
    -------
    str
        The script. Run it with ``vivado -mode batch -source project.tcl``; it
        writes ``build/<project>.xsa`` (with the bitstream), ``.bit``, ``.hwh``
        and ``build/reports/``.
    """
    budget = get_budget(board)
    clock = _clock(budget, clock_mhz)
    if not isinstance(top_name, str) or not _IDENT.match(top_name):
        raise ValueError(f"top_name must be a Verilog identifier, not {top_name!r}")
    project = top_name if project_name is None else project_name
    if not isinstance(project, str) or not _IDENT.match(project):
        raise ValueError(f"project_name must be an identifier, not {project!r}")
    if isinstance(verilog_files, str) or not verilog_files:
        raise ValueError(f"verilog_files must be a non-empty list of paths, not {verilog_files!r}")
    sources = [_tcl_word(str(f), "Verilog file path") for f in verilog_files]
    xdcs = [_tcl_word(str(f), "XDC file path") for f in xdc_files]
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, not {jobs!r}")
    check_hp_ports(budget, interface)

    board_part = budget.vivado_board_part
    board_pattern = board_part.rsplit(":", 1)[0] + ":*"
    ps = f"{budget.ps}_0"
    ctrl_range = _range(interface.ctrl_range)
    source_list = " ".join(f"[file join $script_dir {f}]" for f in sources)
    xdc_list = " ".join(f"[file join $script_dir {f}]" for f in xdcs)
    w = _weight_port_tcl(ps, interface)

    lines = f"""\
# vitaccel: Vivado project for the accelerator `{top_name}` on {budget.name} ({budget.part}).
# Generated from the design file; regenerate rather than edit.
# Run from anywhere:  vivado -mode batch -source project.tcl
# Products in build/: {project}.xsa (hardware platform, bitstream included),
# {project}.bit + {project}.hwh (for PYNQ), reports/*.rpt.

set script_dir [file dirname [file normalize [info script]]]
set build_dir  [file join $script_dir build]
set proj_name  {project}
set top        {top_name}
set bd_name    system
set clock_mhz  {clock:g}
set jobs       {jobs}
if {{[info exists ::env(VITACCEL_JOBS)]}} {{ set jobs $::env(VITACCEL_JOBS) }}

# ---------------------------------------------------------------- project
create_project -force $proj_name [file join $build_dir project] -part {budget.part}

# The board part carries the PS preset (DDR timing, MIO, reference clocks).
# Take the version we were written for, else the newest one installed.
set board_part {board_part}
if {{[llength [get_board_parts -quiet $board_part]] == 0}} {{
    set found [lsort -dictionary [get_board_parts -quiet {{{board_pattern}}}]]
    if {{[llength $found] == 0}} {{
        error "vitaccel: Vivado has no board files for {budget.name} ($board_part); install them from the Vivado Store (Tools > Vivado Store > Boards) and run again"
    }}
    set board_part [lindex $found end]
    puts "vitaccel: board part {board_part} not installed, using $board_part"
}}
set_property board_part $board_part [current_project]
set_property target_language Verilog [current_project]

add_files -norecurse [list {source_list}]
add_files -fileset constrs_1 -norecurse [list {xdc_list}]
update_compile_order -fileset sources_1

# ---------------------------------------------------------------- block design
create_bd_design $bd_name

# Processing system with the board preset, then only the ports the accelerator
# uses: HPM0_FPD (M_AXI_GP0) for registers, HP0_FPD (S_AXI_GP2) to DDR,
# pl_clk0 at the design clock, pl_ps_irq0.
{w["ps_comment"]}set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:{budget.ps} {ps}]
apply_bd_automation -rule xilinx.com:bd_rule:{budget.ps} -config {{apply_board_preset "1"}} $ps
set_property -dict [list \\
    CONFIG.PSU__USE__M_AXI_GP0 {{1}} \\
    CONFIG.PSU__MAXIGP0__DATA_WIDTH {{32}} \\
    CONFIG.PSU__USE__M_AXI_GP1 {{0}} \\
    CONFIG.PSU__USE__M_AXI_GP2 {{0}} \\
    CONFIG.PSU__USE__S_AXI_GP2 {{1}} \\
    CONFIG.PSU__SAXIGP2__DATA_WIDTH {{{interface.m_axi_data_width}}} \\
{w["ps_config"]}    CONFIG.PSU__USE__IRQ0 {{1}} \\
    CONFIG.PSU__FPGA_PL0_ENABLE {{1}} \\
    CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {{{clock:g}}} \\
] $ps
puts "vitaccel: pl_clk0 requested {clock:g} MHz, PS PLLs give [get_property CONFIG.PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ $ps] MHz"

# The accelerator, as a module reference: Vivado infers s_axil and m_axi from
# the port names (no X_INTERFACE_INFO in the RTL).
{w["infer_comment"]}set accel [create_bd_cell -type module -reference $top accel_0]
foreach intf {{s_axil m_axi}} {{
    if {{[llength [get_bd_intf_pins -quiet accel_0/$intf]] == 0}} {{
        error "vitaccel: Vivado inferred no '$intf' interface on $top; its ports must follow the convention in docs/boards.md (s_axil_*, m_axi_*, clk, rst, irq)"
    }}
}}
{w["infer_check"]}# Say what inference may leave unsaid; where Vivado owns the value already, keep its.
foreach {{pin property value}} {{
    clk CONFIG.ASSOCIATED_BUSIF s_axil:m_axi{w["busif"]}
    clk CONFIG.ASSOCIATED_RESET rst
    rst CONFIG.POLARITY ACTIVE_HIGH
    irq CONFIG.SENSITIVITY LEVEL_HIGH
}} {{
    if {{[catch {{set_property $property $value [get_bd_pins accel_0/$pin]}} message]}} {{
        puts "vitaccel: keeping Vivado's $property on accel_0/$pin ($message)"
    }}
}}

set smc_ctrl [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect smartconnect_ctrl]
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $smc_ctrl
set smc_mem [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect smartconnect_mem]
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $smc_mem
{w["smartconnects"]}set rst_ps [create_bd_cell -type ip -vlnv xilinx.com:ip:proc_sys_reset proc_sys_reset_0]

# Registers: PS master M_AXI_HPM0_FPD -> SmartConnect (AXI4 -> AXI4-Lite) -> accelerator.
connect_bd_intf_net [get_bd_intf_pins {ps}/M_AXI_HPM0_FPD] [get_bd_intf_pins smartconnect_ctrl/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins smartconnect_ctrl/M00_AXI] [get_bd_intf_pins accel_0/s_axil]
# Data: accelerator AXI4 master -> SmartConnect -> PS slave S_AXI_HP0_FPD (DDR).
connect_bd_intf_net [get_bd_intf_pins accel_0/m_axi] [get_bd_intf_pins smartconnect_mem/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins smartconnect_mem/M00_AXI] [get_bd_intf_pins {ps}/S_AXI_HP0_FPD]
{w["connections"]}
# One clock domain: pl_clk0.
connect_bd_net [get_bd_pins {ps}/pl_clk0] \\
    [get_bd_pins {ps}/maxihpm0_fpd_aclk] \\
    [get_bd_pins {ps}/saxihp0_fpd_aclk] \\
{w["clocks_ps"]}    [get_bd_pins smartconnect_ctrl/aclk] \\
    [get_bd_pins smartconnect_mem/aclk] \\
{w["clocks_smc"]}    [get_bd_pins proc_sys_reset_0/slowest_sync_clk] \\
    [get_bd_pins accel_0/clk]
connect_bd_net [get_bd_pins {ps}/pl_resetn0] [get_bd_pins proc_sys_reset_0/ext_reset_in]
connect_bd_net [get_bd_pins proc_sys_reset_0/interconnect_aresetn] \\
    [get_bd_pins smartconnect_ctrl/aresetn] \\
    [get_bd_pins smartconnect_mem/aresetn]{w["resets"]}
connect_bd_net [get_bd_pins proc_sys_reset_0/peripheral_reset] [get_bd_pins accel_0/rst]
connect_bd_net [get_bd_pins accel_0/irq] [get_bd_pins {ps}/pl_ps_irq0]

# Addresses: registers at 0x{CTRL_BASE:08X} ({ctrl_range}); the master sees DDR through HP0.
assign_bd_address -offset 0x{CTRL_BASE:08X} -range {ctrl_range} \\
    -target_address_space [get_bd_addr_spaces {ps}/Data] \\
    [get_bd_addr_segs -of_objects [get_bd_intf_pins accel_0/s_axil]] -force
{w["addresses"]}assign_bd_address

validate_bd_design
save_bd_design

# ---------------------------------------------------------------- wrapper
set bd_file [get_files $bd_name.bd]
generate_target all $bd_file
add_files -norecurse [make_wrapper -files $bd_file -top]
set_property top ${{bd_name}}_wrapper [current_fileset]
update_compile_order -fileset sources_1

# ---------------------------------------------------------------- build
launch_runs synth_1 -jobs $jobs
wait_on_run synth_1
if {{[get_property PROGRESS [get_runs synth_1]] ne "100%"}} {{
    error "vitaccel: synthesis failed, see [get_property DIRECTORY [get_runs synth_1]]/runme.log"
}}
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
if {{[get_property PROGRESS [get_runs impl_1]] ne "100%"}} {{
    error "vitaccel: implementation failed, see [get_property DIRECTORY [get_runs impl_1]]/runme.log"
}}

open_run impl_1
file mkdir [file join $build_dir reports]
report_utilization -file [file join $build_dir reports utilization.rpt]
report_utilization -hierarchical -file [file join $build_dir reports utilization_hier.rpt]
report_timing_summary -file [file join $build_dir reports timing_summary.rpt]
set wns [get_property STATS.WNS [get_runs impl_1]]
if {{$wns < 0}} {{
    error "vitaccel: timing not met at {clock:g} MHz (WNS $wns ns); choose a lower clock_mhz in the design file"
}}

# write_bitstream ran as the last step of impl_1; package it.
write_hw_platform -fixed -include_bit -force -file [file join $build_dir $proj_name.xsa]
file copy -force [file join [get_property DIRECTORY [get_runs impl_1]] ${{bd_name}}_wrapper.bit] \\
    [file join $build_dir $proj_name.bit]
set hwh [lindex [get_files -quiet -all *$bd_name.hwh] 0]
if {{$hwh ne ""}} {{
    file copy -force $hwh [file join $build_dir $proj_name.hwh]
}} else {{
    puts "vitaccel: no $bd_name.hwh found; PYNQ needs it beside the .bit (it is also inside the .xsa)"
}}
puts "vitaccel: done, [file join $build_dir $proj_name.xsa] (WNS $wns ns)"
"""
    return lines


def constraints_xdc(
    board: object,
    clock_mhz: float | None = None,
    *,
    interface: AcceleratorInterface = AcceleratorInterface(),
) -> str:
    """XDC for the block-design build: timing notes and bitstream options, no pins.

    The accelerator's only clock is pl_clk0, and the ``zynq_ultra_ps_e`` IP
    constrains it itself from the frequency the PS PLLs really give, so a
    ``create_clock`` here would only fight it. The design uses no PL pins.
    ``interface`` only changes the comment that lists the PS ports used.
    """
    budget = get_budget(board)
    clock = _clock(budget, clock_mhz)
    check_hp_ports(budget, interface)
    last_hp = interface.weight_ports - 1
    hp = "HP0_FPD" if last_hp == 0 else f"HP0_FPD..HP{last_hp}_FPD"
    return f"""\
# vitaccel: constraints for {budget.name} ({budget.part}), PL clock {clock:g} MHz.
# Generated from the design file; regenerate rather than edit.
#
# Timing: the only clock is pl_clk0 ({clock:g} MHz requested, {1000 / clock:.3f} ns).
# The {budget.ps} IP constrains it with its own create_clock at the period
# the PS PLLs actually give (CONFIG.PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ,
# printed by project.tcl), so no create_clock here: a second one would
# override the IP's. The registers, the AXI master and the interrupt all run
# on pl_clk0, so there are no clock crossings to constrain.
#
# Pins: none. The accelerator talks to the PS only (HPM0_FPD, {hp},
# pl_ps_irq0); the board's PL pins are left unused.

set_property BITSTREAM.GENERAL.COMPRESS TRUE [current_design]
"""


def build_sh(board: object, project_name: str | None = None, top_name: str | None = None) -> str:
    """POSIX shell script that runs ``project.tcl`` in Vivado batch mode from its own directory."""
    budget = get_budget(board)
    what = f" for `{top_name}`" if top_name else ""
    products = f"build/{project_name}.xsa" if project_name else "build/*.xsa"
    return f"""\
#!/bin/sh
# vitaccel: build the Vivado project{what} on {budget.name} ({budget.part}).
# Needs Vivado on PATH (source <Vivado>/settings64.sh) and its {budget.name} board files.
# Produces {products} (bitstream included), the .bit/.hwh pair and build/reports/.
# VITACCEL_JOBS=<n> sets the number of parallel jobs.
set -eu
cd "$(dirname "$0")"
mkdir -p build
exec vivado -mode batch -nojournal -log build/vivado.log -source project.tcl
"""


def write_project(
    board: object,
    out_dir: str | os.PathLike,
    top_name: str,
    verilog_text: str,
    clock_mhz: float | None = None,
    *,
    interface: AcceleratorInterface = AcceleratorInterface(),
    check_ports: bool = True,
) -> dict[str, Path]:
    """Write ``rtl/<top>.v`` and ``vivado/{project.tcl, constraints.xdc, build.sh}`` under ``out_dir``.

    Each file is written to a temporary name and renamed into place. All texts
    are produced (and the top's ports checked, unless ``check_ports`` is false)
    before the first file is written, so a bad input leaves ``out_dir`` untouched.

    Returns
    -------
    dict
        ``{"verilog", "tcl", "xdc", "build_sh"}`` -> path written.
    """
    if check_ports:
        problems = check_top_ports(verilog_text, top_name, interface)
        if problems:
            raise ValueError(
                f"Top module {top_name!r} does not follow the accelerator interface convention: "
                + "; ".join(problems)
            )
    texts = {
        "verilog": (Path("rtl") / f"{top_name}.v", verilog_text),
        "tcl": (
            Path("vivado") / "project.tcl",
            project_tcl(board, top_name, [f"../rtl/{top_name}.v"], clock_mhz, interface=interface),
        ),
        "xdc": (
            Path("vivado") / "constraints.xdc",
            constraints_xdc(board, clock_mhz, interface=interface),
        ),
        "build_sh": (Path("vivado") / "build.sh", build_sh(board, top_name, top_name)),
    }
    out = Path(out_dir)
    written = {}
    for key, (relative, text) in texts.items():
        path = atomic_write_text(out / relative, text)
        # mkstemp creates 0600 files; make them ordinary, the script executable.
        path.chmod(0o755 if key == "build_sh" else 0o644)
        written[key] = path
    return written
