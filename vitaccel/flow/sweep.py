"""``vitaccel sweep``: many (model, board, FPS) questions at once, on Dask distributed.

Every query of the cross product ``models x boards x fps`` runs the explorer
(:func:`vitaccel.dse.search.explore`). With ``synth_top = K`` the K best candidates of each
query (the explorer's own ranking, :func:`vitaccel.dse.search.search`) are synthesised with
Yosys (``synth_xilinx -family xcup``) and re-ranked by their real resources and LUT depth: a
finalist must fit ``max_util`` of every resource by Yosys' counts and still reach the target
at the clock its synthesised logic depth allows (the clock rule, :mod:`vitaccel.dse.clock`);
among those the explorer's own cost decides. With ``images = N`` the chosen design runs N
images on the RTL against the golden model (:func:`simulate_images`).

Tasks run on a Dask cluster: a ``LocalCluster`` of worker processes by default, or an
existing cluster given by its scheduler address. Each task is a pure function of its inputs
(:func:`explore_task`, :func:`split_task`, :func:`synth_modules_task`, :func:`simulate_task`); its result is cached in
``DIR/cache`` under a hash of those inputs (written atomically), so an interrupted sweep
resumes where it stopped and a repeated one is answered from the cache. The Dask key of a
task is the same hash, so queries that share a finalist share its synthesis. A task that
raises is reported with its error and the others go on; a task whose worker process dies is
rescheduled by the Dask scheduler (``distributed.scheduler.allowed-failures``) and one that
raises is retried once (``retries=1``).

Output folder::

    sweep.json                     the sweep's parameters (another sweep is refused here)
    results.json                   one row per query (written at the end, atomically)
    report.html                    the rows and FPS-vs-resources plots (from results.json)
    queries/<model>-<board>-<fps>/ design.json (the chosen design), pareto.json
    cache/<kind>-<hash>.json       one finished task each
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vitaccel import __version__
from vitaccel.util import atomic_write_text, content_hash

__all__ = [
    "SweepError",
    "SweepSpec",
    "Query",
    "run_sweep",
    "explore_task",
    "split_task",
    "synth_modules_task",
    "compose_synthesis",
    "module_batches",
    "simulate_task",
    "simulate_images",
    "rerank",
    "clock_by_depth",
    "peak_share",
]

# Bump when a task's result format or meaning changes: old cache entries are then ignored.
TASK_VERSION = "3"  # 3: synthesis unit by unit (flow.yosys.synthesis_units), ABC9
SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
CONNECT_TIMEOUT_S = 5.0  # the issue: an unreachable scheduler is reported within 10 s
RESOURCE_KINDS = ("dsp48e2", "lut", "ff", "bram36")
FPS_SOURCE = "cycle-model prediction (vitaccel.dse.cost), not an RTL run"
SYNTH_SOURCE = (
    "yosys synth_xilinx -family xcup -flatten (ABC9) unit by unit (a module with its subtree),"
    " summed over instances, LUT depth of the units put back together"
)
# Verilog characters per task when a finalist's units are split over the workers:
# digits-vit's top is ~1.5 M characters
BATCH_CHARS = 400_000


class SweepError(ValueError):
    """Bad sweep input or an unusable output folder / scheduler: one line, exit code 2."""


class Query(BaseModel):
    """One question of the sweep: a model on a board at an FPS target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    board: str
    fps: float

    @property
    def slug(self) -> str:
        return f"{self.model}-{self.board}-{self.fps:g}fps"


def _known(option: str, kind: str, names: tuple[str, ...], known) -> tuple[str, ...]:
    """``names`` if each is in ``known``, else a :class:`SweepError` naming the choices."""
    for name in names:
        if name not in known:
            raise SweepError(
                f"{option}: unknown {kind} {name!r}; choose from: {', '.join(sorted(known))}"
            )
    return names


class SweepSpec(BaseModel):
    """The sweep's parameters: what :file:`sweep.json` holds and the cache keys derive from.

    Parameters
    ----------
    models, boards : list of str
        Zoo model names and board names; each is checked against the known ones.
    fps : list of float
        FPS targets (> 0).
    synth_top : int
        Finalists per query synthesised with Yosys (0: none).
    images : int
        Images simulated on the RTL for each chosen design (0: none).
    max_util : float
        Largest share of each resource a design may use.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: tuple[str, ...] = Field(min_length=1)
    boards: tuple[str, ...] = Field(min_length=1)
    fps: tuple[float, ...] = Field(min_length=1)
    synth_top: int = Field(default=0, ge=0, le=16)
    images: int = Field(default=0, ge=0, le=10_000)
    max_util: float = Field(default=0.85, gt=0.0, le=1.0)

    @field_validator("models")
    @classmethod
    def _known_models(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from vitaccel.models.specs import ZOO

        return _known("--models", "model", v, ZOO)

    @field_validator("boards")
    @classmethod
    def _known_boards(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from vitaccel.boards import BOARDS

        return _known("--boards", "board", v, BOARDS)

    @field_validator("fps")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for f in v:
            if not f > 0:
                raise SweepError(f"--fps: every target must be > 0, got {f:g}")
        return v

    def queries(self) -> list[Query]:
        """The cross product, in the order given (models, then boards, then FPS)."""
        return [
            Query(model=m, board=b, fps=f)
            for m in self.models
            for b in self.boards
            for f in self.fps
        ]

    def identity(self) -> dict:
        return {"version": TASK_VERSION, **self.model_dump(mode="json")}


def parse_spec(
    *,
    models: str,
    boards: str,
    fps: str,
    synth_top: int = 0,
    images: int = 0,
    max_util: float = 0.85,
) -> SweepSpec:
    """A :class:`SweepSpec` from the command line's comma-separated lists.

    Raises :class:`SweepError` with one line naming the field.
    """
    from pydantic import ValidationError

    def items(field: str, text: str) -> list[str]:
        out = [s.strip() for s in text.split(",") if s.strip()]
        if not out:
            raise SweepError(f"--{field}: give at least one value (comma-separated)")
        if len(set(out)) != len(out):
            raise SweepError(f"--{field}: a value is repeated in {text!r}")
        return out

    targets = []
    for s in items("fps", fps):
        try:
            targets.append(float(s))
        except ValueError:
            raise SweepError(f"--fps: {s!r} is not a number") from None
    try:
        return SweepSpec(
            models=tuple(items("models", models)),
            boards=tuple(items("boards", boards)),
            fps=tuple(targets),
            synth_top=synth_top,
            images=images,
            max_util=max_util,
        )
    except ValidationError as err:
        first = err.errors()[0]
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, SweepError):
            raise cause from None
        loc = ".".join(str(p) for p in first["loc"])
        raise SweepError(f"--{loc.replace('_', '-')}: {first['msg']}") from None


# ---------------------------------------------------------------------------------------
# The tasks: pure functions of their arguments, run on the workers
# ---------------------------------------------------------------------------------------


def explore_task(model: str, board: str, fps: float, max_util: float, synth_top: int) -> dict:
    """Run the explorer for one query; return its answer and the ``synth_top`` finalists.

    Returns ``{"status": "ok" | "infeasible", "explorer": {...}, "finalists": [...]}``; each
    finalist carries its design file (canonical JSON), its predicted FPS and cycles (the
    cycle model), its modelled resources and its search candidate (for re-ranking). The
    first finalist is always the explorer's own pick.
    """
    import tempfile

    from vitaccel.design import load_design
    from vitaccel.dse.search import InfeasibleError, _cost, _fit_mask, explore, search, to_design

    with tempfile.TemporaryDirectory(prefix="vitaccel-sweep-") as tmp:
        try:
            summary = explore(model, board, fps, max_util=max_util, out_dir=Path(tmp))
        except InfeasibleError as err:
            return {
                "status": "infeasible",
                "explorer": {
                    "message": err.message,
                    "best_reachable_fps": round(err.best_fps, 2),
                    "binding": err.binding,
                },
                "finalists": [],
            }
        chosen = load_design(summary["design"])
        pareto = json.loads((Path(tmp) / "pareto.json").read_text())
    keep = ("fps", "clock_mhz", "cycles", "array", "nonlinear_lanes", "weight_ports",
            "binding", "best_reachable_fps", "design_bound", "linear_utilisation",
            "warnings", "candidates", "query_seconds")  # fmt: skip
    explorer = {k: summary[k] for k in keep if k in summary}
    explorer["resources"] = {k: summary["resources"][k]["used"] for k in RESOURCE_KINDS}
    finalists = [_finalist(chosen, explorer["resources"], candidate=None)]
    limits = None
    if synth_top >= 1:
        # The explorer's ranking, continued past its pick: the same pool, fit mask and cost.
        result = search(model, board, max_util=max_util)
        limits = result["limits"]
        mask = _fit_mask(result)
        meeting = [
            c for c, ok in zip(result["pool"], mask, strict=True)
            if ok and c.w4_share == 0 and c.fps >= fps
        ]  # fmt: skip
        meeting.sort(key=lambda c: _cost(c, limits))
        spec = result["model"].spec
        first = to_design(meeting[0], spec.name, board, meeting[0].clock_mhz, spec)
        if _shape(first) != _shape(chosen):
            raise RuntimeError(
                f"the ranked pool's first candidate {_shape(first)} is not the explorer's pick "
                f"{_shape(chosen)}"
            )
        finalists[0]["candidate"] = _candidate_dict(meeting[0])
        for c in meeting[1:synth_top]:
            d = to_design(c, spec.name, board, c.clock_mhz, spec)
            d = d.model_copy(update={"prediction": chosen.prediction})  # fidelity is the same
            f = _finalist(d, {k: round(c.usage[k], 1) for k in RESOURCE_KINDS}, c)
            f["design"] = _with_prediction(d, f["predicted_fps"], f["cycles"]).canonical_json()
            finalists.append(f)
    return _plain(
        {
            "status": "ok",
            "explorer": explorer,
            "pareto": pareto,
            "limits": limits,
            "finalists": finalists,
        }
    )


def _plain(obj):
    """JSON-ready: numpy scalars and arrays to Python numbers and lists (the cache is JSON)."""

    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.loads(json.dumps(obj, default=default))


def _shape(design) -> tuple:
    a, nl = design.array, design.nonlinear
    return (a.groups, a.rows, a.cols, a.vector, nl.softmax_lanes, nl.layernorm_lanes,
            nl.gelu_lanes, design.weight_ports, design.clock_mhz)  # fmt: skip


def _candidate_dict(c) -> dict:
    d = dataclasses.asdict(c)
    d["lanes"] = list(c.lanes)
    return _plain(d)


def _with_prediction(design, fps: float, cycles: int):
    from vitaccel.design import Prediction

    base = design.prediction.model_dump() if design.prediction else {}
    return design.model_copy(
        update={"prediction": Prediction(**{**base, "fps": round(fps, 2), "cycles": cycles})}
    )


def _finalist(design, model_resources: dict, candidate) -> dict:
    from vitaccel.dse.cost import estimate

    est = estimate(design)
    return {
        "design": design.canonical_json(),
        "array": _array_text(design),
        "clock_mhz": design.clock_mhz,
        "predicted_fps": round(est.fps, 2),
        "cycles": est.cycles,
        "macs_per_frame": int(sum(lc.macs for lc in est.layers)),
        "model_resources": model_resources,
        "candidate": _candidate_dict(candidate) if candidate is not None else None,
    }


def _array_text(design) -> str:
    a, nl = design.array, design.nonlinear
    return (
        f"{a.groups}x{a.rows}x{a.cols}x{a.vector}, lanes {nl.softmax_lanes}/"
        f"{nl.layernorm_lanes}/{nl.gelu_lanes}, {design.weight_ports} weight port"
        + ("s" if design.weight_ports > 1 else "")
        # finalists often differ only there (the X path's width: its banks and readers)
        + f", {design.datapath_bytes}-byte datapath"
    )


def split_task(design_json: str) -> dict:
    """A design's whole accelerator top cut into synthesis units of canonical Verilog
    (:func:`vitaccel.flow.yosys.split_modules`, then
    :func:`~vitaccel.flow.yosys.synthesis_units`): the input of the unit synthesis."""
    from vitaccel.design import Design
    from vitaccel.flow.generate import TOP_NAME
    from vitaccel.flow.yosys import split_modules, synthesis_units
    from vitaccel.rtl.top import top_verilog

    design = Design.model_validate_json(design_json)
    t0 = time.monotonic()
    hierarchy = synthesis_units(split_modules(top_verilog(design, TOP_NAME), TOP_NAME))
    return {**hierarchy.as_dict(), "seconds": round(time.monotonic() - t0, 1)}


def synth_modules_task(modules: list[dict], stubs: dict[str, str]) -> dict:
    """Yosys netlists of some units of a :func:`split_task` answer, a Yosys run each
    (:func:`vitaccel.flow.yosys.synth_modules`; the worker's Yosys cache first).

    ``modules``: ``{"name", "text", "instances"}`` each; ``stubs``: the interface of each
    blackboxed child (``instances``) of them.
    """
    from vitaccel.flow.yosys import VerilogModule, synth_modules

    t0 = time.monotonic()
    mods = [VerilogModule(m["name"], m["text"], tuple(m["instances"])) for m in modules]
    netlists = synth_modules(mods, stubs)
    return {"netlists": netlists, "seconds": round(time.monotonic() - t0, 1)}


def compose_synthesis(split: dict, netlists: dict[str, dict], seconds: float) -> dict:
    """A finalist's Yosys figures from its units' netlists (the row's ``yosys`` block):
    counts summed over every instance, the LUT depth of the units put back together."""
    from vitaccel.flow.yosys import Hierarchy, compose

    hierarchy = Hierarchy.from_dict(split)
    res = compose(hierarchy, netlists)
    return {
        **{k: getattr(res, k) for k in RESOURCE_KINDS},
        "lut_depth": res.lut_depth,
        "seconds": round(seconds, 1),
        "source": SYNTH_SOURCE,
        "units": len(hierarchy.modules),
        "instances": sum(hierarchy.instance_counts().values()),
    }


def module_batches(modules: Sequence, workers: int) -> list[list]:
    """Units to synthesise, in batches for ``workers`` tasks at once.

    Each unit is a Yosys run of its own (its result must not depend on the others); a batch
    is one Dask task that runs its units in turn, so the client holds few tasks: one per
    ``BATCH_CHARS`` of Verilog, at most one per worker, the largest units first into the
    lightest batch.
    """
    size = sum(len(m.text) for m in modules)
    n = max(1, min(workers, round(size / BATCH_CHARS)))
    batches: list[list] = [[] for _ in range(n)]
    load = [0] * n
    for m in sorted(modules, key=lambda m: (-len(m.text), m.name)):
        k = load.index(min(load))
        batches[k].append(m)
        load[k] += len(m.text)
    return [b for b in batches if b]


def simulate_images(design, images: int) -> dict:
    """Run ``images`` images of the design's model on its RTL; compare with the golden model.

    The one place the sweep runs a whole model on the RTL: the native Verilator harness
    through :func:`vitaccel.flow.model_sim.simulate_model`, the same path as ``vitaccel sim
    --model`` and ``vitaccel build``.

    Returns ``{"images", "bit_exact", "first_mismatch", "cycles_per_image", "source"}``;
    ``bit_exact`` counts the images equal to golden; ``first_mismatch`` is ``None`` or
    ``{"image", "logit", "rtl", "golden"}``.
    """
    from vitaccel.flow.model_sim import simulate_model

    run = simulate_model(design.model, design=design, images=images, engine="native")
    first = run["first_mismatch"]
    if first is not None:
        logit, rtl, golden = first["class_rtl_golden"]
        first = {"image": first["image"], "logit": logit, "rtl": rtl, "golden": golden}
    return {
        "images": run["images"],
        "bit_exact": run["images"] - run["mismatches"],
        "first_mismatch": first,
        "cycles_per_image": run["cycles_per_image"],
        "source": "RTL run (Verilator, native harness)",
    }


def simulate_task(design_json: str, images: int) -> dict:
    """:func:`simulate_images` on a design given as canonical JSON."""
    from vitaccel.design import Design

    design = Design.model_validate_json(design_json)
    t0 = time.monotonic()
    out = simulate_images(design, images)
    out["rtl_fps"] = round(design.clock_mhz * 1e6 / out["cycles_per_image"], 2)
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


# ---------------------------------------------------------------------------------------
# Re-ranking by synthesis, figures of a row
# ---------------------------------------------------------------------------------------


def clock_by_depth(board: str, lut_depth: float, clock_mhz: float) -> float | None:
    """The fastest clock of ``board`` at most ``clock_mhz`` that a worst path of
    ``lut_depth`` effective levels allows (the clock rule, :mod:`vitaccel.dse.clock`), or
    None when none does."""
    from vitaccel.boards import get_budget
    from vitaccel.dse import clock as clock_rule

    allowed = clock_rule.allowed_clocks(get_budget(board).pl_clocks_mhz, lut_depth)
    return max((a for a in allowed if a <= clock_mhz), default=None)


def peak_share(macs_per_frame: int, fps: float, board: str, clock_mhz: float) -> float:
    """MACs per second at ``fps`` over the board's peak: 2 MACs per DSP48E2 x DSPs x clock."""
    from vitaccel.boards import get_budget

    peak = 2 * get_budget(board).dsp48e2 * clock_mhz * 1e6
    return macs_per_frame * fps / peak


def rerank(
    finalists: Sequence[dict],
    synth: Sequence[dict | None],
    *,
    board: str,
    target_fps: float,
    limits: dict[str, float],
) -> dict:
    """Re-rank finalists by their Yosys resources and LUT depth.

    A finalist qualifies when its Yosys counts are within ``limits`` and it reaches
    ``target_fps`` at the fastest board clock its synthesised LUT depth allows (the clock
    rule); qualified finalists are ordered by the explorer's own cost
    (:func:`vitaccel.dse.search._cost`) on the Yosys counts. Finalists whose synthesis
    failed (``None``) are left out.

    Returns ``{"pick": index, "changed": bool, "note": str, "finalists": [...]}`` where
    ``finalists`` adds, for each, the Yosys figures, the clock and FPS they allow, whether
    it qualifies, and the model's error against Yosys per resource.
    """
    from vitaccel.dse.search import Candidate, _cost

    rows, costs = [], {}
    for i, (f, s) in enumerate(zip(finalists, synth, strict=True)):
        row = {k: f[k] for k in ("array", "clock_mhz", "predicted_fps", "model_resources")}
        row["rank_by_model"] = i + 1
        if s is None:
            row["yosys"] = None
            rows.append(row)
            continue
        yosys = {k: s[k] for k in RESOURCE_KINDS}
        clock = clock_by_depth(board, s["lut_depth"] or 0.0, f["clock_mhz"])
        fps = f["predicted_fps"] * clock / f["clock_mhz"] if clock else 0.0
        fits = {k: yosys[k] <= limits[k] for k in RESOURCE_KINDS}
        row.update(
            yosys=yosys,
            lut_depth=s["lut_depth"],
            clock_by_depth_mhz=clock,
            fps_at_that_clock=round(fps, 2),
            fits=all(fits.values()),
            over=[k for k, ok in fits.items() if not ok],
            qualifies=all(fits.values()) and fps >= target_fps,
            model_vs_yosys={
                k: round(f["model_resources"][k] / yosys[k] - 1, 4) if yosys[k] else None
                for k in RESOURCE_KINDS
            },
        )
        if row["qualifies"]:
            cand = dict(f["candidate"])
            cand["lanes"] = tuple(cand["lanes"])
            real = dataclasses.replace(Candidate(**cand), usage=yosys, fps=fps)
            costs[i] = _cost(real, limits)
            row["cost_by_yosys"] = list(costs[i])
        rows.append(row)
    if not costs:
        note = (
            "no synthesised finalist fits and reaches the target by Yosys' figures; "
            "the explorer's pick is kept"
        )
        return {"pick": 0, "changed": False, "note": note, "finalists": rows}
    pick = min(costs, key=lambda i: (costs[i], i))
    if pick == 0:
        note = "synthesis confirms the explorer's pick"
    else:
        first = rows[0]
        if first.get("yosys") is None:
            why = "its synthesis failed"
        elif first["over"]:
            why = f"by Yosys it exceeds the {', '.join(first['over'])} limit"
        elif not first["qualifies"]:
            why = (
                f"its LUT depth {first['lut_depth']:.2f} allows {first['clock_by_depth_mhz']} MHz, "
                f"{first['fps_at_that_clock']} FPS < {target_fps:g}"
            )
        else:
            why = (
                f"by Yosys the explorer's pick uses {_tightest(first, limits)} and "
                f"finalist #{pick + 1} {_tightest(rows[pick], limits)} (the tightest resource "
                "decides first)"
            )
        note = (
            f"synthesis changed the pick: finalist #{pick + 1} ({rows[pick]['array']}) instead "
            f"of the explorer's #1 ({first['array']}): {why}"
        )
    return {"pick": pick, "changed": pick != 0, "note": note, "finalists": rows}


def _tightest(row: dict, limits: dict[str, float]) -> str:
    """'20.3 % of the lut limit': a finalist's most used resource by Yosys."""
    share = {k: row["yosys"][k] / limits[k] for k in RESOURCE_KINDS}
    k = max(share, key=share.get)
    return f"{share[k]:.1%} of the {k} limit"


# ---------------------------------------------------------------------------------------
# The output folder and its cache
# ---------------------------------------------------------------------------------------


class TaskCache:
    """Finished tasks as ``<kind>-<hash>.json`` files, each written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def key(kind: str, *inputs) -> str:
        text = json.dumps([kind, TASK_VERSION, __version__, *inputs], sort_keys=True)
        return f"{kind}-{content_hash(text)}"

    def get(self, key: str) -> dict | None:
        path = self.root / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["result"]
        except (ValueError, KeyError):
            return None  # unreadable: computed again (writes are atomic, so unexpected)

    def put(self, key: str, result: dict, seconds: float) -> None:
        atomic_write_text(
            self.root / f"{key}.json",
            json.dumps({"key": key, "seconds": round(seconds, 2), "result": result}) + "\n",
        )


def check_out_dir(out_dir: Path, spec: SweepSpec, *, resume: bool) -> None:
    """Refuse a folder that holds another sweep (unless ``resume``) or is not a sweep's.

    Raises :class:`SweepError`; nothing is written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SweepError(f"-o: '{out_dir}' exists and is not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    marker = out_dir / SWEEP_FILE
    if not marker.is_file():
        raise SweepError(
            f"-o: folder '{out_dir}' is not empty and holds no {SWEEP_FILE}; "
            "give an empty or new folder, or a sweep's output folder"
        )
    try:
        held = json.loads(marker.read_text())
    except ValueError:
        held = None
    if held != spec.identity() and not resume:
        raise SweepError(
            f"-o: folder '{out_dir}' holds the results of a different sweep; give another "
            "folder, or --resume to reuse its cached tasks for this sweep"
        )


# ---------------------------------------------------------------------------------------
# The client side: submit, collect, cache, re-rank
# ---------------------------------------------------------------------------------------


def connect(scheduler: str | None, workers: int):
    """A Dask client: to ``scheduler`` (``tcp://host:8786``) or to a new ``LocalCluster``.

    Returns ``(client, cluster or None)``. An unreachable or malformed address raises
    :class:`SweepError` within :data:`CONNECT_TIMEOUT_S`.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            with dask.config.set({"distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT_S}s"}):
                client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except ValueError as err:  # malformed: distributed parses the address first
            raise SweepError(
                f"--scheduler: {scheduler!r} is not a scheduler address ({err}); "
                "give tcp://host:8786"
            ) from None
        except Exception as err:  # refused, timed out, or not a Dask scheduler at all
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise SweepError(
                f"--scheduler: cannot reach a Dask scheduler at {scheduler!r} within "
                f"{CONNECT_TIMEOUT_S:g} s ({type(err).__name__}: {reason[:120]})"
            ) from None
        return client, None
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port: 8787 may belong to another cluster
        silence_logs=logging.CRITICAL,
    )
    return Client(cluster, set_as_default=False), cluster


class _Progress:
    """Tasks done / running / failed with an ETA on stderr (rich.progress)."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("sweep tasks"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "{task.fields[running]} running, {task.fields[failed]} failed, "
                "{task.fields[cached]} cached"
            ),  # fmt: skip
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.bar.add_task("sweep", total=total, running=0, failed=0, cached=0)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def update(self, **kw) -> None:
        if self.bar:
            self.bar.update(self.task, **kw)


class _Sweep:
    """The client-side state machine: explore -> (synthesise finalists) -> (simulate)."""

    def __init__(self, spec: SweepSpec, out_dir: Path, client_factory: Callable, progress: bool):
        self.spec = spec
        self.out = Path(out_dir)
        self.cache = TaskCache(self.out / "cache")
        self.client_factory = client_factory
        self.client = None
        self.futures: dict = {}  # key -> Future
        self.waiters: dict[str, list[Callable]] = {}
        self.started: dict[str, float] = {}
        self.queries = spec.queries()
        self.rows: list[dict] = [
            {"model": q.model, "board": q.board, "target_fps": q.fps, "status": "running",
             "errors": []}
            for q in self.queries
        ]  # fmt: skip
        self.explored: dict[int, dict] = {}
        self.synth: dict[int, list] = {}
        self.steps: set[str] = set()  # keys of synthesis steps (not stored in DIR/cache)
        self.netlists: dict[str, dict] = {}  # unit name -> its Yosys netlist
        self.module_waiters: dict[str, list[Callable]] = {}  # unit name -> finalists
        per_query = 1 + spec.synth_top + (1 if spec.images else 0)
        self.counts = {"computed": 0, "cached": 0, "failed": 0, "done": 0}
        self.progress = _Progress(progress, per_query * len(self.queries))

    # --- task plumbing ---

    def _run(
        self, key: str, fn: Callable, args: tuple, then: Callable, *, step: bool = False
    ) -> None:
        """Give ``then(result, error)`` the result of ``fn(*args)``: cached, or from Dask.

        ``step``: a step of a finalist's synthesis (the split, a batch of units): not
        stored in the output folder (the composed figures are) and not in the progress
        total until submitted.
        """
        hit = None if step else self.cache.get(key)
        if hit is not None:
            self.counts["cached"] += 1
            self._advance()
            then(hit, None)
            return
        if key in self.waiters:  # another query asked for the same task: share it
            self.waiters[key].append(then)
            return
        if self.client is None:
            self.client = self.client_factory()
        if step:
            self._skip(-1)
            self.steps.add(key)
        self.waiters[key] = [then]
        self.started[key] = time.monotonic()
        self.futures[key] = self.client.submit(fn, *args, key=key, pure=False, retries=1)

    def _finish(self, key: str, fut) -> None:
        del self.futures[key]
        thens = self.waiters.pop(key)
        if fut.status == "finished":
            result = fut.result()
            if key not in self.steps:
                self.cache.put(key, result, time.monotonic() - self.started[key])
            self.counts["computed"] += 1
            err = None
        elif fut.status == "cancelled":
            err, result = "cancelled", None
            self.counts["failed"] += 1
        else:
            exc = fut.exception()
            msg = str(exc).strip().splitlines()
            err = f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
            result = None
            self.counts["failed"] += 1
        if key in self.steps:  # one step, however many finalists wait for it
            self._advance()
        for then in thens:
            if key not in self.steps:
                self._advance()
            then(result, err)

    def _advance(self, n: int = 1) -> None:
        self.counts["done"] += n
        self.progress.update(advance=n, failed=self.counts["failed"], cached=self.counts["cached"])

    def _skip(self, n: int) -> None:
        """Tasks that will not run (an infeasible or failed query): shrink the total."""
        if n and self.progress.bar:
            t = self.progress.bar.tasks[0]
            self.progress.update(total=t.total - n)

    # --- the stages of one query ---

    def start(self) -> None:
        s = self.spec
        for i, q in enumerate(self.queries):
            args = (q.model, q.board, q.fps, s.max_util, s.synth_top)
            key = TaskCache.key("explore", *args)
            self._run(key, explore_task, args, lambda r, e, i=i: self._explored(i, r, e))

    def _explored(self, i: int, res: dict | None, err: str | None) -> None:
        row, s = self.rows[i], self.spec
        later = s.synth_top + (1 if s.images else 0)
        if err is not None:
            row["status"] = "failed"
            row["errors"].append(f"explore: {err}")
            self._skip(later)
            return
        self.explored[i] = res
        if res["status"] == "infeasible":
            row.update(status="infeasible", **res["explorer"])
            self._skip(later)
            return
        finalists = res["finalists"]
        self._skip(s.synth_top - len(finalists) if s.synth_top > len(finalists) else 0)
        if not s.synth_top:
            self._picked(i, 0, None)
            return
        self.synth[i] = [None] * len(finalists)
        pending = {"n": len(finalists)}
        for j, f in enumerate(finalists):

            def then(r, e, j=j):
                self.synth[i][j] = r
                if e is not None:
                    row["errors"].append(f"synth finalist #{j + 1}: {e}")
                pending["n"] -= 1
                if pending["n"] == 0:
                    self._synthesised(i)

            self._synthesise(f["design"], then)

    def _synthesise(self, design_json: str, then: Callable) -> None:
        """Yosys figures of one finalist: from the output folder's cache, or its top split
        into synthesis units, the units no finalist has asked for yet synthesised in
        batches over the workers, and the figures composed here when its last unit is in."""
        key = TaskCache.key("synth", design_json)
        hit = self.cache.get(key)
        if hit is not None:
            self.counts["cached"] += 1
            self._advance()
            then(hit, None)
            return
        t0 = time.monotonic()

        def split(r, e):
            if e is not None:
                self._advance()
                then(None, f"split: {e}")
                return
            self._compose_when_ready(key, r, t0, then)

        self._run(TaskCache.key("split", design_json), split_task, (design_json,), split, step=True)

    def _compose_when_ready(self, key: str, split: dict, t0: float, then: Callable) -> None:
        from vitaccel.flow.yosys import Hierarchy, module_stub

        hierarchy = Hierarchy.from_dict(split)
        left, errors = set(hierarchy.modules), []

        def got(name: str, err: str | None) -> None:
            if err is not None:
                errors.append(err)
            left.discard(name)
            if left:
                return
            self._advance()
            if errors:
                then(None, f"synthesis: {errors[0]}")
                return
            nets = {n: self.netlists[n] for n in hierarchy.modules}
            result = compose_synthesis(split, nets, time.monotonic() - t0)
            self.cache.put(key, result, result["seconds"])
            then(result, None)

        known = [n for n in hierarchy.modules if n in self.netlists]
        new = [hierarchy.modules[n] for n in hierarchy.modules
               if n not in self.netlists and n not in self.module_waiters]  # fmt: skip
        for batch in module_batches(new, self._workers()):
            inside = {m.name for m in batch}
            names = sorted(inside)
            stubs = {c: module_stub(hierarchy.modules[c]) for m in batch for c in m.instances}
            for m in batch:
                self.module_waiters[m.name] = []
            payload = [{"name": m.name, "text": m.text, "instances": list(m.instances)}
                       for m in batch]  # fmt: skip
            self._run(
                TaskCache.key("modules", names),
                synth_modules_task,
                (payload, stubs),
                lambda r, e, names=names: self._modules_done(names, r, e),
                step=True,
            )
        for n in hierarchy.modules:
            if n in self.module_waiters:
                self.module_waiters[n].append(got)
        for n in known:
            got(n, None)

    def _modules_done(self, names: list[str], result: dict | None, err: str | None) -> None:
        for n in names:
            if result is not None:
                self.netlists[n] = result["netlists"][n]
            for got in self.module_waiters.pop(n):
                got(n, err)

    def _workers(self) -> int:
        """Worker threads of the cluster (how many Yosys runs go at once)."""
        if self.client is None:
            self.client = self.client_factory()
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # a restarting worker: assume the default
            return 2

    def _synthesised(self, i: int) -> None:
        res, q = self.explored[i], self.queries[i]
        ranked = rerank(
            res["finalists"], self.synth[i], board=q.board, target_fps=q.fps, limits=res["limits"]
        )
        self._picked(i, ranked["pick"], ranked)

    def _picked(self, i: int, pick: int, ranked: dict | None) -> None:
        res, q, row = self.explored[i], self.queries[i], self.rows[i]
        f = res["finalists"][pick]
        design_json = f["design"]
        clock = f["clock_mhz"]
        fps = f["predicted_fps"]
        synth = None
        if ranked is not None:
            synth = ranked["finalists"][pick]
            if synth.get("yosys") is not None and synth["clock_by_depth_mhz"] not in (None, clock):
                # the synthesised depth does not allow the explorer's clock: the design
                # file says the clock it can run at
                from vitaccel.design import Design

                d = Design.model_validate_json(design_json)
                clock, fps = synth["clock_by_depth_mhz"], synth["fps_at_that_clock"]
                d = _with_prediction(d.model_copy(update={"clock_mhz": clock}), fps, f["cycles"])
                design_json = d.canonical_json()
        qdir = self.out / "queries" / q.slug
        atomic_write_text(qdir / "design.json", design_json)
        if res.get("pareto") is not None:
            atomic_write_text(qdir / "pareto.json", json.dumps(res["pareto"], indent=1) + "\n")
        ex = res["explorer"]
        row.update(
            design=str((qdir / "design.json").relative_to(self.out)),
            array=f["array"],
            clock_mhz=clock,
            predicted_fps=fps,
            fps_source=FPS_SOURCE,
            peak_share=round(peak_share(f["macs_per_frame"], fps, q.board, clock), 4),
            binding=ex["binding"],
            best_reachable_fps=ex["best_reachable_fps"],
            resources={
                "model": f["model_resources"],
                "yosys": synth.get("yosys") if synth else None,
                "lut_depth": synth.get("lut_depth") if synth else None,
            },
            synthesis=ranked,
            bit_exact=None,
        )
        if ranked is not None:
            row["synthesis_changed_pick"] = ranked["changed"]
        if ex.get("warnings"):
            row["warnings"] = ex["warnings"]
        if not self.spec.images:
            self._done(i)
            return

        def then(r, e):
            if e is not None:
                row["errors"].append(f"simulate: {e}")
            else:
                row["bit_exact"] = r
            self._done(i)

        key = TaskCache.key("simulate", design_json, self.spec.images)
        self._run(key, simulate_task, (design_json, self.spec.images), then)

    def _done(self, i: int) -> None:
        row = self.rows[i]
        if row["errors"]:
            row["status"] = "failed"
        elif row.get("bit_exact") and row["bit_exact"]["bit_exact"] != row["bit_exact"]["images"]:
            row["status"] = "mismatch"
        else:
            row["status"] = "ok"

    # --- the loop ---

    def run(self) -> None:
        # Poll the futures' local state (no scheduler round trip) rather than
        # distributed.wait, which works on the process's default client only.
        last = 0.0
        with self.progress:
            self.start()
            while self.futures:
                done = [(k, f) for k, f in self.futures.items() if f.done()]
                for key, fut in done:
                    self._finish(key, fut)
                if not done:
                    time.sleep(0.2)
                if time.monotonic() - last > 1.0:
                    last = time.monotonic()
                    self.progress.update(running=self._running())
            self.progress.update(running=0)

    def _running(self) -> int:
        """Tasks of this sweep executing now (a worker may also hold queued ones)."""
        if not self.futures:
            return 0
        try:
            busy = self.client.processing()
            threads = sum(self.client.nthreads().values())
        except Exception:  # a status line must not end the sweep (e.g. a restarting worker)
            return 0
        mine = set(self.futures)
        held = sum(1 for keys in busy.values() for k in keys if k in mine)
        return min(held, threads)


def run_sweep(
    spec: SweepSpec,
    out_dir: Path,
    *,
    scheduler: str | None = None,
    workers: int = 2,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Run (or resume) a sweep; write ``results.json`` and return it.

    Parameters
    ----------
    spec : SweepSpec
    out_dir : Path
        Output folder: refused when it holds another sweep, unless ``resume``.
    scheduler : str, optional
        Address of an existing Dask scheduler; default: a ``LocalCluster`` of ``workers``
        processes with one thread each, started only if a task is not in the cache.
    workers : int
    resume : bool
        Reuse a folder that holds another sweep (its cached tasks stay valid: keys are
        content hashes).
    progress : bool
        Show tasks done / running / failed with an ETA on stderr.

    Returns
    -------
    dict
        ``{"sweep": ..., "rows": [one per query], "figures": {...}}``.
    """
    t0 = time.monotonic()
    out_dir = Path(out_dir)
    check_out_dir(out_dir, spec, resume=resume)
    client = cluster = None
    if scheduler:  # connect now: an unreachable address is an input error, found first
        client, cluster = connect(scheduler, workers)
    marker = out_dir / SWEEP_FILE
    held = json.loads(marker.read_text()) if marker.is_file() else None
    if held != spec.identity():
        # another sweep's rows must not stay beside this sweep's parameters
        (out_dir / RESULTS_FILE).unlink(missing_ok=True)
        atomic_write_text(marker, json.dumps(spec.identity(), indent=1) + "\n")
    made: list = []

    def factory():
        nonlocal client, cluster
        if client is None:
            client, cluster = connect(None, workers)
        made.append(client)
        return client

    sweep = _Sweep(spec, out_dir, factory, progress)
    try:
        sweep.run()
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    seconds = time.monotonic() - t0
    results = {
        "sweep": spec.identity(),
        "rows": sweep.rows,
        "figures": {
            "seconds": round(seconds, 2),
            "tasks_computed": sweep.counts["computed"],
            "tasks_from_cache": sweep.counts["cached"],
            "tasks_failed": sweep.counts["failed"],
            "cluster": scheduler
            or (f"LocalCluster({workers} processes)" if made else "none (all cached)"),
        },
        "fps_source": FPS_SOURCE,
    }
    atomic_write_text(out_dir / RESULTS_FILE, json.dumps(results, indent=1) + "\n")
    from vitaccel.report.html import write_sweep_html

    # from the rows just written only: a resumed sweep writes the same page
    write_sweep_html(out_dir / REPORT_FILE, results)
    results["results"] = str(out_dir / RESULTS_FILE)
    results["report"] = str(out_dir / REPORT_FILE)
    return results


def print_sweep(results: dict) -> None:
    """The terminal summary: one line per query, then the synthesis notes and the figures."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal:
        con = Console(width=160)  # a pipe or a log file: no reason to fold the table at 80
    table = Table(title="vitaccel sweep (FPS: cycle-model prediction, % of the board's DSP peak)")
    for col in ("query", "status", "array", "FPS (model)", "% peak", "LUT model / Yosys",
                "DSP model / Yosys", "synthesis", "bit-exact", "binding"):  # fmt: skip
        table.add_column(col)
    for r in results["rows"]:
        res = r.get("resources") or {}
        m, y = res.get("model") or {}, res.get("yosys") or {}

        def pair(k, m=m, y=y):
            if not m:
                return "-"
            return f"{m[k]:,.0f} / {y[k]:,.0f}" if y else f"{m[k]:,.0f} / -"

        syn = "-"
        if r.get("synthesis"):
            syn = "changed the pick" if r["synthesis"]["changed"] else "confirmed"
        be = r.get("bit_exact")
        status = r["status"]
        if r.get("errors"):
            status += ": " + "; ".join(r["errors"])[:100]
        if r.get("predicted_fps"):
            fps = f"{r['predicted_fps']:.1f}"
        elif "best_reachable_fps" in r:
            fps = f"best {r['best_reachable_fps']:.1f}"
        else:
            fps = "-"
        table.add_row(
            f"{r['model']} {r['board']} @{r['target_fps']:g}",
            status,
            r.get("array", "-"),
            fps,
            f"{r['peak_share']:.1%}" if r.get("peak_share") is not None else "-",
            pair("lut"),
            pair("dsp48e2"),
            syn,
            f"{be['bit_exact']}/{be['images']}" if be else "-",
            str(r.get("binding", "-")),
        )
    con.print(table)
    for r in results["rows"]:
        if r.get("synthesis"):
            con.print(f"{r['model']} {r['board']} @{r['target_fps']:g}: {r['synthesis']['note']}")
    f = results["figures"]
    con.print(
        f"{len(results['rows'])} queries in {f['seconds']:.1f} s: {f['tasks_computed']} tasks "
        f"computed, {f['tasks_from_cache']} from the cache, {f['tasks_failed']} failed "
        f"({f['cluster']}); rows in {results.get('results', RESULTS_FILE)}, page in "
        f"{results.get('report', REPORT_FILE)}"
    )
