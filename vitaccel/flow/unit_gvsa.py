"""Unit-level flows of the GVSA matmul engine: generate Verilog (+ Yosys counts), simulate.

The CLI calls these; they take plain integers and arrays so they work without a model:

* :func:`generate_gvsa` - Verilog of the array and of the tiled engine, byte-identical on
  repeat, and optionally their Yosys ``synth_xilinx -family xcup`` counts as JSON.
* :func:`simulate_matmul` - one matmul on Verilator (cocotb), checked element by element
  against ``matmul_int`` + ``requantize``, with cycles and utilisation.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from vitaccel.engine_host import EngineParams, cycle_model, pack_job, unpack_outputs
from vitaccel.quant.ref import log2_code_weights, matmul_int, requantize
from vitaccel.rtl.matmul import cmd_word, engine_array, engine_verilog

__all__ = [
    "generate_gvsa",
    "simulate_matmul",
    "simulate_jobs",
    "engine_params",
    "MatmulCase",
    "LayerShape",
    "vit_matmuls",
    "random_case",
    "benchmark_layers",
    "format_benchmark",
]

TOP = "gvsa_matmul"
ARRAY_TOP = "gvsa_array"


def engine_params(*, x_words: int = 2048, **sizes) -> EngineParams:
    """The :class:`EngineParams` of a unit run: ``sizes`` as EngineParams takes them (groups,
    rows, cols, vector, w4_share, w4_kind, acc_bits, max_ksteps, out_depth, log2, ...), with
    2048-word X banks unless told otherwise."""
    return EngineParams(x_words=x_words, **sizes)


def generate_gvsa(out_dir, *, resources: bool = False, **sizes) -> dict:
    """Write ``gvsa_array.v`` and ``gvsa_matmul.v`` (and ``resources.json``) to ``out_dir``.

    ``sizes``: the engine's, as :func:`engine_params` takes them (``groups``, ``rows``,
    ``cols``, ``vector``, ``w4_share``, ``w4_kind``, ...); ``log2=True`` adds the shift-add
    mode for log2-code attention x V (see :mod:`vitaccel.rtl.gvsa`).

    Returns a dict with the file paths, the array's MACs per cycle and, with ``resources``,
    the Yosys counts of the array alone (``array``) and of the whole engine (``engine``).
    """
    from vitaccel.rtl.verilog import to_verilog
    from vitaccel.util import atomic_write_text

    params = engine_params(**sizes)
    array = engine_array(params)
    out = Path(out_dir)
    array_v = to_verilog(array, ARRAY_TOP)
    engine_v = engine_verilog(params, TOP)
    paths = {
        "array_verilog": str(atomic_write_text(out / f"{ARRAY_TOP}.v", array_v)),
        "engine_verilog": str(atomic_write_text(out / f"{TOP}.v", engine_v)),
    }
    info = {
        **paths,
        "macs_per_cycle": params.macs_per_cycle,
        "w8_macs_per_cycle": array.w8_macs_per_cycle,
        "w4_macs_per_cycle": params.macs_per_cycle - array.w8_macs_per_cycle,
        "cols_w8": params.cols_w8,
        "cols_w4": params.cols_w4,
        "log2": params.log2,
    }
    if resources:
        from vitaccel.flow.yosys import synth_xcup

        res = {
            "array": synth_xcup(array_v, ARRAY_TOP).as_dict(),
            "engine": synth_xcup(engine_v, TOP).as_dict(),
            "assumes": "inferred DSP48E2 (Yosys absorbs no accumulator/registers for xcup); "
            "accumulators, adder trees and pipeline registers in fabric",
        }
        info["resources"] = res
        atomic_write_text(out / "resources.json", json.dumps(res, indent=2, sort_keys=True) + "\n")
    return info


class MatmulCase:
    """One matmul to simulate: integer operands plus what the reference says it gives."""

    def __init__(
        self,
        x,
        q,
        kind,
        bias,
        mult,
        shift,
        *,
        lo: int = -128,
        hi: int = 127,
        heads: bool = False,
        x_unsigned: bool = False,
        x_log2: bool = False,
        name: str = "",
    ):
        self.x = np.asarray(x, dtype=np.int64)
        self.q = np.asarray(q, dtype=np.int64)
        self.kind = np.asarray(kind, dtype=np.int64)
        self.bias = np.asarray(bias, dtype=np.int64)
        self.mult = np.asarray(mult, dtype=np.int64)
        self.shift = np.asarray(shift, dtype=np.int64)
        self.lo, self.hi = lo, hi
        self.heads, self.x_unsigned, self.x_log2 = heads, x_unsigned, x_log2
        self.name = name

    def x_operand(self) -> np.ndarray:
        """The integer left operand: x, or for log2 codes their weights 2**(15 - q)."""
        return log2_code_weights(self.x) if self.x_log2 else self.x

    def expected(self) -> np.ndarray:
        """The one definition: requantize(matmul_int(x, w, bias), mult, shift, lo, hi)."""
        x = self.x_operand()
        if self.heads:
            return np.stack(
                [
                    requantize(
                        matmul_int(x[h], self.q[h], self.bias[h]),
                        self.mult[h],
                        self.shift[h],
                        self.lo,
                        self.hi,
                    )
                    for h in range(self.x.shape[0])
                ]
            )
        acc = matmul_int(x, self.q, self.bias)
        return requantize(acc, self.mult, self.shift, self.lo, self.hi)


def _first_mismatch(want: np.ndarray, got: np.ndarray) -> tuple | None:
    bad = np.argwhere(want != got)
    if not bad.size:
        return None
    idx = tuple(int(i) for i in bad[0])
    return idx, int(want[idx]), int(got[idx])


# MatmulCase's keyword-only options (what simulate_matmul passes on to it)
_CASE_OPTIONS = tuple(
    name
    for name, par in inspect.signature(MatmulCase).parameters.items()
    if par.kind is inspect.Parameter.KEYWORD_ONLY
)


def simulate_jobs(
    cases: list[MatmulCase],
    params: EngineParams,
    *,
    stall: float = 0.0,
    seed: int = 0,
    simulator: str = "verilator",
    reset_after: int | None = None,
) -> list[dict]:
    """Run several matmuls in one Verilator simulation; one result dict per case.

    ``simulator``: another simulator for the same testbench (see
    :func:`vitaccel.sim.runner.run_cocotb`). ``reset_after=j``: job ``j`` is started and
    cut short by a reset (half of its outputs taken, inputs still in flight); its result
    is ``None`` and every later job must come out exactly.
    """
    from vitaccel.sim.runner import run_cocotb

    jobs, arrays, packed = [], {}, []
    for j, case in enumerate(cases):
        job = pack_job(
            case.x,
            case.q,
            case.kind,
            case.bias,
            case.mult,
            case.shift,
            params,
            lo=case.lo,
            hi=case.hi,
            heads=case.heads,
            x_unsigned=case.x_unsigned,
            x_log2=case.x_log2,
        )
        packed.append(job)
        arrays[f"x{j}"] = job.x_bytes
        arrays[f"w{j}"] = job.w_words
        jobs.append(
            {
                "cmd": cmd_word(job.cmd),
                "out_words": job.out_words,
                "o_bytes": params.groups * params.cols,
            }
        )
    result = run_cocotb(
        verilog=engine_verilog(params, TOP),
        toplevel=TOP,
        test_module="vitaccel.sim.tb_matmul",
        args={"stall": stall, "seed": seed, "jobs": jobs, "reset_after": reset_after},
        arrays=arrays,
        simulator=simulator,
    )
    if result.get("errors"):
        raise RuntimeError(f"testbench errors: {result['errors']}")
    out = []
    for case, job, res in zip(cases, packed, result["jobs"], strict=True):
        if res is None:  # the job cut short by the reset
            out.append(None)
            continue
        o = np.frombuffer(bytes.fromhex(res["o"]), dtype=np.uint8).reshape(
            job.out_words, params.groups * params.cols
        )
        got = unpack_outputs(o, job, params)
        want = case.expected()
        mismatch = _first_mismatch(want, got)
        mismatches = int(np.count_nonzero(want != got))
        cycles = int(res["cycles"])
        k = case.x.shape[-1]
        model = cycle_model(case.x.shape[-2], k, job.plan.nsteps, params, heads=case.heads)
        out.append(
            {
                "name": case.name,
                "mismatches": mismatches,
                "first_mismatch": mismatch,  # ((t, n) or (head, t, n), expected, got)
                "cycles": cycles,
                "model_cycles": model,
                "macs": job.macs,
                "utilization": job.macs / (cycles * params.macs_per_cycle),
                "nsteps": job.plan.nsteps,
                "outputs": got,
                "expected": want,
            }
        )
    return out


def simulate_matmul(
    *, x, wq, bias, mult, shift, stall: float = 0.0, seed: int = 0, **options
) -> dict:
    """Simulate ``requantize(matmul_int(x, wq.q, bias), mult, shift, lo, hi)`` on Verilator.

    ``wq`` is QuantWeight-like: it has ``q`` (N, K) and ``kind`` (N,) (or a ``(q, kind)``
    pair). ``options``: the case's keywords as :class:`MatmulCase` takes them (``lo``,
    ``hi``, ``heads``, ``x_unsigned``, ``x_log2``: x holds log2 codes and the engine is
    built with its log2 mode), the rest the engine's sizes as :func:`engine_params` takes
    them. Returns ``mismatches``, ``first_mismatch`` ((t, n), expected, got), ``cycles``,
    ``model_cycles``, ``utilization``, ``macs``, ``outputs`` and ``expected``.
    """
    q, kind = (wq.q, wq.kind) if hasattr(wq, "q") else wq
    case_options = {k: options.pop(k) for k in _CASE_OPTIONS if k in options}
    case = MatmulCase(x, q, kind, bias, mult, shift, **case_options)
    params = engine_params(log2=case.x_log2, **options)
    return simulate_jobs([case], params, stall=stall, seed=seed)[0]


# --------------------------------------------------------------------------------------
# ViT layer shapes and a benchmark over them
# --------------------------------------------------------------------------------------


class LayerShape:
    """One matmul of a ViT encoder as the engine runs it (one job)."""

    def __init__(self, name, tokens, k, n, *, heads=0, x_unsigned=False, x_log2=False):
        self.name = name
        self.tokens, self.k, self.n = tokens, k, n
        self.heads = heads  # >0: heads mode, this many heads in the model
        self.x_unsigned = x_unsigned
        self.x_log2 = x_log2

    def __repr__(self):
        mode = f", heads={self.heads}" if self.heads else ""
        return f"{self.name}: {self.tokens} x {self.k} -> {self.n}{mode}"


def vit_matmuls(model: str, tokens: int | None = None) -> list[LayerShape]:
    """Every matmul shape of one encoder block of ``model`` plus patch embedding and head.

    ``tokens`` overrides the sequence length (default: the model's patches + class token).
    Attention matmuls are per head (heads mode; ``ceil(heads / groups)`` jobs per block).
    """
    from vitaccel.models.specs import get_spec

    spec = get_spec(model)
    t = spec.tokens if tokens is None else tokens
    d, dh, h = spec.embed_dim, spec.head_dim, spec.heads
    return [
        LayerShape("patch_embed", max(1, t - 1), spec.patch_dim, d),
        LayerShape("qkv", t, d, 3 * d),
        LayerShape("qk^T", t, dh, t, heads=h),
        LayerShape("attn_v", t, t, dh, heads=h, x_unsigned=True),
        LayerShape("proj", t, d, d),
        LayerShape("fc1", t, d, spec.mlp_dim),
        LayerShape("fc2", t, spec.mlp_dim, d),
        LayerShape("head", 1, d, spec.num_classes),
    ]


def random_case(
    rng: np.random.Generator,
    tokens: int,
    k: int,
    n: int,
    *,
    w4_ratio: float = 0.0,
    w4_kind: str = "int4",
    heads: int = 0,
    x_unsigned: bool = False,
    x_log2: bool = False,
    lo: int = -128,
    hi: int = 127,
    name: str = "",
) -> MatmulCase:
    """Random operands of one matmul, scaled so that most outputs do not saturate.

    Weights come from :func:`vitaccel.quant.scales.quantize_weight` (so every W4 scheme is
    the real one); the requant shift is chosen from the accumulator spread. Heads mode
    (``heads`` > 0) gives ``heads`` independent heads whose "weights" are int8 activations.
    ``x_log2``: x are log2 codes 0..15, drawn like a softmax row's (small codes are rare).
    """
    from vitaccel.quant.scales import quantize_weight

    count = max(1, heads)
    xs, qs, kinds, biases, mults, shifts = [], [], [], [], [], []
    for _ in range(count):
        if x_log2:
            # p ~ 2**-q: a row's codes are mostly large (small probabilities), a few small.
            x = np.minimum(15, rng.geometric(0.25, (tokens, k)) + rng.integers(0, 8, (tokens, k)))
            x = np.where(rng.random((tokens, k)) < 0.02, rng.integers(0, 4, (tokens, k)), x)
        else:
            lo_x, hi_x = (0, 255) if x_unsigned else (-128, 127)
            x = rng.integers(lo_x, hi_x + 1, (tokens, k))
        if heads:
            q = rng.integers(-128, 128, (n, k))
            kind = np.zeros(n, dtype=np.int64)
        else:
            wq = quantize_weight(rng.standard_normal((n, k)), w4_ratio, w4_kind)
            q, kind = wq.q, wq.kind
        bias = rng.integers(-(2**14), 2**14, n)
        mult = rng.integers(2**15, 2**16, n)
        xo = log2_code_weights(x) if x_log2 else x
        spread = np.maximum(matmul_int(xo, q, bias).std(axis=0), 1.0) * mult
        shift = np.clip(np.ceil(np.log2(spread / 40.0)), 0, 62).astype(np.int64)
        xs.append(x)
        qs.append(q)
        kinds.append(kind)
        biases.append(bias)
        mults.append(mult)
        shifts.append(shift)
    if not heads:
        return MatmulCase(
            xs[0],
            qs[0],
            kinds[0],
            biases[0],
            mults[0],
            shifts[0],
            lo=lo,
            hi=hi,
            x_unsigned=x_unsigned,
            x_log2=x_log2,
            name=name,
        )
    return MatmulCase(
        np.stack(xs),
        np.stack(qs),
        np.stack(kinds),
        np.stack(biases),
        np.stack(mults),
        np.stack(shifts),
        lo=lo,
        hi=hi,
        heads=True,
        x_unsigned=x_unsigned,
        x_log2=x_log2,
        name=name,
    )


def benchmark_layers(
    model: str,
    params: EngineParams,
    *,
    tokens: int | None = None,
    w4_ratio: float = 0.0,
    stall: float = 0.0,
    seed: int = 0,
    layers: list[str] | None = None,
    log2: bool = False,
) -> list[dict]:
    """Simulate every matmul shape of ``model`` on Verilator; cycles, utilisation, exactness.

    One job per shape (attention: the first ``groups`` heads at once). Utilisation counts
    useful MACs only: ``macs / (cycles * groups*rows*cols*vector)``. ``log2``: attention x V
    takes log2-code probabilities (the engine's shift-add mode; needs ``params.log2``).
    """
    rng = np.random.default_rng(seed)
    shapes = [s for s in vit_matmuls(model, tokens) if layers is None or s.name in layers]
    if log2:
        for s in shapes:
            if s.x_unsigned:
                s.x_unsigned, s.x_log2 = False, True
    cases = []
    for s in shapes:
        cases.append(
            random_case(
                rng,
                s.tokens,
                s.k,
                s.n,
                w4_ratio=0.0 if s.heads else w4_ratio,
                w4_kind=params.w4_kind,
                heads=min(s.heads, params.groups) if s.heads else 0,
                x_unsigned=s.x_unsigned,
                x_log2=s.x_log2,
                name=s.name,
            )
        )
    results = simulate_jobs(cases, params, stall=stall, seed=seed)
    rows = []
    for s, r in zip(shapes, results, strict=True):
        rows.append(
            {
                "layer": s.name,
                "shape": f"{s.tokens}x{s.k}->{s.n}",
                "jobs_per_block": -(-s.heads // params.groups) if s.heads else 1,
                **{k: r[k] for k in ("mismatches", "first_mismatch", "cycles", "model_cycles")},
                "macs": r["macs"],
                "utilization": r["utilization"],
            }
        )
    return rows


def format_benchmark(rows: list[dict], title: str = "") -> str:
    """The benchmark as a fixed-width table."""
    lines = [title] if title else []
    lines.append(
        f"{'layer':<12} {'shape':>16} {'jobs':>4} {'cycles':>9} {'model':>9} "
        f"{'MACs':>11} {'util':>6} {'exact':>6}"
    )
    for r in rows:
        lines.append(
            f"{r['layer']:<12} {r['shape']:>16} {r['jobs_per_block']:>4} {r['cycles']:>9} "
            f"{r['model_cycles']:>9} {r['macs']:>11} {r['utilization']:>6.3f} "
            f"{'yes' if r['mismatches'] == 0 else 'NO':>6}"
        )
    return "\n".join(lines)
