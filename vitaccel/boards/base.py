"""What the design-space exploration needs to know about a board, and the board registry.

A board is an Amaranth ``XilinxPlatform`` subclass (one file per board, see
``zcu102.py``) that carries a :class:`BoardBudget` as its ``budget`` class
attribute. The budget holds the device resources, the DDR bandwidth the
programmable logic can reach, and what the Vivado block design needs (the PS IP,
the board part that holds the PS preset, the PL clocks we allow).

The figures are the device's, not what is left after the shell: the block
design adds two SmartConnects (one more per extra weight port) and a reset block
(roughly a few thousand LUTs, no DSP), which the DSE has to leave room for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BOARDS",
    "BoardBudget",
    "BoardError",
    "get_board",
    "get_budget",
    "load_platforms",
    "pl_ddr_gbps",
    "register_board",
    "user_io_resources",
]


# The Zynq UltraScale+ PS DDR controller sustains about this fraction of its
# peak on long sequential bursts (refresh, read/write turnaround, page misses).
# 0.8 is the round figure we plan with, not a measurement: a measurement on
# the board should replace it.
DDR_EFFICIENCY = 0.8


def pl_ddr_gbps(*, ddr_mts: float, ddr_bits: int, efficiency: float = DDR_EFFICIENCY) -> float:
    """Usable PS DDR bandwidth in GB/s: transfers/s x bus bytes x controller efficiency.

    Example: DDR4-2133 on a 64-bit bus is 2133e6 x 8 B = 17.06 GB/s peak,
    13.65 GB/s at 0.8.
    """
    if ddr_mts <= 0 or ddr_bits <= 0:
        raise ValueError(
            f"DDR rate and width must be positive, not {ddr_mts!r} MT/s x {ddr_bits!r} bit"
        )
    if not 0 < efficiency <= 1:
        raise ValueError(f"DDR efficiency must be in (0, 1], not {efficiency!r}")
    return round(ddr_mts * 1e6 * ddr_bits / 8 * efficiency / 1e9, 2)


class BoardError(ValueError):
    """An unknown board name, or a request the board cannot satisfy (such as its clock)."""


@dataclass(frozen=True)
class BoardBudget:
    """Resources and integration facts of one board, as the DSE and the Vivado generator see them.

    Parameters
    ----------
    name : str
        Short board name used in design files and on the command line (``"zcu102"``).
    part : str
        Full Vivado part, ``device-package-speed`` where the speed grade carries
        the temperature range (``"xczu9eg-ffvb1156-2-e"``).
    dsp48e2, lut, ff, bram36, uram : int
        Device totals: DSP48E2 slices, 6-input LUTs, flip-flops, 36 Kb block RAMs
        (each splits into two 18 Kb halves), 288 Kb UltraRAMs.
    ddr_gbps : float
        DDR bandwidth the PL can use through the S_AXI_HP ports, GB/s, both
        directions together. It is the PS DDR peak times :data:`DDR_EFFICIENCY`:
        the four 128-bit HP ports together (4 x 16 B x 250 MHz = 16 GB/s) out-run
        the DDR on every board here, so the DDR is the ceiling. One HP port at the
        design clock may be lower: see :meth:`axi_gbps`.
    ddr_mts, ddr_bits : int
        The PS DDR the figure comes from: transfer rate (MT/s) and bus width.
    ddr_gib : int
        PS DDR size, GiB: what holds the program, the packed weights and the images.
    ps : str
        Vivado IP name of the processing system (``"zynq_ultra_ps_e"``).
    vivado_board_part : str
        Board part whose preset configures the PS (DDR, MIO, reference clocks).
        The generated Tcl takes this version when Vivado has it, else the
        newest installed version of the same board.
    pl_clocks_mhz : tuple of float
        PL clock frequencies (pl_clk0) the generator accepts. All are reachable
        from the PS PLLs to within a fraction of a percent; Vivado reports the
        exact figure (``PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ``).
    default_clock_mhz : float
        The clock a design gets when it names none.
    hp_ports, hp_data_bits : int
        Number and width of the PS's high-performance AXI slave ports.
    sources : tuple of str
        Where the figures come from, for the docs.
    """

    name: str
    part: str
    dsp48e2: int
    lut: int
    ff: int
    bram36: int
    uram: int
    ddr_gbps: float
    ddr_mts: int
    ddr_bits: int
    ddr_gib: int
    vivado_board_part: str
    pl_clocks_mhz: tuple[float, ...]
    default_clock_mhz: float
    ps: str = "zynq_ultra_ps_e"
    hp_ports: int = 4
    hp_data_bits: int = 128
    sources: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"Board name must be a lower-case identifier, not {self.name!r}")
        if self.part.count("-") != 3:
            raise ValueError(
                f"Board part must read device-package-speed-temperature, not {self.part!r}"
            )
        for attr in (
            "dsp48e2",
            "lut",
            "ff",
            "bram36",
            "ddr_mts",
            "ddr_bits",
            "ddr_gib",
            "hp_ports",
            "hp_data_bits",
        ):
            value = getattr(self, attr)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"Board {self.name}: {attr} must be a positive integer, not {value!r}"
                )
        if not isinstance(self.uram, int) or self.uram < 0:
            raise ValueError(
                f"Board {self.name}: uram must be a non-negative integer, not {self.uram!r}"
            )
        if self.ddr_gbps <= 0:
            raise ValueError(f"Board {self.name}: ddr_gbps must be positive, not {self.ddr_gbps!r}")
        if not self.pl_clocks_mhz or any(f <= 0 for f in self.pl_clocks_mhz):
            raise ValueError(
                f"Board {self.name}: pl_clocks_mhz must be positive, not {self.pl_clocks_mhz!r}"
            )
        if self.default_clock_mhz not in self.pl_clocks_mhz:
            raise ValueError(
                f"Board {self.name}: default_clock_mhz {self.default_clock_mhz!r} is not one of "
                f"pl_clocks_mhz {self.pl_clocks_mhz!r}"
            )

    @property
    def device(self) -> str:
        return self.part.split("-")[0]

    @property
    def package(self) -> str:
        return self.part.split("-")[1]

    @property
    def speed(self) -> str:
        return self.part.split("-", 2)[2]

    @property
    def ddr_bytes(self) -> int:
        return self.ddr_gib << 30

    @property
    def bram18(self) -> int:
        return 2 * self.bram36

    def axi_gbps(self, clock_mhz: float, *, data_bits: int = 128, ports: int = 1) -> float:
        """Bandwidth, GB/s, that ``ports`` AXI masters of ``data_bits`` at ``clock_mhz`` can draw.

        A read and a write channel run at once, but a ViT layer is read-bound
        (weights and activations in, a smaller output back), so we count one
        direction; the DDR ceiling :attr:`ddr_gbps` caps the sum.
        """
        if clock_mhz <= 0:
            raise ValueError(f"Clock must be positive, not {clock_mhz!r} MHz")
        if data_bits not in (32, 64, 128):
            raise ValueError(f"HP port data width must be 32, 64 or 128 bits, not {data_bits!r}")
        if not 1 <= ports <= self.hp_ports:
            raise ValueError(f"Board {self.name} has {self.hp_ports} HP ports, not {ports!r}")
        port_gbps = ports * data_bits / 8 * clock_mhz * 1e6 / 1e9
        return round(min(port_gbps, self.ddr_gbps), 2)

    def check_clock(self, clock_mhz: float) -> float:
        """Return ``clock_mhz`` if the board's PL clock can run at it, else raise :class:`BoardError`."""
        if clock_mhz not in self.pl_clocks_mhz:
            allowed = ", ".join(f"{f:g}" for f in self.pl_clocks_mhz)
            raise BoardError(
                f"board {self.name!r} cannot clock the PL at {clock_mhz:g} MHz; choose one of: {allowed}"
            )
        return clock_mhz


def user_io_resources(
    *,
    clk125: tuple[str, str, str],
    clk300: tuple[str, str],
    rst: str,
    leds: str,
    buttons: str,
    switches: str,
) -> list:
    """The PL user I/O the ZCU10x boards share, in amaranth-boards order.

    ``clk125`` is (p, n, IOSTANDARD) of the fixed 125 MHz CLK_125 (its bank sets the
    standard); ``clk300`` is (p, n) of the USER_SI570, 300 MHz at power-up (reprogrammable
    over I2C); ``rst`` the active-high CPU_RESET button; ``leds``, ``buttons`` and
    ``switches`` the GPIO pins, space-separated, all LVCMOS33.
    """
    from amaranth.build import Attrs, Clock, DiffPairs, Pins, Resource
    from amaranth_boards.resources import ButtonResources, LEDResources, SwitchResources

    lvcmos33 = Attrs(IOSTANDARD="LVCMOS33")
    clk125_p, clk125_n, clk125_std = clk125
    # fmt: off
    return [
        Resource("clk125", 0, DiffPairs(clk125_p, clk125_n, dir="i"), Clock(125e6), Attrs(IOSTANDARD=clk125_std)),
        Resource("clk300", 0, DiffPairs(*clk300, dir="i"), Clock(300e6), Attrs(IOSTANDARD="DIFF_SSTL12")),
        Resource("rst", 0, Pins(rst, dir="i"), lvcmos33),
        *LEDResources(pins=leds, attrs=lvcmos33),
        *ButtonResources(pins=buttons, attrs=lvcmos33),
        *SwitchResources(pins=switches, attrs=lvcmos33),
    ]
    # fmt: on


BOARDS: dict[str, type] = {}
"""Board name -> platform class (each has a ``budget``). Filled by :func:`register_board`."""


def register_board(platform_cls: type) -> type:
    """Class decorator: add a platform class to :data:`BOARDS` under its budget's name."""
    budget = getattr(platform_cls, "budget", None)
    if not isinstance(budget, BoardBudget):
        raise TypeError(f"{platform_cls.__name__} needs a BoardBudget 'budget' class attribute")
    part = f"{platform_cls.device}-{platform_cls.package}-{platform_cls.speed}"
    if part.lower() != budget.part.lower():
        raise ValueError(
            f"{platform_cls.__name__}: platform part {part!r} != budget part {budget.part!r}"
        )
    from .devices import DEVICES

    if DEVICES.get(budget.name) is not budget:
        raise ValueError(
            f"{platform_cls.__name__}: its budget must be devices.DEVICES[{budget.name!r}]"
        )
    if budget.name in BOARDS and BOARDS[budget.name] is not platform_cls:
        raise ValueError(f"Board {budget.name!r} is registered twice")
    BOARDS[budget.name] = platform_cls
    return platform_cls


def load_platforms() -> dict[str, type]:
    """Import every board's platform module (Amaranth), which registers it in :data:`BOARDS`.

    Every module of this package other than ``base``, ``devices`` and ``vivado`` is a board.
    Only what builds or names platforms calls this: the budgets are in :mod:`.devices`,
    which the explorer reads without importing Amaranth.
    """
    import importlib
    import pkgutil

    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if module.name not in ("base", "devices", "vivado") and not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
    return BOARDS


def get_board(name: str) -> type:
    """Platform class of the board called ``name``; its ``budget`` holds the figures.

    Raises
    ------
    BoardError
        If no board has that name; the message lists the known ones.
    """
    from .devices import device_budget

    device_budget(name)  # an unknown name fails here, before Amaranth is imported
    return load_platforms()[name]


def get_budget(board: object) -> BoardBudget:
    """The :class:`BoardBudget` of a board given by name, platform class or instance, or budget."""
    if isinstance(board, BoardBudget):
        return board
    if isinstance(board, str):
        from .devices import device_budget

        return device_budget(board)
    budget = getattr(board, "budget", None)
    if isinstance(budget, BoardBudget):
        return budget
    raise TypeError(f"Expected a board name, platform or BoardBudget, not {board!r}")
