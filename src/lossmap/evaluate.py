"""The hot loop: metrics of a model at θ0 + Σ cᵢdᵢ over cached batches.

Data is materialized once on the evaluation device (and dtype) as a list of ``(inputs, targets, n)``
batches. A point is evaluated by writing its parameters in place (foreach kernels, no allocation),
then one forward pass per batch under ``torch.inference_mode`` that feeds every metric.
Sums are accumulated on the device in float64 and read back once per point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import LossmapError
from .space import write_point

BN_POLICIES = ("frozen", "recompute")
_INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values", "input_ids")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
MetricFn = Callable[[torch.Tensor, Any], torch.Tensor]

__all__ = ["Batch", "prepare_batches", "split_batch", "Evaluator", "make_evaluator", "BN_POLICIES", "describe_data"]


@dataclass
class Batch:
    """One cached batch: the original batch (moved to the device), its inputs, targets and size."""

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


def _batch_len(inputs: Any, targets: Any) -> int:
    for t in (targets, inputs):
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
        if isinstance(t, Mapping):
            for v in t.values():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    return int(v.shape[0])
    raise LossmapError("cannot tell the batch size: inputs or targets must be tensors with a batch dimension")


def _to(obj: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and dtype is not None:
            return obj.to(device=device, dtype=dtype).contiguous()
        return obj.to(device=device).contiguous()
    if isinstance(obj, Mapping):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device, dtype) for v in obj)
    return obj


def _truncate(obj: Any, n: int) -> Any:
    if isinstance(obj, torch.Tensor) and obj.dim() > 0:
        return obj[:n]
    if isinstance(obj, Mapping):
        return {k: _truncate(v, n) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_truncate(v, n) for v in obj)
    return obj


def _iter_batches(data: Any, batch_size: int) -> Iterable[Any]:
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorDataset(*data)
    if isinstance(data, TensorDataset):
        n = len(data)
        for start in range(0, n, batch_size):
            yield tuple(t[start : start + batch_size] for t in data.tensors)
    elif isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        yield from DataLoader(data, batch_size=batch_size, shuffle=False)
    elif isinstance(data, (DataLoader, Iterable)):
        yield from data
    else:
        raise LossmapError(
            f"data of type {type(data).__name__} is not understood: pass a Dataset, a DataLoader, "
            "an iterable of batches or an (inputs, targets) tuple of tensors"
        )


def prepare_batches(
    data: Any,
    batch_size: int = 256,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> list[Batch]:
    """Materialize up to ``samples`` samples of ``data`` once, on ``device`` in ``dtype``."""
    if batch_size < 1:
        raise LossmapError(f"batch size {batch_size} must be at least 1")
    if samples is not None and samples < 1:
        raise LossmapError(f"samples {samples} must be at least 1 (or None for all)")
    device = torch.device(device)
    out: list[Batch] = []
    seen = 0
    for raw in _iter_batches(data, batch_size):
        inputs, targets = split_batch(raw)
        n = _batch_len(inputs, targets)
        if samples is not None and seen + n > samples:
            n = samples - seen
            raw = _truncate(raw, n)
        if n <= 0:
            break
        raw = _to(raw, device, dtype)
        inputs, targets = split_batch(raw)
        out.append(Batch(raw, inputs, targets, n))
        seen += n
        if samples is not None and seen >= samples:
            break
    if not out:
        raise LossmapError("the data has no samples: pass a non-empty dataset (check the data spec and --samples)")
    return out


def describe_data(data: Any, batches: Sequence[Batch]) -> str:
    n = sum(b.size for b in batches)
    return f"{type(data).__name__} ({n} samples)"


def _default_loss(outputs: torch.Tensor, targets: Any) -> torch.Tensor:
    if targets is None:
        raise LossmapError("the data has no targets, so the default cross-entropy loss cannot be used: pass loss_fn=...")
    if isinstance(targets, torch.Tensor) and targets.is_floating_point() and targets.shape == outputs.shape:
        return F.mse_loss(outputs, targets, reduction="sum")
    return F.cross_entropy(outputs, targets, reduction="sum")


def _wants_accuracy(batches: Sequence[Batch]) -> bool:
    t = batches[0].targets
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() and t.dim() == 1


class Evaluator:
    """Evaluates metrics at points θ0 + Σ cᵢdᵢ of one model.

    ``live`` are the model's tensors that move, ``origin`` θ0 for them and ``directions`` one list of
    tensors per direction (same order, device and dtype). ``loss_fn(outputs, batch)`` and each
    ``metrics[name](outputs, batch)`` return the batch *mean*; they are weighted by batch size.
    Without ``loss_fn`` the loss is cross-entropy on class targets (MSE on float targets of the
    outputs' shape), and top-1 accuracy is added for class targets.
    """

    def __init__(
        self,
        model: nn.Module,
        live: Sequence[torch.Tensor],
        origin: Sequence[torch.Tensor],
        directions: Sequence[Sequence[torch.Tensor]],
        batches: Sequence[Batch],
        loss_fn: LossFn | None = None,
        metrics: Mapping[str, MetricFn] | None = None,
        bn: str = "frozen",
        bn_batches: Sequence[Batch] | None = None,
        forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    ) -> None:
        if bn not in BN_POLICIES:
            raise LossmapError(f"batch-norm policy {bn!r} is unknown: choose one of {', '.join(BN_POLICIES)}")
        self.model = model
        self.live = list(live)
        self.origin = list(origin)
        self.directions = [list(d) for d in directions]
        self.batches = list(batches)
        self.total = sum(b.size for b in self.batches)
        self.loss_fn = loss_fn
        self.extra = dict(metrics or {})
        self.accuracy = loss_fn is None and "accuracy" not in self.extra and _wants_accuracy(self.batches)
        self.bn = bn
        self.bn_batches = list(bn_batches) if bn_batches is not None else self.batches
        self.bn_modules = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.forward = forward
        device = self.origin[0].device
        self._acc = torch.zeros(self.n_metrics, dtype=torch.float64, device=device)

    @property
    def metric_names(self) -> list[str]:
        names = ["loss"] + (["accuracy"] if self.accuracy else [])
        return names + [n for n in self.extra if n not in names]

    @property
    def n_metrics(self) -> int:
        return len(self.metric_names)

    def _run(self, b: Batch) -> torch.Tensor:
        return self.model(b.inputs) if self.forward is None else self.forward(self.model, b.raw)

    def _recompute_bn(self) -> None:
        momenta = [m.momentum for m in self.bn_modules]
        try:
            for m in self.bn_modules:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over all batches
                m.train()
            with torch.no_grad():
                for b in self.bn_batches:
                    self._run(b)
        finally:
            for m, mom in zip(self.bn_modules, momenta):
                m.momentum = mom
                m.eval()

    def __call__(self, coeffs: Sequence[float]) -> list[float]:
        """Metrics (in ``metric_names`` order) at θ0 + Σ coeffs[i]·d[i]."""
        write_point(self.live, self.origin, self.directions, coeffs)
        self.model.eval()
        if self.bn == "recompute" and self.bn_modules:
            self._recompute_bn()
        acc = self._acc
        acc.zero_()
        with torch.inference_mode():
            for b in self.batches:
                out = self._run(b)
                if self.loss_fn is None:
                    acc[0] += _default_loss(out, b.targets).double()
                else:
                    acc[0] += torch.as_tensor(self.loss_fn(out, b.raw)).double() * b.size
                k = 1
                if self.accuracy:
                    acc[1] += (out.argmax(dim=1) == b.targets).sum()
                    k = 2
                for name in self.metric_names[k:]:
                    acc[k] += torch.as_tensor(self.extra[name](out, b.raw)).double() * b.size
                    k += 1
        return (acc / self.total).tolist()

    def evaluate_many(self, coeffs: np.ndarray) -> np.ndarray:
        """Metrics at several points: ``coeffs`` is ``(points, ndim)``, the result ``(points, n_metrics)``.

        The landscape loop hands points over in chunks through this method, so that a faster
        evaluator may treat a chunk at once.
        """
        out = np.empty((len(coeffs), self.n_metrics), dtype=np.float64)
        for i, c in enumerate(coeffs):
            out[i] = self(c)
        return out


def make_evaluator(
    model: nn.Module,
    live: Sequence[torch.Tensor],
    origin: Sequence[torch.Tensor],
    directions: Sequence[Sequence[torch.Tensor]],
    batches: Sequence[Batch],
    loss_fn: LossFn | None = None,
    metrics: Mapping[str, MetricFn] | None = None,
    bn: str = "frozen",
    bn_batches: Sequence[Batch] | None = None,
    forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    engine: str = "auto",
) -> Evaluator:
    """The evaluator for these settings (``engine="plain"``: the reference path)."""
    return Evaluator(model, live, origin, directions, batches, loss_fn, metrics, bn, bn_batches, forward)
