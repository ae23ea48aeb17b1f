"""vitaccel sweep (vitaccel.flow.sweep): queries on Dask, the task cache, a worker killed
mid-sweep, a failing task, re-ranking by Yosys, bad input."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from vitaccel.flow import sweep as sw

VITACCEL = [sys.executable, "-m", "vitaccel.cli"]
# DeiT-Small on ZCU104 reaches 115.3 FPS (64-byte datapath, scratchpad and X banks on URAM;
# ZCU102 167.2): infeasible at 150
DEIT = {"models": "deit-tiny,deit-small", "boards": "zcu102,zcu104", "fps": "150"}


def run(*args, cwd=None, timeout=900, env=None):
    """The command in its own process group: on a timeout the whole group is killed, so no
    Dask worker or Yosys run outlives the test."""
    proc = subprocess.Popen([*VITACCEL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, start_new_session=True, env=env)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def cluster():
    """One local cluster of 2 worker processes for the API-level tests (Dask starts once)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
    ) as c:
        yield c


def _row(results, model, board):
    (row,) = [r for r in results["rows"] if r["model"] == model and r["board"] == board]
    return row


def test_killed_worker_then_answered_from_the_cache(cluster, tmp_path):
    """The issue's sweep: 4 rows although a worker process is killed mid-sweep; the same
    sweep again (the CLI, --json) is answered from the cache."""
    from distributed import Client

    spec = sw.parse_spec(**DEIT)
    out = tmp_path / "deit"
    result: dict = {}
    failure: list = []

    def target():
        try:
            result.update(
                sw.run_sweep(spec, out, scheduler=cluster.scheduler_address, progress=False)
            )
        except BaseException as err:  # surfaced in the test's thread below
            failure.append(err)

    thread = threading.Thread(target=target)
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        pids = client.run(os.getpid)
        t0 = time.monotonic()
        thread.start()
        victim = None
        while victim is None and thread.is_alive() and time.monotonic() - t0 < 600:
            for addr, keys in client.processing().items():
                if any(str(k).startswith("explore-") for k in keys):
                    victim = addr
                    break
            else:
                time.sleep(0.02)
        assert victim is not None, "no explore task was seen running on a worker"
        os.kill(pids[victim], signal.SIGKILL)
        assert thread.is_alive(), "the sweep ended before the worker was killed"
        thread.join(900)
    assert not failure, failure
    assert not thread.is_alive()
    seconds = time.monotonic() - t0
    rows = result["rows"]
    assert len(rows) == 4
    assert [r["status"] for r in rows].count("failed") == 0, rows
    assert result["figures"]["tasks_computed"] == 4
    tiny = _row(result, "deit-tiny", "zcu102")
    assert tiny["status"] == "ok" and tiny["predicted_fps"] >= 60
    assert tiny["fps_source"].startswith("cycle-model prediction")
    assert 0 < tiny["peak_share"] < 1
    design = json.loads((out / tiny["design"]).read_text())
    assert design["model"] == "deit-tiny" and design["board"] == "zcu102"
    infeasible = _row(result, "deit-small", "zcu104")
    assert infeasible["status"] == "infeasible" and infeasible["binding"]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == rows
    page = (out / "report.html").read_text()  # the sweep's page, from these rows
    assert page.count("<svg") == 3 and all(b in page for b in ("zcu102", "zcu104"))

    r = run("sweep", "--models", DEIT["models"], "--boards", DEIT["boards"], "--fps", DEIT["fps"],
            "--workers", "2", "-o", str(out), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert len(again["rows"]) == 4
    assert again["figures"]["tasks_computed"] == 0
    assert again["figures"]["tasks_from_cache"] == 4
    assert again["rows"] == rows
    assert (out / "report.html").read_text() == page  # from the cache: the same page
    print(
        f"\nsweep of 4 queries with a worker killed: {seconds:.1f} s; "
        f"repeat from the cache: {again['figures']['seconds']:.1f} s in the command "
        f"(no cluster started: {again['figures']['cluster']})"
    )


def test_a_failing_task_is_reported_and_the_others_go_on(cluster, tmp_path, monkeypatch):
    def flaky(model, board, fps, max_util, synth_top):
        if board == "zcu104":
            raise RuntimeError(f"injected failure for {model} on {board}")
        from vitaccel.flow.sweep import explore_task

        return explore_task(model, board, fps, max_util, synth_top)

    # the client submits the module's explore_task: the closure goes to the workers by value
    monkeypatch.setattr(sw, "explore_task", flaky)
    spec = sw.parse_spec(models="digits-vit", boards="kv260,zcu104", fps="1000")
    out = tmp_path / "digits"
    res = sw.run_sweep(spec, out, scheduler=cluster.scheduler_address, progress=False)
    bad = _row(res, "digits-vit", "zcu104")
    assert bad["status"] == "failed"
    assert bad["errors"] == ["explore: RuntimeError: injected failure for digits-vit on zcu104"]
    good = _row(res, "digits-vit", "kv260")
    assert good["status"] == "ok" and good["predicted_fps"] >= 1000
    assert res["figures"]["tasks_failed"] == 1
    # a failure is not cached: only the good query's task is
    assert len(list((out / "cache").glob("explore-*.json"))) == 1
    # the same sweep again (the failure fixed): the good query from the cache, the other run
    monkeypatch.undo()
    again = sw.run_sweep(spec, out, scheduler=cluster.scheduler_address, progress=False)
    assert [r["status"] for r in again["rows"]] == ["ok", "ok"]
    assert again["figures"]["tasks_from_cache"] == 1
    assert again["figures"]["tasks_computed"] == 1
    assert _row(again, "digits-vit", "kv260") == good


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--models", "deit-tiny,resnet", "--boards", "zcu102", "--fps", "60"],
         "--models: unknown model 'resnet'; choose from: deit-base, deit-small, deit-tiny"),
        (["--models", "deit-tiny", "--boards", "zcu102,zcu999", "--fps", "60"],
         "--boards: unknown board 'zcu999'; choose from: kv260, zcu102, zcu104"),
        (["--models", "deit-tiny", "--boards", "zcu102", "--fps", "60,fast"],
         "--fps: 'fast' is not a number"),
        (["--models", "deit-tiny", "--boards", "zcu102", "--fps", "0"],
         "--fps: every target must be > 0"),
        (["--models", "deit-tiny", "--boards", "zcu102", "--fps", "60",
          "--scheduler", "tcp://127.0.0.1:1"],
         "--scheduler: cannot reach a Dask scheduler at 'tcp://127.0.0.1:1' within 5 s"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path, capsys):
    code, err = _cli(capsys, *args, "-o", str(tmp_path / "out"))
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert list(tmp_path.iterdir()) == []


def _cli(capsys, *args) -> tuple[int, str]:
    """Run the command in this process (no interpreter start): (exit code, stderr)."""
    from vitaccel.cli import main

    try:
        code = main(["sweep", *args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_unreachable_scheduler_is_reported_within_10_s():
    t0 = time.monotonic()
    with pytest.raises(sw.SweepError, match="--scheduler: cannot reach"):
        sw.connect("tcp://127.0.0.1:1", 1)
    assert time.monotonic() - t0 < 10
    with pytest.raises(sw.SweepError, match="not a scheduler address"):
        sw.connect("nonsense", 1)


def test_folder_of_another_sweep_is_refused_unless_resume(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    other = sw.parse_spec(models="digits-vit", boards="kv260", fps="1000")
    (out / sw.SWEEP_FILE).write_text(json.dumps(other.identity()))
    before = sorted(p.name for p in out.iterdir())
    code, err = _cli(capsys, "--models", "digits-vit", "--boards", "kv260", "--fps", "2000",
                     "-o", str(out))  # fmt: skip
    assert code == 2
    assert err.strip().splitlines() == [
        f"vitaccel: error: -o: folder '{out}' holds the results of a different sweep; give "
        "another folder, or --resume to reuse its cached tasks for this sweep"
    ]
    assert sorted(p.name for p in out.iterdir()) == before
    spec = sw.parse_spec(models="digits-vit", boards="kv260", fps="2000")
    sw.check_out_dir(out, spec, resume=True)  # accepted
    sw.check_out_dir(out, other, resume=False)  # the same sweep: resumed
    (out / "stray.txt").write_text("x")
    (out / sw.SWEEP_FILE).unlink()
    with pytest.raises(sw.SweepError, match="holds no sweep.json"):
        sw.check_out_dir(out, spec, resume=True)


def _finalist(array, lut, fps, clock=250.0):
    usage = {"dsp48e2": 15.0, "lut": float(lut), "ff": 18000.0, "bram36": 11.0}
    cand = {"groups": 1, "rows": 1, "cols": 2, "vector": 8, "w4_share": 0.0, "w4_kind": "int4",
            "lanes": [1, 1, 1], "ratios": {}, "cycles": 1000, "usage": usage, "error": 0.0,
            "fps": fps, "clock_mhz": clock, "bound_cycles": {}, "weight_ports": 1}  # fmt: skip
    return {"design": "{}", "array": array, "clock_mhz": clock, "predicted_fps": fps,
            "cycles": 1000, "macs_per_frame": 1, "model_resources": usage,
            "candidate": cand}  # fmt: skip


def _synth(lut, depth):
    return {"dsp48e2": 15, "lut": lut, "ff": 18000, "bram36": 11.0, "lut_depth": depth}


def test_rerank_by_yosys_resources_and_lut_depth():
    """The rules: over a limit by Yosys -> out; a LUT depth that forbids the clock lowers
    the FPS (out if below the target); the rest ordered by the explorer's cost."""
    from vitaccel.boards import get_budget

    budget = get_budget("kv260")
    limits = {k: getattr(budget, k) * 0.85 for k in sw.RESOURCE_KINDS}
    fins = [_finalist("A", 20000, 1400), _finalist("B", 20100, 1300), _finalist("C", 20200, 1500)]
    # A: Yosys finds more LUTs than the limit; B: too deep for 250 MHz (1300 x 200/250 < 1100)
    over = limits["lut"] + 1
    synth = [_synth(over, 5.0), _synth(20000, 9.0), _synth(21000, 5.0)]
    out = sw.rerank(fins, synth, board="kv260", target_fps=1100, limits=limits)
    a, b, c = out["finalists"]
    assert a["over"] == ["lut"] and not a["qualifies"]
    assert b["clock_by_depth_mhz"] < 250 and not b["qualifies"]
    assert b["fps_at_that_clock"] == pytest.approx(1300 * b["clock_by_depth_mhz"] / 250, abs=0.01)
    assert c["qualifies"]
    assert out["pick"] == 2 and out["changed"]
    assert "synthesis changed the pick: finalist #3 (C)" in out["note"]
    assert "exceeds the lut limit" in out["note"]
    # all within limits and shallow: the lowest tightest share by Yosys wins, here B
    synth = [_synth(24000, 5.0), _synth(20000, 5.0), _synth(24000, 5.0)]
    out = sw.rerank(fins, synth, board="kv260", target_fps=1100, limits=limits)
    assert out["pick"] == 1 and "the tightest resource decides" in out["note"]
    assert "finalist #2 20.1% of the lut limit" in out["note"]
    # nothing qualifies, or a failed synthesis: the explorer's pick stays
    out = sw.rerank(fins, [None, None, _synth(over, 5.0)], board="kv260", target_fps=1100,
                    limits=limits)  # fmt: skip
    assert out["pick"] == 0 and not out["changed"]
    assert out["finalists"][0]["yosys"] is None


def test_module_batches_fill_the_workers_largest_first():
    """Few Yosys runs (each pays ~5 CPU-s of cell libraries), as many as keep the workers
    busy, balanced by Verilog size; every module in exactly one."""
    from vitaccel.flow.yosys import VerilogModule

    def mod(name, chars):
        return VerilogModule(name, "x" * chars, ())

    big = [mod("resadd", 430_000), mod("layernorm", 190_000), mod("core", 170_000)]
    small = [mod(f"m{i}", 20_000) for i in range(40)]
    batches = sw.module_batches(big + small, 2)
    assert len(batches) == 2
    assert sorted(m.name for b in batches for m in b) == sorted(m.name for m in big + small)
    sizes = [sum(len(m.text) for m in b) for b in batches]
    assert abs(sizes[0] - sizes[1]) <= 20_000
    assert len(sw.module_batches(small[:10], 2)) == 1  # 200 k characters: one run
    assert len(sw.module_batches(big + small, 1)) == 1
    assert sw.module_batches([], 2) == []


def _check_synthesis(row: dict, out, k: int = 3) -> dict:
    """A --synth-top K row: model and Yosys figures for each finalist, the pick and the
    row's design file agreeing with them, the note saying whether synthesis changed it."""
    assert row["status"] == "ok", row
    syn = row["synthesis"]
    assert len(syn["finalists"]) == k
    for f in syn["finalists"]:
        assert f["yosys"]["lut"] > 0 and f["yosys"]["dsp48e2"] > 0 and f["yosys"]["ff"] > 0
        assert f["lut_depth"] > 0
        assert set(f["model_vs_yosys"]) == set(sw.RESOURCE_KINDS)
        for r in ("lut", "ff", "dsp48e2"):  # the error is the model's against these counts
            assert f["model_vs_yosys"][r] == pytest.approx(
                f["model_resources"][r] / f["yosys"][r] - 1, abs=1e-4
            )
    picked = syn["finalists"][syn["pick"]]
    assert row["resources"]["yosys"] == picked["yosys"]
    assert row["array"] == picked["array"]
    assert row["synthesis_changed_pick"] == (syn["pick"] != 0) == syn["changed"]
    assert syn["note"].startswith(
        "synthesis changed the pick" if syn["changed"] else "synthesis confirms"
    )
    design = json.loads((out / row["design"]).read_text())
    shape = design["array"]
    assert picked["array"].startswith(
        f"{shape['groups']}x{shape['rows']}x{shape['cols']}x{shape['vector']},"
    )
    assert design["clock_mhz"] == (picked["clock_by_depth_mhz"] or picked["clock_mhz"])
    return syn


def _print_synthesis(title: str, seconds: float, syn: dict) -> None:
    print(f"\n{title}: {seconds:.1f} s; {syn['note']}")
    for f in syn["finalists"]:
        m, y = f["model_resources"], f["yosys"]
        print(f"  #{f['rank_by_model']} {f['array']}: model / Yosys LUT {m['lut']:.0f} / "
              f"{y['lut']}, FF {m['ff']:.0f} / {y['ff']}, DSP {m['dsp48e2']} / {y['dsp48e2']}, "
              f"BRAM36 {m['bram36']} / {y['bram36']}; depth {f['lut_depth']}, "
              f"qualifies {f['qualifies']}")  # fmt: skip


def _cold_synth_sweep(tmp_path, monkeypatch, k: int) -> dict:
    """digits-vit on KV260 at 100 FPS with --synth-top ``k`` from an empty Yosys cache (the
    finalists' shared units once): model vs Yosys resources for each finalist, the pick
    re-ranked by them; the same sweep again is answered from the output folder's cache. And
    a unit's netlist does not depend on the run it went in: the top's unit, synthesised
    again alone, gives what the sweep's batch gave."""
    from vitaccel.flow.yosys import Hierarchy, _module_cache, module_stub, synth_modules

    out = tmp_path / "synth"
    monkeypatch.setenv("VITACCEL_CACHE", str(tmp_path / "cold-cache"))
    args = ("sweep", "--models", "digits-vit", "--boards", "kv260", "--fps", "100",
            "--synth-top", str(k), "--workers", "2", "-o", str(out), "--json")  # fmt: skip
    t0 = time.monotonic()
    r = run(*args, env=dict(os.environ), timeout=1800)
    seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    (row,) = res["rows"]
    syn = _check_synthesis(row, out, k=k)
    # the finalists differ (the datapath width here), so do their Yosys figures' sources:
    # real runs of this sweep, not a cache of an earlier one
    assert len({f["array"] for f in syn["finalists"]}) == k
    yosys_cache = tmp_path / "cold-cache" / "yosys" / "modules"
    assert len(list(yosys_cache.glob("m_*.json"))) >= 4
    _print_synthesis(f"--synth-top {k}, digits-vit on kv260 at 100 FPS, cold", seconds, syn)
    again = json.loads(run(*args, env=dict(os.environ)).stdout)
    assert again["figures"]["tasks_computed"] == 0
    assert again["rows"] == res["rows"]
    (explored,) = [json.loads(p.read_text())["result"] for p in (out / "cache").glob("explore-*")]
    units = Hierarchy.from_dict(sw.split_task(explored["finalists"][0]["design"]))
    top = units.modules[units.top]
    stubs = {c: module_stub(units.modules[c]) for c in top.instances}
    assert synth_modules([top], stubs, cache=False)[top.name] == json.loads(
        _module_cache(top).read_text()
    )
    return syn


def test_synth_top_1_digits_from_a_cold_yosys_cache(tmp_path, monkeypatch):
    """The --synth-top path in the default suite (one finalist: its units, composed, the
    clock its depth allows; ~the CPU time three finalists took module by module)."""
    syn = _cold_synth_sweep(tmp_path, monkeypatch, 1)
    assert syn["pick"] == 0


@pytest.mark.slow
def test_synth_top_2_digits_from_a_cold_yosys_cache(tmp_path, monkeypatch):
    """Two finalists (64- and 32-byte datapath): Yosys finds the wide X path costs ~940
    LUTs, the model does not, so synthesis changes the pick (~390 CPU-s on the loaded
    machine)."""
    syn = _cold_synth_sweep(tmp_path, monkeypatch, 2)
    assert syn["changed"] and syn["pick"] == 1


@pytest.mark.slow
def test_synth_top_3_digits(tmp_path):
    """--synth-top 3 on digits-vit at 1000 FPS (larger arrays than at 100 FPS)."""
    out = tmp_path / "synth"
    t0 = time.monotonic()
    r = run("sweep", "--models", "digits-vit", "--boards", "kv260", "--fps", "1000",
            "--synth-top", "3", "--workers", "2", "-o", str(out), "--json",
            timeout=3 * 3600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["rows"]
    syn = _check_synthesis(row, out)
    _print_synthesis("--synth-top 3, digits-vit on kv260 at 1000 FPS", time.monotonic() - t0, syn)


@pytest.mark.slow
def test_synth_top_3_deit_tiny_full_size(tmp_path):
    """The full-size query: three DeiT-Tiny finalists through Yosys (tens of minutes)."""
    r = run("sweep", "--models", "deit-tiny", "--boards", "zcu102", "--fps", "60",
            "--synth-top", "3", "--workers", "2", "-o", str(tmp_path / "o"), "--json",
            timeout=6 * 3600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["rows"]
    assert len(row["synthesis"]["finalists"]) == 3
    assert all(f["yosys"] for f in row["synthesis"]["finalists"])
    print(f"\n{row['synthesis']['note']}")


@pytest.mark.slow
def test_images_bit_exact_on_the_rtl(tmp_path):
    """--images: the chosen digits-vit design on Verilator, every logit against golden."""
    r = run("sweep", "--models", "digits-vit", "--boards", "kv260", "--fps", "1000",
            "--images", "2", "--workers", "1", "-o", str(tmp_path / "o"), "--json",
            timeout=3 * 3600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["rows"]
    be = row["bit_exact"]
    assert be["images"] == 2
    assert be["bit_exact"] == 2, f"first mismatch: {be['first_mismatch']}"
    print(f"\n{be}")
