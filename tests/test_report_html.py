"""The build report: cycle causes, the HTML page (opened in headless Chromium), the terminal
summary, and `vitaccel report design --html`'s handling of bad input.

The full `vitaccel build` is not run here (minutes): tests/test_generate.py's end-to-end
build checks its report.html; here the page is made from a design file and from a build
summary put together in the test (a failing build, which a real run cannot give cheaply).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from vitaccel.cli import main
from vitaccel.design import save_design
from vitaccel.dse.cost import estimate
from vitaccel.flow.build import default_design
from vitaccel.report.cycles import CAUSES, layer_causes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def design_file(tmp_path_factory):
    return save_design(
        default_design("digits-vit", "zcu102"), tmp_path_factory.mktemp("d") / "design.json"
    )


@pytest.fixture(scope="module")
def design_html(design_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report.html"
    rc = main(["report", "design", str(design_file), "--html", str(out)])
    assert rc == 0 and out.is_file()
    return out


def _build_summary(design_file: Path) -> dict:
    """A build's summary as `vitaccel build` returns it, for a build whose third image
    failed on the RTL (figures typed in: this tests the page, not the build)."""
    return {
        "model": "digits-vit",
        "board": "zcu102",
        "quantize": {
            "model": "digits-vit",
            "scheme": "w8a8",
            "w4_ratio": 0.5,
            "images": 360,
            "float_top1": 0.9889,
            "int_top1": 0.9861,
            "agreement": 0.9972,
            "cosine": 0.9995,
        },  # fmt: skip
        "program_bit_exact": 3,
        "lint_warnings": 0,
        "resources_source": "yosys synth_xilinx -family xcup",
        "resources": {
            "lut": {"used": 27700, "available": 274080},
            "ff": {"used": 27000, "available": 548160},
            "dsp48e2": {"used": 75, "available": 2520},
            "bram36": {"used": 20, "available": 912},
        },
        "fits": True,
        "rtl_seconds": 30.0,
        "simulator": "Verilator (cocotb, cocotbext-axi DDR and host)",
        "bit_exact": 2,
        "first_mismatch": {"image": 2, "index": 7, "rtl": 13, "golden": 12},
        "cycles_per_image": 41929.0,
        "fps": 200e6 / 41929.0,
        "rtl_top1": 1.0,
        "images": 3,
        "clock_mhz": 200.0,
        "float_top1": 1.0,
        "golden_top1": 1.0,
        "per_layer": [
            {"layer": "blocks.0.attn.qkv", "rel_error": 0.011, "cosine": 0.9991},
            {"layer": "blocks.0.mlp.fc1", "rel_error": 0.023, "cosine": 0.9975},
        ],
        "output_dir": str(design_file.parent),
        "report_html": str(design_file.parent / "report.html"),
    }


@pytest.fixture(scope="module")
def build_html(design_file, design_html, tmp_path_factory):
    """The page of a (typed-in) build, written into its temporary folder as `build` does;
    after design_html so the explorer's front is computed once (it is cached)."""
    from vitaccel.report import write_build_report

    out = tmp_path_factory.mktemp("build-tmp")
    shutil.copy(design_file, out / "design.json")
    (out / "summary.json").write_text("{}")
    summary = _build_summary(design_file)
    summary["output_dir"] = "/home/engineer/vitaccel-build"
    return write_build_report(out, summary)


# ---- the cycle model split by cause ------------------------------------------------------


@pytest.mark.parametrize("model", ["digits-vit", "deit-tiny"])
def test_causes_add_up_to_the_cycle_model(model):
    design = default_design(model, "zcu102")
    est = {lc.name: lc for lc in estimate(design).layers}
    rows = layer_causes(design)
    assert [r["name"] for r in rows] == list(est)
    for r in rows:
        assert r["cycles"] == est[r["name"]].cycles, r["name"]
        parts = r["causes"]
        assert set(parts) == set(CAUSES)
        assert min(parts.values()) >= 0, (r["name"], parts)
        assert sum(parts.values()) == pytest.approx(r["cycles"], abs=1e-6), r["name"]
        if est[r["name"]].macs:
            assert parts["MAC"] > 0, r["name"]
        else:
            assert parts["MAC"] == 0, r["name"]
    kinds = {r["kind"]: r["causes"] for r in rows}
    assert kinds["load"]["DDR"] > 0 and kinds["softmax"]["nonlinear"] > 0
    # a matmul loads its X operand (QKV's V half keeps it, X_KEEP); step 0 streams behind
    # the load, which FC2's X (its K is the MLP width) outlasts
    assert kinds["fc2"]["X load"] > 0


# ---- the page -----------------------------------------------------------------------------


def _assert_self_contained(text: str) -> None:
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), "a URL in the page"
    assert not re.search(r"<(script|link|iframe|img|object|embed)\b", text, re.I)
    assert not re.search(r"\bsrc\s*=|@import|url\((?!#)", text, re.I)


def test_design_report_page(design_html):
    text = design_html.read_text()
    size = len(text.encode())
    print(f"\ndesign report.html: {size / 1e6:.2f} MB, {text.count('<svg')} plots")
    assert size < 5e6
    _assert_self_contained(text)
    assert text.count("<svg") >= 4
    for section in ("Design", "Resources", "Performance", "Design space", "Accuracy",
                    "Verification"):  # fmt: skip
        assert f"<h2>{section}" in text, section
    # model-only figures are labelled so; the page says the RTL was not run
    assert "design report (model figures only)" in text and "cycle model" in text
    assert "Not run" in text and "RTL run" not in text.split("<footer>")[0]
    assert "8.25 effective LUT levels" in text or "effective LUT levels" in text
    assert "URAM288" not in text  # ZCU102's ZU9EG has none: no column to read
    assert "scratchpad on BRAM36, input (X) buffers on BRAM36; the board has no URAM" in text
    # ids are unique across the inline SVGs (glyphs and clip paths of different plots)
    ids = re.findall(r'id="([^"]+)"', text)
    assert len(ids) == len(set(ids))


def test_resources_table_shows_uram(tmp_path):
    """A KV260 design with its scratchpad and X banks on URAM: the page's resources table
    has a URAM288 column (per block, the model's and Yosys's totals, the board's 64); the
    section alone, as the page would lay it out (the whole page runs the explorer: seconds)."""
    from vitaccel.dse.report import design_report
    from vitaccel.dse.resources import design_resources
    from vitaccel.report.html import _resources_section

    design = default_design("digits-vit", "kv260").model_copy(
        update={"spm_memory": "uram", "x_memory": "uram"}
    )
    dr = design_report(save_design(design, tmp_path / "design.json"))
    assert dr["utilisation"]["uram"]["available"] == 64
    yosys = {**dr["utilisation"], "uram": {"used": 13, "available": 64}}
    text = _resources_section(
        {"design_report": dr, "resources": {"Yosys": yosys, "resource model": dr["utilisation"]}}
    )

    def cells(label: str) -> list[str]:  # the figures of the row that starts with label
        return re.findall(r"<td class=n>(?:<b>)?([\d,.]+)", text.split(label)[1])

    assert "<th class=n>URAM288</th>" in text
    parts = design_resources(design)["parts"]
    assert cells("<td>spm</td>")[4] == f"{parts['spm'].uram:.0f}" != "0"
    assert cells("total (model)")[4] == f"{design_resources(design)['total'].uram:.0f}"
    assert cells("total (Yosys)")[4] == "13" and cells("<td>board</td>")[4] == "64"


def test_build_report_page(build_html):
    text = build_html.read_text()
    _assert_self_contained(text)
    assert text.count("<svg") >= 5  # + the per-layer error plot
    assert "build report" in text and "RTL run" in text and "Yosys" in text
    assert '<span class="fail">2 / 3 bit-exact</span>' in text
    assert "image 2, logit 7: RTL 13 vs golden 12" in text
    assert "rel_error" in text and "blocks.0.mlp.fc1" in text  # the per-layer error section
    assert "98.61 %" in text and "(-0.28 points)" in text
    # files are named where the build moves them, not in its temporary folder
    assert "/home/engineer/vitaccel-build/design.json" in text and "build-tmp" not in text
    assert "<code>summary.json</code>" in text and "<code>hw/rtl/vitaccel_top.v</code>" not in text
    # the RTL FPS and its share of the board's peak (2 MACs x 2520 DSP48E2 x 200 MHz)
    assert f"{200e6 / 41929:,.1f}" in text


def test_same_design_same_page(design_file, design_html, tmp_path):
    from vitaccel.report import write_design_report

    again = write_design_report(design_file, tmp_path / "again.html").read_bytes()
    assert again == design_html.read_bytes()


# ---- headless Chromium ----------------------------------------------------------------------


class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4): no
    network port, no extra package."""

    def __init__(self, width: int = 1200, height: int = 900):
        self.profile = tempfile.mkdtemp(prefix="vitaccel-chromium-")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def child_fds():
            # move both ends above 4 first, so placing them at 3 and 4 cannot clobber either
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            while a < 5 or b < 5:
                a, b = (os.dup(a) if a < 5 else a), (os.dup(b) if b < 5 else b)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
             "--hide-scrollbars", f"--window-size={width},{height}", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=True)

    def send(self, method: str, params: dict | None = None, *, session: bool = False) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self._id)
        assert "error" not in reply, reply
        return reply["result"]

    def wait(self, match, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                ready, _, _ = select.select([self._r], [], [], max(0.0, end - time.monotonic()))
                assert ready, "Chromium did not answer"
                chunk = os.read(self._r, 1 << 20)
                assert chunk, "Chromium closed the pipe"
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            msg = json.loads(raw)
            if match(msg):
                return msg
            self.events.append(msg)

    def open(self, path: Path) -> float:
        """Load ``path``; return the seconds to its load event."""
        self.events.clear()
        t0 = time.monotonic()
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
        self.wait(lambda m: m.get("method") == "Page.loadEventFired")
        return time.monotonic() - t0

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                        session=True)  # fmt: skip
        return res["result"]["value"]

    def problems(self) -> list[str]:
        """Console errors, exceptions, error log entries and requests other than the page."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(f"console.{p['type']}: {p['args']}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']}")
            elif m == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not url.startswith(("file://", "data:", "about:")):
                    out.append(f"request: {url}")
        return out

    def screenshot(self) -> bytes:
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                         session=True)["data"]  # fmt: skip
        return base64.b64decode(data)

    def close(self) -> None:
        try:
            self._id += 1
            os.write(
                self._w, json.dumps({"id": self._id, "method": "Browser.close"}).encode() + b"\0"
            )
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._w)
            os.close(self._r)
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/install.sh installs the Debian package)")
    browser = _Chromium()
    yield browser
    browser.close()


def test_browser_sees_problems(chromium, tmp_path):
    # the checks below can fail: a page with a console error and an external image
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<p>x</p><script>console.error("boom")</script><img src="http://0.invalid/a.png">'
    )
    chromium.open(bad)
    time.sleep(0.2)
    chromium.evaluate("1")  # let the pending events arrive
    problems = chromium.problems()
    assert any("boom" in p for p in problems) and any("0.invalid" in p for p in problems)


@pytest.mark.parametrize("which", ["design_html", "build_html"])
def test_report_renders_in_chromium(chromium, which, request):
    page = request.getfixturevalue(which)
    seconds = chromium.open(page)
    print(f"\n{which}: load event after {seconds:.2f} s in headless Chromium")
    plots = chromium.evaluate(
        "Array.from(document.querySelectorAll('figure svg')).filter("
        "s => s.getBoundingClientRect().width > 300 && s.getBoundingClientRect().height > 100"
        ").length"
    )
    assert plots >= 4, plots
    assert chromium.evaluate("document.querySelectorAll('h2').length") >= 6
    assert chromium.problems() == []
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(io.BytesIO(chromium.screenshot()), format="png")[..., :3]
    background = pixels[-1, 0]  # the page background at the bottom edge
    share = float(np.any(pixels != background, axis=-1).mean())
    height, width = pixels.shape[:2]
    print(f"{which}: screenshot {width}x{height}, {share:.0%} non-background pixels")
    assert height > 2000 and share > 0.05


# ---- the sweep's page ------------------------------------------------------------------------


def _sweep_row(model, board, fps, status="ok", **kw) -> dict:
    row = {"model": model, "board": board, "target_fps": fps, "status": status, "errors": []}
    if status in ("ok", "mismatch"):
        scale = {"deit-tiny": 1, "deit-small": 3}[model] * (1.3 if board == "zcu104" else 1)
        row.update(
            design=f"queries/{model}-{board}-{fps:g}/design.json", array="4x8x8x8",
            clock_mhz=300.0, predicted_fps=fps * 1.2 * scale, peak_share=0.41, binding="dsp48e2",
            resources={"model": {"dsp48e2": 700 * scale, "lut": 90_000 * scale,
                                 "ff": 80_000 * scale, "bram36": 120 * scale},
                       "yosys": None, "lut_depth": None},
            bit_exact=None,
        )  # fmt: skip
    row.update(kw)
    return row


SWEEP_RESULTS = {
    "sweep": {"models": ["deit-tiny", "deit-small"], "boards": ["zcu102", "zcu104"],
              "fps": [60.0], "synth_top": 0, "images": 0, "max_util": 0.85},
    "rows": [
        _sweep_row("deit-tiny", "zcu102", 60.0, bit_exact={"bit_exact": 2, "images": 2}),
        _sweep_row("deit-tiny", "zcu104", 60.0),
        _sweep_row("deit-small", "zcu102", 60.0, status="failed",
                   errors=["explore: RuntimeError: worker ran out of memory"]),
        _sweep_row("deit-small", "zcu104", 60.0, status="infeasible", binding="dsp48e2",
                   best_reachable_fps=41.5),
    ],
    "figures": {"seconds": 12.5},
    "fps_source": "cycle-model prediction (vitaccel.dse.cost)",
}  # fmt: skip
SWEEP_RESULTS["rows"][1]["resources"]["yosys"] = {"dsp48e2": 1000, "lut": 101_000,
                                                   "ff": 90_000, "bram36": 150}  # fmt: skip


@pytest.fixture(scope="module")
def sweep_html(tmp_path_factory) -> Path:
    from vitaccel.report.html import write_sweep_html

    return write_sweep_html(tmp_path_factory.mktemp("sweep") / "report.html", SWEEP_RESULTS)


def test_sweep_page_structure(sweep_html):
    from vitaccel.report.html import SWEEP_PLOT_KINDS, render_sweep_html

    text = sweep_html.read_text()
    _assert_self_contained(text)
    assert render_sweep_html(json.loads(json.dumps(SWEEP_RESULTS))) == text  # rows -> page
    queries = text.split("<h2>Queries</h2>")[1].split("</tbody>")[0]
    assert queries.count("<tr>") == 1 + len(SWEEP_RESULTS["rows"])  # head + one per query
    svgs = re.findall(r"<svg.*?</svg>", text, flags=re.S)
    assert len(svgs) == len(SWEEP_PLOT_KINDS) == 3  # one plot per resource
    for kind in ("DSP48E2", "LUT", "BRAM36"):
        assert f"against {kind}" in text
    # each board is named in every plot's legend (glyphs are paths: matplotlib's comment
    # carries the text)
    for svg in svgs:
        for board in ("zcu102", "zcu104"):
            assert f"<!-- {board} -->" in svg, board
    # Yosys beside the model where synthesised; the failed and infeasible rows with why
    assert "DSP48E2 910 / 1,000" in text and "DSP48E2 700<br>" in text
    not_answered = text.split("<h2>Not answered</h2>")[1]
    assert "worker ran out of memory" in not_answered
    assert "dsp48e2 binds" in not_answered and "best 41.5 FPS" in not_answered
    assert "2 / 2" in queries


def test_sweep_page_renders_in_chromium(chromium, sweep_html):
    seconds = chromium.open(sweep_html)
    print(f"\nsweep page: load event after {seconds:.2f} s in headless Chromium")
    sizes = chromium.evaluate(
        "JSON.stringify(Array.from(document.querySelectorAll('figure svg')).map("
        "s => [s.getBoundingClientRect().width, s.getBoundingClientRect().height]))"
    )
    sizes = json.loads(sizes)
    assert len(sizes) == 3 and all(w > 200 and h > 100 for w, h in sizes), sizes
    assert chromium.problems() == []


# ---- terminal -------------------------------------------------------------------------------


def test_build_summary_fits_one_terminal(design_file):
    from rich.console import Console

    from vitaccel.design import load_design
    from vitaccel.report.terminal import build_summary

    buf = io.StringIO()
    console = Console(file=buf, width=100, height=40, color_system=None, legacy_windows=False)
    console.print(build_summary(_build_summary(design_file), load_design(design_file)))
    lines = buf.getvalue().rstrip("\n").splitlines()
    print("\n" + "\n".join(lines))
    assert len(lines) <= 40 and max(len(line) for line in lines) <= 100
    text = buf.getvalue()
    assert "{" not in text and "'" not in text  # no JSON, no Python reprs
    assert "2/3 images bit-exact" in text and "first mismatch: image 2" in text
    assert "RTL run" in text and "cycle model" in text and "µs" in text
    assert "report: " in text


def test_build_summary_shows_uram(tmp_path):
    """On a board with URAM, the terminal summary's resources table has a URAM288 row."""
    from rich.console import Console

    from vitaccel.flow.build import resources_summary
    from vitaccel.report.terminal import build_summary

    design = default_design("digits-vit", "kv260").model_copy(
        update={"spm_memory": "uram", "x_memory": "uram"}
    )
    s = {**_build_summary(save_design(design, tmp_path / "design.json")), "board": "kv260"}
    s.update(resources_summary(design))
    buf = io.StringIO()
    Console(file=buf, width=100, color_system=None).print(build_summary(s, design))
    used = s["resources"]["uram"]["used"]
    assert used > 0
    assert re.search(rf"URAM288\s+{used}\s+64\s", buf.getvalue()), buf.getvalue()


def test_generic_output_has_no_json():
    from rich.console import Console

    from vitaccel.cli import _table_of

    buf = io.StringIO()
    Console(file=buf, width=100, color_system=None).print(
        _table_of({"a": {"b": 1.23456, "c": [1, 2]}, "rows": [{"x": 1, "y": None}], "n": 12345})
    )
    text = buf.getvalue()
    assert "{" not in text and "[" not in text and "12,345" in text and "1.235" in text


# ---- bad input ------------------------------------------------------------------------------


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the `vitaccel` entry point, in this process."""
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as err:
        code = err.code
    return code, capsys.readouterr().err


def test_html_to_an_unwritable_path(design_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for target, words in (
        (blocker / "report.html", "does not exist"),  # its folder is a file
        (tmp_path / "missing" / "report.html", "does not exist"),
        (tmp_path, "is a folder"),
    ):
        code, err = _run_cli(["report", "design", str(design_file), "--html", str(target)], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("vitaccel: error: --html:") and words in lines[0], lines[0]
        assert str(target) in lines[0] or str(target.parent) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_html_of_an_invalid_design(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "array": {"rows": 0}}))
    out = tmp_path / "report.html"
    code, err = _run_cli(["report", "design", str(bad), "--html", str(out)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "array.rows" in lines[0] and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".report.html*"))


def test_pareto_of_a_build_with_an_fps_target(design_file, tmp_path):
    # a build with --fps keeps the explorer's dse/pareto.json (search._write_outputs): the
    # page plots that front and marks the explorer's choice, without running it again
    from vitaccel.design import load_design
    from vitaccel.report.data import _pareto, performance
    from vitaccel.report.plots import pareto_svg

    def point(fps, dsp, lut, chosen=False):
        return {"fps": fps, "dsp48e2": dsp, "lut": lut, "ff": 1, "bram36": 1.0,
                "predicted_error": 0.0, "array": {"w4_share": 0.0}, "chosen": chosen}  # fmt: skip

    path = tmp_path / "pareto.json"
    path.write_text(json.dumps({"points": [point(900, 40, 30000), point(2000, 80, 41000, True),
                                           point(5000, 300, 90000)]}))  # fmt: skip
    design = load_design(design_file)
    util = {"dsp48e2": {"used": 75}, "lut": {"used": 27697}}
    p = _pareto(design, util, performance(design), path)
    assert p["source"] == str(path) and len(p["points"]) == 3
    assert p["chosen"] == {"fps": 2000, "dsp48e2": 80, "lut": 41000,
                           "label": "chosen by the explorer"}  # fmt: skip
    svg = pareto_svg(p["points"], p["chosen"], budget={"dsp48e2": 2520, "lut": 274080},
                     target_fps=1800)  # fmt: skip
    assert svg.startswith("<svg") and "http" not in svg


def test_lanes_per_layer_of_a_mixed_design(design_file):
    """A design with W4 columns: the report's precision rows say per layer how many rows
    run on W8 and on W4 lanes (the engine's column plan), the page shows them in a table
    and the terminal summary totals them."""
    from rich.console import Console

    from vitaccel.design import ArrayConfig, Design
    from vitaccel.report.data import layer_lanes
    from vitaccel.report.html import _accuracy_section
    from vitaccel.report.terminal import build_summary

    mixed = Design(
        array=ArrayConfig(groups=1, rows=4, cols=6, vector=8, w4_share=1 / 3, w4_kind="pot4"),
        default_w4_ratio=0.5,
    )
    lanes = layer_lanes(mixed)
    # fc1: 128 rows, 64 pot4 (at the cost model's seeded places); 22 steps, each a window of
    # channels, hold 41 of them on their 2 W4 columns, the rest on W8
    assert lanes["blocks.0.mlp.fc1"] == {"w8": 87, "w4": 41, "steps": 22}
    assert lanes["patch_embed"] == {"w8": 64, "w4": 0, "steps": 16}  # 4 W8 columns
    assert all(r["w4"] == 0 for r in layer_lanes(Design()).values())
    prec = [{"name": n, "w4_ratio": 0.5, **r} for n, r in lanes.items()]
    page = _accuracy_section({"summary": None, "design_report": {}, "design": mixed,
                              "precision": prec, "per_layer_error": None})  # fmt: skip
    assert "rows on pot4 lanes" in page and "<td class=n>41</td>" in page
    buf = io.StringIO()
    Console(file=buf, width=100, color_system=None).print(
        build_summary(_build_summary(design_file), mixed)
    )
    on_w4 = sum(r["w4"] for r in lanes.values())
    assert f"{on_w4:,} of" in buf.getvalue() and "pot4 lanes" in buf.getvalue()
