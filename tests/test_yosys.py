"""vitaccel.flow.yosys: a Yosys run dies with the process that started it (a killed Dask
worker leaves no synthesis running); synthesis unit by unit (canonical modules cut into
units, the figures composed as Yosys' flatten gives them, a module's counts independent of
its run, the difference against the whole top)."""

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from vitaccel.flow.yosys import _run_yosys

# A proof Yosys cannot finish in minutes (distributivity of a 16-bit multiply, no opt pass to
# simplify it): the run is still going when its worker is killed.
ENDLESS = """module m(input [15:0] a, input [15:0] b, input [15:0] c, output y);
  assign y = (a * (b + c)) == (a * b + a * c);
endmodule
"""


def _processes_in(folder: Path) -> list[int]:
    """The pids whose working directory is ``folder`` (each Yosys run has its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(folder):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return found


def test_killed_worker_leaves_no_yosys_running(tmp_path):
    from distributed import Client, LocalCluster

    work = tmp_path / "yosys-run"
    work.mkdir()
    (work / "design.v").write_text(ENDLESS)
    script = "read_verilog design.v\nhierarchy -top m\nproc\nsat -prove y 1\n"
    survivors: list[int] = []
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        (worker_pid,) = client.run(os.getpid).values()
        future = client.submit(_run_yosys, script, work, pure=False, retries=0)
        t0 = time.monotonic()
        # started: the process is there and Yosys has begun its log (past the WebAssembly
        # compile of a cold cache, ~30 s)
        while not (_processes_in(work) and (work / "yosys.log").exists()):
            assert time.monotonic() - t0 < 180, "the Yosys run did not start"
            assert not future.done(), future.exception()
            time.sleep(0.1)
        (yosys_pid,) = _processes_in(work)
        assert not future.done()
        os.kill(worker_pid, signal.SIGKILL)
        t1 = time.monotonic()
        while _processes_in(work) and time.monotonic() - t1 < 10:
            time.sleep(0.1)
        ended = time.monotonic() - t1
        survivors = _processes_in(work)
        future.cancel()
    for pid in survivors:  # leave nothing running, whatever the verdict
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"Yosys run {survivors} outlived its killed worker {worker_pid}"
    print(f"\nYosys {yosys_pid} ended {ended:.2f} s after its worker was killed")


# --- synthesis unit by unit (the sweep's finalists) -----------------------------------


def _chain_verilog(width: int = 16, extra: bool = False) -> str:
    """A small design whose worst path crosses module boundaries: a register pair feeds an
    adder in stage s1 whose sum feeds the adder of s2, then a register of the top."""
    from amaranth import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from vitaccel.rtl.verilog import to_verilog

    class Stage(wiring.Component):
        def __init__(self, w):
            super().__init__({"a": In(w), "b": In(w), "y": Out(w), "q": Out(w)})

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.y.eq(self.a + self.b)
            m.d.sync += self.q.eq(self.y ^ self.a)
            return m

    class Chain(wiring.Component):
        def __init__(self):
            super().__init__({"x": In(width), "z": In(width), "out": Out(width)})

        def elaborate(self, platform):
            m = Module()
            extra = 0
            if extra_stage:
                m.submodules.pre = pre = Stage(4)
                m.d.comb += [pre.a.eq(self.x[:4]), pre.b.eq(self.z[:4])]
                extra = pre.q
            m.submodules.s1 = s1 = Stage(width)
            m.submodules.s2 = s2 = Stage(width)
            r1, r2 = Signal(width), Signal(width)
            m.d.sync += [r1.eq(self.x), r2.eq(self.z)]
            m.d.comb += [s1.a.eq(r1), s1.b.eq(r2), s2.a.eq(s1.y), s2.b.eq(s1.q)]
            m.d.sync += self.out.eq(s2.y ^ s2.q ^ extra)
            return m

    extra_stage = extra
    return to_verilog(Chain(), "chain")


def test_split_modules_names_a_module_by_its_content():
    """The same module gets the same name in two designs (and when only Amaranth's signal
    numbers differ); a changed module and its parents get new names."""
    import re

    from vitaccel.flow.yosys import split_modules

    plain = _chain_verilog()
    a = split_modules(plain, "chain")
    assert len(a.modules) == 3
    assert a.instance_counts() == {name: 1 for name in a.modules}
    # Amaranth's numbers (a$11, b$13) shifted: the same modules, the same names
    assert re.search(r"\\\w+\$\d+", plain)
    shifted = re.sub(r"(\\\S*?\$)(\d+)", lambda m: f"{m.group(1)}{int(m.group(2)) + 1000}", plain)
    assert shifted != plain
    assert split_modules(shifted, "chain") == a
    # another stage in the top: the stages keep their names, the top gets a new one
    b = split_modules(_chain_verilog(extra=True), "chain")
    assert set(a.modules) - {a.top} <= set(b.modules)
    assert a.top not in b.modules and len(b.modules) == 4
    assert b.top.startswith("m_") and f"module {b.top}(" in b.modules[b.top].text


def test_synthesis_units_cut_by_subtree_size():
    """A subtree small enough is one unit (its modules' texts, no blackboxes); a larger
    module keeps its large children as blackboxes and takes its small ones in; a unit's
    interface is its root module's."""
    from vitaccel.flow.yosys import module_stub, split_modules, synthesis_units

    hier = split_modules(_chain_verilog(extra=True), "chain")
    mods = hier.modules
    whole = synthesis_units(hier)
    assert list(whole.modules) == [hier.top]
    (unit,) = whole.modules.values()
    assert unit.instances == () and unit.text.startswith(mods[hier.top].text)
    assert all(m.text in unit.text for m in mods.values())
    assert module_stub(unit) == module_stub(mods[hier.top])
    # nothing fits: every module is a unit of its own, as split_modules gives them
    assert synthesis_units(hier, max_chars=0, merge_chars=0) == hier
    # the 4-bit stage is smaller than the 16-bit ones: it goes in with the top
    pre = min((n for n in mods if n != hier.top), key=lambda n: len(mods[n].text))
    limit = len(mods[pre].text)
    cut = synthesis_units(hier, max_chars=0, merge_chars=limit)
    assert set(cut.modules) == set(mods) - {pre}
    top = cut.modules[hier.top]
    assert top.text == mods[hier.top].text + "\n" + mods[pre].text
    assert pre not in top.instances and len(top.instances) == 2
    assert cut.instance_counts() == {n: 1 for n in cut.modules}


def test_compose_equals_yosys_flattening_the_same_modules(tmp_path):
    """The units' netlists put back together in Python count and time as Yosys' own
    ``flatten`` of the same mapped modules does (one Yosys run writes both); the worst path
    crosses both stages, so it is longer than any module's own. And a module's counts do
    not depend on the run it went in: each synthesised in a run of its own
    (``synth_modules``) gives the counts of the run that held them all."""
    import json

    from vitaccel.flow.paths import worst_paths, yosys_json_commands
    from vitaccel.flow.yosys import (
        Hierarchy,
        _compact,
        _parse_stat,
        _resources,
        compose,
        module_stub,
        split_modules,
        synth_modules,
    )

    hier = split_modules(_chain_verilog(extra=True), "chain")
    (tmp_path / "design.v").write_text("\n".join(m.text for m in hier.modules.values()))
    script = (
        f"read_verilog -sv design.v\nsynth_xilinx -family xcup -top {hier.top} -noiopad "
        "-noclkbuf\n"
        + yosys_json_commands("modules.json")
        + "flatten\ntee -o stat.txt stat -tech xilinx\nwrite_json flat.json\n"
    )
    _run_yosys(script, tmp_path)
    mapped = json.loads((tmp_path / "modules.json").read_text())["modules"]
    nets = {n: _compact(mapped[n], set(hier.modules)) for n in hier.modules}
    ours = compose(hier, nets)
    theirs = worst_paths(tmp_path / "flat.json", top=hier.top, count=1)[0]
    assert ours == _resources(_parse_stat((tmp_path / "stat.txt").read_text()), theirs.levels)
    assert ours.ff == 16 * 2 + 16 * 2 + 16 + 4  # r1, r2, s1.q, s2.q, out, pre.q
    alone = [
        compose(Hierarchy(n, {n: m}), nets).lut_depth
        for n, m in hier.modules.items()
        if n != hier.top
    ]
    assert ours.lut_depth > max(alone), (ours.lut_depth, alone)
    print(f"\nworst path {ours.lut_depth} levels; each stage alone: {alone}")
    stubs = {n: module_stub(m) for n, m in hier.modules.items()}
    leaves = [m for n, m in hier.modules.items() if n != hier.top]
    alone = synth_modules(leaves, stubs, cache=False)
    for m in leaves:
        assert alone[m.name]["counts"] == nets[m.name]["counts"], m.name


# The designs the unit flow is held to (docs/sweep.md "Synthesis of the finalists"): the
# three finalists of digits-vit on KV260 at 100 FPS (a 1x1x2x4 array with a 64-, 32- and
# 16-byte datapath) and the explorer's pick at 1000 FPS (1x1x2x8).
FLOW_DESIGNS = [(100.0, 0), (100.0, 1), (100.0, 2), (1000.0, 0)]


@pytest.mark.slow
@pytest.mark.parametrize(("fps", "rank"), FLOW_DESIGNS)
def test_module_flow_against_the_whole_top_flow(fps, rank):
    """The sweep's unit-by-unit figures against the whole-top flow (``synth_xcup``:
    flattened, ABC9) on real tops: the LUT depth within 0.5 levels and the same clock by
    the clock rule, LUT and FF within 5 %, DSP and memories equal. ~3-5 CPU-minutes a
    design cold (both Yosys caches); the row printed is the one of docs/sweep.md."""
    from vitaccel.design import Design
    from vitaccel.flow.generate import TOP_NAME
    from vitaccel.flow.sweep import clock_by_depth, explore_task
    from vitaccel.flow.yosys import synth_xcup, synth_xcup_by_module
    from vitaccel.rtl.top import top_verilog

    fin = explore_task("digits-vit", "kv260", fps, 0.85, rank + 1)["finalists"][rank]
    design = Design.model_validate_json(fin["design"])
    verilog = top_verilog(design, TOP_NAME)
    whole = synth_xcup(verilog, TOP_NAME)
    units = synth_xcup_by_module(verilog, TOP_NAME)
    clocks = [clock_by_depth("kv260", r.lut_depth, design.clock_mhz) for r in (units, whole)]
    print(
        f"\n| {fin['array']} @{fps:g} | {units.lut:,} / {whole.lut:,} "
        f"({units.lut / whole.lut - 1:+.1%}) | {units.ff:,} / {whole.ff:,} "
        f"({units.ff / whole.ff - 1:+.1%}) | {units.lut_depth} / {whole.lut_depth} "
        f"| {clocks[0]} / {clocks[1]} MHz |"
    )
    assert abs(units.lut_depth - whole.lut_depth) <= 0.5, (units.lut_depth, whole.lut_depth)
    assert clocks[0] == clocks[1]
    for k in ("lut", "ff"):
        assert abs(getattr(units, k) / getattr(whole, k) - 1) <= 0.05, k
    for k in ("dsp48e2", "ramb36", "ramb18", "uram", "lutram"):
        assert getattr(units, k) == getattr(whole, k), k
