"""lossmap: loss landscapes of PyTorch models.

>>> import lossmap
>>> ds = lossmap.compute(model, data, x="-1:1:51", y="-1:1:51")   # doctest: +SKIP
>>> lossmap.plot_contour(ds)                                       # doctest: +SKIP

The names below are loaded on first use, so ``import lossmap`` (and the ``lossmap`` command's ``--help``)
does not import torch, xarray or matplotlib until something needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: public name → the module that defines it
_EXPORTS = {
    "compute": "landscape", "save": "landscape", "Interrupted": "run", "Terminated": "run",
    "load": "store",
    "Directions": "directions", "random_directions": "directions", "target_directions": "directions",
    "LossmapError": "errors",
    "Objective": "objective",
    "Metric": "losses", "accuracy": "losses",
    "summarize": "stats",
    "plot_line": "plot.static", "plot_contour": "plot.static", "plot_heatmap": "plot.static",
    "plot_surface": "plot.static", "plot_compare": "plot.static", "plot_all": "plot.static",
    "write_report": "plot.interactive",
    "tune_allocator": "_alloc",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lossmap' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups find it without coming here
    if name in ("compute", "load"):
        from . import accessor  # noqa: F401 - registers ds.lossmap on first use of a landscape
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
