"""vitaccel.flow.yosys: a Yosys run dies with the process that started it (a killed Dask
worker leaves no synthesis running)."""

import logging
import os
import signal
import time
from pathlib import Path

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
