"""Board definitions (one file per board) and the Vivado project generator.

    from vitaccel.boards import get_board
    platform_cls = get_board("zcu102")
    platform_cls.budget.dsp48e2          # 2520
    platform_cls().build(blinky, do_build=False)

Every module in this package other than ``base`` and ``vivado`` is a board and
is imported here, which registers it in :data:`BOARDS`: adding a board is
adding one file (see docs/boards.md).
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import BOARDS, BoardBudget, BoardError, get_board, get_budget, pl_ddr_gbps
from .kv260 import KV260Platform
from .zcu102 import ZCU102Platform
from .zcu104 import ZCU104Platform

for _module in _pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "vivado") and not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BOARDS",
    "BoardBudget",
    "BoardError",
    "KV260Platform",
    "ZCU102Platform",
    "ZCU104Platform",
    "get_board",
    "get_budget",
    "pl_ddr_gbps",
]
