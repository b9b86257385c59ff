"""A landscape computation in progress: what it evaluates, where its results go, how far it is.

:func:`lossmap.compute` builds a :class:`Run` and drives it: :meth:`Run.start` resumes the output file when it
was made with the same settings, :meth:`Run.evaluate` evaluates the chunks not yet done (dealt out among the
ranks of a torchrun job by the run's :class:`~lossmap.distributed.Coordinator`; a single process is a
coordinator that does nothing), writing the file as it goes, and :meth:`Run.landscape` gives the result.
The file's attributes are derived from the run when they are written, never patched in place.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr

from . import __version__, stats, store
from .directions import Directions
from .distributed import Coordinator, PeerFailure
from .engine import Engine
from .engine.running import Precision, n_columns
from .errors import LossmapError
from .fingerprint import callable_identity
from .grid import Grid
from .objective import Objective
from .output import Sink, claim
from .settings import LOSS_CONVENTION, SETTINGS_FIELDS
from .space import tensor_hash
from .uncertainty import pointwise

__all__ = ["Run", "RunOptions", "Origin", "Interrupted", "Terminated", "versions", "directions_hash"]

log = logging.getLogger("lossmap")


def directions_hash(directions: Directions, ndim: int) -> str:
    """The hash of the first ``ndim`` direction tensors, as a run's settings record it."""
    return tensor_hash({f"d{i}.{n}": t for i, dd in enumerate(directions.tensors[:ndim]) for n, t in dd.items()})


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`lossmap.compute`; the finished points were saved first. ``str()`` says how many.

    A subclass of ``KeyboardInterrupt``, so code that stops on Ctrl-C still stops; rerunning the same call
    resumes the file.

    Examples:
        >>> import lossmap
        >>> issubclass(lossmap.Interrupted, KeyboardInterrupt)
        True
    """


class Terminated(Interrupted):
    """SIGTERM (e.g. torchrun stopping the job because another rank failed) during :func:`lossmap.compute`.

    Examples:
        >>> import lossmap
        >>> issubclass(lossmap.Terminated, lossmap.Interrupted)
        True
    """


def versions() -> dict[str, str]:
    import h5netcdf

    return {
        "lossmap": __version__, "torch": torch.__version__, "numpy": np.__version__, "xarray": xr.__version__,
        "h5netcdf": h5netcdf.__version__, "python": platform.python_version(),
    }


class Origin(NamedTuple):
    """θ0 — the user's model as it is — and the directions around it."""

    directions: Directions
    tensors: dict[str, torch.Tensor]  # the model's tensors that the directions cover
    sha256: str
    parameter_count: int
    moved: list[str]  # the tensors some direction actually moves

    @property
    def moved_parameter_count(self) -> int:
        return int(sum(self.tensors[n].numel() for n in self.moved))


@dataclass
class RunOptions:
    """How a run evaluates and writes (the keywords of :func:`lossmap.compute` that are not the model's)."""

    out: Path | None = None
    overwrite: bool = False
    progress: bool = False
    chunk: int | None = None
    flush_every: int = 256
    flush_seconds: float = 10.0
    tf32: bool = False
    bf16: bool = False
    description: str = ""
    bn_description: str = ""
    loss_fn: Any = None
    metrics: Any = None
    forward: Any = None
    output_transform: Any = None
    extra_attrs: dict[str, Any] = field(default_factory=dict)
    precision: Precision | None = None
    shuffled: bool = False  # the samples were put in a random order (evaluation to a stated precision)
    population: int | None = None  # the data set's size N (None: unknown)


class Run:
    """One landscape: the grid, θ0 and directions, the objective and its engine, the coordinator, the output."""

    def __init__(self, grid: Grid, origin: Origin, objective: Objective, engine: Engine, coordinator: Coordinator,
                 options: RunOptions, errors: dict[str, float]) -> None:
        self.grid, self.origin, self.objective, self.engine = grid, origin, objective, engine
        self.coord, self.options, self.errors = coordinator, options, errors
        self.names = engine.metric_names
        # per point: the metrics, their standard errors, paired errors and the samples read (pointwise.column_names)
        self.values = np.full((grid.size, n_columns(len(self.names))), np.nan)
        self.mask = np.zeros(grid.size, dtype=bool)
        self.total_points = grid.size  # what a stopped run counts its saved points against
        self.chunk = int(options.chunk) if options.chunk is not None else engine.preferred_chunk
        self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.seconds_before = 0.0  # of the runs this one resumes
        self.began = time.monotonic()
        self.resumed = False
        self.computed = 0  # points this call evaluated
        self.sink: Sink | None = None
        self.settings = self._settings()

    # -- what the file records -------------------------------------------------------------------
    def attrs(self) -> dict[str, Any]:
        """The landscape's attributes as of now."""
        d, obj, o = self.origin.directions, self.objective, self.options
        ref = obj.theta0[obj.names[0]]
        attrs: dict[str, Any] = {
            "lossmap_format": store.FORMAT, "lossmap_format_version": store.FORMAT_VERSION, "ndim": self.grid.ndim,
            "metrics": self.names, "higher_is_better": {"loss": False, **{n: m.higher_is_better for n, m in obj.metrics.items()}},
            **d.metadata(), "moved_tensors": self.origin.moved, "loss": obj.loss.name, "loss_convention": LOSS_CONVENTION,
            "bn_policy": obj.bn, "bn_data": o.bn_description if obj.bn == "recompute" else "",
            "data": o.description, "samples": int(obj.source.total), "data_mode": "streamed" if obj.source.streamed else "cached",
            "parameter_count": self.origin.parameter_count, "moved_parameter_count": self.origin.moved_parameter_count,
            "theta0_sha256": self.origin.sha256, "versions": versions(),
            "directions_file": store.directions_path(o.out).name if o.out is not None else "",
            "x_label": d.labels[0] if d.labels else "α",
            "y_label": (d.labels[1] if len(d.labels) > 1 else "β") if self.grid.ndim == 2 else "",
            "dtype": str(ref.dtype).replace("torch.", ""), "device": str(ref.device), "tf32": o.tf32, "bf16": o.bf16,
            **self.errors, "engine": self.engine.describe(), "ranks": self.coord.world, "chunk": self.chunk,
            "seconds": round(self.seconds_before + time.monotonic() - self.began, 3), "created": self.created,
            "population": o.population if o.population is not None else "",
            **self._precision_attrs(), **o.extra_attrs, "settings": self.settings,
        }
        if obj.source.nondeterministic:
            attrs["data_nondeterministic"] = True
        if self.grid.ndim == 1 and d.markers:
            attrs["markers"] = {k: v[:1] for k, v in d.markers.items() if len(v) == 1 or v[1] == 0.0}
        return attrs

    def _precision_attrs(self) -> dict[str, Any]:
        rule = self.options.precision
        if rule is None:
            return {}
        order = "a random order (seed 0)" if self.options.shuffled else "the data's own order"
        return {"precision_tol": rule.tol, "precision_relative": rule.relative, "precision_z": rule.z,
                "precision_min_samples": rule.min_samples, "precision_order": order}

    def _settings(self) -> dict[str, Any]:
        """The run's :data:`~lossmap.settings.SETTINGS_FIELDS`, in the form they have after a round trip through the file."""
        d, obj, o = self.origin.directions, self.objective, self.options
        meta = d.metadata()
        user_loss = o.loss_fn
        settings = {
            **{k: meta[k] for k in ("directions_kind", "seed", "normalization", "bias_policy", "orthogonalized",
                                   "include_buffers", "tensor_filter")},
            "theta0_sha256": self.origin.sha256,
            "directions_sha256": directions_hash(d, self.grid.ndim),
            "x": [float(v) for v in self.grid.x], "y": None if self.grid.y is None else [float(v) for v in self.grid.y],
            "data": o.description, "data_sha256": obj.source.fingerprint(), "samples": int(obj.source.total),
            "metrics": self.names, "loss_convention": LOSS_CONVENTION,
            "loss_function": obj.loss.name if user_loss is None or isinstance(user_loss, str) else callable_identity(user_loss),
            "metric_functions": {str(k): callable_identity(f) for k, f in o.metrics.items()} if o.metrics else None,
            "output_transform": o.output_transform if o.output_transform is None or isinstance(o.output_transform, (str, int))
            else callable_identity(o.output_transform),
            "forward_function": callable_identity(o.forward),
            "bn_policy": obj.bn,
            "bn_data_sha256": obj.bn_source.fingerprint() if obj.bn == "recompute" and obj.bn_source is not None else "",
            "dtype": str(obj.theta0[obj.names[0]].dtype).replace("torch.", ""), "tf32": o.tf32, "bf16": o.bf16,
            "precision": None if o.precision is None else {**o.precision.settings(), "shuffled": o.shuffled},
        }
        assert set(settings) == set(SETTINGS_FIELDS)
        return json.loads(json.dumps(settings))

    # -- start: a new run or a resumed file --------------------------------------------------------
    def start(self, guard: Any) -> None:
        """Resume ``out`` when it was made with the same settings (keeping its chunking), else start afresh.
        Rank 0 decides (taking the file's lock into ``guard``) and the other ranks follow."""
        o = self.options
        found = claim(self.coord, o.out, o.overwrite, self.settings, self.names, guard)
        if found is not None:
            self.values, self.mask = found[0], found[1]
            self.created = found[2].get("created", self.created)
            self.seconds_before = float(found[2].get("seconds", 0.0) or 0.0)
            chunk = found[2].get("chunk")
            self.chunk = int(chunk) if isinstance(chunk, (int, np.integer)) and chunk >= 1 else self.chunk
        self.mask, self.chunk, self.created, self.seconds_before = self.coord.broadcast(
            (self.mask, self.chunk, self.created, self.seconds_before))
        self.resumed = self.coord.broadcast(found is not None)
        if self.coord.primary and o.out is not None:
            self.sink = Sink(o.out, self.mask, self.landscape, self.origin.directions, o.flush_every, o.flush_seconds)
            self.sink.start(fresh=not self.resumed)
        if found is not None:
            done = int(self.mask.sum())
            if done < self.grid.size:
                self.say(f"resuming {o.out}: {done} of {self.grid.size} points are done, {self.grid.size - done} to go")

    @property
    def complete(self) -> bool:
        return bool(self.mask.all())

    def say(self, message: str) -> None:
        log.info(message)
        if self.options.progress and self.coord.primary:
            print(f"lossmap: {message}", file=sys.stderr, flush=True)

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Evaluate the chunks not done yet; rank 0 fills ``values`` and ``mask`` and writes the file when due.
        On Ctrl-C, SIGTERM or a failed rank the finished points are saved first and the error says how many."""
        order = self.grid.serpentine()
        chunks = [order[lo : lo + self.chunk] for lo in range(0, len(order), self.chunk)]
        pending = [k for k, idx in enumerate(chunks) if not self.mask[idx].all()]
        if pending:
            log.info("evaluating %d of %d points in chunks of %d on %d rank(s)", self.grid.size - int(self.mask.sum()),
                     self.grid.size, self.chunk, self.coord.world)
        bar = self._bar() if pending else None
        coeffs = self.grid.coefficients()
        try:
            for ids in self.coord.deal(pending):
                self._round(ids[self.coord.rank], coeffs, chunks, bar)
                if self.sink is not None and self.sink.due():
                    self.sink.flush()
                    if bar is not None:
                        bar.set_postfix_str(f"saved {self.sink.saved}", refresh=False)
        except BaseException as exc:
            saved = self.sink.save_finished() if self.sink is not None else None
            if bar is not None:
                bar.close()
                bar = None
            stop = self._stop_error(exc, saved)
            if stop is None:
                raise
            raise stop from None
        finally:
            if bar is not None:
                bar.close()
        if self.sink is not None and self.sink.writes_pending:
            self.sink.flush()

    def _bar(self) -> Any:
        if not (self.options.progress and self.coord.primary):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.grid.size, initial=int(self.mask.sum()), unit="pt", desc="landscape", leave=False,
                    dynamic_ncols=True)

    def _round(self, mine: int, coeffs: np.ndarray, chunks: list[np.ndarray], bar: Any) -> None:
        """One round: this rank evaluates its chunk ``mine`` (none when -1); rank 0 merges every rank's chunk."""
        m = self.values.shape[1]
        mine_values = self.engine.evaluate_stats(coeffs[chunks[mine]]) if mine >= 0 else np.empty((0, m))
        if self.coord.primary and mine >= 0:  # kept even if the exchange below fails
            self._merge(mine, mine_values, chunks, bar)
        for cid, vals in self.coord.gather(mine, mine_values, self.chunk):
            if self.coord.primary and cid != mine:
                self._merge(cid, vals, chunks, bar)

    def _merge(self, cid: int, vals: np.ndarray, chunks: list[np.ndarray], bar: Any) -> None:
        """Store a finished chunk; points already done (e.g. read from the file) keep their values."""
        idx = chunks[cid]
        new = ~self.mask[idx]
        self.values[idx[new]] = vals[new]
        self.mask[idx] = True
        if bar is not None:
            bar.update(int(new.sum()))

    def _stop_error(self, exc: BaseException, saved: int | None) -> BaseException | None:
        """What a run stopped by ``exc`` raises instead, saying what was saved and how to go on; None: ``exc`` itself."""
        out, total = self.options.out, self.total_points
        if out is None:
            kept = "nothing was saved (no output file)"
        elif not self.coord.primary:
            kept = f"rank 0 saves the finished points in {out}"
        elif not saved:
            kept = f"no point was finished, so {out} was not written"
        else:
            kept = f"{saved} of {total} points saved in {out}"
        if isinstance(exc, PeerFailure):
            return LossmapError(
                f"another rank stopped answering ({exc}); {kept}; fix the failing rank (see its error) and rerun the same command to resume"
            )
        if isinstance(exc, KeyboardInterrupt):
            terminated = isinstance(exc, Terminated)
            what = "terminated (SIGTERM)" if terminated else "interrupted"
            hint = "; rerun the same command to resume" if out is not None and saved else ""
            return (Terminated if terminated else Interrupted)(f"{what}; {kept}{hint}")
        return None

    # -- the result ------------------------------------------------------------------------------
    def error_coords(self, values: np.ndarray, shape: tuple[int, ...], dims: tuple[str, ...]) -> dict[str, Any]:
        """The per-point error variables of ``values`` (rows as :func:`pointwise.column_names`), see
        :mod:`lossmap.uncertainty.pointwise`."""
        o = self.options
        return pointwise.error_coords(values, self.names, shape, dims, per_example=self.engine.per_example,
                                      population=o.population, evaluated=int(self.objective.source.total),
                                      precision=o.precision is not None)

    def landscape(self) -> xr.Dataset:
        """The landscape as far as it is done; a complete one carries its summary numbers (``summary_*``)."""
        grid, attrs = self.grid, self.attrs()
        dims = ("x",) if grid.ndim == 1 else ("x", "y")
        coords = {"x": grid.x} if grid.ndim == 1 else {"x": grid.x, "y": grid.y}
        data_vars = {name: (dims, self.values[:, k].reshape(grid.shape).copy()) for k, name in enumerate(self.names)}
        ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
        ds = ds.assign_coords(self.error_coords(self.values, grid.shape, dims))
        ds["x"].attrs["long_name"] = attrs["x_label"]
        if grid.ndim == 2:
            ds["y"].attrs["long_name"] = attrs["y_label"]
        ds = store.partial_dataset(ds, self.mask.reshape(grid.shape))
        if self.mask.all() and "loss" in ds:
            try:
                stats.attach(ds)
            except LossmapError as exc:  # e.g. no finite loss anywhere: the values are still worth keeping
                log.warning("no summary numbers: %s", exc)
        return ds
