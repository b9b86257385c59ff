"""The output file of a running computation: resuming it, writing finished points as the run goes.

Finished points are written at the latest every ``flush_every`` points or ``flush_seconds`` seconds and
whenever the run stops, each time the whole landscape through :func:`lossmap.store.save` (temporary file,
fsync, rename). Nothing is written before the first point is finished, and a file that holds no finished
point (a run that stopped before its first point) is replaced without asking: only computed work is
protected.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import xarray as xr

from . import store
from .errors import LossmapError
from .settings import differences
from .uncertainty import pointwise

if TYPE_CHECKING:  # torch is imported by the commands that compute, not by those that read files
    from .directions import Directions

__all__ = ["Sink", "existing", "save_directions"]

log = logging.getLogger("lossmap")


def save_directions(directions: Directions, path: Path) -> Path:
    """Write the directions beside ``path`` atomically (temporary file + rename)."""
    dpath = store.directions_path(path)
    with store.atomic_path(dpath) as tmp:
        directions.save(tmp)
    return dpath


def existing(out: Path | None, overwrite: bool, settings: dict[str, Any], names: list[str]
             ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """``(values, done mask, attributes)`` of a resumable ``out``; None when the run starts afresh (no file,
    ``overwrite``, or a file without a single finished point). ``values`` has the columns of
    :func:`lossmap.uncertainty.pointwise.column_names`."""
    if out is None or overwrite or not out.exists():
        return None
    try:
        ds = store.load(out)
    except LossmapError as exc:
        raise LossmapError(f"{exc}; pass --overwrite (overwrite=True) to start over") from None
    if store.progress(ds)[0] == 0:
        log.info("%s holds no finished point: starting afresh", out)
        return None
    old = store.meta(ds).get("settings")
    if not isinstance(old, dict):
        raise LossmapError(
            f"output file {str(out)!r} exists and does not record the settings it was made with, so it cannot be "
            "resumed: pass --overwrite (overwrite=True) to replace it, or choose another --out"
        )
    diff = differences(old, settings)
    if diff:
        raise LossmapError(
            f"output file {str(out)!r} was made with other settings: {'; '.join(diff)}; rerun with the file's "
            "settings to resume it, or pass --overwrite (overwrite=True) to start over"
        )
    mask = store.done_mask(ds).reshape(-1)
    values = pointwise.read_columns(ds, names)  # the metrics, their errors (NaN in files without them), samples read
    return values, mask.copy(), store.meta(ds)


def claim(coord: Any, out: Path | None, overwrite: bool, settings: dict[str, Any], names: list[str], guard: Any
          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """The ranks agree on ``settings``; rank 0 takes ``out``'s writer lock into ``guard`` (an ExitStack) and reads
    what :func:`existing` finds there. Every rank raises the same LossmapError when the file cannot be used.
    Returns rank 0's find (other ranks: None; they learn the outcome by broadcast)."""
    coord.agree(settings, differences)
    found, problem = None, None
    if coord.primary:
        try:
            if out is not None:
                guard.enter_context(store.writer_lock(out))
            found = existing(out, overwrite, settings, names)
        except LossmapError as exc:
            problem = str(exc)
    problem = coord.broadcast(problem)
    if problem is not None:
        raise LossmapError(problem)
    return found


class Sink:
    """Writes a run's landscape to its file when due. ``dataset()`` makes the landscape as far as it is done
    (the run's attributes asked afresh at every write: seconds, the engine that ran); ``directions`` are
    written beside it once (None: not saved, as for a direction ensemble)."""

    def __init__(self, path: Path, mask: np.ndarray, dataset: Callable[[], xr.Dataset], directions: Directions | None,
                 flush_every: int, flush_seconds: float) -> None:
        self.path, self.mask, self.dataset = path, mask, dataset
        self.directions = directions
        self.flush_every, self.flush_seconds = int(flush_every), float(flush_seconds)
        self.saved = int(mask.sum())
        self.last = time.monotonic()
        self._directions_written = False

    @property
    def writes_pending(self) -> int:
        return int(self.mask.sum()) - self.saved

    def start(self, fresh: bool) -> None:
        store.remove_stale_temporaries(self.path)
        self._directions_written = not fresh and store.directions_path(self.path).exists()

    def due(self) -> bool:
        pending = self.writes_pending
        return pending > 0 and (pending >= self.flush_every or time.monotonic() - self.last >= self.flush_seconds)

    def flush(self) -> None:
        if not self._directions_written and self.directions is not None:
            save_directions(self.directions, self.path)
            self._directions_written = True
        done = int(self.mask.sum())
        store.save(self.dataset(), self.path)
        self.saved, self.last = done, time.monotonic()
        log.info("saved %d of %d points to %s", done, self.mask.size, self.path)

    def save_finished(self) -> int:
        """Write the finished points not yet in the file (a stopping run); how many the file holds."""
        try:
            if self.writes_pending:
                self.flush()
        except BaseException as exc:  # noqa: BLE001 - report the first failure; keep the old file
            log.warning("could not save the finished points to %s: %s", self.path, exc)
        return self.saved
