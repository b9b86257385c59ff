"""The reference loop: the metrics of a model at θ0 + Σ cᵢdᵢ, one point at a time.

A point is evaluated by writing its parameters into the model in place (foreach kernels, no allocation),
then one forward pass per batch under ``torch.inference_mode`` that feeds every metric. Sums are
accumulated on the device in float64 and read back once per point. Every faster engine computes the
same numbers (the tests hold them to this loop in float64 at 1e-6).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data.batches import Batch
from ..data.source import Source
from ..errors import LossmapError
from ..losses import Loss, Metric, OutputTransform
from ..space import write_point
from .diagnose import Stage, check_output, diagnose

__all__ = ["Workload", "Engine", "BN_POLICIES"]

BN_POLICIES = ("frozen", "recompute")


@dataclass
class Workload:
    """What an engine evaluates: the model, the tensors that move (live, in the model), θ0 for them, the
    directions (one list of tensors per direction, same order), the data, the loss and metrics, how to
    run the model and the batch-norm policy."""

    model: nn.Module
    live: list[torch.Tensor]
    origin: list[torch.Tensor]
    directions: list[list[torch.Tensor]]
    source: Source
    loss: Loss
    metrics: dict[str, Metric] = field(default_factory=dict)
    output: OutputTransform = field(default_factory=OutputTransform)
    forward: Callable[[nn.Module, Any], Any] | None = None
    bn: str = "frozen"
    bn_source: Source | None = None
    autocast: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.bn not in BN_POLICIES:
            raise LossmapError(f"batch-norm policy {self.bn!r} is unknown: choose one of {', '.join(BN_POLICIES)}")

    @property
    def bn_modules(self) -> list[nn.Module]:
        return [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @property
    def metric_names(self) -> list[str]:
        return ["loss", *self.metrics]

    def write(self, coeffs: Sequence[float]) -> None:
        """Set the live tensors to θ0 + Σ coeffs[i]·d[i]."""
        write_point(self.live, self.origin, self.directions, [float(c) for c in coeffs])


class Engine:
    """The reference loop over a :class:`Workload`. Faster engines override :meth:`_output` (how one batch's
    output is made at the point just written) and may re-cut the batches (``self.source``)."""

    name = "plain"
    preferred_chunk = 8  # points per evaluate_many call that suit this engine

    def __init__(self, work: Workload) -> None:
        self.work = work
        self.model = work.model
        self.source = work.source
        self.speedups: list[str] = []
        self.autocast = work.autocast
        self.metric_names = work.metric_names
        self.n_metrics = len(self.metric_names)
        self.total = work.source.total
        self._acc = torch.zeros(self.n_metrics, dtype=torch.float64, device=work.origin[0].device)
        self._stage = Stage()

    # -- what the file records -----------------------------------------------------------------
    def describe(self) -> str:
        """The engine and the speed-ups in use, e.g. ``"fast: sub-batch 113, channels_last"``."""
        return self.name + (": " + ", ".join(self.speedups) if self.speedups else "")

    # -- one forward -----------------------------------------------------------------------------
    def amp(self) -> contextlib.AbstractContextManager:
        """The autocast context of a forward pass (nothing without ``autocast``)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.work.origin[0].device.type, dtype=self.autocast)

    def widen(self, out: Any) -> Any:
        """Autocast outputs back in the parameters' dtype, so that metrics sum in full precision."""
        dtype = self.work.origin[0].dtype
        if self.autocast is not None and isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != dtype:
            return out.to(dtype)
        return out

    def run_model(self, b: Batch) -> Any:
        """The model's raw output on one batch (the user's ``forward`` when given)."""
        if self.work.forward is None:
            return self.model(b.inputs)
        return self.work.forward(self.model, b.raw)

    def _output(self, j: int, b: Batch, coeffs: Sequence[float]) -> Any:
        """The model's output on batch ``j`` at the point just written (fast paths override this)."""
        return self.run_model(b)

    # -- one point -----------------------------------------------------------------------------
    def _recompute_bn(self) -> None:
        """Re-estimate batch-norm statistics at the point just written: a cumulative average over the
        batch-norm data in training mode (momentum None), then evaluation mode again."""
        modules = self.work.bn_modules
        momenta = [m.momentum for m in modules]
        source = self.work.bn_source or self.source
        try:
            for m in modules:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            with torch.no_grad():
                self._stage.set("reading the batch-norm data", None)
                for b in source:
                    self._stage.set("the model's forward (batch-norm re-estimation)", b)
                    self.run_model(b)
                    self._stage.set("reading the batch-norm data", None)
        finally:
            for m, mom in zip(modules, momenta):
                m.momentum = mom
                m.eval()

    def point(self, coeffs: Sequence[float]) -> np.ndarray:
        """Metrics (in ``metric_names`` order) at θ0 + Σ coeffs[i]·d[i]."""
        self.work.write(coeffs)
        self.model.eval()
        if self.work.bn == "recompute" and self.work.bn_modules:
            self._recompute_bn()
        acc = self._acc
        acc.zero_()
        with torch.inference_mode():
            self._stage.set("reading the evaluation data", None)
            for j, b in enumerate(self.source):
                self._stage.set("the model's forward", b)
                with self.amp():
                    out = self._output(j, b, coeffs)
                self.accumulate(acc, out, b)
                self._stage.set("reading the evaluation data", None)
        return (acc / self.total).cpu().numpy()

    def accumulate(self, acc: torch.Tensor, raw: Any, b: Batch) -> None:
        """Add one batch's metric sums (loss, then the metrics) to ``acc``, from the model's raw output."""
        self._stage.set("the model's output transform", b)
        self.add_sums(acc, self.widen(self.work.output(raw)), b)

    def add_sums(self, acc: torch.Tensor, out: Any, b: Batch) -> None:
        """Add one batch's metric sums to ``acc``, from the output the loss takes."""
        self._stage.output = out
        self._stage.set("the loss", b)
        acc[0] += self.work.loss.batch_sum(out, b.targets, b.size)
        for k, (name, metric) in enumerate(self.work.metrics.items(), start=1):
            self._stage.set(f"the metric {name!r}", b)
            acc[k] += metric.batch_sum(out, b.targets, b.size)

    def probe(self) -> Any:
        """The first batch at θ0 through the model, the loss and the metrics: a mistake in the model, the data
        or the loss surfaces here as one clear :class:`LossmapError`, before any point is computed. Returns the
        output the loss took."""
        b = self.work.source.first()
        scratch = torch.zeros_like(self._acc)
        self.work.write([0.0] * len(self.work.directions))
        self.model.eval()
        try:
            with torch.inference_mode():
                self._stage.set("the model's forward", b)
                raw = self.run_model(b)
                self._stage.set("the model's output transform", b)
                out = self.work.output(raw)
                self._stage.output = out
                check_output(out, b, self.work)
                self.accumulate(scratch, raw, b)
        except (LossmapError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code failed: say where and what to do
            raise diagnose(exc, self._stage, self.work) from exc
        return out

    def evaluate_many(self, coeffs: np.ndarray) -> np.ndarray:
        """Metrics at several points: ``coeffs`` is ``(points, ndim)``, the result ``(points, n_metrics)``.
        An error of the user's model, data or loss becomes a :class:`LossmapError` saying where it happened."""
        coeffs = np.asarray(coeffs, dtype=np.float64).reshape(len(coeffs), -1)
        try:
            return self._many(coeffs)
        except (LossmapError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code failed: say where and what to do
            raise diagnose(exc, self._stage, self.work) from exc

    def _many(self, coeffs: np.ndarray) -> np.ndarray:
        out = np.empty((len(coeffs), self.n_metrics), dtype=np.float64)
        for i, c in enumerate(coeffs):
            out[i] = self.point(c)
        return out
