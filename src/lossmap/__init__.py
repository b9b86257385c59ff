"""lossmap: loss landscapes of PyTorch models.

>>> import lossmap
>>> ds = lossmap.compute(model, data, x="-1:1:51", y="-1:1:51")   # doctest: +SKIP
>>> lossmap.plot_contour(ds)                                       # doctest: +SKIP

The names below are loaded on first use, so ``import lossmap`` (and the ``lossmap`` command's ``--help``)
does not import torch, xarray or matplotlib until something needs them.
"""

from __future__ import annotations

from ._lazy import lazy_names

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


def _loaded(name: str) -> None:
    if name in ("compute", "load"):
        from . import accessor  # noqa: F401 - registers ds.lossmap on first use of a landscape


__getattr__, __dir__ = lazy_names(__name__, globals(), _EXPORTS, _loaded)
