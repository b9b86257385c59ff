"""A recorded training run: its manifest, its checkpoint files, and reading them piece by piece.

A run folder (written by :class:`lossmap.trajectory.Recorder`) holds one safetensors file per
checkpoint and ``manifest.json``::

    {"format": "lossmap.run", "format_version": 1, "checkpoints": [
        {"step": 0, "file": "step-000000000.safetensors", "epoch": 0, "lr": 0.1, "loss": null,
         "time": 1717000000.0, "scalars": {}},
        ...]}

``time`` is the wall-clock time of the save (seconds since the Unix epoch); ``epoch``, ``lr`` and
``loss`` are null when unknown; ``scalars`` holds any further numbers the training loop passed.
Non-finite values are written as JSON ``NaN``/``Infinity`` (as Python's :mod:`json` does).

Each checkpoint file is the model's whole state dict (floating and integer tensors alike, so it
reloads with ``model.load_state_dict``); its safetensors header metadata lists the names in the
state dict's order (``names``), which of them are parameters (``parameters``) and the filter the
recorder used (``model_filter``).

The analyses read checkpoints with :func:`read_header` and :func:`read_piece`: plain positioned
reads of one flat range of one tensor into a caller's buffer. ``safetensors.safe_open`` maps the
whole file, and the pages a read touches stay resident while the file is open, so reading M files
piece by piece through it would hold up to M models in the process's memory (RSS); positioned reads
keep only the buffer.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import torch

from ..errors import LossmapError

MANIFEST = "manifest.json"
FORMAT = "lossmap.run"
FORMAT_VERSION = 1

#: safetensors dtype codes of the floating-point tensors the analyses read
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 << 20

__all__ = ["Checkpoint", "TensorInfo", "Header", "Run", "load_run", "read_header", "read_piece", "MANIFEST",
           "FLOAT_DTYPES"]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint file: safetensors dtype code (``"F32"``…), shape, byte range of its data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int = 0
    end: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    """The parsed header of a safetensors file: tensors in the recorded state-dict order, metadata, and
    where the data starts."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


@dataclass(frozen=True)
class Checkpoint:
    """One line of a manifest."""

    step: int
    path: Path
    epoch: float | None = None
    lr: float | None = None
    loss: float | None = None
    time: float | None = None
    scalars: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """A run folder's checkpoints in step order and the tensors they hold (all checkpoints alike).

    ``parameters`` are the names that were model parameters when recorded (the tensors an analysis
    moves by default); ``model_filter`` is the recorder's filter ('' for the whole state dict).
    """

    folder: Path
    checkpoints: tuple[Checkpoint, ...]
    tensors: dict[str, TensorInfo]
    parameters: tuple[str, ...]
    model_filter: str = ""

    def __len__(self) -> int:
        return len(self.checkpoints)

    @property
    def steps(self) -> np.ndarray:
        return np.array([c.step for c in self.checkpoints], dtype=np.int64)

    @property
    def paths(self) -> list[Path]:
        return [c.path for c in self.checkpoints]

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self.tensors.items()}


def read_header(path: str | Path) -> Header:
    """Parse a safetensors file's header (nothing else is read).

    Args:
        path (str | Path): the file.
    Returns:
        Header: tensors in the order of the ``names`` metadata when present, else the header's order.
    Example:
        >>> read_header("run/step-000000100.safetensors").tensors["fc.weight"].shape  # doctest: +SKIP
        (10, 64)
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} exceeds the file")
            raw = json.loads(fh.read(n))
        meta = raw.pop("__metadata__", None) or {}
        tensors: dict[str, TensorInfo] = {}
        for name, info in raw.items():
            begin, end = (int(v) for v in info["data_offsets"])
            t = TensorInfo(str(info["dtype"]), tuple(int(s) for s in info["shape"]), begin, end)
            if not 0 <= begin <= end <= size - 8 - n or end - begin != t.numel * _ITEMSIZE.get(t.dtype, 0):
                raise ValueError(f"tensor {name!r} has a bad byte range")
            tensors[name] = t
    except FileNotFoundError:
        raise LossmapError(f"checkpoint {str(path)!r} does not exist: restore it or remove its line from the manifest") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LossmapError(f"checkpoint {str(path)!r} is damaged or not a safetensors file ({exc}): save it again") from exc
    order = _json_list(meta.get("names"))
    if order and sorted(order) == sorted(tensors):
        tensors = {k: tensors[k] for k in order}
    return Header(path, tensors, {str(k): str(v) for k, v in meta.items()}, 8 + n)


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text) if text else []
    except json.JSONDecodeError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def read_piece(fh: BinaryIO, header: Header, name: str, lo: int, hi: int, buf: torch.Tensor) -> torch.Tensor:
    """Read values ``lo:hi`` of tensor ``name`` (flat, row-major) from an open file.

    Args:
        fh (BinaryIO): ``open(header.path, "rb", buffering=0)``.
        header (Header): the file's header.
        name (str): a floating-point tensor of the file.
        lo, hi (int): the flat range.
        buf (torch.Tensor): a contiguous uint8 scratch buffer of at least ``(hi - lo) * itemsize`` bytes.
    Returns:
        torch.Tensor: a 1-D view of ``buf`` in the tensor's dtype (valid until ``buf`` is reused).
    Example:
        >>> h = read_header(path); fh = open(path, "rb", buffering=0)  # doctest: +SKIP
        >>> read_piece(fh, h, "fc.bias", 0, 10, torch.empty(40, dtype=torch.uint8)).double()  # doctest: +SKIP
    """
    info = header.tensors[name]
    dtype = FLOAT_DTYPES[info.dtype]
    size = _ITEMSIZE[info.dtype]
    nbytes = (hi - lo) * size
    view = buf[:nbytes]
    mem = memoryview(view.numpy())
    fh.seek(header.data_start + info.begin + lo * size)
    done = 0
    while done < nbytes:
        got = fh.readinto(mem[done:])
        if not got:
            raise LossmapError(f"checkpoint {str(header.path)!r} ends early while reading {name!r}: it was truncated; "
                               "save it again")
        done += got
    return view.view(dtype)


if sys.byteorder != "little":  # pragma: no cover - safetensors files are little-endian
    raise ImportError("lossmap.trajectory reads safetensors files on little-endian machines only")


# --------------------------------------------------------------------------------------------------------
# the manifest
# --------------------------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The manifest's checkpoint entries as written (``[]`` when the folder has no manifest)."""
    path = folder / MANIFEST
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = raw["checkpoints"]
        if raw.get("format") != FORMAT or not isinstance(entries, list):
            raise ValueError(f"format {raw.get('format')!r} is not {FORMAT!r}")
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not isinstance(e.get("step"), int):
                raise ValueError(f"entry {str(e)[:80]} needs an integer 'step' and a 'file'")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LossmapError(f"manifest {str(path)!r} is damaged ({exc}): restore it from a backup or record the run "
                           "again") from exc
    return entries


def _checkpoint(folder: Path, e: dict[str, Any]) -> Checkpoint:
    def num(key: str) -> float | None:
        v = e.get(key)
        return None if v is None else float(v)

    return Checkpoint(int(e["step"]), folder / e["file"], num("epoch"), num("lr"), num("loss"), num("time"),
                      dict(e.get("scalars") or {}))


def _describe_difference(a: dict[str, TensorInfo], b: dict[str, TensorInfo]) -> str:
    missing = [n for n in a if n not in b]
    extra = [n for n in b if n not in a]
    if missing or extra:
        parts = ([f"lacks {', '.join(missing[:3])}"] if missing else []) + ([f"adds {', '.join(extra[:3])}"] if extra else [])
        return "; ".join(parts)
    for n in a:
        if a[n].shape != b[n].shape or a[n].dtype != b[n].dtype:
            return f"{n} is {b[n].dtype}{list(b[n].shape)} instead of {a[n].dtype}{list(a[n].shape)}"
    return ""


def load_run(folder: str | Path, min_checkpoints: int = 1) -> Run:
    """Read a run folder's manifest and check its checkpoint files (headers only).

    Args:
        folder (str | Path): a folder written by :class:`~lossmap.trajectory.Recorder`.
        min_checkpoints (int): raise unless the run has at least this many checkpoints (the plane of a
            trajectory needs 3).
    Returns:
        Run: the checkpoints in step order and their common tensors.
    Raises:
        LossmapError: missing folder or manifest, no checkpoints, a listed file that is missing or
            damaged, two lines with one step, checkpoints whose tensor names, shapes or dtypes differ,
            fewer than ``min_checkpoints`` checkpoints.
    Example:
        >>> run = load_run("runs/sgd", min_checkpoints=3)  # doctest: +SKIP
        >>> run.steps[:3]  # doctest: +SKIP
        array([  0, 100, 200])
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LossmapError(f"run folder {str(folder)!r} does not exist: record a run there with lossmap.trajectory.Recorder")
    if not (folder / MANIFEST).is_file():
        raise LossmapError(f"run folder {str(folder)!r} has no {MANIFEST}: record the run with lossmap.trajectory.Recorder")
    entries = read_manifest(folder)
    if not entries:
        raise LossmapError(f"manifest of run {str(folder)!r} lists no checkpoints: record at least "
                           f"{max(min_checkpoints, 1)} steps")
    checkpoints = sorted((_checkpoint(folder, e) for e in entries), key=lambda c: c.step)
    for a, b in zip(checkpoints, checkpoints[1:]):
        if a.step == b.step:
            raise LossmapError(f"manifest of run {str(folder)!r} lists step {a.step} twice: remove one of its lines")
    if len(checkpoints) < min_checkpoints:
        raise LossmapError(f"run {str(folder)!r} has {len(checkpoints)} checkpoint(s) but at least {min_checkpoints} "
                           "are needed: record more steps (a denser schedule or a longer run)")
    for c in checkpoints:
        if not c.path.is_file():
            raise LossmapError(f"manifest of run {str(folder)!r} lists {c.path.name} (step {c.step}) but the file is "
                               "missing: restore it or remove its line from the manifest")
    headers = [read_header(c.path) for c in checkpoints]
    first = headers[0]
    for c, h in zip(checkpoints[1:], headers[1:]):
        diff = _describe_difference(first.tensors, h.tensors)
        if diff:
            raise LossmapError(f"checkpoint {c.path.name} of run {str(folder)!r} differs from {checkpoints[0].path.name} "
                               f"({diff}): a run folder holds checkpoints of one architecture")
    params = [n for n in _json_list(first.metadata.get("parameters")) if n in first.tensors]
    if not params:  # written by another tool: every floating tensor counts as a parameter
        params = [n for n, t in first.tensors.items() if t.dtype in FLOAT_DTYPES]
    return Run(folder, tuple(checkpoints), dict(first.tensors), tuple(params), first.metadata.get("model_filter", ""))


def as_runs(runs: "Run | str | Path | Sequence[Run | str | Path]", min_checkpoints: int = 1) -> list[Run]:
    """One or several runs (objects or folders) as a list of :class:`Run`."""
    items = [runs] if isinstance(runs, (Run, str, Path)) else list(runs)
    if not items:
        raise LossmapError("no run given: pass a run folder (or several)")
    return [r if isinstance(r, Run) else load_run(r, min_checkpoints) for r in items]
