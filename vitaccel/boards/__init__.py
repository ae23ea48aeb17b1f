"""Board definitions (one file per board) and the Vivado project generator.

    from vitaccel.boards import get_board, get_budget
    get_budget("zcu102").dsp48e2          # 2520 (pure data: no Amaranth import)
    platform_cls = get_board("zcu102")    # the Amaranth platform, budget attached
    platform_cls().build(blinky, do_build=False)

The device figures of every board are one pure-data table (:mod:`.devices`), read by the
design-space explorer without Amaranth. The platform classes (one module per board, each
registered in :data:`BOARDS`) are imported only when asked for: :func:`get_board`,
``BOARDS`` or a ``...Platform`` name. Adding a board is a row in the table and one file
(see docs/boards.md).
"""

from .base import BoardBudget, BoardError, get_board, get_budget, load_platforms, pl_ddr_gbps
from .devices import DEVICES

__all__ = [
    "BOARDS",
    "DEVICES",
    "BoardBudget",
    "BoardError",
    "KV260Platform",
    "ZCU102Platform",
    "ZCU104Platform",
    "get_board",
    "get_budget",
    "load_platforms",
    "pl_ddr_gbps",
]

_PLATFORMS = {"KV260Platform": "kv260", "ZCU102Platform": "zcu102", "ZCU104Platform": "zcu104"}


def __getattr__(name: str):
    # PEP 562: the platforms (and Amaranth) load on first use, not on ``import vitaccel.boards``.
    if name == "BOARDS":
        return load_platforms()
    if name in _PLATFORMS:
        return get_board(_PLATFORMS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
