"""Batches: what a data source yields, split into inputs and targets, moved, cut and re-cut."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from ..errors import LossmapError

__all__ = ["Batch", "split_batch", "batch_len", "to_device", "truncate", "cut", "rebatch", "nbytes", "iterate", "make_batch"]

_INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values", "input_ids")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")


@dataclass
class Batch:
    """One batch on the evaluation device: the batch as the data gave it, its inputs, targets and size."""

    raw: Any
    inputs: Any
    targets: Any
    size: int


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a tuple/list batch or a dict batch (keys like ``x``/``input`` and ``y``/``label``)."""
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
        targets = next((batch[k] for k in _TARGET_KEYS if k in batch), None)
        if inputs is None:
            raise LossmapError(
                f"dict batches need an input key ({', '.join(_INPUT_KEYS)}); got keys {sorted(batch)}: "
                "rename the key or pass forward=..."
            )
        return inputs, targets
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise LossmapError("an empty batch was given: batches must be (inputs, targets) tuples or dicts")
        return batch[0], batch[1] if len(batch) > 1 else None
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise LossmapError(f"batches of type {type(batch).__name__} are not understood: use (inputs, targets) tuples or dicts")


def batch_len(inputs: Any, targets: Any) -> int:
    """The number of examples in a batch (the first dim of its targets or inputs)."""
    for t in (targets, inputs):
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
        if isinstance(t, Mapping):
            for v in t.values():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    return int(v.shape[0])
    raise LossmapError("cannot tell the batch size: inputs or targets must be tensors with a batch dimension")


def make_batch(raw: Any, size: int | None = None) -> Batch:
    inputs, targets = split_batch(raw)
    return Batch(raw, inputs, targets, batch_len(inputs, targets) if size is None else size)


def to_device(obj: Any, device: torch.device, dtype: torch.dtype | None, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor on ``device`` (floating ones in ``dtype`` when given), contiguous."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and dtype is not None:
            return obj.to(device=device, dtype=dtype, non_blocking=non_blocking).contiguous()
        return obj.to(device=device, non_blocking=non_blocking).contiguous()
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, dtype, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, dtype, non_blocking) for v in obj)
    return obj


def cut(obj: Any, lo: int, hi: int) -> Any:
    """Examples ``lo:hi`` of every batched tensor in ``obj`` (views)."""
    if isinstance(obj, torch.Tensor) and obj.dim() > 0:
        return obj[lo:hi]
    if isinstance(obj, Mapping):
        return {k: cut(v, lo, hi) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cut(v, lo, hi) for v in obj)
    return obj


def truncate(obj: Any, n: int) -> Any:
    return cut(obj, 0, n)


def nbytes(obj: Any) -> int:
    """Bytes held by the tensors in ``obj``."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def _joinable(raws: Sequence[Any]) -> bool:
    first = raws[0]
    return all(isinstance(r, (tuple, list)) and all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in r) for r in raws) and all(
        len(r) == len(first) and all(t.shape[1:] == t0.shape[1:] for t, t0 in zip(r, first)) for r in raws
    )


def rebatch(batches: Sequence[Batch], size: int) -> list[Batch]:
    """Re-cut the batches into nearly equal pieces of at most ``size`` examples.

    Tuple (or list) batches of tensors with matching shapes are joined first (256+256+256+232 examples at
    size 113 become 9 pieces of 111-112, not 113+113+30+…+6); other batches are only split.
    """
    raws = [b.raw for b in batches]
    if _joinable(raws):
        joined = tuple(torch.cat(parts) for parts in zip(*raws)) if len(raws) > 1 else raws[0]
        total = sum(b.size for b in batches)
        count = -(-total // size)
        bounds = [round(i * total / count) for i in range(count + 1)]
        return [make_batch(tuple(t[lo:hi].contiguous() for t in joined), hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]
    out: list[Batch] = []
    for b in batches:
        if b.size <= size:
            out.append(b)
            continue
        for lo in range(0, b.size, size):
            hi = min(lo + size, b.size)
            out.append(make_batch(cut(b.raw, lo, hi), hi - lo))
    return out


def iterate(data: Any, batch_size: int) -> Iterable[Any]:
    """The raw batches of ``data``: (inputs, targets) tensors and TensorDatasets are sliced, a map-style
    Dataset goes through a ``DataLoader`` in order, a DataLoader or any iterable of batches as it is."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorDataset(*data)
    if isinstance(data, TensorDataset):
        return _slices(data, batch_size)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, (DataLoader, Iterable)):
        return data
    raise LossmapError(
        f"data of type {type(data).__name__} is not understood: pass a Dataset, a DataLoader, "
        "an iterable of batches or an (inputs, targets) tuple of tensors"
    )


def _slices(data: TensorDataset, batch_size: int) -> "_Slices":
    return _Slices(data, batch_size)


class _Slices:
    """A TensorDataset cut into batches, re-iterable (each pass slices the same tensors)."""

    def __init__(self, data: TensorDataset, batch_size: int) -> None:
        self.data, self.batch_size = data, batch_size

    def __iter__(self) -> Iterator[tuple]:
        n = len(self.data)
        for start in range(0, n, self.batch_size):
            yield tuple(t[start : start + self.batch_size] for t in self.data.tensors)

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)
