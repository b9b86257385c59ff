"""Direction ensembles as one resumable job: the same grid over K direction seeds, in one file.

Design: a :class:`~lossmap.run.Run` per seed, inside one file
    Every seed is an ordinary run — its directions, its engine (made when its turn comes, so one seed's
    speed-up state lives at a time), its chunks dealt out among torchrun ranks as for a single landscape —
    and :class:`Ensemble` owns what they share: the file, its lock, the resume decision and one value array
    ``[K, points, columns]`` with one done mask ``[K, points]``, of which each seed's run holds a view. So the
    grid, the chunks and the mask extend over seeds without new machinery: the file's mask is 3-D
    ``(seed, x[, y])`` and a resumed ensemble evaluates, seed by seed, the chunks still missing. θ0's
    per-example values (the paired errors' reference) are computed once and shared by the seeds' engines.

The file
    dims ``(seed, x[, y])`` with a ``seed`` coordinate (the seed values); every metric and error variable
    carries the seed dim. The settings are one run's with ``seed`` the list of seeds and
    ``directions_sha256`` the list of the seeds' direction hashes: the same command resumes it, another
    seed list is refused. Directions are not saved beside it (K copies of the model's size); seed ``s``
    draws the same directions as ``lossmap surface --seed s`` (its hash is in the settings). Summary
    numbers are not attached as attributes: they are per seed, see :func:`lossmap.uncertainty.ensemble.seed_summaries`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

from .. import store
from ..errors import LossmapError
from ..output import Sink, claim

__all__ = ["parse_seeds", "Ensemble", "is_ensemble", "SEED"]

SEED = "seed"
_RANGE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*$")


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """The seeds of an ensemble: ``"0:8"`` (0 to 7), ``"8"`` or ``8`` (a count: 0 to 7), ``"1,5,9"`` or a list.

    Examples:
        >>> parse_seeds("2:5"), parse_seeds(3), parse_seeds("4,1")
        ([2, 3, 4], [0, 1, 2], [4, 1])
    """
    if isinstance(spec, bool):
        raise LossmapError(f"seeds {spec!r}: give a count (8), a range (0:8) or a list (1,5,9)")
    if isinstance(spec, int):
        seeds = list(range(spec))
    elif isinstance(spec, str):
        text = spec.strip()
        m = _RANGE.match(text)
        try:
            if m:
                seeds = list(range(int(m.group(1)), int(m.group(2))))
            elif "," in text:
                seeds = [int(p) for p in text.split(",") if p.strip()]
            else:
                seeds = list(range(int(text)))
        except ValueError:
            raise LossmapError(f"seeds {spec!r} are not understood: give a count (8), a range (0:8) or a list (1,5,9)") from None
    else:
        seeds = [int(s) for s in spec]
    if len(seeds) < 2:
        raise LossmapError(f"seeds {spec!r} give {len(seeds)} seed(s): an ensemble needs at least 2 (e.g. 0:8)")
    if len(set(seeds)) != len(seeds):
        raise LossmapError(f"seeds {spec!r} repeat a seed: give each seed once")
    return seeds


class Ensemble:
    """The K seeds' runs of one file (see the module docstring). ``settings`` are the file's (one run's
    settings with the seed list and the direction hashes); ``make_run(k)`` builds seed ``k``'s run."""

    def __init__(self, seeds: Sequence[int], settings: dict[str, Any], grid_size: int, columns: int,
                 make_run: Callable[[int], Any], coordinator: Any, options: Any, chunk: int) -> None:
        self.seeds, self.settings, self.make_run = list(seeds), settings, make_run
        self.coord, self.options, self.chunk = coordinator, options, chunk
        self.values = np.full((len(self.seeds), grid_size, columns), np.nan)
        self.mask = np.zeros((len(self.seeds), grid_size), dtype=bool)
        self.resumed = False
        self.computed = 0
        self.sink: Sink | None = None
        self.current: Any = None  # the run evaluated now (its attributes describe the file)
        self.found_attrs: dict[str, Any] = {}  # of the file this ensemble resumes
        self.began = _now()

    @property
    def complete(self) -> bool:
        return bool(self.mask.all())

    # -- start: a new file or a resumed one ---------------------------------------------------------
    def start(self, guard: Any, names: list[str]) -> None:
        """Resume ``out`` when it was made with the same settings, else start afresh (rank 0 decides)."""
        o = self.options
        found = claim(self.coord, o.out, o.overwrite, self.settings, names, guard)
        if found is not None:
            self.values[...] = found[0].reshape(self.values.shape)
            self.mask[...] = found[1].reshape(self.mask.shape)
            self.found_attrs = found[2]
            chunk = found[2].get("chunk")
            self.chunk = int(chunk) if isinstance(chunk, (int, np.integer)) and chunk >= 1 else self.chunk
        mask, self.chunk, self.found_attrs = self.coord.broadcast((self.mask, self.chunk, self.found_attrs))
        self.mask[...] = mask
        self.resumed = self.coord.broadcast(found is not None)
        if self.coord.primary and o.out is not None:
            self.sink = Sink(o.out, self.mask.reshape(-1), self.landscape, None, o.flush_every, o.flush_seconds)
            self.sink.start(fresh=not self.resumed)

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Evaluate every seed's missing chunks, seed after seed (each seed's run made when its turn comes)."""
        before = int(self.mask.sum())
        for k in range(len(self.seeds)):
            if self.mask[k].all() and (self.current is not None or not self.mask.all()):
                continue  # a complete ensemble still makes seed 0's run: its attributes describe the file
            run = self.make_run(k)
            run.values, run.mask, run.chunk, run.sink = self.values[k], self.mask[k], self.chunk, self.sink
            run.total_points = self.mask.size
            self.current = run
            if not self.mask[k].all():
                run.evaluate()
        self.computed = int(self.mask.sum()) - before

    # -- the result ------------------------------------------------------------------------------------
    def landscape(self) -> xr.Dataset:
        """The ensemble as far as it is done: dims ``(seed, x[, y])``."""
        run = self.current
        grid = run.grid
        dims = ("x",) if grid.ndim == 1 else ("x", "y")
        shape = (len(self.seeds), *grid.shape)
        names = run.names
        data_vars = {n: ((SEED, *dims), self.values[:, :, k].reshape(shape).copy()) for k, n in enumerate(names)}
        coords: dict[str, Any] = {SEED: np.asarray(self.seeds, dtype=np.int64), "x": grid.x}
        if grid.ndim == 2:
            coords["y"] = grid.y
        attrs = run.attrs()
        attrs.update(seed=json.dumps(self.seeds), seeds=len(self.seeds), directions_file="", settings=self.settings,
                     created=self.found_attrs.get("created", attrs["created"]),
                     seconds=round(float(self.found_attrs.get("seconds", 0.0) or 0.0) + _now() - self.began, 3))
        ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
        ds = ds.assign_coords(run.error_coords(self.values.reshape(-1, self.values.shape[-1]), shape, (SEED, *dims)))
        ds["x"].attrs["long_name"] = attrs["x_label"]
        if grid.ndim == 2:
            ds["y"].attrs["long_name"] = attrs["y_label"]
        ds[SEED].attrs["long_name"] = "direction seed"
        return store.partial_dataset(ds, self.mask.reshape(shape))


def _now() -> float:
    return time.monotonic()


def is_ensemble(ds: xr.Dataset) -> bool:
    """Whether ``ds`` is a direction ensemble (it has a ``seed`` dimension)."""
    return SEED in ds.dims
