"""Verilog emission: one deterministic path from an Amaranth component to Verilog text.

``emit_src=False`` drops the ``(* src = "/abs/path:line" *)`` attributes, so the text depends
only on the design, not on where the checkout lives: the same design gives byte-identical
Verilog on every machine.

The same Verilog must simulate identically under Verilog-2005 and SystemVerilog event rules
(Icarus ``-g2005`` and ``-g2012``, Questa, Xcelium, xsim, Verilator; docs/verification.md).
Amaranth's own ``verilog.convert`` leaves its combinational logic as ``always @*`` blocks
(Yosys ``proc -nomux``) that Yosys' Verilog writer runs once at power-up through a dummy
register declared with an initialiser (``reg \\$auto$verilog_backend...  = 0;``) and read by
every block. Under Verilog-2005 rules that initialiser is an assignment at time 0, an event
that wakes the blocks; under SystemVerilog rules a declaration initialiser happens before
time 0 and makes no event, so a block whose inputs keep their power-up values (a table lookup
indexed by a register still at its reset value) is never evaluated and its output stays X.
A delayed kick (``initial #0``) would fix the event order but Verilator then refuses the file
without ``--timing``/``--no-timing``. So the processes are lowered to cells instead
(``proc`` with its mux and ROM steps, exactly what Yosys synthesis does first when it reads
the old text): combinational logic becomes continuous assignments (evaluated at time 0 under
every semantics), registers stay ``always @(posedge clk)``, and no ``always @*`` block is left.
"""

from __future__ import annotations

from amaranth._toolchain.yosys import find_yosys
from amaranth.back import rtlil

__all__ = ["to_verilog", "YOSYS_SCRIPT"]

# As amaranth.back.verilog, except: full ``proc`` (Amaranth runs ``proc -nomux -norom``, which
# leaves the ``always @*`` blocks described above); and Yosys' internal names (``$procmux$12``)
# renamed to ``_12_`` (no ``-norename``): Icarus takes a call of the function
# ``\$procmux$12`` that write_verilog emits for a $pmux for a system function call. Public
# names (ports, named signals) are kept either way.
YOSYS_SCRIPT = ("proc", "memory_collect", "write_verilog")


def to_verilog(component, name: str) -> str:
    """Convert an Amaranth ``wiring.Component`` to Verilog with top module ``name``.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        The design; its signature gives the ports.
    name : str
        Name of the top module (a Verilog identifier).

    Returns
    -------
    str
        Verilog with no ``always @*`` block: combinational logic as continuous assignments,
        so it simulates identically under Verilog-2005 and SystemVerilog rules.
        Byte-identical for the same design.
    """
    if not name.isidentifier():
        raise ValueError(f"Verilog module name must be an identifier, not {name!r}")
    # Same Yosys version requirement as amaranth.back.verilog (its builtin-yosys).
    yosys = find_yosys(lambda ver: ver >= (0, 40))
    rtlil_text = rtlil.convert(component, name=name, emit_src=False)
    script = [f"read_rtlil <<rtlil\n{rtlil_text}\nrtlil", *YOSYS_SCRIPT]
    text = yosys.run(["-q", "-"], "\n".join(script), ignore_warnings=True)
    if "always @*" in text:
        # A Yosys change brought back a process: fail loudly rather than emit Verilog that
        # may show X under SystemVerilog simulators.
        raise RuntimeError(f"{name}: Yosys left an always @* block in the Verilog")
    return text
