"""compute(): evaluate a model over a 1-D or 2-D grid of θ0 + Σ cᵢdᵢ and return a labelled landscape."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import re
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from . import __version__, distributed, stats, store
from .fingerprint import batches_hash, callable_identity
from .directions import Directions, random_directions
from .errors import LossmapError
from .evaluate import Batch, describe_data, make_evaluator, prepare_batches
from .grid import Grid
from .space import borrow, check_finite, select_tensors, tensor_hash

__all__ = ["compute", "save", "versions", "Interrupted", "Terminated", "SETTINGS_FIELDS"]

log = logging.getLogger("lossmap")

#: what identifies a run for resuming: a file whose settings differ in any of these is not resumed
SETTINGS_FIELDS = {
    "theta0_sha256": "the model's parameters θ0 (hash)",
    "directions_sha256": "the direction tensors (hash)",
    "directions_kind": "directions kind",
    "seed": "seed",
    "normalization": "normalization",
    "bias_policy": "bias policy",
    "orthogonalized": "orthogonalization",
    "include_buffers": "include buffers",
    "tensor_filter": "tensor filter",
    "x": "x grid",
    "y": "y grid",
    "data": "data",
    "data_sha256": "the data samples (hash)",
    "samples": "sample count",
    "metrics": "metrics",
    "loss_function": "the loss function (name and a hash of its source; null: the default)",
    "metric_functions": "the metric functions (name → name and a hash of its source; null: none)",
    "forward_function": "the forward function (name and a hash of its source; null: the model's own)",
    "bn_policy": "batch-norm policy",
    "bn_data_sha256": "batch-norm data (hash)",
    "dtype": "dtype",
    "tf32": "TF32 on the GPU",
    "bf16": "bfloat16 autocast",
}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`compute`; the finished points were saved first. ``str()`` says how many."""


class Terminated(Interrupted):
    """SIGTERM (e.g. torchrun stopping the job because another rank failed) during :func:`compute`."""

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def versions() -> dict[str, str]:
    import h5netcdf
    import xarray

    return {
        "lossmap": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "xarray": xarray.__version__,
        "h5netcdf": h5netcdf.__version__,
        "python": platform.python_version(),
    }


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise LossmapError(f"dtype {dtype!r} is unknown: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def compute(
    model: nn.Module,
    data: Any,
    x: str | Sequence[float] = "-1:1:51",
    y: str | Sequence[float] | None = None,
    *,
    directions: Directions | None = None,
    seed: int = 0,
    normalization: str = "filter",
    bias: str = "zero",
    orthogonalize: bool = False,
    include_buffers: bool = False,
    tensor_filter: str | None = None,
    loss_fn: Callable | None = None,
    metrics: Mapping[str, Callable] | None = None,
    forward: Callable | None = None,
    bn: str = "frozen",
    bn_data: Any = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    batch_size: int = 256,
    samples: int | None = None,
    data_description: str | None = None,
    progress: bool = False,
    out: str | Path | None = None,
    overwrite: bool = False,
    chunk: int | None = None,
    engine: str = "auto",
    tf32: bool = False,
    bf16: bool = False,
    flush_every: int | None = None,
    flush_seconds: float = 10.0,
) -> xr.Dataset:
    """The landscape of ``model`` on ``data`` over the grid ``x`` (× ``y``).

    θ0 is the model's current parameters. Without ``directions``, one (1-D) or two (2-D) random
    directions are drawn from ``seed`` with the given normalization and bias policy. The model comes
    back exactly as it was.

    With ``out``, finished points are written to that file as the run goes (at the latest every
    ``flush_every`` points (default: 256 or 5 % of the grid, whichever is more) or ``flush_seconds`` seconds, and on Ctrl-C or an error), its directions
    beside it. If ``out`` already holds a landscape made with the same settings (model, directions,
    grid, data, metrics, loss/metric/forward functions, BN policy, dtype) the run resumes it and evaluates only
    the missing points (a complete file is returned as it is); a file made with other settings raises :class:`LossmapError`
    naming the differing fields, unless ``overwrite`` starts over. Ctrl-C saves the finished points and
    raises :class:`Interrupted`; while ``compute`` runs in the main thread, SIGTERM does the same
    (:class:`Terminated`).

    Points are evaluated in chunks of ``chunk`` points (default: what suits the evaluator — 8, or one
    ``vmap`` batch on a GPU) of the grid's serpentine order (the file is written
    between chunks); a chunk always holds the same points — a resumed run keeps the file's ``chunk`` —
    so a resumed run gives the same values bit for bit as an uninterrupted one.
    ``tf32`` (CUDA) and ``bf16`` (``torch.autocast`` to bfloat16, CPU or CUDA) trade precision for
    speed; the relative error they cause at the centre is measured and stored
    (``tf32_centre_rel_error``, ``bf16_centre_rel_error``).
    Under ``torchrun`` (``WORLD_SIZE`` > 1) the chunks are shared among the ranks and rank 0 writes
    ``out``; see :mod:`lossmap.distributed`.
    """
    grid = Grid.from_specs(x, y)
    dtype = _dtype(dtype)
    out, flush_every = _check_options(grid, out, chunk, flush_every, flush_seconds)
    ctx = distributed.setup(device)
    if ctx is not None:
        device = ctx.device
    primary = ctx is None or ctx.primary
    theta0 = _theta0(
        model, grid, directions, seed=seed, normalization=normalization, bias=bias, orthogonalize=orthogonalize,
        include_buffers=include_buffers, tensor_filter=tensor_filter,
    )
    directions = theta0.directions

    guard = ExitStack()  # the output file's lock, held until the last write
    try:
        with borrow(model, device, dtype) as lease, _sigterm_raises(out is not None), _precision(device, tf32):
            live = select_tensors(lease.model, theta0.include_buffers, theta0.tensor_filter)
            origin = lease.origin(live)
            ref = origin[0]
            dirs = [[d[n].to(device=ref.device, dtype=live[n].dtype) for n in live] for d in directions.tensors[: grid.ndim]]
            batches = prepare_batches(data, batch_size, samples, ref.device, dtype)
            bn_batches = None if bn_data is None else prepare_batches(bn_data, batch_size, None, ref.device, dtype)
            if bf16 and ref.dtype != torch.float32:
                raise LossmapError(f"bf16 autocast needs float32 parameters, not {str(ref.dtype).replace('torch.', '')}: "
                                   "drop the dtype or use float32")
            evaluator = make_evaluator(
                lease.model, list(live.values()), origin, dirs, batches, loss_fn, metrics, bn, bn_batches, forward,
                torch.bfloat16 if bf16 else None, engine=engine,
            )
            # the evaluator knows how many points per call suit it (vmap: several per forward)
            chunk = evaluator.preferred_chunk if chunk is None else int(chunk)
            names = evaluator.metric_names
            description = data_description or describe_data(data, batches)
            use_tf32 = bool(tf32) and ref.device.type == "cuda"
            errors = _reduced_precision_errors(evaluator, grid.ndim, use_tf32)
            attrs = _attrs(
                grid, theta0, out, ctx, ref, names=names, bn=bn, description=description,
                samples=int(evaluator.total), tf32=use_tf32, bf16=bool(bf16), errors=errors,
                engine=evaluator.describe(),
            )
            attrs["settings"] = settings = _settings(
                attrs, grid, directions, batches, bn_batches if bn == "recompute" else None,
                loss_fn=loss_fn, metrics=metrics, forward=forward,
            )
            if ctx is not None:
                _check_ranks_agree(ctx, settings)

            values, mask, chunk, resumed = _start_or_resume(ctx, out, overwrite, progress, grid, names, settings, attrs, chunk, guard)
            sink = None
            if primary and out is not None:
                sink = _Sink(out, grid, names, values, mask, attrs, directions, flush_every, flush_seconds, evaluator.describe)
                sink.start(fresh=not resumed)
            elapsed = _evaluate_pending(evaluator, grid, chunk, values, mask, ctx, sink, out, progress)

        attrs["seconds"] = round(float(attrs["seconds"]) + elapsed, 3)
        attrs["engine"] = evaluator.describe()
        if sink is not None and sink.writes_pending:  # first the file, then the other ranks' copies
            sink.flush()
        if ctx is not None:
            values, mask = _broadcast(ctx, (values, mask) if primary else None)
        return _landscape(grid, names, values, attrs, mask)
    finally:
        guard.close()


def save(ds: xr.Dataset, directions: Directions | None, path: str | Path) -> Path:
    """Save the landscape as netCDF/HDF5 and, when given, its directions beside it as safetensors."""
    path = Path(path)
    if directions is not None:
        ds.attrs["directions_file"] = _save_directions(directions, path).name
    return store.save(ds, path)


# ------------------------------------------------------------------------------- the steps of compute()


def _check_options(
    grid: Grid, out: str | Path | None, chunk: int | None, flush_every: int | None, flush_seconds: float
) -> tuple[Path | None, int]:
    """``(out as a path, flush_every)``, checked before any work; flush_every's default depends on the grid."""
    if chunk is not None and int(chunk) < 1:
        raise LossmapError(f"chunk {chunk!r} must be at least 1 point")
    if flush_every is None:  # a write costs ~20 ms: on fast models, at most ~20 writes per grid
        flush_every = max(256, grid.size // 20)
    if int(flush_every) < 1:
        raise LossmapError(f"flush every {flush_every!r} points: must be at least 1")
    if not float(flush_seconds) >= 0:
        raise LossmapError(f"flush every {flush_seconds!r} seconds: must be 0 or more")
    if out is not None:
        out = Path(out)
        if not out.parent.is_dir():
            raise LossmapError(f"output folder {str(out.parent)!r} does not exist: create it or choose another --out")
        if out.is_dir():
            raise LossmapError(f"output {str(out)!r} is a folder: give a file name such as {str(out / 'landscape.nc')!r}")
    return out, flush_every


class _Origin(NamedTuple):
    """θ0, the user's model as it is, and the directions around it."""

    directions: Directions
    tensors: dict[str, torch.Tensor]  # the model's tensors that the directions move
    include_buffers: bool
    tensor_filter: str | None
    sha256: str
    parameter_count: int
    moved_parameter_count: int


def _theta0(
    model: nn.Module, grid: Grid, directions: Directions | None, *, seed: int, normalization: str, bias: str,
    orthogonalize: bool, include_buffers: bool, tensor_filter: str | None,
) -> _Origin:
    """θ0 and the given directions, checked against each other and the grid, or directions drawn from ``seed``."""
    if directions is not None:  # the directions say which tensors move
        include_buffers, tensor_filter = directions.include_buffers, directions.tensor_filter
    live_user = select_tensors(model, include_buffers, tensor_filter)
    check_finite({n: t.detach() for n, t in live_user.items()})
    if directions is None:
        directions = random_directions(
            model, grid.ndim, seed=seed, normalization=normalization, bias=bias,
            orthogonalize=orthogonalize, include_buffers=include_buffers, tensor_filter=tensor_filter,
        )
    if directions.count < grid.ndim:
        raise LossmapError(f"a {grid.ndim}-D grid needs {grid.ndim} directions but {directions.count} were given")
    directions.check(live_user)
    theta0_hash = tensor_hash(live_user)
    if directions.kind == "target" and directions.origin_sha256 and directions.origin_sha256 != theta0_hash:
        raise LossmapError("the model's parameters are not the origin model A of these target directions: load A's checkpoint into the model")
    n_params = sum(p.numel() for p in model.parameters())
    n_moved = sum(t.numel() for n, t in live_user.items() if any(bool(d[n].any()) for d in directions.tensors))
    return _Origin(directions, live_user, include_buffers, tensor_filter, theta0_hash, int(n_params), int(n_moved))


def _attrs(
    grid: Grid, theta0: _Origin, out: Path | None, ctx: distributed.Context | None, ref: torch.Tensor, *,
    names: list[str], bn: str, description: str, samples: int, tf32: bool, bf16: bool, errors: dict[str, float],
    engine: str,
) -> dict[str, Any]:
    """The landscape's attributes at the start of a fresh run (``seconds`` 0, ``created`` now), but for the
    ``settings`` made from them; ``ref`` is a tensor of the borrowed model, on the device and in the dtype of
    the computation; ``engine`` the evaluation loop and its speed-ups (not a setting: every engine
    computes the same numbers)."""
    directions = theta0.directions
    attrs: dict[str, Any] = {
        "lossmap_format": store.FORMAT,
        "lossmap_format_version": store.FORMAT_VERSION,
        "ndim": grid.ndim,
        "metrics": names,
        **directions.metadata(),
        "moved_tensors": [n for n in theta0.tensors],
        "bn_policy": bn,
        "data": description,
        "samples": samples,
        "parameter_count": theta0.parameter_count,
        "moved_parameter_count": theta0.moved_parameter_count,
        "theta0_sha256": theta0.sha256,
        "versions": versions(),
        "directions_file": store.directions_path(out).name if out is not None else "",
        "x_label": directions.labels[0] if directions.labels else "α",
        "y_label": (directions.labels[1] if len(directions.labels) > 1 else "β") if grid.ndim == 2 else "",
        "dtype": str(ref.dtype).replace("torch.", ""),
        "device": str(ref.device),
        "tf32": tf32,
        "bf16": bf16,
        **errors,
        "engine": engine,
        "ranks": 1 if ctx is None else ctx.world,
        "seconds": 0.0,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if grid.ndim == 1 and directions.markers:
        attrs["markers"] = {k: v[:1] for k, v in directions.markers.items() if len(v) == 1 or v[1] == 0.0}
    return attrs


def _start_or_resume(
    ctx: distributed.Context | None, out: Path | None, overwrite: bool, progress: bool, grid: Grid, names: list[str],
    settings: dict[str, Any], attrs: dict[str, Any], chunk: int, guard: ExitStack,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """``(values, done mask, chunk, resumed)``: a new run, or what ``out`` already holds when it was made with the
    same settings, whose chunking it keeps. Rank 0 decides (taking the file's lock into ``guard``) and the other
    ranks follow. ``attrs`` gets the run's ``created``, ``seconds`` so far and ``chunk``."""
    primary = ctx is None or ctx.primary
    values = np.full((grid.size, len(names)), np.nan)
    mask = np.zeros(grid.size, dtype=bool)
    existing = None
    problem = None
    if primary:
        try:
            if out is not None:
                guard.enter_context(store.writer_lock(out))
            existing = _open_existing(out, overwrite, settings, names)
        except LossmapError as exc:
            problem = str(exc)
    if ctx is not None:
        problem = _broadcast(ctx, problem)
    if problem is not None:
        raise LossmapError(problem)
    if existing is not None:
        values, mask = existing[0], existing[1]
        attrs["created"] = existing[2].get("created", attrs["created"])
        attrs["seconds"] = float(existing[2].get("seconds", 0.0) or 0.0)
        # the file's chunking, so that every chunk holds the same points as before
        chunk = _positive_int(existing[2].get("chunk"), chunk)
    if ctx is not None:
        mask, chunk, attrs["created"], attrs["seconds"] = _broadcast(
            ctx, (mask, chunk, attrs["created"], attrs["seconds"])
        )
    attrs["chunk"] = chunk
    if existing is not None:  # only rank 0 opens the file
        done = int(mask.sum())
        if done == grid.size:
            _say(progress, f"{out} is complete ({grid.size} points): nothing to compute")
        else:
            _say(progress, f"resuming {out}: {done} of {grid.size} points are done, {grid.size - done} to go")
    return values, mask, chunk, existing is not None


def _evaluate_pending(
    evaluator: Any, grid: Grid, chunk: int, values: np.ndarray, mask: np.ndarray, ctx: distributed.Context | None,
    sink: _Sink | None, out: Path | None, progress: bool,
) -> float:
    """Evaluate the chunks that are not done yet, dealt out among the ranks; rank 0 fills ``values`` and ``mask``
    and writes the file when due. Returns the seconds it took. On Ctrl-C, SIGTERM or a failed rank, the finished
    points are saved first and the error says how many."""
    primary = ctx is None or ctx.primary
    coeffs = grid.coefficients()
    order = grid.serpentine()
    chunks = [order[lo : lo + chunk] for lo in range(0, len(order), chunk)]
    pending = [k for k, idx in enumerate(chunks) if not mask[idx].all()]
    world, rank = (1, 0) if ctx is None else (ctx.world, ctx.rank)
    bar = None
    if progress and primary and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=grid.size, initial=int(mask.sum()), unit="pt", desc="landscape", leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for ids in distributed.deal(pending, world):
            _evaluate_round(evaluator, ids[rank], coeffs, chunks, chunk, values, mask, ctx, bar)
            if sink is not None and sink.due():  # only rank 0 has a sink
                sink.flush()
                if bar is not None:
                    bar.set_postfix_str(f"saved {sink.saved}", refresh=False)
    except BaseException as exc:
        saved = _save_finished(sink, out)
        if bar is not None:
            bar.close()
            bar = None
        stop = _stop_error(exc, out, saved, primary, grid.size)
        if stop is None:
            raise
        raise stop from None
    finally:
        if bar is not None:
            bar.close()
    return time.perf_counter() - start


def _evaluate_round(
    evaluator: Any, mine: int, coeffs: np.ndarray, chunks: list[np.ndarray], chunk: int, values: np.ndarray,
    mask: np.ndarray, ctx: distributed.Context | None, bar: Any,
) -> None:
    """One round: this rank evaluates its chunk ``mine`` (none when -1); rank 0 merges every rank's chunk."""
    primary = ctx is None or ctx.primary
    m = values.shape[1]  # the number of metrics
    mine_values = evaluator.evaluate_many(coeffs[chunks[mine]]) if mine >= 0 else np.empty((0, m))
    if primary and mine >= 0:  # kept even if the exchange below fails
        _merge([(mine, mine_values)], chunks, values, mask, bar)
    if ctx is not None:
        try:
            gathered = distributed.gather_chunk(ctx, mine, mine_values, chunk, m)
        except Exception as exc:  # noqa: BLE001 - a peer died or timed out
            raise _PeerFailure(distributed.failure(exc)) from exc
        if primary:
            _merge([(cid, vals) for cid, vals in gathered if cid != mine], chunks, values, mask, bar)


def _save_finished(sink: _Sink | None, out: Path | None) -> int | None:
    """Write the finished points not yet in the file of a stopping run; how many the file holds (None: no file)."""
    if sink is None:
        return None
    try:
        if sink.writes_pending:
            sink.flush()
    except BaseException as save_exc:  # noqa: BLE001 - report the first failure; keep the old file
        log.warning("could not save the finished points to %s: %s", out, save_exc)
    return sink.saved


def _stop_error(exc: BaseException, out: Path | None, saved: int | None, primary: bool, total: int) -> BaseException | None:
    """What a run stopped by ``exc`` raises instead, saying what was saved and how to go on; None: ``exc`` itself."""
    where = "" if out is None else f" in {out}"
    kept = (
        "nothing was saved (no output file)" if out is None
        else (f"{saved} of {total} points saved{where}" if primary else f"rank 0 saves the finished points{where}")
    )
    if isinstance(exc, _PeerFailure):
        return LossmapError(
            f"another rank stopped answering ({exc}); {kept}; fix the failing rank (see its error) and rerun the same command to resume"
        )
    if isinstance(exc, KeyboardInterrupt):
        terminated = isinstance(exc, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        hint = "; rerun the same command to resume" if out is not None else ""
        return (Terminated if terminated else Interrupted)(f"{what}; {kept}{hint}")
    return None



# ---------------------------------------------------------------------------------------------- helpers


def _positive_int(value: Any, default: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number >= 1 else default


def _merge(results: list[tuple[int, np.ndarray]], chunks: list[np.ndarray], values: np.ndarray, mask: np.ndarray, bar: Any) -> None:
    """Store finished chunks; points already done (e.g. read from the file) keep their values."""
    for cid, vals in results:
        idx = chunks[cid]
        new = ~mask[idx]
        values[idx[new]] = vals[new]
        mask[idx] = True
        if bar is not None:
            bar.update(int(new.sum()))


class _PeerFailure(Exception):
    """A collective with the other ranks failed."""


def _say(progress: bool, message: str) -> None:
    log.info(message)
    if progress:
        print(f"lossmap: {message}", file=sys.stderr, flush=True)


@contextmanager
def _sigterm_raises(active: bool) -> Iterator[None]:
    """While active (and in the main thread), SIGTERM raises :class:`Terminated`, so finished points get saved."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("terminated (SIGTERM)")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not allowed here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _directions_hash(directions: Directions, count: int) -> str:
    return tensor_hash({f"d{i}.{n}": t for i, d in enumerate(directions.tensors[:count]) for n, t in d.items()})


def _settings(
    attrs: Mapping[str, Any], grid: Grid, directions: Directions, batches: Sequence[Batch],
    bn_batches: Sequence[Batch] | None, *, loss_fn: Callable | None = None,
    metrics: Mapping[str, Callable] | None = None, forward: Callable | None = None,
) -> dict[str, Any]:
    """The run's :data:`SETTINGS_FIELDS`: those the attributes hold are taken from ``attrs``; the others (the
    hashes of the directions and the data, the grid's coordinates, the user's functions) are worked out here."""
    not_in_attrs = {
        "directions_sha256": _directions_hash(directions, grid.ndim),
        "x": [float(v) for v in grid.x],
        "y": None if grid.y is None else [float(v) for v in grid.y],
        "data_sha256": batches_hash(batches),
        "bn_data_sha256": batches_hash(bn_batches),
        "loss_function": callable_identity(loss_fn),
        "metric_functions": {str(k): callable_identity(f) for k, f in metrics.items()} if metrics else None,
        "forward_function": callable_identity(forward),
    }
    settings = {key: not_in_attrs[key] if key in not_in_attrs else attrs[key] for key in SETTINGS_FIELDS}
    return json.loads(json.dumps(settings))  # the form it has after a round trip through the file


#: how a function setting's null reads: the built-in each falls back to
_CALLABLE_FIELDS = {"loss_function": "default", "metric_functions": "none", "forward_function": "the model's"}
#: a full sha256 in hex; a setting shows it by its first 12 digits (the file holds all of it)
_SHA256 = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52}\b")


def show_axis(values: Sequence[float]) -> str:
    """A grid axis in words: its size, ends and (when even) step."""
    values = np.asarray(values, dtype=float)
    if values.size == 1:
        return f"1 point at {values[0]:g}"
    step = np.diff(values)
    even = np.allclose(step, step[0], rtol=1e-9, atol=0)
    return f"{values.size} points from {values[0]:g} to {values[-1]:g}" + (f", step {step[0]:.6g}" if even else " (uneven)")


def show_setting(key: str, value: Any) -> str:
    """One value of a run's settings (:data:`SETTINGS_FIELDS`) on one line, for reading: hashes shortened,
    grids summarized, a function field's null named by what it falls back to."""
    if value is None:
        return _CALLABLE_FIELDS.get(key, "none")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and value and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in value):
        return show_axis(value)
    if isinstance(value, list):
        return ", ".join(show_setting(key, e) for e in value) if value else "none"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show_setting(key, v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return _SHA256.sub("\\1…", value) if value else "none"
    return str(value)


# settings added after the first files were written, with the value a file that lacks them was made with
_LATER_SETTINGS = {"bf16": False, "loss_function": None, "metric_functions": None, "forward_function": None}
_UNRECORDED = object()


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``field (file: …, now: …)`` for each setting that differs. A field that ``old`` lacks (a file from an
    older lossmap) counts as that field's value before it was recorded (:data:`_LATER_SETTINGS`), so a run
    with those defaults still resumes such a file."""
    out = []
    for key in SETTINGS_FIELDS:
        was = old[key] if key in old else _LATER_SETTINGS.get(key, _UNRECORDED)
        if was != new.get(key):
            shown = "not recorded" if key not in old else show_setting(key, was)
            out.append(f"{key} (file: {shown}, now: {show_setting(key, new.get(key))})")
    return out


def _check_ranks_agree(ctx: "distributed.Context", settings: dict[str, Any]) -> None:
    try:
        every = distributed.all_gather_objects(ctx, settings)
    except Exception as exc:  # noqa: BLE001
        raise LossmapError(f"the ranks could not exchange their settings ({distributed.failure(exc)}): check that every rank started") from exc
    for rank, other in enumerate(every):
        diff = _differences(every[0], other)
        if diff:
            raise LossmapError(
                f"rank {rank} would compute another landscape than rank 0: {'; '.join(diff)} "
                f"(rank 0 is 'file', rank {rank} is 'now'): give every rank the same model, checkpoint, data and options"
            )


def _broadcast(ctx: "distributed.Context", obj: Any) -> Any:
    try:
        return distributed.broadcast(ctx, obj)
    except Exception as exc:  # noqa: BLE001
        raise LossmapError(f"rank 0 stopped answering ({distributed.failure(exc)}): see rank 0's error") from exc


def _open_existing(
    out: Path | None, overwrite: bool, settings: dict[str, Any], names: list[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """``(values, done mask, attributes)`` of a resumable ``out``; None when the run starts afresh."""
    if out is None or overwrite or not out.exists():
        return None
    try:
        ds = store.load(out)
    except LossmapError as exc:
        raise LossmapError(f"{exc}; pass --overwrite (overwrite=True) to start over") from None
    old = store.meta(ds).get("settings")
    if not isinstance(old, dict):
        raise LossmapError(
            f"output file {str(out)!r} exists and does not record the settings it was made with, so it cannot be "
            "resumed: pass --overwrite (overwrite=True) to replace it, or choose another --out"
        )
    diff = _differences(old, settings)
    if diff:
        raise LossmapError(
            f"output file {str(out)!r} was made with other settings: {'; '.join(diff)}; rerun with the file's "
            "settings to resume it, or pass --overwrite (overwrite=True) to start over"
        )
    mask = store.done_mask(ds).reshape(-1)
    values = np.stack([np.asarray(ds[name].values, dtype=np.float64).reshape(-1) for name in names], axis=1)
    return values, mask.copy(), store.meta(ds)


def _save_directions(directions: Directions, path: Path) -> Path:
    """Write the directions beside ``path`` atomically (temporary file + rename)."""
    dpath = store.directions_path(path)
    with store.atomic_path(dpath) as tmp:
        directions.save(tmp)
    return dpath


def _dataset(grid: Grid, names: list[str], values: np.ndarray, attrs: dict[str, Any]) -> xr.Dataset:
    dims = ("x",) if grid.ndim == 1 else ("x", "y")
    coords = {"x": grid.x} if grid.ndim == 1 else {"x": grid.x, "y": grid.y}
    data_vars = {name: (dims, values[:, k].reshape(grid.shape).copy()) for k, name in enumerate(names)}
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs))
    ds["x"].attrs["long_name"] = attrs["x_label"]
    if grid.ndim == 2:
        ds["y"].attrs["long_name"] = attrs["y_label"]
    return ds


@contextmanager
def _precision(device: str | torch.device, tf32: bool) -> Iterator[None]:
    """On CUDA, TF32 matmuls and convolutions only when asked for (cuDNN allows TF32 convolutions by
    default, a ~1e-3 relative error); the global flags are restored afterwards."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _reduced_precision_errors(evaluator: Any, ndim: int, tf32: bool) -> dict[str, float]:
    """The largest relative difference of the metrics at the centre between each reduced precision
    in use (TF32, bf16 autocast) and the same run without it: ``{"tf32_centre_rel_error": e, …}``."""
    amp = evaluator.autocast
    if not tf32 and amp is None:
        return {}
    centre = np.zeros((1, ndim))
    used = evaluator.evaluate_many(centre)

    def rel(exact: np.ndarray) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.nanmax(np.abs(used - exact) / np.maximum(np.abs(exact), 1e-30)))

    errors = {}
    if tf32:
        with _precision("cuda", False):
            errors["tf32_centre_rel_error"] = rel(evaluator.evaluate_many(centre))
    if amp is not None:
        evaluator.autocast = None
        try:
            errors["bf16_centre_rel_error"] = rel(evaluator.evaluate_many(centre))
        finally:
            evaluator.autocast = amp
    return errors


def _landscape(grid: Grid, names: list[str], values: np.ndarray, attrs: dict[str, Any], mask: np.ndarray) -> xr.Dataset:
    """The landscape as far as it is done; a complete one carries its summary numbers (``summary_*``)."""
    ds = store.partial_dataset(_dataset(grid, names, values, attrs), mask.reshape(grid.shape))
    if mask.all() and "loss" in ds:
        try:
            stats.attach(ds)
        except LossmapError as exc:  # e.g. no finite loss anywhere: the values are still worth keeping
            log.warning("no summary numbers: %s", exc)
    return ds


class _Sink:
    """The output file of a running computation: what is done, and when it was last written."""

    def __init__(
        self, path: Path, grid: Grid, names: list[str], values: np.ndarray, mask: np.ndarray,
        attrs: dict[str, Any], directions: Directions, flush_every: int, flush_seconds: float,
        engine: Callable[[], str],
    ) -> None:
        self.path, self.grid, self.names = path, grid, names
        self.values, self.mask, self.attrs = values, mask, attrs
        self.directions = directions
        self.engine = engine  # asked at every write: a vmap engine may fall back to one point at a time mid-run
        self.flush_every, self.flush_seconds = int(flush_every), float(flush_seconds)
        self.base_seconds = float(attrs.get("seconds", 0.0) or 0.0)  # of the runs before this one
        self.saved = int(mask.sum())
        self.last = self.began = time.monotonic()

    @property
    def writes_pending(self) -> int:
        return int(self.mask.sum()) - self.saved

    def start(self, fresh: bool) -> None:
        store.remove_stale_temporaries(self.path)
        dpath = store.directions_path(self.path)
        if fresh or not dpath.exists():
            _save_directions(self.directions, self.path)
        if fresh:
            self.flush()

    def due(self) -> bool:
        pending = self.writes_pending
        return pending > 0 and (pending >= self.flush_every or time.monotonic() - self.last >= self.flush_seconds)

    def flush(self) -> None:
        attrs = dict(self.attrs)
        attrs["seconds"] = round(self.base_seconds + time.monotonic() - self.began, 3)
        attrs["engine"] = self.engine()
        done = int(self.mask.sum())
        ds = _landscape(self.grid, self.names, self.values, attrs, self.mask)
        store.save(ds, self.path)
        self.saved, self.last = done, time.monotonic()
        log.info("saved %d of %d points to %s", done, self.mask.size, self.path)
