"""The accelerator top in Amaranth's simulator (a short program through the bus models of
test_rtl_axi.py), its parameters and its Vivado-facing Verilog. The full set of programs runs
in Verilator: tests/test_sim_top.py."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from amaranth.sim import Simulator
from test_rtl_axi import AxiLiteHost, AxiRamModel

from vitaccel import isa
from vitaccel.boards.vivado import check_top_ports
from vitaccel.design import ArrayConfig, Design, DesignError, NonlinearConfig, parse_design
from vitaccel.isa import CTRL_IRQ_ENABLE, CTRL_START, STATUS_DONE, STATUS_ERROR, Reg
from vitaccel.rtl.top import Accelerator, TopParams, top_verilog

SMALL = Design(
    array=ArrayConfig(groups=1, rows=2, cols=2, vector=4),
    nonlinear=NonlinearConfig(
        gelu_lanes=2, softmax_lanes=2, layernorm_lanes=2, max_tokens=16, max_channels=32
    ),
    spm_kib=1,
    input_buffer_kib=1,
    weight_buffer_kib=1,
)


@functools.lru_cache(maxsize=1)
def _verilog():
    return top_verilog(SMALL, "vitaccel_top")


def test_top_follows_the_vivado_port_convention():
    text = _verilog()
    assert check_top_ports(text, "vitaccel_top") == []
    assert "/work" not in text  # no absolute source paths


def test_params_from_design():
    p = TopParams(Design())
    assert p.spm_words == 256 * 1024 // 16
    assert p.config_word >> 16 == 0xFFFF or p.config_word >> 16 == p.spm_words
    assert p.engine.groups == Design().array.groups
    q = TopParams(SMALL)
    assert q.spm_words == 64
    assert q.config_word == 64 << 16 | 1 << 10 | 2 << 5 | 2
    # the X path: one k-step of a token per cycle from one scratchpad word, or 2/4 k-steps
    # from 2/4 scratchpad banks
    assert (p.x_beat, p.spm_banks, p.engine.x_beat) == (1, 1, 1)
    wide = TopParams(Design(array=ArrayConfig(vector=16), datapath_bytes=64))
    assert (wide.x_beat, wide.spm_banks, wide.engine.x_words % 4) == (4, 4, 0)
    # the sizes (and the compiler's codec) take W4 columns
    assert TopParams(Design(array=ArrayConfig(w4_share=0.5))).engine.cols_w4 > 0


@pytest.mark.parametrize(
    "change, match",
    [
        ({"array": ArrayConfig(vector=32)}, "vector"),
        ({"array": ArrayConfig(vector=6)}, "vector"),
        ({"nonlinear": NonlinearConfig(gelu_lanes=3)}, "gelu_lanes"),
    ],
)
def test_rejects_designs_it_cannot_build(change, match):
    design = Design(**change)
    with pytest.raises(ValueError, match=match):
        Accelerator(design)
    with pytest.raises(TypeError):
        Accelerator({"array": {}})


def test_datapath_width_is_checked_in_one_line():
    with pytest.raises(DesignError, match=r"^design field 'datapath_bytes': .*16, 32 or 64"):
        parse_design({"datapath_bytes": 48})


@pytest.mark.parametrize("field", ["softmax_lanes", "layernorm_lanes", "gelu_lanes"])
def test_nonlinear_lanes_beyond_the_datapath_are_rejected_in_one_line(field):
    """A unit reads and writes at most datapath_bytes a cycle: more lanes name the field."""
    with pytest.raises(DesignError, match=rf"^design field .*nonlinear\.{field} \(32\) must be <= "
                       r"datapath_bytes \(16\)[^\n]*$"):  # fmt: skip
        parse_design({"nonlinear": {field: 32}})
    wide = parse_design({"nonlinear": {field: 64}, "datapath_bytes": 64})
    assert getattr(wide.nonlinear, field) == 64


def _run_bench(dut, ram, bench) -> None:
    """Run ``bench`` on the top in Amaranth's simulator beside the DDR model ``ram`` (the
    file's one top bench setup); the DDR model must have seen no protocol error."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(ram.run, background=True)
    sim.add_testbench(bench)
    sim.run()
    assert not ram.errors, ram.errors[:3]


def _simulate(
    image: bytes, base: int, *, cycles: int = 5000, design: Design = SMALL, stall: float = 0.2,
    latency=(1, 6),
):  # fmt: skip
    dut = Accelerator(design)
    ram = AxiRamModel(dut.m_axi, 1 << 16, stall=stall, seed=3, latency=latency)
    ram.mem[base : base + len(image)] = image
    host = AxiLiteHost(dut.s_axil)
    out = {}

    async def bench(ctx):
        for reg, value in ((Reg.PROG_ADDR_LO, base), (Reg.DATA_BASE_LO, base)):
            await host.write(ctx, reg, value)
        await host.write(ctx, Reg.CTRL, CTRL_START | CTRL_IRQ_ENABLE)
        for _ in range(cycles):
            if ctx.get(dut.irq):
                break
            await ctx.tick()
        out["irq"] = ctx.get(dut.irq)
        out["status"] = await host.read(ctx, Reg.STATUS)
        out["pc"] = await host.read(ctx, Reg.PC)
        out["cycles"] = await host.read(ctx, Reg.CYCLES_LO)
        await host.write(ctx, Reg.CTRL, isa.CTRL_IRQ_CLEAR | CTRL_IRQ_ENABLE)
        out["irq_after_clear"] = ctx.get(dut.irq)

    _run_bench(dut, ram, bench)
    return ram, out


def test_load_store_program_in_amaranth_sim():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 5 * 16, dtype=np.uint8).tobytes()
    prog = isa.encode_program(
        [isa.load(spm=7, words=5, ddr=0x100), isa.store(spm=7, words=5, ddr=0x200), isa.end()]
    )
    image = bytearray(0x300)
    image[: len(prog)] = prog
    image[0x100 : 0x100 + len(data)] = data
    base = 0x1000
    ram, out = _simulate(bytes(image), base)
    assert out["irq"] and not out["irq_after_clear"]
    assert out["status"] == STATUS_DONE
    assert out["pc"] == 2
    assert 0 < out["cycles"] < 200
    assert bytes(ram.mem[base + 0x200 : base + 0x200 + len(data)]) == data


def test_word_path_writer_matmuls_in_amaranth_sim():
    """The output writer's word path on the top (2 groups of 16 columns, 2 banks): heads
    jobs whose heads land at once (Y head step odd) and one bank at a time (even), and a
    shared job; channels past N in a partial piece; OUT_T jobs (18 tokens: a chunk of 16
    and one of 2) with an odd Y stride on the word path (shared and heads) and an even one
    on the runs. The stored Y equals the ISA interpreter's, byte for byte, with AXI stalls."""

    design = Design(
        array=ArrayConfig(groups=2, rows=2, cols=16, vector=4),
        nonlinear=NonlinearConfig(
            gelu_lanes=2, softmax_lanes=2, layernorm_lanes=2, max_tokens=16, max_channels=32
        ),
        spm_kib=8,
        input_buffer_kib=1,
        weight_buffer_kib=2,
        datapath_bytes=32,
    )
    assert TopParams(design).spm_banks == 2
    rng = np.random.default_rng(5)
    heads = dict(x=0, x_stride=2, tokens=5, k=16, n=20, y_stride=2, w_spm=16, w_stride=2,
                 mult=3, shift=6, heads=2, head_x_step=1, head_w_step=1)  # fmt: skip
    shared = dict(x=0, x_stride=2, k=16, w_spm=16, w_stride=1, mult=5, shift=7)
    out_t = dict(tokens=18, out_transposed=True)
    prog = [
        isa.load(spm=0, words=64, ddr=0x400),
        isa.matmul(**heads, y=64, head_y_step=11),  # heads in both banks at once
        isa.matmul(**heads, y=96, head_y_step=12),  # both heads in one bank
        isa.matmul(**shared, tokens=5, n=40, y=128, y_stride=3),  # shared: 32 channels a step
        # OUT_T, rows of 18 tokens: odd strides take the word path, the even one the runs
        isa.matmul(**shared, **out_t, n=36, y=144, y_stride=3),
        isa.matmul(**{**heads, **out_t, "n": 12, "y_stride": 3}, y=256, head_y_step=37),
        isa.matmul(**shared, **out_t, n=20, y=336, y_stride=2),
        isa.store(spm=64, words=320, ddr=0x1000),
        isa.end(),
    ]
    image = bytearray(0x1000 + 320 * 16)
    code = isa.encode_program(prog)
    image[: len(code)] = code
    image[0x400 : 0x400 + 64 * 16] = rng.integers(0, 256, 64 * 16, dtype=np.uint8).tobytes()
    _stored_y_equals_the_interpreter(design, image, 0x1000, 320, cycles=40_000)


def test_bad_opcode_and_oversized_jobs_end_with_error():
    too_long = isa.softmax(src=0, src_stride=2, rows=1, cols=17, dst=0, dst_stride=2, in_shift=0)
    for instr in (isa.Instr(isa.Op.END), too_long):
        raw = bytearray(isa.encode(instr))
        if instr.op is isa.Op.END:
            raw[0] = 0x0F  # no such opcode
        ram, out = _simulate(bytes(raw), 0x2000, cycles=400)
        assert out["status"] == STATUS_DONE | STATUS_ERROR
        assert out["pc"] == 0


@pytest.mark.parametrize("bad", ["resadd on 1x2 columns", "x_keep first", "gelu with w_spm"])
def test_matmuls_the_design_cannot_run_end_with_error(bad):
    """A fused residual add needs output steps of whole SPM words (SMALL has 2 channels a
    step); X_KEEP needs an X in the engine; fused outputs need W from DDR."""
    mm = dict(x=0, x_stride=1, tokens=2, k=4, n=2, y=8, y_stride=1)
    if bad == "resadd on 1x2 columns":
        instr = isa.matmul(**mm, w_ddr=0x100, residual=16, residual_params=20, residual_shift=8)
    elif bad == "x_keep first":
        instr = isa.matmul(**mm, w_ddr=0x100, x_keep=True)
    else:
        ok = isa.matmul(**mm, w_spm=24, w_stride=1, mult=1, shift=4)
        instr = ok.replace(flags=ok.flags | isa.MatmulFlags.GELU)
    image = bytearray(0x200)
    raw = isa.encode_program([instr, isa.end()])
    image[: len(raw)] = raw
    ram, out = _simulate(bytes(image), 0x2000, cycles=600)
    assert out["status"] == STATUS_DONE | STATUS_ERROR
    assert out["pc"] == 0


# A DeiT-shaped top for the W_SPM cycle test: V = 16 on a 64-byte datapath (4 banks), 3 groups
# of 16 columns, 2 weight ports (the explorer's DeiT-Tiny geometry, 2 rows).
W_SPM_TOP = Design(
    array=ArrayConfig(groups=3, rows=2, cols=16, vector=16),
    nonlinear=NonlinearConfig(
        gelu_lanes=4, softmax_lanes=4, layernorm_lanes=4, max_tokens=64, max_channels=128
    ),
    spm_kib=32,
    input_buffer_kib=16,
    weight_buffer_kib=12,
    datapath_bytes=64,
    weight_ports=2,
)


def _stored_y_equals_the_interpreter(design: Design, image: bytearray, out: int, words: int,
                                     cycles: int) -> None:  # fmt: skip
    """Run ``image`` on the top (AXI stalls) and check the ``words`` stored at ``out`` equal
    the ISA interpreter's byte for byte (fails on the first mismatch, naming it)."""
    from vitaccel.compile import interp
    from vitaccel.flow.codec import codec_for

    want = interp.run(bytearray(image), codec_for(design), spm_words=512).ddr[out:]
    base = 0x4000
    ram, res = _simulate(bytes(image), base, cycles=cycles, design=design)
    assert res["status"] == STATUS_DONE, res
    got = bytes(ram.mem[base + out : base + out + words * 16])
    diff = np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(bytes(want), np.uint8))
    assert diff.size == 0, f"first mismatch at Y byte {diff[0]}: {got[diff[0]]} != {want[diff[0]]}"


def _program_cycles(design: Design, prog, latency=(1, 6)) -> int:
    """CYCLES of ``prog`` + END on the top in Amaranth's simulator, no AXI stalls
    (``latency``: the DDR's read latency range, :class:`AxiRamModel`)."""
    code = isa.encode_program([*prog, isa.end()])
    ram, out = _simulate(code, 0x4000, cycles=20_000, design=design, stall=0.0, latency=latency)
    assert out["status"] == STATUS_DONE, out
    return out["cycles"]


def _programs_cycles(design: Design, progs: list, latencies: list[int]) -> list[list[int]]:
    """CYCLES of each of ``progs`` (+ END) at each DDR read latency (a fixed one each), run
    one after another on one simulation of the top (no AXI stalls): ``[latency][program]``."""
    dut = Accelerator(design)
    ram = AxiRamModel(dut.m_axi, 1 << 16, seed=3)
    data_base, prog_base = 0x4000, 0x8000
    for i, prog in enumerate(progs):
        code = isa.encode_program([*prog, isa.end()])
        assert len(code) <= 0x100
        ram.mem[prog_base + 0x100 * i : prog_base + 0x100 * i + len(code)] = code
    host = AxiLiteHost(dut.s_axil)
    out = []

    async def bench(ctx):
        await host.write(ctx, Reg.DATA_BASE_LO, data_base)
        for lat in latencies:
            ram.latency = (lat, lat)
            out.append([])
            for i in range(len(progs)):
                await host.write(ctx, Reg.PROG_ADDR_LO, prog_base + 0x100 * i)
                await host.write(ctx, Reg.CTRL, CTRL_START | CTRL_IRQ_ENABLE)
                await ctx.tick().until(dut.irq)
                assert await host.read(ctx, Reg.STATUS) == STATUS_DONE
                out[-1].append(await host.read(ctx, Reg.CYCLES_LO))
                await host.write(ctx, Reg.CTRL, isa.CTRL_IRQ_CLEAR | CTRL_IRQ_ENABLE)

    _run_bench(dut, ram, bench)
    assert len(out) == len(latencies) and len(out[-1]) == len(progs), out
    return out


def test_ddr_w_jobs_take_the_modelled_cycles_and_the_ddrs_latency():
    """MATMULs with W from DDR whose step 0 W bounds: on a 32-byte datapath (2 k-steps an X
    beat) this job's X tiles are in before its W, and an X_KEEP job has no X load. At the
    DDR read latency of the cycle model's measurements (cocotbext-axi's AxiRam in Verilator,
    which ``AxiRamModel`` at latency 2 reproduces: ``validate.micro_cycles``' cycles are
    equal) each job's cycles (the END-only program subtracted) are exactly
    ``cost.instr_cycles`` + the per-instruction overhead: the W stream's start
    ``LATENCIES["w_ddr_lag"]`` after X's is priced. A DDR 2 cycles slower makes each of them
    2 cycles longer: that lag is the DDR's latency, not a constant of the engine."""
    from vitaccel.boards import get_budget
    from vitaccel.dse.cost import LATENCIES, geometry, instr_cycles, port_bytes_per_cycle

    design = SMALL.model_copy(
        update={"array": ArrayConfig(groups=1, rows=4, cols=4, vector=16), "spm_kib": 4,
                "datapath_bytes": 32}
    )  # fmt: skip
    geom, budget = geometry(design), get_budget(design.board)
    port = port_bytes_per_cycle(design.clock_mhz, budget)
    job = dict(x=0, x_stride=4, tokens=9, k=64, n=16, y=64, y_stride=1, w_ddr=0x1000)
    progs = {"END only": [], "MATMUL": [isa.matmul(**job)],
             "MATMUL, X_KEEP": [isa.matmul(**job), isa.matmul(**job, x_keep=True)]}  # fmt: skip
    at2, at4 = _programs_cycles(design, list(progs.values()), [2, 4])
    for i, (name, prog) in enumerate(progs.items()):
        model = sum(instr_cycles(ins, design, geom, port, budget)[0] + LATENCIES["instr"]
                    for ins in prog)  # fmt: skip
        rtl = at2[i] - at2[0]
        print(f"{name}: RTL {rtl} cycles (DDR latency 2; 4: {at4[i] - at4[0]}), model {model}")
        assert rtl == model, (name, rtl, model)
        assert at4[i] - at4[0] == rtl + 2 * len(prog), (name, at4[i] - at4[0], rtl)


# Its mixed twin: 2 groups of 16 W8 + 4 W4 columns, W_SPM jobs on MixedOutWriter's word path.
W_SPM_MIXED = W_SPM_TOP.model_copy(
    update={"array": ArrayConfig(groups=2, rows=2, cols=20, vector=16, w4_share=0.2)}
)


@pytest.mark.slow
@pytest.mark.parametrize("design", [W_SPM_TOP, W_SPM_MIXED], ids=["w8", "mixed"])
def test_w_spm_jobs_on_a_banked_scratchpad_take_the_modelled_cycles(design):
    """Attention's MATMULs with W from the scratchpad (QK^T- and P x V-shaped heads jobs, a
    shared one) on a V = 16, 4-bank top, where the X and W builders share the scratchpad's
    read port in step 0 and both read 4 words a grant: each job's RTL cycles (the END-only
    program subtracted) are within 3 % of ``cost.instr_cycles`` + the per-instruction
    overhead (``top_matmul_extra`` prices the W rows at a quarter of a grant a word). ~2 min
    of Amaranth simulation. The mixed twin (W_SPM jobs on the all-W8 writer of its W8
    columns, rtl/spm MixedOutWriter): -1.4 / -1.4 / -0.4 %."""
    from vitaccel.boards import get_budget
    from vitaccel.dse.cost import LATENCIES, geometry, instr_cycles, port_bytes_per_cycle

    geom, budget = geometry(design), get_budget(design.board)
    port = port_bytes_per_cycle(design.clock_mhz, budget)
    g = design.array.groups
    spm = dict(y=1024, w_spm=256, mult=1, shift=8)
    qk = dict(x_stride=4, tokens=17, k=64, n=17, y_stride=2, w_stride=4, head_y_step=64)
    pv = dict(x_stride=2, tokens=17, k=17, n=64, y_stride=4, w_stride=2, head_y_step=1)
    jobs = {
        "QK^T T17 K64 N17": isa.matmul(x=0, heads=g, head_x_step=68, head_w_step=68, **qk, **spm),
        "P x V T17 K17 N64": isa.matmul(x=0, heads=g, head_x_step=34, head_w_step=130, **pv, **spm),
        "shared T9 K64 N40": isa.matmul(
            x=0, x_stride=4, tokens=9, k=64, n=40, y_stride=3, w_stride=4, **spm
        ),
    }
    empty = _program_cycles(design, [])
    for name, job in jobs.items():
        rtl = _program_cycles(design, [job]) - empty
        model = instr_cycles(job, design, geom, port, budget)[0] + LATENCIES["instr"]
        print(f"{name}: RTL {rtl} cycles, model {model}")
        assert abs(rtl / model - 1) < 0.03, (name, rtl, model)


# A 2-port all-W8 top whose ports' columns span groups (3 groups of 4 columns, M = 6) on a
# banked scratchpad: W_SPM fills each port from its own builder.
W_PORTS_TOP = Design(
    array=ArrayConfig(groups=3, rows=2, cols=4, vector=4),
    nonlinear=NonlinearConfig(
        gelu_lanes=2, softmax_lanes=2, layernorm_lanes=2, max_tokens=16, max_channels=32
    ),
    spm_kib=8,
    input_buffer_kib=1,
    weight_buffer_kib=2,
    datapath_bytes=32,
    weight_ports=2,
)


def test_w_spm_port_builders_match_the_interpreter_and_the_model():
    """W_SPM jobs on a 2-port top (a builder per port): heads jobs with every group real
    and with a group past nheads, a shared job whose last step ends inside port 0's columns.
    The stored Y equals the ISA interpreter's byte for byte (AXI stalls), and the jobs' RTL
    cycles (no stalls; the LOAD + STORE program subtracted) are within 3 % of the cycle model
    (``cost.instr_cycles`` at a word a cycle per port + the per-instruction overhead)."""
    from vitaccel.boards import get_budget
    from vitaccel.dse.cost import LATENCIES, geometry, instr_cycles, port_bytes_per_cycle

    design = W_PORTS_TOP
    assert TopParams(design).spm_banks == 2
    spm = dict(w_spm=32, x=0, x_stride=1, w_stride=1, y_stride=1)
    jobs = [
        isa.matmul(**spm, tokens=5, k=16, n=7, mult=3, shift=6, heads=3, head_x_step=5,
                   head_w_step=8, y=100, head_y_step=5),
        isa.matmul(**spm, tokens=3, k=9, n=10, mult=5, shift=7, heads=2, head_x_step=3,
                   head_w_step=10, y=120, head_y_step=3),
        isa.matmul(**{**spm, "x_stride": 2, "w_stride": 2}, tokens=4, k=20, n=15, mult=7,
                   shift=8, y=130),
    ]  # fmt: skip
    io = [isa.load(spm=0, words=64, ddr=0x400), isa.store(spm=100, words=40, ddr=0x1000)]
    prog = [io[0], *jobs, io[1], isa.end()]
    rng = np.random.default_rng(11)
    image = bytearray(0x1000 + 40 * 16)
    code = isa.encode_program(prog)
    image[: len(code)] = code
    image[0x400 : 0x400 + 64 * 16] = rng.integers(0, 256, 64 * 16, dtype=np.uint8).tobytes()
    _stored_y_equals_the_interpreter(design, image, 0x1000, 40, cycles=20_000)
    base = 0x4000

    def cycles(program):
        img = bytearray(image)
        code = isa.encode_program([*program, isa.end()])
        img[: len(code)] = code
        ram, out = _simulate(bytes(img), base, cycles=20_000, design=design, stall=0.0)
        assert out["status"] == STATUS_DONE, out
        return out["cycles"]

    rtl = cycles(prog[:-1]) - cycles(io)
    geom, budget = geometry(design), get_budget(design.board)
    port = port_bytes_per_cycle(design.clock_mhz, budget)
    model = sum(instr_cycles(j, design, geom, port, budget)[0] + LATENCIES["instr"] for j in jobs)
    print(f"W_SPM jobs, 2 port builders: RTL {rtl} cycles, model {model}")
    assert abs(rtl / model - 1) < 0.03, (rtl, model)


# A mixed W4/W8 top whose W8 columns are whole SPM words on a banked scratchpad: 2 groups of
# 16 W8 + 4 W4 columns, a 32-byte datapath (2 banks), so W_SPM jobs take the all-W8 writer's
# word path (rtl/spm MixedOutWriter) and the jobs with W from DDR the column map.
MIXED_WORDS = Design(
    array=ArrayConfig(groups=2, rows=2, cols=20, vector=4, w4_share=0.2),
    nonlinear=NonlinearConfig(
        gelu_lanes=2, softmax_lanes=2, layernorm_lanes=2, max_tokens=32, max_channels=64
    ),
    spm_kib=8,
    input_buffer_kib=1,
    weight_buffer_kib=4,
    datapath_bytes=32,
)


def test_mixed_w_spm_jobs_on_the_word_path_in_amaranth_sim():
    """On a mixed top with groups >= 2 (MIXED_WORDS), attention's jobs (heads QK^T and
    P x V: Y head step odd, both heads' pieces at once, and even, one bank at a time; a
    shared job; OUT_T jobs of 18 tokens, heads with an odd Y stride on the word path and
    shared with an even one on the runs) go through the all-W8 writer of the W8 columns,
    and a job with W from DDR (int4 rows on the W4 columns and beyond) between them through
    the column map. The stored Y equals the ISA interpreter's, byte for byte, with AXI
    stalls. (Their writer cycles: test_rtl_spm.py's MixedOutWriter test.)"""
    from vitaccel.flow.codec import codec_for

    design = MIXED_WORDS
    a = design.array
    assert (a.cols_w8, a.cols_w4, TopParams(design).spm_banks) == (16, 4, 2)
    rng = np.random.default_rng(8)
    codec = codec_for(design)
    n_ddr, k_ddr = 30, 16
    kind = (rng.random(n_ddr) < 0.5).astype(np.int64)  # int4 rows: W4 columns and beyond
    q = np.where(kind[:, None] == 1, rng.integers(-8, 8, (n_ddr, k_ddr)),
                 rng.integers(-128, 128, (n_ddr, k_ddr)))  # fmt: skip
    wraw = codec.pack(q, kind, rng.integers(-3000, 3000, n_ddr), rng.integers(1, 1 << 15, n_ddr),
                      rng.integers(12, 18, n_ddr))  # fmt: skip
    # QK^T-shaped (K = head dim 16, N = 20 keys: 2 steps of 16 W8 columns) and P x V-shaped
    qk = dict(x=0, x_stride=1, tokens=5, k=16, n=20, y_stride=2, w_spm=16, w_stride=1,
              mult=3, shift=6, heads=2, head_x_step=5, head_w_step=7)  # fmt: skip
    pv = dict(x=0, x_stride=2, tokens=6, k=20, n=16, y_stride=1, w_spm=20, w_stride=2,
              mult=5, shift=7, heads=2, head_x_step=12, head_w_step=32)  # fmt: skip
    shared = dict(x=0, x_stride=2, k=20, w_spm=16, w_stride=2, mult=5, shift=7)
    out_t = dict(tokens=18, out_transposed=True)
    wddr = 0x1000
    prog = [
        isa.load(spm=0, words=96, ddr=0x400),
        isa.matmul(**qk, y=128, head_y_step=11),  # heads in both banks at once
        isa.matmul(**pv, y=160, head_y_step=12),  # both heads in one bank
        isa.matmul(
            x=0, x_stride=1, tokens=7, k=k_ddr, n=n_ddr, y=192, y_stride=2, w_ddr=wddr
        ).replace(w_steps=codec.steps_of(wraw, k_ddr)),  # fmt: skip
        isa.matmul(**shared, tokens=5, n=40, y=208, y_stride=3),  # 32 channels a step
        isa.matmul(**{**qk, **out_t, "n": 12, "y_stride": 3}, y=340, head_y_step=37),
        isa.matmul(**shared, **out_t, n=20, y=420, y_stride=2),
        isa.store(spm=128, words=336, ddr=0x3000),
        isa.end(),
    ]
    out = 0x3000
    image = bytearray(out + 336 * 16)
    code = isa.encode_program(prog)
    image[: len(code)] = code
    image[0x400 : 0x400 + 96 * 16] = rng.integers(0, 256, 96 * 16, dtype=np.uint8).tobytes()
    image[wddr : wddr + len(wraw)] = wraw
    _stored_y_equals_the_interpreter(design, image, out, 336, cycles=60_000)
