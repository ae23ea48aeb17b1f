"""The native Verilator harness (vitaccel.sim.native) and ``vitaccel sim --model``.

Whole digits-vit images on the default design: the native engine agrees with the cocotb
testbench on cycles and logits, and both with the golden model, bit for bit; bit-exact with
random pauses on every DDR channel and resets between images; 200 images in one process.
Bad input: a design that cannot run the model is refused before any build, a cycle limit and
STATUS.ERROR stop the run with the instruction index, an interrupted run leaves nothing.
The full 224x224 DeiT-Tiny image on the explorer's design is slow-marked.
"""

import json
import time

import numpy as np
import pytest

from vitaccel.compile.driver import Driver
from vitaccel.design import DesignError
from vitaccel.flow.build import default_design
from vitaccel.flow.model_sim import (
    check_design_fits,
    design_program,
    first_mismatch,
    simulate_model,
)
from vitaccel.models.specs import get_spec
from vitaccel.sim.native import (
    NativeBackend,
    NativeRunError,
    build_native,
    decode_reads,
    encode_steps,
)


def _digits(images: int) -> dict:
    """Default design, the golden model quantised for it, ``images`` test images and their
    logits, the compiled program, and the native build (cached in ~/.cache/vitaccel)."""
    design = default_design("digits-vit", "zcu102")
    prog = design_program(design, images=images)
    t0 = time.monotonic()
    build = build_native(design)
    print(
        f"\nnative build of the default design: {build.build_s:.1f} s of Verilator"
        f" ({'cached' if build.cached else 'built'}; {time.monotonic() - t0:.1f} s with the Verilog)"
    )
    return {
        "design": design,
        "golden": prog.golden,
        "patches": prog.patches,
        "want": prog.want,
        "labels": prog.labels,
        "compiled": prog.compiled,
    }


@pytest.fixture(scope="module")
def digits():
    return _digits(8)


def _infer(d, backend, images, **kw):
    drv = Driver(backend)
    drv.load(d["compiled"])
    return drv.infer_batch(list(d["patches"][:images]), **kw)


def _assert_golden(results, want):
    for j, r in enumerate(results):
        assert first_mismatch(r.logits, want[j]) is None, (
            f"image {j}: (class, rtl, golden) = {first_mismatch(r.logits, want[j])}"
        )
        assert r.status == 2, f"image {j}: STATUS {r.status:#x}, expected DONE only"


def test_steps_and_reads_encoding_round_trip():
    from vitaccel.compile.driver import Step

    raw = encode_steps([Step("write_mem", 16, b"\x01\x02"), Step("write_reg", 8, 7)])
    assert raw[:8] == b"VTSTEPS1" and int.from_bytes(raw[8:12], "little") == 2
    reads = b"VTREADS1" + (2).to_bytes(4, "little")
    reads += b"\x00" + (0x1234).to_bytes(8, "little")
    reads += b"\x01" + (3).to_bytes(8, "little") + b"abc"
    assert decode_reads(reads) == [0x1234, b"abc"]
    with pytest.raises(ValueError, match="step kind"):
        encode_steps([Step("jump", 0, 0)])


def test_native_agrees_with_cocotb_on_cycles_and_logits(digits):
    """One image without pauses on both engines: the same CYCLES (the native DDR copies
    cocotbext-axi's AxiRam timing) and the same logits, equal to the golden model's."""
    from vitaccel.sim.host import SimBackend

    native = _infer(digits, NativeBackend(digits["design"]), 1)
    cocotb = _infer(digits, SimBackend(digits["design"]), 1)
    _assert_golden(native, digits["want"])
    _assert_golden(cocotb, digits["want"])
    assert native[0].cycles == cocotb[0].cycles, (native[0].cycles, cocotb[0].cycles)
    assert np.array_equal(native[0].logits, cocotb[0].logits)


def test_bit_exact_with_axi_pauses_and_resets(digits):
    """Random pauses on every DDR channel (seeded) and a reset between images: every image
    still equals the golden model, and the pauses do stretch the run."""
    plain = _infer(digits, NativeBackend(digits["design"]), 1)[0].cycles
    backend = NativeBackend(digits["design"], pause=0.3, seed=7)
    results = _infer(digits, backend, 6, reset_between=True)
    _assert_golden(results, digits["want"])
    assert all(r.cycles > plain for r in results), ([r.cycles for r in results], plain)
    assert len({r.cycles for r in results}) > 1  # each image sees other pauses


def test_spilling_program_bit_exact_with_pauses(digits):
    """digits-vit compiled for a 9 KiB scratchpad, too small for its compact layout (599
    words): the residual stream lives in the DDR scratch region and moves by LOAD and STORE
    in tiles of 9 tokens (LN1, then the projection and the MLP per tile; RESADD
    instructions on this 1x4x4x8 array). It runs on the default design's RTL (its native
    build; the program uses the scratchpad's first 567 words) with random pauses on every
    DDR channel and a reset between images, bit-exact; the RTL cycles of an unpaused run
    are printed beside the cycle model's for a 9 KiB design (its program is this one)."""
    from vitaccel.compile.compiler import compile_model
    from vitaccel.dse.cost import estimate
    from vitaccel.flow.codec import codec_for

    design, golden = digits["design"], digits["golden"]
    compiled = compile_model(golden, groups=design.array.groups, codec=codec_for(design),
                             spm_words=9 * 64)  # fmt: skip
    assert compiled.spill_tile == 9 and compiled.scratch_bytes > 0
    d = {**digits, "compiled": compiled}
    plain = _infer(d, NativeBackend(design), 1)[0]
    _assert_golden([plain], digits["want"])
    results = _infer(d, NativeBackend(design, pause=0.3, seed=11), 3, reset_between=True)
    _assert_golden(results, digits["want"])
    model = estimate(design.model_copy(update={"spm_kib": 9})).cycles
    print(f"\nspilling program, RTL {plain.cycles} cycles/image unpaused, cycle model {model} "
          f"({(model - plain.cycles) / plain.cycles:+.2%}); whole scratchpad: "
          f"{estimate(design).cycles} (model)")  # fmt: skip


@pytest.mark.slow
def test_200_digits_images_in_one_process():
    """200 test images bit-exact in one harness process; prints the figures (~55 CPU seconds
    of simulation on the default design: over the default suite's budget)."""
    d = _digits(200)
    backend = NativeBackend(d["design"])
    t0 = time.monotonic()
    results = _infer(d, backend, 200)
    wall = time.monotonic() - t0
    _assert_golden(results, d["want"])
    rtl = np.stack([r.logits for r in results])
    last = backend.last
    print(
        f"\n200 digits images on the RTL (native): {wall:.1f} s wall, "
        f"{last['wall_s']:.1f} s in the harness ({last['cpu_s']:.1f} CPU s), "
        f"{last['sim_cycles'] / last['wall_s']:,.0f} simulated cycles/s "
        f"({last['sim_cycles'] / last['cpu_s']:,.0f} per CPU second), "
        f"{np.mean([r.cycles for r in results]):.0f} cycles/image, "
        f"RTL top-1 {np.mean(rtl.argmax(1) == d['labels']):.4f}"
    )
    assert np.mean(rtl.argmax(1) == d["labels"]) == np.mean(d["want"].argmax(1) == d["labels"])


def test_sim_model_json_keys_and_cycle_model(digits, capsys):
    """``vitaccel sim --model digits-vit --images 3 --json`` in-process (the Verilog is
    cached per design): the issue's keys, bit-exact, cycles within 3% of the cycle model."""
    from vitaccel.cli import main

    assert main(["sim", "--model", "digits-vit", "--images", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "images",
        "bit_exact",
        "cycles_per_image",
        "model_cycles_per_image",
        "sim_cycles_per_s",
        "build_s",
        "sim_s",
        "rtl_top1",
        "golden_top1",
    ):
        assert key in out, key
    assert out["images"] == 3 and out["bit_exact"] is True and out["mismatches"] == 0
    assert abs(out["cycles_per_image"] / out["model_cycles_per_image"] - 1) < 0.03, out
    assert out["rtl_top1"] == out["golden_top1"]


def test_cycle_limit_stops_with_the_instruction_index(digits):
    backend = NativeBackend(digits["design"], timeout_cycles=5000)
    with pytest.raises(NativeRunError, match="cycle limit of 5000") as err:
        _infer(digits, backend, 2)
    assert err.value.state == "timeout" and err.value.image == 0
    assert 0 < err.value.pc < len(digits["compiled"].program)
    assert err.value.status_reg & 1  # still BUSY: stopped by the limit, not by the design


def test_error_status_stops_with_the_instruction_index(digits):
    """A bad opcode at instruction 3: STATUS.ERROR, and the run stops there, naming it."""
    compiled = digits["compiled"]
    image = bytearray(compiled.image)
    image[3 * 32] = 0xEE  # opcode byte of instruction 3 (the program is at the image's start)
    backend = NativeBackend(digits["design"])
    backend.load_image(bytes(image))
    from vitaccel.compile.driver import inference_steps

    steps = inference_steps(compiled, digits["patches"][0], backend.base)
    with pytest.raises(NativeRunError, match="STATUS.ERROR; last instruction index 3") as err:
        backend.run(steps + steps)
    assert err.value.state == "error" and err.value.pc == 3 and err.value.status_reg & 4


def test_interrupted_run_leaves_nothing(digits, tmp_path, monkeypatch):
    """Ctrl-C during a run: the simulator process is killed and its files removed."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def interrupt(*args):
        seen.append(args)
        raise KeyboardInterrupt

    backend = NativeBackend(digits["design"], on_progress=interrupt)
    with pytest.raises(KeyboardInterrupt):
        _infer(digits, backend, 3)
    assert seen and list(tmp_path.iterdir()) == []


def _bad_design(tmp_path, **update):
    base = default_design("digits-vit", "zcu102")
    nl = update.pop("nonlinear", None)
    if nl:
        update["nonlinear"] = base.nonlinear.model_copy(update=nl)
    path = tmp_path / "d.json"
    path.write_text(base.model_copy(update=update).canonical_json())
    return path


@pytest.mark.parametrize(
    "update, field",
    [
        ({"nonlinear": {"max_tokens": 16}}, "'nonlinear.max_tokens'"),
        ({"nonlinear": {"max_channels": 32}}, "'nonlinear.max_channels'"),
        ({"spm_kib": 2}, "'spm_kib'"),
    ],
)
def test_design_that_cannot_run_the_model_is_refused_before_the_build(
    tmp_path, monkeypatch, capsys, update, field
):
    """One line naming the field, exit 2; nothing quantised, generated or built."""
    from vitaccel.cli import main

    monkeypatch.setenv("VITACCEL_CACHE", str(tmp_path / "cache"))
    path = _bad_design(tmp_path, **update)
    with pytest.raises(SystemExit) as exit_:
        main(["sim", "--model", "digits-vit", "--design", str(path), "--images", "1", "--json"])
    err = capsys.readouterr()
    lines = [line for line in err.err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(lines) == 1, err.err
    assert field in lines[0] and lines[0].startswith("vitaccel: error: design field")
    assert err.out == "" and not (tmp_path / "cache").exists()


def test_check_design_fits_names_the_field():
    design = default_design("deit-tiny", "zcu102")
    check_design_fits(design.model_copy(update={"spm_kib": 442}), get_spec("deit-tiny"))
    short = design.nonlinear.model_copy(update={"max_tokens": 196})
    with pytest.raises(DesignError, match="'nonlinear.max_tokens': 196 .* >= 197"):
        check_design_fits(design.model_copy(update={"nonlinear": short}), get_spec("deit-tiny"))


@pytest.mark.slow
def test_deit_tiny_full_image_on_the_explorers_design(tmp_path):
    """The full 224x224 DeiT-Tiny image on the RTL of ``vitaccel dse --model deit-tiny
    --board zcu102 --fps 200``: bit-exact, cycles within 3% of the cycle model; prints the
    wall time of build + run."""
    from vitaccel.design import load_design
    from vitaccel.dse.search import explore

    t0 = time.monotonic()
    res = explore("deit-tiny", "zcu102", 200, out_dir=tmp_path / "dse")
    design = load_design(res["design"])
    out = simulate_model("deit-tiny", design=design, images=1, progress=print)
    wall = time.monotonic() - t0
    print(
        f"\nDeiT-Tiny 224x224 on {design.array.groups}x{design.array.rows}x{design.array.cols}"
        f"x{design.array.vector} (native RTL): bit-exact {out['bit_exact']}, "
        f"{out['cycles_per_image']:,.0f} cycles (cycle model {out['model_cycles_per_image']:,},"
        f" {100 * out['model_error']:+.2f}%), {out['sim_cycles_per_s']:,.0f} cycles/s "
        f"({out['sim_cycles_per_cpu_s']:,.0f} per CPU second), "
        f"build {out['build_s']:.0f} s, sim {out['sim_s']:.0f} s, total wall {wall:.0f} s"
    )
    assert out["bit_exact"], out["first_mismatch"]
    assert abs(out["model_error"]) < 0.03, out


@pytest.mark.slow
def test_two_weight_ports_bit_exact_with_pauses():
    """A design with a second DDR read port for the weights (m_axi_w1): the harness serves
    both from one memory, with pauses on every channel; digits images bit-exact."""
    base = default_design("digits-vit", "zcu102")
    design = base.model_copy(update={"weight_ports": 2, "name": "digits-2ports"})
    out = simulate_model("digits-vit", design=design, images=4, pause=0.2, seed=3)
    assert out["bit_exact"], out["first_mismatch"]
    plain = simulate_model("digits-vit", design=design, images=1)
    print(
        f"\ndigits on 2 weight ports: {plain['cycles_per_image']:.0f} cycles "
        f"(cycle model {plain['model_cycles_per_image']}, {100 * plain['model_error']:+.2f}%)"
    )
    assert abs(plain["model_error"]) < 0.03, plain
