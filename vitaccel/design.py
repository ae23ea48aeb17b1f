"""The design file: the one artefact that flows between dse, generate, sim and build.

A design is a typed, validated, versioned object (pydantic). Everything downstream is a pure
function of it, so the same design file always yields byte-identical Verilog. Files are JSON
or TOML; errors name the offending field and its allowed values in one line.
"""

from __future__ import annotations

import json
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vitaccel.engine_timing import column_split as _column_split

SCHEMA_VERSION = 1

__all__ = [
    "SCHEMA_VERSION",
    "ACC_BITS",
    "w_word_bits",
    "column_units",
    "ArrayConfig",
    "NonlinearConfig",
    "LayerConfig",
    "Prediction",
    "Design",
    "DesignError",
    "load_design",
    "save_design",
]


class DesignError(ValueError):
    """A design file is malformed; the message is one line naming the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Accumulator width the engine supports (the W stream's parameter word holds acc + 16 + 6 bits).
ACC_BITS = (16, 48)


def w_word_bits(vector: int, acc_bits: int) -> int:
    """Bits of one W stream word: ``vector`` weight bytes, or a column's parameter word
    (bias ``acc_bits``, multiplier 16, shift 6), whichever is wider (docs/gvsa.md)."""
    return max(8 * vector, acc_bits + 16 + 6)


def column_units(cols_w8: int, cols_w4: int) -> int:
    """Systolic column units of a group: one per DSP-sharing W8 pair, one per W4 column."""
    return cols_w8 // 2 + cols_w4


class ArrayGeometry:
    """What follows from an array shape (``groups``, ``rows``, ``cols``, ``vector``,
    ``acc_bits`` and the ``column_split`` of its ``w4_share``): one definition shared by
    :class:`ArrayConfig` and :class:`vitaccel.engine_host.EngineParams`."""

    @property
    def cols_w8(self) -> int:
        return self.column_split[0]

    @property
    def cols_w4(self) -> int:
        return self.column_split[1]

    @property
    def units(self) -> int:
        """Systolic column units of a group (:func:`column_units`)."""
        return column_units(*self.column_split)

    @property
    def w_word_bits(self) -> int:
        return w_word_bits(self.vector, self.acc_bits)

    @property
    def macs_per_cycle(self) -> int:
        return self.groups * self.rows * self.cols * self.vector


class ArrayConfig(ArrayGeometry, _Strict):
    """Group-vector systolic array shape (see docs/gvsa.md) and the geometry derived from it
    (W8/W4 columns, systolic units, W word width): the one definition the engine, the GVSA
    and the cost model read."""

    groups: int = Field(1, ge=1, le=64, description="independent PE groups")
    rows: int = Field(4, ge=1, le=64, description="PE rows per group (output tokens in flight)")
    cols: int = Field(
        4, ge=1, le=64, description="PE columns per group (output channels in flight)"
    )
    vector: int = Field(8, ge=1, le=64, description="MACs per PE per cycle (reduction lanes)")
    w4_share: float = Field(
        0.0, ge=0.0, le=1.0, description="share of PE columns that are W4 (LUT) lanes"
    )
    w4_kind: Literal["int4", "pot4"] = "int4"
    acc_bits: int = Field(32, ge=ACC_BITS[0], le=ACC_BITS[1])
    in_bits: int = Field(8, ge=4, le=8)

    @cached_property
    def column_split(self) -> tuple[int, int]:
        """(W8 columns, W4 columns) of a group (:func:`vitaccel.engine_timing.column_split`;
        ValueError when the W8 columns are odd)."""
        return _column_split(self.cols, self.w4_share)


class NonlinearConfig(_Strict):
    """Lanes (elements per cycle) of the nonlinear units and their row/channel limits.

    ``softmax_output``: ``uint8`` probabilities (default), or ``log2``: 4-bit log2 codes, with
    attention x V in the GVSA's shift-add mode (docs/gvsa.md; costs LUTs, saves no DSP).
    """

    softmax_lanes: int = Field(4, ge=1, le=64)
    layernorm_lanes: int = Field(4, ge=1, le=64)
    gelu_lanes: int = Field(4, ge=1, le=64)
    max_tokens: int = Field(256, ge=1, le=4096)
    max_channels: int = Field(1024, ge=1, le=8192)
    softmax_output: Literal["uint8", "log2"] = "uint8"


class LayerConfig(_Strict):
    """Per-layer knobs chosen by the explorer."""

    w4_ratio: float = Field(0.0, ge=0.0, le=1.0)
    tile_tokens: int | None = Field(None, ge=1)
    tile_out: int | None = Field(None, ge=1)


class Prediction(_Strict):
    """What the design-space explorer predicted for this design (informative only: nothing
    downstream reads it, and the generated Verilog does not depend on it)."""

    fps: float | None = None
    target_fps: float | None = None
    cycles: int | None = None
    binding: str | None = None
    fidelity_metric: str | None = None
    predicted_error: float | None = Field(None, ge=0)
    expected_cosine: float | None = None


class Design(_Strict):
    """A complete accelerator design for one model on one board."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = "vitaccel"
    model: str = "digits-vit"
    board: Literal["zcu102", "zcu104", "kv260"] = "zcu102"
    clock_mhz: float = Field(200.0, gt=0, le=800)
    array: ArrayConfig = ArrayConfig()
    nonlinear: NonlinearConfig = NonlinearConfig()
    default_w4_ratio: float = Field(0.0, ge=0.0, le=1.0)
    layers: dict[str, LayerConfig] = Field(default_factory=dict)
    input_buffer_kib: int = Field(64, ge=1, le=32768)
    weight_buffer_kib: int = Field(64, ge=1, le=32768)
    output_buffer_kib: int = Field(64, ge=1, le=32768)
    spm_kib: int = Field(256, ge=1, le=1024, description="scratchpad KiB (16-bit word addresses)")
    spm_memory: Literal["bram", "uram"] = Field(
        "bram",
        description="what the scratchpad is built from: block RAM (RAMB36/18) or UltraRAM "
        "(URAM288, 4096 x 72; boards with URAM: zcu104, kv260)",
    )
    x_memory: Literal["bram", "uram"] = Field(
        "bram", description="what the matmul engine's X banks are built from (as spm_memory)"
    )
    weight_ports: int = Field(
        1,
        ge=1,
        le=4,
        description="AXI4 read ports (the Zynq's HP0..HP3) that stream the packed weights in "
        "parallel, each a share of every step's columns",
    )
    datapath_bytes: Literal[16, 32, 64] = Field(
        16,
        description="bytes of a token's activations the X path moves per cycle: 16 (one "
        "scratchpad word), or 32/64 from a scratchpad in 2/4 banks (low word-address bits)",
    )
    prediction: Prediction | None = None

    @model_validator(mode="after")
    def _check(self):
        cols = self.array.groups * self.array.cols
        if cols % self.weight_ports:
            raise ValueError(
                f"weight_ports ({self.weight_ports}) must divide array.groups * array.cols "
                f"({cols}): every port streams the same number of columns"
            )
        for field in ("spm_memory", "x_memory"):
            if getattr(self, field) == "uram":
                from vitaccel.boards.devices import DEVICES

                if not DEVICES[self.board].uram:
                    with_uram = ", ".join(n for n, d in DEVICES.items() if d.uram)
                    raise ValueError(
                        f"{field} 'uram' needs UltraRAM; board {self.board} has none "
                        f"(boards with URAM: {with_uram})"
                    )
        for field in ("softmax_lanes", "layernorm_lanes", "gelu_lanes"):
            lanes = getattr(self.nonlinear, field)
            if lanes > self.datapath_bytes:
                # a unit reads and writes at most datapath_bytes of a row a cycle (one word
                # from each scratchpad bank): more lanes would idle and cost LUTs
                raise ValueError(
                    f"nonlinear.{field} ({lanes}) must be <= datapath_bytes "
                    f"({self.datapath_bytes}): a unit moves at most datapath_bytes a cycle"
                )
        if self.array.w4_share == 0.0 and (
            self.default_w4_ratio > 0 or any(layer.w4_ratio > 0 for layer in self.layers.values())
        ):
            raise ValueError("w4_ratio > 0 needs array.w4_share > 0 (W4 lanes to run on)")
        return self

    def w4_ratio(self, layer: str) -> float:
        cfg = self.layers.get(layer)
        return cfg.w4_ratio if cfg is not None else self.default_w4_ratio

    def canonical_json(self) -> str:
        """Deterministic serialisation (sorted keys): the input of design hashes."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2) + "\n"


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    # a key from the file may hold a newline or control characters: quote it (one line)
    loc = ".".join(str(p) if str(p).isprintable() else repr(p) for p in first["loc"]) or "design"
    msg = first["msg"]
    ctx = first.get("ctx") or {}
    if "expected" in ctx:
        msg = f"{msg}"
    return f"design field '{loc}': {msg} (got {first.get('input')!r})"


def parse_design(data: dict) -> Design:
    try:
        return Design.model_validate(data)
    except ValidationError as err:
        raise DesignError(_one_line(err)) from None


def load_design(path: str | Path) -> Design:
    """Read a design from JSON or TOML; raise DesignError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise DesignError(f"design file '{path}' does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise DesignError(f"design file '{path}': extension must be .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise DesignError(
            f"design file '{path}' is not valid {path.suffix[1:].upper()}: {err}"
        ) from None
    if not isinstance(data, dict):
        raise DesignError(f"design file '{path}' must hold an object at the top level")
    return parse_design(data)


def save_design(design: Design, path: str | Path) -> Path:
    """Write the design as canonical JSON, atomically (temp file then rename)."""
    from vitaccel.util import atomic_write_text

    return atomic_write_text(Path(path), design.canonical_json())
