"""The build's step progress (vitaccel/flow/progress.py): lines off a terminal, rich bars with
counts and an ETA from the last run on one."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from vitaccel.flow.progress import BuildProgress


def test_lines_off_a_terminal():
    lines: list[str] = []
    with BuildProgress(say=lines.append) as steps:
        with steps.step("quantize") as st:
            st.note("calibrating")
        with steps.step("co-simulate 3 images", total=3) as st:
            st.advance(3)
        with pytest.raises(RuntimeError), steps.step("generate"):
            raise RuntimeError("lint failed")
    assert lines[0] == "quantize ..." and lines[1] == "calibrating"
    assert lines[2].startswith("quantize: done in ") and lines[3] == "co-simulate 3 images ..."
    assert lines[4].startswith("co-simulate 3 images: done in ")
    assert lines[5:] == ["generate ..."]  # a failed step does not say "done"


def test_bars_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("VITACCEL_CACHE", str(tmp_path))

    def run() -> str:
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=True, width=100, color_system=None)
        with BuildProgress(say=print, live=True, console=console) as steps:
            with steps.step("generate + Yosys", key="generate|test") as st:
                st.note("synthesising with Yosys (synth_xilinx -family xcup)")
            with steps.step("co-simulate 4 images", total=4) as st:
                for _ in range(4):
                    st.advance()
            with pytest.raises(KeyboardInterrupt), steps.step("report.html"):
                raise KeyboardInterrupt
        return buf.getvalue()

    text = run()
    assert "generate + Yosys: done in" in text and "4/4" in text
    assert "report.html: failed" in text
    history = json.loads((tmp_path / "step-seconds.json").read_text())
    assert set(history) == {"generate|test"}  # only keyed steps; a failed one is not kept
    # the second run knows how long the step took: it shows an ETA from the last run
    history["generate|test"] = 600.0
    (tmp_path / "step-seconds.json").write_text(json.dumps(history))
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    with BuildProgress(say=print, live=True, console=console) as steps:
        with steps.step("generate + Yosys", key="generate|test"):
            steps._progress.refresh()
    assert "(last run)" in buf.getvalue()
