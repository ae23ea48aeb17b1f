"""Instruction encoding: round trips, field limits, and the canonical form."""

import pytest

from vitaccel import isa
from vitaccel.isa import MatmulFlags, Op


def test_every_constructor_round_trips():
    program = [
        isa.load(spm=3, words=10, ddr=0x1234_5678),
        isa.store(spm=65535, words=1, ddr=4096),
        isa.matmul(x=1, x_stride=4, tokens=17, k=64, n=192, y=100, y_stride=12, w_ddr=0xABCDE0),
        isa.matmul(
            x=1,
            x_stride=4,
            tokens=17,
            k=16,
            n=17,
            y=9,
            y_stride=2,
            w_spm=50,
            w_stride=8,
            mult=40000,
            shift=20,
            heads=2,
            head_x_step=1,
            head_w_step=1,
            head_y_step=34,
            x_unsigned=True,
        ),
        isa.softmax(src=1, src_stride=2, rows=68, cols=17, dst=300, dst_stride=2, in_shift=3),
        isa.layernorm(
            src=1,
            src_stride=4,
            rows=17,
            cols=64,
            dst=2,
            dst_stride=4,
            params=7,
            recip_mult=32768,
            recip_shift=21,
            out_shift=20,
            eps_q=1,
        ),
        isa.gelu(src=1, src_stride=8, rows=17, cols=128, dst=2, dst_stride=8, table=99),
        isa.resadd(
            a=1,
            a_stride=4,
            rows=17,
            cols=64,
            dst=2,
            dst_stride=4,
            b=3,
            b_stride=4,
            params=5,
            shift=17,
        ),
        isa.end(),
    ]
    raw = isa.encode_program(program)
    assert len(raw) == 32 * len(program)
    assert isa.decode_program(raw) == program


def test_field_layout_is_little_endian_and_documented():
    raw = isa.encode(isa.load(spm=0x0102, words=0x0304, ddr=0x0708_0506))
    assert raw[:10] == bytes([1, 0, 0x02, 0x01, 0x04, 0x03, 0x06, 0x05, 0x08, 0x07])
    i = isa.matmul(
        x=0, x_stride=1, tokens=1, k=1, n=1, y=0, y_stride=1, w_spm=0, out_transposed=True
    )
    assert i.op is Op.MATMUL and i.flags == MatmulFlags.W_SPM | MatmulFlags.OUT_T
    assert i["mult"] == i["shift"] == 0
    # log2 builds: X_LOG2 is bit 2 of a MATMUL, LOG2 bit 0 of a SOFTMAX (docs/isa.md)
    i = isa.matmul(x=0, x_stride=1, tokens=1, k=1, n=1, y=0, y_stride=1, w_spm=0, x_log2=True)
    assert isa.encode(i)[1] == MatmulFlags.W_SPM | MatmulFlags.X_LOG2 == 0b110
    s = isa.softmax(src=0, src_stride=1, rows=1, cols=1, dst=0, dst_stride=1, in_shift=0, log2=True)
    assert isa.encode(s)[:2] == bytes([Op.SOFTMAX, 1])
    assert isa.decode_program(isa.encode_program([i, s, isa.end()]))[:2] == [i, s]


def test_fused_matmul_fields():
    """GELU: f10 table; RESADD: f10 A base, f11 parameter block, f13 shift; X_KEEP bit 7."""
    mm = dict(x=1, x_stride=2, tokens=3, k=4, n=5, y=6, y_stride=7, w_ddr=0x0009_0008)
    g = isa.matmul(**mm, gelu_table=99)
    assert g.flags == MatmulFlags.GELU and g["gelu_table"] == 99 and g["w_ddr"] == 0x0009_0008
    r = isa.matmul(**mm, residual=40, residual_params=41, residual_shift=13, x_keep=True)
    assert r.flags == MatmulFlags.RESADD | MatmulFlags.X_KEEP == 0b1100_0000
    assert (r.residual, r.residual_params, r.heads, r.residual_shift) == (40, 41, 1, 13)
    assert isa.decode_program(isa.encode_program([g, r, isa.end()]))[:2] == [g, r]
    assert isa.residual_fusable(2, 8) and isa.residual_fusable(3, 16)
    assert not isa.residual_fusable(3, 4) and not isa.residual_fusable(1, 10)
    # mixed arrays: byte runs within a word, any shape fuses
    assert isa.residual_fusable(1, 10, cols_w4=5) and isa.residual_fusable(1, 8, cols_w4=4)
    spm = dict(mm, w_ddr=None, w_spm=0)
    with pytest.raises(ValueError, match="W from DDR"):
        isa.matmul(**spm, gelu_table=1)
    with pytest.raises(ValueError, match="exclusive"):
        isa.matmul(**mm, gelu_table=1, residual=2)
    with pytest.raises(ValueError, match="shared mode"):
        isa.matmul(**mm, residual=2, out_transposed=True)


def test_bad_fields_are_rejected():
    with pytest.raises(ValueError, match="16 bits"):
        isa.encode(isa.load(spm=1 << 16, words=1, ddr=0))
    with pytest.raises(ValueError, match="32 bits"):
        isa.load(spm=0, words=1, ddr=1 << 32)
    with pytest.raises(ValueError, match="exactly one"):
        isa.matmul(x=0, x_stride=1, tokens=1, k=1, n=1, y=0, y_stride=1)
    with pytest.raises(ValueError, match="exclusive"):
        isa.matmul(x=0, x_stride=1, tokens=1, k=1, n=1, y=0, y_stride=1, w_spm=0,
                   x_unsigned=True, x_log2=True)  # fmt: skip
    with pytest.raises(ValueError, match="opcode"):
        isa.decode(bytes([200]) + bytes(31))
    with pytest.raises(ValueError, match="32 bytes"):
        isa.decode(bytes(16))


def test_field_table_drives_encoder_decoder_and_rtl_positions():
    """The table is the one layout: names, positions for the RTL decoder, aliases, flags."""
    bits = isa.field_bits("MATMUL")
    assert bits["tokens"] == (48, 16) and bits["w_ddr"] == (128, 32)
    assert bits["mult"] == (128, 16) and bits["residual_shift"] == bits["head_x_step"]
    assert isa.field_bits(Op.LOAD) == {"spm": (16, 16), "words": (32, 16), "ddr": (48, 32)}
    assert isa.flag_bits("MATMUL")["HEADS"] == 8 + 3
    assert isa.flag_bits("SOFTMAX") == {"LOG2": 8, "CHAIN": 9}
    assert isa.flag_bits("LAYERNORM") == {"CHAIN": 8}
    assert isa.flag_bits("GELU") == {}
    i = isa.Instr(Op.LOAD, spm=3, words=10, ddr=0x1234_5678)
    assert i == isa.load(spm=3, words=10, ddr=0x1234_5678)
    assert (i["spm"], i.words, i.get("ddr"), i.get("tokens")) == (3, 10, 0x1234_5678, None)
    assert i.operands[:4] == (3, 10, 0x5678, 0x1234)
    assert i.replace(ddr=16).ddr == 16 and i.replace(ddr=16).spm == 3
    mm = isa.matmul(x=1, x_stride=2, tokens=3, k=4, n=5, y=6, y_stride=7, w_ddr=8, gelu_table=9)
    assert list(mm.fields()) == ["x", "x_stride", "tokens", "k", "n", "y", "y_stride", "w_ddr",
                                 "gelu_table", "heads", "w_steps"]  # fmt: skip
    with pytest.raises(ValueError, match="share word f10"):
        isa.Instr(Op.MATMUL, w_spm=1, gelu_table=2)
    with pytest.raises(KeyError, match="LOAD has no field 'tokens'"):
        i["tokens"]
    with pytest.raises(ValueError, match=r"LOAD.spm \(f1\) must fit 16 bits"):
        isa.Instr(Op.LOAD, spm=-1)


def test_table_generated_constructors_name_missing_fields():
    with pytest.raises(TypeError, match="gelu\\(\\) needs the fields dst, dst_stride, table"):
        isa.gelu(src=1, src_stride=1, rows=1, cols=1)
    assert isa.resadd.__name__ == "resadd" and "b_stride" in isa.resadd.__doc__


def test_docs_name_every_field_where_the_table_puts_it():
    """docs/isa.md's opcode table lists each field by its table name at its word."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "isa.md").read_text()
    for op, fmt in isa.FORMATS.items():
        if op is Op.MATMUL:  # its own table, with the flag-selected aliases
            continue
        row = re.search(rf"^\| {int(op)} \| {op.name} \| (.*) \|$", doc, re.M).group(1)
        documented = [(int(w), name) for w, name in re.findall(r"f(\d+)(?::f\d+)? `(\w+)`", row)]
        assert documented == [(f.word, f.name) for f in fmt.fields], op.name


def test_chain_fits_the_rule_and_the_interpreter_refuses_a_chain_that_does_not():
    """isa.chain_fits: the unit's output rows are the MATMUL's X rows in the X builder's
    order, and nothing either writes is read or written by the other while they overlap;
    the interpreter refuses a CHAIN unit whose next instruction does not fit."""
    from vitaccel.compile.interp import InterpError, run

    sm = isa.softmax(src=0, src_stride=1, rows=2 * 8, cols=8, dst=100, dst_stride=1, in_shift=0)
    pv = isa.matmul(x=100, x_stride=1, tokens=8, k=8, n=16, y=200, y_stride=1, w_spm=300,
                    w_stride=1, mult=0, shift=0, x_unsigned=True, heads=2, head_x_step=8,
                    head_w_step=16, head_y_step=1)  # fmt: skip
    assert isa.chain_fits(sm, pv) is None
    assert "X_KEEP" in isa.chain_fits(
        sm,
        isa.matmul(
            x=100, x_stride=1, tokens=16, k=8, n=16, y=200, y_stride=1, w_ddr=0, x_keep=True
        ),
    )
    assert "stride" in isa.chain_fits(sm.replace(dst=101), pv)
    assert "rows" in isa.chain_fits(sm.replace(rows=8), pv)
    assert "one after another" in isa.chain_fits(sm, pv.replace(head_x_step=9))
    assert "output rows overlap" in isa.chain_fits(sm, pv.replace(y=5))
    assert "W or residual" in isa.chain_fits(sm, pv.replace(w_spm=110))
    assert "not a MATMUL" in isa.chain_fits(sm, isa.end())
    chained = sm.replace(flags=isa.SoftmaxFlags.CHAIN)
    assert isa.chained(chained) and not isa.chained(sm) and not isa.chained(pv)
    bad = isa.encode_program([chained, pv.replace(y=5), isa.end()])
    with pytest.raises(InterpError, match=r"instruction 0: SOFTMAX CHAIN: the MATMUL's output"):
        run(bytearray(bad) + bytearray(8192), None, spm_words=512)
