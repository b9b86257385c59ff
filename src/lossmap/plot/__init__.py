"""Figures of landscapes.

The static (matplotlib) functions of :mod:`lossmap.plot.static` are available here too and loaded on
first use, so that importing ``lossmap.plot`` or its sibling modules does not import matplotlib.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(name)  # a submodule being imported (``from lossmap.plot import interactive``)
    static = importlib.import_module(f"{__name__}.static")
    if name in static.__all__:
        return getattr(static, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
