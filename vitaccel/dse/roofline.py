"""Roofline of one encoder block: FLOPs, memory traffic and arithmetic intensity per operation.

Two views (the survey's Sec. II-C, Table I):

* GPU view (``device=``): every tensor in FP16 (2 bytes), against a GPU's FP16 tensor peak
  and memory bandwidth, as in the survey's Table I for ViT-Base.
* Board view (``board=``): the bit widths the accelerator really moves (int8 activations,
  QK^T logits requantised to int8, uint8 softmax output, W8 weights or the W4/W8 mix given
  by ``w4_ratio``), against the board's int8 peak (every DSP48E2 doing two packed int8 MACs
  at the fastest PL clock) and the bandwidth of the one 128-bit HP port the generated block
  design uses (the DDR ceiling is drawn too).

Traffic is the compulsory traffic of the op (each input, weight and output moved once), as
in the survey. Each row covers the whole block: all heads for ``qk``/``sv``/``softmax``,
both LayerNorms for ``layernorm`` (``instances`` says how many).

FLOPs per element of the nonlinear ops are a convention, stated here so they can be
checked: softmax 5 (max, subtract, exp, sum, divide), LayerNorm 7 (sum, subtract the mean,
square, sum, scale by 1/std, gamma, beta), GELU 8 (the tanh form: cube, two multiply-adds,
tanh, add, two multiplies). A matmul is 2 FLOPs per MAC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitaccel.dse.shapes import BLOCK_KINDS, Op, block_ops, spec_of

__all__ = ["DEVICES", "Device", "RooflineError", "roofline", "block_rows", "plot_roofline"]

FLOPS_PER_ELEMENT = {"softmax": 5, "layernorm": 7, "gelu": 8, "residual": 1}


class RooflineError(ValueError):
    """Bad arguments to :func:`roofline` (unknown device, both or neither view...)."""


@dataclass(frozen=True)
class Device:
    """A compute device's ceilings for the GPU view."""

    name: str
    fp16_tflops: float  # dense tensor-core FP16 peak
    int8_tops: float  # dense tensor-core INT8 peak
    bandwidth_gbps: float
    source: str


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("a100", 312.0, 624.0, 1555.0, "NVIDIA A100 datasheet (40 GB SXM, dense)"),
        Device(
            "rtx3090",
            142.0,
            284.0,
            936.0,
            "NVIDIA Ampere GA102 whitepaper (dense, FP16 accumulate)",
        ),
        Device(
            "rtx4090",
            330.0,
            660.0,
            1008.0,
            "NVIDIA Ada whitepaper (dense, FP16 accumulate); the survey's Fig. 3",
        ),
        Device("h100", 989.0, 1979.0, 3350.0, "NVIDIA H100 SXM datasheet (dense)"),
    )
}

# Fastest PL clock of the board view's peak, and the clock the HP-port ceiling uses.
_ACT_BITS = 8


def _matmul_elems(op: Op) -> tuple[int, int, int]:
    """(input, second operand, output) element counts of a matmul."""
    return op.batch * op.m * op.k, op.batch * op.k * op.n, op.batch * op.m * op.n


def _nonlinear_params(op: Op) -> int:
    # LayerNorm's gamma and beta; GELU's 256-entry table is built in, not moved.
    return 2 * op.width if op.kind == "layernorm" else 0


def _op_bytes(op: Op, *, fp16: bool, w4_ratio: float) -> float:
    if op.is_matmul:
        a, b, c = _matmul_elems(op)
        if fp16:
            return 2.0 * (a + b + c)
        w_bits = 8 - 4 * w4_ratio if op.weight_layer else _ACT_BITS
        return (a * _ACT_BITS + b * w_bits + c * _ACT_BITS) / 8
    per = 2.0 if fp16 else 1.0
    operands = 3 if op.kind == "residual" else 2  # residual reads two tensors
    return per * (operands * op.elements + _nonlinear_params(op))


def _op_flops(op: Op) -> int:
    return 2 * op.macs if op.is_matmul else FLOPS_PER_ELEMENT[op.kind] * op.elements


def block_rows(model, *, fp16: bool, w4_ratio: float = 0.0) -> list[dict]:
    """One row per :data:`BLOCK_KINDS` entry: op, flops, bytes, intensity, instances."""
    rows = []
    ops = block_ops(model, 0)
    for kind in BLOCK_KINDS:
        members = [op for op in ops if op.kind == kind]
        flops = sum(_op_flops(op) for op in members)
        nbytes = sum(_op_bytes(op, fp16=fp16, w4_ratio=w4_ratio) for op in members)
        rows.append(
            {
                "op": kind,
                "flops": int(flops),
                "bytes": int(round(nbytes)),
                "intensity": round(flops / nbytes, 3),
                "instances": len(members),
            }
        )
    return rows


def _ceilings(board: str | None, device: str | None, w4_ratio: float) -> dict:
    if device is not None:
        key = device.lower()
        if key not in DEVICES:
            raise RooflineError(
                f"unknown device {device!r}; choose one of: {', '.join(sorted(DEVICES))}"
            )
        dev = DEVICES[key]
        return {
            "view": "gpu-fp16",
            "target": dev.name,
            "peak_gflops": dev.fp16_tflops * 1e3,
            "bandwidth_gbps": dev.bandwidth_gbps,
            "extra_ceilings": {"int8 peak": dev.int8_tops * 1e3},
            "extra_bandwidths": {},
            "source": dev.source,
        }
    from vitaccel.boards import get_budget

    budget = get_budget(board)
    clock = max(budget.pl_clocks_mhz)
    # two packed int8 MACs per DSP48E2 and 2 ops per MAC
    peak = budget.dsp48e2 * 2 * 2 * clock * 1e6 / 1e9
    return {
        "view": "board-int8" if w4_ratio == 0 else "board-mixed",
        "target": budget.name,
        "peak_gflops": peak,
        "bandwidth_gbps": budget.axi_gbps(clock),
        "extra_ceilings": {},
        "extra_bandwidths": {"PS DDR": budget.ddr_gbps},
        "source": f"{budget.dsp48e2} DSP48E2 x 2 int8 MACs at {clock:g} MHz; one 128-bit HP port",
    }


def roofline(
    model: str,
    *,
    board: str | None = None,
    device: str | None = None,
    out_dir: Path | None = None,
    w4_ratio: float = 0.0,
) -> list[dict]:
    """Per-operation roofline of one encoder block of ``model``.

    Give ``board`` (the accelerator's real bit widths) or ``device`` (FP16 GPU view); with
    neither, the GPU view on the RTX 4090 of the survey. Each row: op, flops, bytes,
    intensity, instances, attainable_gflops, bound ("compute" or "memory"), view, target,
    peak_gflops, bandwidth_gbps. With ``out_dir``, ``roofline.png`` is written there.
    """
    if board is not None and device is not None:
        raise RooflineError("give --board or --device, not both")
    if not 0.0 <= w4_ratio <= 1.0:
        raise RooflineError(f"w4_ratio must be in [0, 1], not {w4_ratio!r}")
    if board is None and device is None:
        device = "rtx4090"
    spec = spec_of(model)
    ceil = _ceilings(board, device, w4_ratio)
    rows = block_rows(spec, fp16=ceil["view"] == "gpu-fp16", w4_ratio=w4_ratio)
    ridge = ceil["peak_gflops"] / ceil["bandwidth_gbps"]
    for row in rows:
        attainable = min(ceil["peak_gflops"], row["intensity"] * ceil["bandwidth_gbps"])
        row.update(
            attainable_gflops=round(attainable, 3),
            bound="compute" if row["intensity"] >= ridge else "memory",
            view=ceil["view"],
            target=ceil["target"],
            peak_gflops=round(ceil["peak_gflops"], 3),
            bandwidth_gbps=ceil["bandwidth_gbps"],
            model=spec.name,
        )
    if out_dir is not None:
        plot_roofline(rows, ceil, Path(out_dir) / "roofline.png", title=f"{spec.name}")
    return rows


def plot_roofline(rows: list[dict], ceil: dict, path: Path, *, title: str = "") -> Path:
    """Log-log roofline with one point per op; written atomically (Agg backend, no pyplot)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vitaccel.util import atomic_write_bytes

    fig = Figure(figsize=(7.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [r["intensity"] for r in rows]
    lo, hi = min(xs + [0.1]) / 3, max(xs + [1e3]) * 3
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    peak, bw = ceil["peak_gflops"], ceil["bandwidth_gbps"]
    ax.plot(
        grid, [min(peak, x * bw) for x in grid], "k-", lw=2, label=f"{bw:g} GB/s, {peak:g} GFLOP/s"
    )
    for name, extra_peak in ceil["extra_ceilings"].items():
        ax.plot(grid, [min(extra_peak, x * bw) for x in grid], "k--", lw=1, label=name)
    for name, extra_bw in ceil["extra_bandwidths"].items():
        ax.plot(
            grid,
            [min(peak, x * extra_bw) for x in grid],
            "k:",
            lw=1,
            label=f"{name} {extra_bw:g} GB/s",
        )
    for r in rows:
        y = min(peak, r["intensity"] * bw)
        ax.plot([r["intensity"]], [y], "o")
        ax.annotate(
            r["op"], (r["intensity"], y), textcoords="offset points", xytext=(4, -10), fontsize=8
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attainable GFLOP/s")
    ax.set_title(f"{title} roofline ({ceil['view']}, {ceil['target']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(Path(path), buf.getvalue())
