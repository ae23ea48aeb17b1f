"""Infeasible DSE answers explain themselves (issue 19): needs against the board's budget per
resource, what is short and by how much, and what would make it fit; never "0.0 FPS"."""

import json
from types import SimpleNamespace

import pytest

from vitaccel.boards import get_budget
from vitaccel.cli import main
from vitaccel.dse import resources as res
from vitaccel.dse.search import (
    RESOURCE_KINDS,
    InfeasibleError,
    explain_unfit,
    explore,
    smallest_design,
    usage_parts,
)
from vitaccel.dse.shapes import spec_of


def _infeasible(model, board, fps, **kw) -> InfeasibleError:
    with pytest.raises(InfeasibleError) as err:
        explore(model, board, fps, **kw)
    return err.value


def test_nothing_fits_states_needs_against_budget(tmp_path):
    # With the scratchpad and X banks on URAM every zoo model fits every board at 85%; at
    # 50% DeiT-B on KV260 is short of BRAM36 for its X bank (the scratchpad takes the URAM)
    # with the whole scratchpad (the explorer then spills, below)
    f = explain_unfit("deit-base", "kv260", max_util=0.5)
    e = SimpleNamespace(message=f["message"], binding=f["binding"])
    assert "0.0 FPS" not in e.message and "\n" not in e.message
    assert f["fits"] is False
    bram = f["resources"]["bram36"]
    budget = get_budget("kv260")
    assert bram["available"] == budget.bram36 == 144
    assert bram["budget"] == pytest.approx(144 * 0.5, abs=0.05)
    assert bram["needed"] > bram["budget"] and f["short"] == ["bram36"] and e.binding == "BRAM"
    assert bram["short_by"] == pytest.approx(bram["needed"] - bram["budget"], abs=0.11)
    # The parts add up to the need; the scratchpad is on URAM, so the X buffers are the most.
    assert sum(bram["parts"].values()) == pytest.approx(bram["needed"], abs=0.5)
    assert max(bram["parts"], key=bram["parts"].get) == "input (X) buffers"
    assert "scratchpad" not in bram["parts"]
    assert (
        f"{bram['needed']:.0f} BRAM36 (board: 144, {bram['budget']:.0f} at 50%; "
        f"{bram['short_by']:.0f} short: input (X) buffers" in e.message
    )
    words = 1024 * 1024 // 16  # DeiT-B's activations fill the ISA's 1 MiB scratchpad
    uram = res.memory_uram288(words, 128)
    assert uram == 32 and f["uram"] == {"available": 64, "used": uram}
    assert f"URAM {uram} of 64 (scratchpad {uram})" in e.message
    # What would fit is checked: ZCU102 and ZCU104 take DeiT-Base (ZCU104 answers it below).
    assert f["would_fit"]["boards"] == ["zcu102", "zcu104"]
    assert "zcu102, zcu104 fit deit-base" in e.message and "spilled to DDR" in e.message
    r = explore("deit-base", "zcu104", 0.5, max_util=0.5, out_dir=tmp_path)
    assert r["fps"] >= 0.5
    # its Pareto points carry the URAM288 they take (the scratchpad's 32 here)
    points = json.loads((tmp_path / "pareto.json").read_text())["points"]
    chosen = next(p for p in points if p["chosen"])
    assert chosen["uram"] == r["uram"]["used"] >= uram and all("uram" in p for p in points)


def test_explorer_spills_when_the_whole_scratchpad_does_not_fit(capsys, tmp_path):
    """At 30% of KV260 no DeiT-Small design fits with the whole scratchpad (878 KiB): the
    explorer answers with a smaller one, the residual stream spilled to DDR and the MLP run
    per token tile (so the X banks hold one tile of FC2's input, not 197 tokens), and says
    how much it spills. The design file carries the scratchpad; its program is the one the
    cycle model priced."""
    from rich.console import Console

    from vitaccel.compile.schedule import schedule, spill_traffic
    from vitaccel.design import load_design
    from vitaccel.dse.render import print_dse

    explain = explain_unfit("deit-small", "kv260", max_util=0.3)
    assert explain["fits"] is False and explain["short"] == ["bram36"]  # the whole scratchpad
    assert "a smaller scratchpad with the residual stream spilled to DDR" in explain["message"]
    s = explore("deit-small", "kv260", 1, max_util=0.3, out_dir=tmp_path)
    assert s["fps"] >= 1 and s["spm_kib"] < s["spm_kib_needed"] == 879
    assert all(v["used"] <= 0.3 * v["available"] for v in s["resources"].values())
    design = load_design(tmp_path / "design.json")
    assert design.spm_kib == s["spm_kib"]
    prog = schedule(spec_of("deit-small"), design)
    assert s["spill_kib_per_image"] == round(spill_traffic(prog) / 1024, 1) > 0
    print_dse(s, Console(width=200))
    assert f"spills {s['spill_kib_per_image']:,.1f} KiB per image to DDR" in capsys.readouterr().out


def test_smallest_design_is_the_least_used_shape():
    spec, budget = spec_of("deit-small"), get_budget("zcu104")
    (g, r, c, v), parts = smallest_design(spec, budget)
    assert g == 1
    total = sum(u.bram36 for u in parts.values())
    # No other single-group shape of the space needs less BRAM (BRAM is what binds here).
    for shape in ((1, 2, 2, 4), (1, 1, 4, 4), (1, 4, 2, 8), (1, 1, 2, 16)):
        other = sum(u.bram36 for u in res_parts(spec, shape).values())
        assert total <= other + 1e-9, shape


def res_parts(spec, shape):
    return usage_parts(spec, *shape)


def test_usage_parts_match_the_engine_model():
    spec = spec_of("deit-tiny")
    parts = res_parts(spec, (1, 2, 4, 8))
    # The engine's BRAM is entirely its X, W and output buffers: nothing is lost in the split.
    assert parts["array"].bram36 == pytest.approx(0.0, abs=1e-9)
    kib = min(res.spm_kib_for(spec), 1024)
    assert parts["scratchpad"].bram36 == res.spm_bram36(kib * 1024 // 16)


def test_scratchpad_and_x_banks_take_the_boards_uram():
    spec = spec_of("deit-tiny")
    words = min(res.spm_kib_for(spec), 1024) * 1024 // 16
    parts = usage_parts(spec, 1, 2, 4, 8, budget=get_budget("kv260"))
    assert parts["scratchpad"] == res.Usage(uram=res.memory_uram288(words, 128))
    x = parts["input (X) buffers"]
    assert x.bram36 == 0 and x.uram > 0  # both fit the K26's URAM
    # no URAM on the ZU9EG: both stay in block RAM
    parts = usage_parts(spec, 1, 2, 4, 8, budget=get_budget("zcu102"))
    assert parts["scratchpad"] == res.Usage(bram36=res.spm_bram36(words))
    assert parts["input (X) buffers"].uram == 0 and parts["input (X) buffers"].bram36 > 0


def test_fits_but_too_slow_keeps_best_fps_and_binding():
    e = _infeasible("deit-tiny", "zcu104", 100000)
    assert e.facts["fits"] is True and e.facts["best_reachable_fps"] > 0
    assert f"reaches at most {e.best_fps:.1f} FPS" in e.message and e.facts["binding"] == e.binding


def test_cli_json_carries_the_facts(capsys, tmp_path):
    with pytest.raises(SystemExit) as ex:
        main(["dse", "--model", "deit-small", "--board", "kv260", "--fps", "10",
              "--max-util", "0.2", "-o", str(tmp_path / "out"), "--json"])  # fmt: skip
    assert ex.value.code == 3
    out, err = capsys.readouterr()
    facts = json.loads(out)
    assert facts["feasible"] is False and set(facts["resources"]) == set(RESOURCE_KINDS)
    assert facts["resources"]["bram36"]["short_by"] > 0
    assert err.count("\n") == 1 and "needs" in err and "0.0 FPS" not in err
    # at 20% not even spilling the residual stream to DDR makes room (the explorer tried it)
    assert "nor does a smaller scratchpad with the residual stream spilled to DDR" in err
    assert not (tmp_path / "out").exists()  # nothing written for an infeasible answer


def test_cli_unknown_board_one_line_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as ex:
        main(["dse", "--model", "deit-tiny", "--board", "kv261", "--fps", "30",
              "-o", str(tmp_path / "out")])  # fmt: skip
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "board 'kv261'" in err and "kv260, zcu102, zcu104" in err
    assert not (tmp_path / "out").exists()


def test_no_other_board_at_a_small_budget():
    f = explain_unfit("deit-tiny", "zcu102", max_util=0.1)
    assert f["would_fit"]["boards"] == [] and f["short"] == ["bram36"]
    assert "no other known board fits deit-tiny within 10%" in f["message"]
    assert "no URAM on the device" in f["message"]  # the ZU9EG has none
    # The device holds the smallest design, so a larger share is a remedy, and it is true.
    assert "--max-util 0.17 (the smallest design fits)" in f["remedies"]
    assert explore("deit-tiny", "zcu102", 1, max_util=0.17)["fps"] > 0
