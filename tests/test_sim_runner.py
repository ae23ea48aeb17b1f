"""The cocotb/Verilator plumbing: build cache, argument and result files, stream helpers."""

import numpy as np
from amaranth import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.verilog import to_verilog
from vitaccel.sim.runner import run_cocotb


class PlusOne(wiring.Component):
    i: In(stream.Signature(unsigned(8)))
    o: Out(stream.Signature(unsigned(8)))

    def elaborate(self, platform):
        m = Module()
        with m.If(self.o.ready | ~self.o.valid):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload + 1)]
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        return m


def _plus_one(x, *, stall: float) -> dict:
    """PlusOne on Verilator through the cocotb runner (tb_selftest), ``x`` in, random
    stalls of probability ``stall`` on both streams."""
    return run_cocotb(
        verilog=to_verilog(PlusOne(), "plus_one"),
        toplevel="plus_one",
        test_module="tb_selftest",
        args={"stall": stall},
        arrays={"x": x},
    )


def test_cocotb_stream_roundtrip_with_stalls():
    x = np.arange(300) % 256
    result = _plus_one(x, stall=0.3)
    assert not result.get("errors"), result.get("errors")
    np.testing.assert_array_equal(result["got"], (x + 1) % 256)


def test_verilog_is_deterministic():
    assert to_verilog(PlusOne(), "plus_one") == to_verilog(PlusOne(), "plus_one")
    assert "/work" not in to_verilog(PlusOne(), "plus_one")


# Each of two processes writes the design into its own folder, simulates it and synthesises
# it, with one shared (initially empty) cache.
_PARALLEL_BUILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import numpy as np
from test_sim_runner import PlusOne
from vitaccel.flow.yosys import synth_xcup
from vitaccel.rtl.verilog import to_verilog
from vitaccel.sim.runner import run_cocotb
from vitaccel.util import atomic_write_text

verilog = to_verilog(PlusOne(), "plus_one")
atomic_write_text(Path(sys.argv[1]) / "plus_one.v", verilog)
x = np.arange(200) % 256
res = run_cocotb(verilog=verilog, toplevel="plus_one", test_module="tb_selftest",
                 args={"stall": 0.3}, arrays={"x": x})
syn = synth_xcup(verilog, "plus_one", lut_depth=False)
print(json.dumps({"errors": res.get("errors", []), "got": list(map(int, res["got"])),
                  "lut": syn.lut, "ff": syn.ff}))
"""


def test_two_builds_at_once_share_the_cache_without_corrupting_it(tmp_path, monkeypatch):
    """Two processes, two output folders, one empty Verilator/Yosys cache, started together:
    both simulate and synthesise correctly, the cache holds one complete build (stamped) and
    one Yosys result, and a later run reuses that build without rebuilding it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    cache = tmp_path / "cache"
    env = {**os.environ, "VITACCEL_CACHE": str(cache)}
    tests_dir = str(Path(__file__).parent)
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PARALLEL_BUILD, str(out), tests_dir],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for r in results:
        assert not r["errors"], r["errors"]
        assert r["got"] == [(v + 1) % 256 for v in range(200)]
    assert results[0]["lut"] == results[1]["lut"] > 0
    assert (outs[0] / "plus_one.v").read_text() == (outs[1] / "plus_one.v").read_text()
    builds = sorted((cache / "sim").glob("plus_one-*"))
    assert len(builds) == 1, builds
    assert (builds[0] / ".built").is_file()
    assert not list(builds[0].glob("run-*")), "run folders left behind"
    yosys = list((cache / "yosys").glob("plus_one-*.json"))
    assert len(yosys) == 1 and json.loads(yosys[0].read_text())["lut"] == results[0]["lut"]
    # a third run, in this process, reuses the build: the simulator binary is not rebuilt
    binary = max(builds[0].iterdir(), key=lambda p: p.stat().st_mtime_ns)
    before = {p.name: p.stat().st_mtime_ns for p in builds[0].iterdir() if p.is_file()}
    # (monkeypatch restores the suite's own cache afterwards: deleting the variable sent every
    # later test to the default cache, a second SMALL_TOP build in a run with VITACCEL_CACHE)
    monkeypatch.setenv("VITACCEL_CACHE", str(cache))
    x = np.arange(50)
    res = _plus_one(x, stall=0.0)
    np.testing.assert_array_equal(res["got"], x + 1)
    after = {p.name: p.stat().st_mtime_ns for p in builds[0].iterdir() if p.is_file()}
    assert {k: after[k] for k in before} == before, f"rebuilt ({binary.name})"
