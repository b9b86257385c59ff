"""compute(): evaluate a model over a 1-D or 2-D grid of θ0 + Σ cᵢdᵢ and return a labelled landscape."""

from __future__ import annotations

import itertools
import logging
import signal
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import xarray as xr
from torch import nn

from . import distributed
from .directions import Directions, random_directions
from .errors import LossmapError
from .grid import Grid
from .objective import Objective
from .output import save_directions
from .precision import centre_errors, tf32_allowed
from .engine.running import Precision
from .run import Interrupted, Origin, Run, RunOptions, Terminated, directions_hash
from .settings import SETTINGS_FIELDS
from .space import borrow, check_finite, select_tensors, tensor_hash
from .uncertainty.order import shuffled
from .uncertainty.pointwise import population_size
from .uncertainty.seeds import Ensemble, parse_seeds

__all__ = ["compute", "compute_run", "save", "Interrupted", "Terminated", "SETTINGS_FIELDS"]

log = logging.getLogger("lossmap")

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def compute(model: nn.Module, data: Any, x: str | Sequence[float] = "-1:1:51", y: str | Sequence[float] | None = None,
            **options: Any) -> xr.Dataset:
    """The landscape of ``model`` on ``data`` over the grid ``x`` (× ``y``): an ``xarray.Dataset`` with one
    variable per metric (``loss``, ``accuracy``, …) and the metadata to reproduce it.

    θ0 is the model's current state; the model comes back exactly as it was. Without ``directions``, one
    (1-D) or two (2-D) random directions are drawn from ``seed`` with the given normalization and bias policy
    (filter normalization, biases and norm scales fixed: Li et al. 2018).

    Args:
        model (nn.Module): any ``nn.Module``; θ0 is its current state.
        data (Any): a Dataset, a DataLoader, an iterable of ``(inputs, targets)`` batches or an
            ``(inputs, targets)`` pair. Small data is cached on the device; data beyond ``memory_budget``
            (default: a quarter of the free memory) is streamed at every point (``cache="stream"`` forces it).
            Its order must be fixed: a shuffling loader is refused (``allow_nondeterministic=True`` accepts it
            with a warning).
        x (str | Sequence[float]): the first axis, ``"min:max:count"`` or the coefficients.
        y (str | Sequence[float] | None): the second axis; None for a 1-D line.
        **options (Any): the keyword arguments below.

    Keyword Args:
        directions (Directions | None): :class:`~lossmap.directions.Directions` (e.g.
            :func:`~lossmap.directions.target_directions` for an interpolation); they say which tensors move.
            ``include_buffers`` and ``tensor_filter`` must then agree with them (or be left out). Default: random
            directions drawn from ``seed``.
        seed (int): seed of the random directions (default 0).
        normalization (str): ``filter`` (default), ``layer``, ``model`` or ``none``.
        bias (str): directions of tensors with ≤ 1 dim: ``zero`` (default: they stay put), ``filter`` or ``keep``.
        orthogonalize (bool): make the second random direction orthogonal to the first.
        include_buffers (bool | None): move floating-point buffers too (None: follow the directions).
        tensor_filter (str | None): move only the tensors whose names match these comma-separated glob patterns.
        loss_fn (Any): ``loss_fn(output, target)`` returning the batch mean — an ``nn`` loss
            (``nn.CrossEntropyLoss()``), a function, or ``"cross-entropy"``, ``"nll"``, ``"mse"``, ``"l1"``,
            ``"module:function"``. Default: cross-entropy for class-index targets, MSE (mean over all elements,
            as ``nn.MSELoss()``) for floats.
        metrics (Mapping[str, Any] | None): ``{name: fn(output, target)}`` (batch mean or one value per example)
            or :class:`~lossmap.losses.Metric` (declares ``higher_is_better``); default: accuracy for class targets.
        output_transform (Any): the tensor the loss takes from the model's output: an attribute or key
            (``"logits"``), an index (``0``) or a function.
        forward (Callable | None): ``forward(model, batch) -> output`` instead of ``model(inputs)``.
        bn (str): batch-norm statistics ``"frozen"`` (evaluation mode, default) or ``"recompute"`` at every point.
        bn_data (Any): the data that re-estimates them under ``bn="recompute"`` (default: the evaluation data).
        device (str | torch.device): where to evaluate (default ``"cpu"``; under torchrun ``cuda`` means the
            local rank's GPU).
        dtype (str | torch.dtype | None): evaluation precision, e.g. ``"float64"`` (default: the model's).
        batch_size (int): samples per forward (default 256).
        samples (int | None): use the first ``samples`` samples (default: all).
        cache (str): ``auto`` (default), ``device`` or ``stream``.
        memory_budget (int | str | None): bytes (or ``"2GB"``) the cached data may take.
        allow_nondeterministic (bool): accept shuffled or randomly augmented data, with a recorded warning.
        out (str | Path | None): the file to write as the run goes, and to resume: a file made with the same
            settings is resumed, a complete one returned as it is; other settings raise
            :class:`~lossmap.errors.LossmapError` unless ``overwrite``.
        overwrite (bool): start ``out`` afresh whatever it holds.
        flush_every (int | None): write at least every this many points (default: 256 or 5 % of the grid).
        flush_seconds (float): write at least every this many seconds (default 10).
        chunk (int | None): points per evaluation call (default: what suits the engine); a chunk always holds
            the same points, so a resumed run equals an uninterrupted one bit for bit.
        engine (str): ``auto`` (default), ``plain``, ``fast`` or ``vmap``.
        tf32 (bool): allow TF32 on CUDA (the error at the centre is measured and stored).
        bf16 (bool): run the forwards under bfloat16 autocast (the error at the centre is measured and stored).
        progress (bool): show a progress bar on stderr.
        data_description (str | None): how the file names the data (default: its type and size).
        extra_attrs (Mapping[str, Any] | None): more attributes for the file.
        seeds (str | int | Sequence[int] | None): a direction ensemble, e.g. ``"0:8"``, ``8`` or ``[1, 5, 9]``: the
            same grid over these direction seeds in one file with a ``seed`` dimension
            (:mod:`lossmap.uncertainty.seeds`); replaces ``seed``.
        precision (float | None): evaluation to a stated precision: each point reads batches (in one shared random
            order) until ``precision_z`` standard errors w.r.t. the evaluation set are at most this fraction of its
            loss; ``samples_used`` records what each point read.
        precision_abs (float | None): the same with an absolute tolerance on the loss.
        precision_z (float): the normal quantile of the stated precision (default 1.96: 95 %).
        precision_min_batches (int): batches a point reads before it may stop (default 2).

    Returns:
        xr.Dataset: the landscape — dims ``x`` (and ``y``; with ``seeds`` also ``seed``), one variable per metric,
            per-point standard errors as coordinates (``loss_se``, ``loss_se_set`` when fewer samples than the data
            set's were read, ``loss_paired_se`` of the change from the centre; :mod:`lossmap.uncertainty.pointwise`),
            attributes that say how to reproduce it (see :mod:`lossmap.store`).

    Raises:
        LossmapError: a bad option, a model, data or loss that do not fit together, or an ``out`` made with
            other settings.
        Interrupted: Ctrl-C (SIGTERM: :class:`~lossmap.run.Terminated`), after the finished points were saved.

    Ctrl-C saves the finished points and raises :class:`Interrupted` (SIGTERM: :class:`Terminated`). Under
    ``torchrun`` the chunks are shared among the ranks and rank 0 writes ``out`` (:mod:`lossmap.distributed`).

    Examples:
        >>> import torch, lossmap
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> data = (torch.randn(64, 4), torch.randint(0, 3, (64,)))
        >>> ds = lossmap.compute(net, data, x="-1:1:5", y="-1:1:5", seed=0)
        >>> ds.loss.shape, sorted(ds.data_vars)
        ((5, 5), ['accuracy', 'loss'])
    """
    return compute_run(model, data, x, y, **options).landscape()


def compute_run(
    model: nn.Module, data: Any, x: str | Sequence[float] = "-1:1:51", y: str | Sequence[float] | None = None, *,
    directions: Directions | None = None, seed: int = 0, normalization: str = "filter", bias: str = "zero",
    orthogonalize: bool = False, include_buffers: bool | None = None, tensor_filter: str | None = None,
    loss_fn: Any = None, metrics: Mapping[str, Any] | None = None, output_transform: Any = None,
    forward: Callable | None = None, bn: str = "frozen", bn_data: Any = None, bn_description: str | None = None,
    device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None, batch_size: int = 256,
    samples: int | None = None, cache: str = "auto", memory_budget: int | str | None = None,
    allow_nondeterministic: bool = False, data_description: str | None = None, progress: bool = False,
    out: str | Path | None = None, overwrite: bool = False, chunk: int | None = None, engine: str = "auto",
    tf32: bool = False, bf16: bool = False, flush_every: int | None = None, flush_seconds: float = 10.0,
    extra_attrs: Mapping[str, Any] | None = None, seeds: str | int | Sequence[int] | None = None,
    precision: float | None = None, precision_abs: float | None = None, precision_z: float = 1.96,
    precision_min_batches: int = 2,
) -> Run | Ensemble:
    """:func:`compute`, returning the finished :class:`~lossmap.run.Run` (``run.landscape()`` is the result;
    ``run.computed`` the points this call evaluated), or with ``seeds`` the
    :class:`~lossmap.uncertainty.seeds.Ensemble` (the same two members). The arguments are :func:`compute`'s."""
    grid = Grid.from_specs(x, y)
    dtype = _dtype(dtype)
    rule = precision_rule(precision, precision_abs, precision_z, precision_min_batches, batch_size)
    seed_list = None if seeds is None else parse_seeds(seeds)
    if seed_list is not None and directions is not None:
        raise LossmapError("seeds draw one set of random directions per seed: drop directions (--directions) or seeds (--seeds)")
    options = RunOptions(
        out=None if out is None else _checked_out(out), overwrite=overwrite, progress=progress, chunk=chunk,
        flush_every=_flush_every(grid, flush_every), flush_seconds=_flush_seconds(flush_seconds), tf32=False,
        bf16=bool(bf16), loss_fn=loss_fn, metrics=metrics, forward=forward, output_transform=output_transform,
        extra_attrs=dict(extra_attrs or {}), precision=rule,
    )
    if chunk is not None and int(chunk) < 1:
        raise LossmapError(f"chunk {chunk!r} must be at least 1 point")
    coord, device = distributed.coordinator(device)
    origins = [resolve_origin(model, grid, directions, seed=s, normalization=normalization, bias=bias,
                              orthogonalize=orthogonalize, include_buffers=include_buffers, tensor_filter=tensor_filter)
               for s in (seed_list or [seed])]
    directions = origins[0].directions
    guard = ExitStack()  # the output file's lock, held until the last write
    try:
        with borrow(model, device, dtype) as lease, _sigterm_raises(out is not None), tf32_allowed(device, tf32):
            live = select_tensors(lease.model, directions.include_buffers, directions.tensor_filter)
            objective = Objective(
                lease.model, data, loss_fn, metrics=metrics, output_transform=output_transform, forward=forward,
                tensor_filter=directions.tensor_filter, include_buffers=directions.include_buffers, device=device,
                dtype=dtype, batch_size=batch_size, samples=samples, cache=cache, memory_budget=memory_budget,
                allow_nondeterministic=allow_nondeterministic, bn=bn, bn_data=bn_data,
                theta0=dict(zip(live, lease.origin(live))),
            )
            if bf16 and objective.theta0[objective.names[0]].dtype != torch.float32:
                raise LossmapError("bf16 autocast needs float32 parameters: drop the dtype or use float32")
            if rule is not None:  # points that stop early read a prefix: it must be a random draw
                objective.source, options.shuffled = shuffled(objective.source, seed=0)
            options.population = population_size(data, samples, objective.source.total, batch_size)
            options.tf32 = bool(tf32) and objective.device.type == "cuda"
            options.description = data_description or f"{type(data).__name__} ({objective.source.total} samples)"
            options.bn_description = bn_description or (
                "the evaluation data" if bn_data is None else f"{type(bn_data).__name__} ({objective.bn_source.total} samples)")
            make_run = _run_maker(grid, origins, objective, coord, options, engine, torch.bfloat16 if bf16 else None)
            if seed_list is not None:
                ens = _ensemble(seed_list, grid, origins, make_run, coord, options, guard)
                ens.values, ens.mask = coord.broadcast((ens.values, ens.mask) if coord.primary else None)
                return ens
            run = make_run(0)
            run.start(guard)
            done_before = int(run.mask.sum())
            if run.complete and run.resumed:
                run.say(f"{options.out} is complete ({grid.size} points): nothing to compute")
            run.evaluate()
            run.computed = int(run.mask.sum()) - done_before
        run.values, run.mask = coord.broadcast((run.values, run.mask) if coord.primary else None)
        return run
    finally:
        guard.close()


def _run_maker(grid: Grid, origins: list[Origin], objective: Objective, coord: Any, options: RunOptions, engine: str,
               autocast: torch.dtype | None) -> Callable[[int], Run]:
    """``make_run(k)``: the run of ``origins[k]`` with its own engine; θ0's per-example values and the error of a
    reduced precision at the centre are measured once and shared (they do not depend on the directions)."""
    shared: dict[str, Any] = {}

    def make_run(k: int) -> Run:
        ev = objective.engine(origins[k].directions.tensors[: grid.ndim], engine=engine, autocast=autocast)
        first = shared.get("first")
        if first is None:  # its reference pass comes with its first points
            shared["first"], shared["errors"] = ev, centre_errors(ev, grid.ndim, options.tf32)
        else:
            if not isinstance(first, tuple):  # keep the values, let the first engine go
                first.ensure_reference()
                shared["first"] = first = (first.reference, first.pilot_sd, list(first.per_example))
            ev.reference, ev.pilot_sd, ev.per_example = first[0], first[1], list(first[2])
        ev.precision = options.precision  # after the centre's reduced-precision check, which reads all the data
        return Run(grid, origins[k], objective, ev, coord, options, shared["errors"])

    return make_run


def _ensemble(seeds: list[int], grid: Grid, origins: list[Origin], make_run: Callable[[int], Run], coord: Any,
              options: RunOptions, guard: ExitStack) -> Ensemble:
    """Evaluate the seeds' runs into one file (:mod:`lossmap.uncertainty.seeds`)."""
    first = make_run(0)
    settings = {**first.settings, "seed": list(seeds),
                "directions_sha256": [directions_hash(o.directions, grid.ndim) for o in origins]}
    held = [first]
    ens = Ensemble(seeds, settings, grid.size, first.values.shape[1],
                   lambda k: held.pop() if k == 0 and held else make_run(k), coord, options, first.chunk)
    ens.start(guard, first.names)
    done = int(ens.mask.sum())
    if ens.resumed:
        first.say(f"{options.out} is complete ({ens.mask.size} points): nothing to compute" if ens.complete else
                  f"resuming {options.out}: {done} of {ens.mask.size} points ({len(seeds)} seeds) are done, "
                  f"{ens.mask.size - done} to go")
    ens.evaluate()
    return ens


def precision_rule(precision: float | None, precision_abs: float | None, z: float, min_batches: int,
                   batch_size: int) -> Precision | None:
    """The stopping rule of evaluation to a stated precision (None: every point reads all the data)."""
    if precision is not None and precision_abs is not None:
        raise LossmapError("give a relative precision (--precision) or an absolute one (--precision-abs), not both")
    if precision is None and precision_abs is None:
        return None
    if isinstance(min_batches, bool) or not isinstance(min_batches, int) or min_batches < 1:
        raise LossmapError(f"precision_min_batches={min_batches!r} must be a whole number >= 1")
    tol = precision if precision is not None else precision_abs
    return Precision(float(tol) if isinstance(tol, (int, float)) else tol, relative=precision is not None, z=float(z),
                     min_samples=max(2, int(min_batches) * int(batch_size)))


def save(ds: xr.Dataset, directions: Directions | None, path: str | Path) -> Path:
    """Save the landscape as netCDF/HDF5 and, when given, its directions beside it as safetensors.

    Args:
        ds (xr.Dataset): the landscape.
        directions (Directions | None): its directions, written as ``<stem>.directions.safetensors``.
        path (str | Path): the ``.nc`` file to write (atomically: a crash never leaves half a file).

    Returns:
        Path: the path written.

    Examples:
        >>> import torch, lossmap
        >>> net = torch.nn.Linear(3, 2)
        >>> d = lossmap.random_directions(net, count=1, seed=0)
        >>> ds = lossmap.compute(net, (torch.randn(16, 3), torch.randn(16, 2)), x="-1:1:5", directions=d)
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> lossmap.save(ds, d, folder / "line.nc").name
        'line.nc'
        >>> sorted(p.name for p in folder.iterdir())
        ['line.directions.safetensors', 'line.nc']
    """
    from . import store

    path = Path(path)
    if directions is not None:
        ds.attrs["directions_file"] = save_directions(directions, path).name
    return store.save(ds, path)


def resolve_origin(
    model: nn.Module, grid: Grid, directions: Directions | None, *, seed: int, normalization: str, bias: str,
    orthogonalize: bool, include_buffers: bool | None, tensor_filter: str | None,
) -> Origin:
    """θ0 and the given directions, checked against each other and the grid, or directions drawn from ``seed``."""
    if directions is not None:  # the directions say which tensors move; a contradicting option is an error
        if include_buffers is not None and bool(include_buffers) != directions.include_buffers:
            have = "cover" if directions.include_buffers else "do not cover"
            raise LossmapError(
                f"include_buffers={include_buffers} but the directions {have} the model's buffers: leave include_buffers "
                "out (the directions decide), or make directions with the buffers you want"
            )
        if tensor_filter is not None and tensor_filter != directions.tensor_filter:
            raise LossmapError(
                f"tensor_filter={tensor_filter!r} but the directions were made for {directions.tensor_filter!r}: leave "
                "tensor_filter out (the directions decide), or make directions for the tensors you want"
            )
    else:
        live = select_tensors(model, bool(include_buffers), tensor_filter)
        check_finite({n: t.detach() for n, t in live.items()})
        directions = random_directions(
            model, grid.ndim, seed=seed, normalization=normalization, bias=bias, orthogonalize=orthogonalize,
            include_buffers=bool(include_buffers), tensor_filter=tensor_filter,
        )
    live = select_tensors(model, directions.include_buffers, directions.tensor_filter)
    check_finite({n: t.detach() for n, t in live.items()})
    if directions.count < grid.ndim:
        raise LossmapError(f"a {grid.ndim}-D grid needs {grid.ndim} directions but {directions.count} were given")
    directions.check(live)
    theta0_hash = tensor_hash(live)
    if directions.kind == "target" and directions.origin_sha256 and directions.origin_sha256 != theta0_hash:
        raise LossmapError("the model's parameters are not the origin model A of these target directions: load A's checkpoint into the model")
    moved = [n for n in live if any(bool(d[n].any()) for d in directions.tensors[: grid.ndim])]
    _warn_negative_variances(live, directions, grid, moved)
    n_params = sum(p.numel() for p in model.parameters())
    return Origin(directions, live, theta0_hash, int(n_params), moved)


def _warn_negative_variances(live: Mapping[str, torch.Tensor], directions: Directions, grid: Grid, moved: list[str]) -> None:
    """Moved batch-norm running variances that turn negative inside the grid (extrapolating an interpolation
    beyond its models) make the loss NaN there: say where, once."""
    names = [n for n in moved if n.endswith("running_var")]
    axes = [grid.x] + ([grid.y] if grid.y is not None else [])
    bad = []
    for corner in itertools.product(*[(float(a[0]), float(a[-1])) for a in axes]):
        for n in names:
            value = live[n].detach().double() + sum(c * d[n].double() for c, d in zip(corner, directions.tensors))
            if bool((value < 0).any()):
                bad.append(corner)
                break
    if bad:
        where = ", ".join("(" + ", ".join(f"{c:g}" for c in corner) + ")" for corner in bad)
        log.warning("batch-norm running variances are negative at the grid corner(s) %s: the loss is NaN where they are; "
                    "keep the grid nearer the models or use bn='recompute' (--bn recompute)", where)


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise LossmapError(f"dtype {dtype!r} is unknown: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _checked_out(out: str | Path) -> Path:
    from . import store

    return store.check_output(out)


def _flush_every(grid: Grid, flush_every: int | None) -> int:
    if flush_every is None:  # a write costs ~20 ms: on fast models, at most ~20 writes per grid
        return max(256, grid.size // 20)
    if int(flush_every) < 1:
        raise LossmapError(f"flush every {flush_every!r} points: must be at least 1")
    return int(flush_every)


def _flush_seconds(seconds: float) -> float:
    if not float(seconds) >= 0:
        raise LossmapError(f"flush every {seconds!r} seconds: must be 0 or more")
    return float(seconds)


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
