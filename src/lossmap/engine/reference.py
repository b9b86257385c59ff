"""The reference loop: the metrics of a model at θ0 + Σ cᵢdᵢ, one point at a time.

A point is evaluated by writing its parameters into the model in place (foreach kernels, no allocation),
then one forward pass per batch under ``torch.inference_mode`` that feeds every metric. Each batch's
per-example values go into running sums and moments on the device in float64 (:mod:`.running`), read back
once per point: the mean of each metric, its standard error and the paired standard error of
``v(θ) − v(θ0)`` (θ0's per-example values are computed once, by a full pass at the centre before the first
point, and kept on the device in data order). Every faster engine computes the same numbers (the tests
hold them to this loop in float64 at 1e-6).

With :attr:`Engine.precision` set, a point stops reading batches once its loss is known to the stated
precision (:class:`~lossmap.engine.running.Precision`); its sample count is the last column of
:meth:`Engine.evaluate_stats`.
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
from . import running
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
        self.device = work.origin[0].device
        self._stage = Stage()
        #: evaluation to a stated precision (None: every point reads all the data)
        self.precision: running.Precision | None = None
        #: θ0's per-example values ``[M, samples]`` in this engine's data order (made before the first point)
        self.reference: torch.Tensor | None = None
        #: per metric: whether it gave one value per example (else its standard errors are unknown)
        self.per_example = [True] * self.n_metrics
        self.pilot_sd: float | None = None

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
        self.ensure_reference()
        return self._point(coeffs)[: self.n_metrics]

    def _point(self, coeffs: Sequence[float], collect: list | None = None) -> np.ndarray:
        """The statistics row (:func:`~lossmap.engine.running.result`) of one point; ``collect`` gathers the
        per-example values instead of stopping early (the reference pass)."""
        self.work.write(coeffs)
        self.model.eval()
        if self.work.bn == "recompute" and self.work.bn_modules:
            self._recompute_bn()
        state = running.start(1, self.n_metrics, self.device)
        rule = self.precision if collect is None else None
        with torch.inference_mode():
            self._stage.set("reading the evaluation data", None)
            for j, b in enumerate(self.source):
                self._stage.set("the model's forward", b)
                with self.amp():
                    out = self._output(j, b, coeffs)
                self.accumulate(state, out, b, collect)
                if rule is not None and bool(self.stops(state)[0]):
                    break
                self._stage.set("reading the evaluation data", None)
        return running.result(state)[0]

    def stops(self, state: running.Running) -> torch.Tensor:
        """Tensor[bool, P]: the points of ``state`` whose loss meets :attr:`precision`."""
        return running.stop_mask(state, self.precision, self.pilot_sd, self.total)

    def ensure_reference(self) -> None:
        """θ0's per-example values (one full pass at the centre), once; the pilot standard deviation from them."""
        if self.reference is not None:
            return
        if self.precision is not None and self.work.loss.per_example is None:
            raise LossmapError(
                f"evaluation to a stated precision needs per-example losses, and the loss {self.work.loss.name} has no "
                "per-example form: use a loss with a reduction argument (an nn loss or a torch.nn.functional loss)"
            )
        collected: list[torch.Tensor] = []
        self._reference_pass(collected)
        ref = torch.cat(collected, dim=-1)
        if ref.shape[-1] != self.total:
            raise LossmapError(f"the data gave {ref.shape[-1]} samples at the centre but {self.total} before: "
                               "evaluate on data that gives the same samples at every pass")
        self.reference = ref
        loss = ref[0]
        self.pilot_sd = float(loss.std()) if loss.numel() > 1 and bool(torch.isfinite(loss).all()) else None

    def _reference_pass(self, collected: list) -> None:
        self._point([0.0] * len(self.work.directions), collect=collected)

    def accumulate(self, state: running.Running, raw: Any, b: Batch, collect: list | None = None) -> None:
        """Add one batch's per-example values (loss, then the metrics) to ``state``, from the model's raw output."""
        self._stage.set("the model's output transform", b)
        self.add_values(state, self.widen(self.work.output(raw)), b, collect)

    def add_values(self, state: running.Running, out: Any, b: Batch, collect: list | None = None) -> None:
        """Add one batch's per-example values to ``state``, from the output the loss takes."""
        self.feed(state, self.example_values(out, b).unsqueeze(0), collect)

    def example_values(self, out: Any, b: Batch) -> torch.Tensor:
        """``Tensor[M, batch]`` (float64): the loss and each metric per example (a batch mean repeated where
        that is all a loss or metric gives; :attr:`per_example` notes it)."""
        self._stage.output = out
        self._stage.set("the loss", b)
        value, flag = running.loss_values(self.work.loss, out, b.targets, b.size)
        rows, flags = [value.to(device=self.device, dtype=torch.float64)], [flag]
        for name, metric in self.work.metrics.items():
            self._stage.set(f"the metric {name!r}", b)
            value, flag = running.metric_values(metric, out, b.targets, b.size)
            rows.append(value.to(device=self.device, dtype=torch.float64))
            flags.append(flag)
        self.note_per_example(flags)
        return torch.stack(rows)

    def note_per_example(self, flags: Sequence[bool]) -> None:
        if not all(flags):
            self.per_example = [a and f for a, f in zip(self.per_example, flags)]

    def feed(self, state: running.Running, values: torch.Tensor, collect: list | None = None,
             keep: torch.Tensor | None = None) -> None:
        """Add ``values`` ``[P, M, batch]`` of the next batch to ``state``, paired with θ0's values of the same
        examples when they are known; ``collect`` keeps the first point's values (the reference pass)."""
        lo, size = state.seen, values.shape[-1]
        if collect is not None:
            collect.append(values[0].clone())
        ref = None
        if self.reference is not None:
            ref = self.reference[:, lo : lo + size]
            if ref.shape[-1] != size:
                raise LossmapError("the data gave more samples than at the centre: evaluate on data that gives the same "
                                   "samples at every pass")
        running.update(state, values, ref, keep)

    def probe(self) -> Any:
        """The first batch at θ0 through the model, the loss and the metrics: a mistake in the model, the data
        or the loss surfaces here as one clear :class:`LossmapError`, before any point is computed. Returns the
        output the loss took."""
        b = self.work.source.first()
        scratch = running.start(1, self.n_metrics, self.device)
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
        return self.evaluate_stats(coeffs)[:, : self.n_metrics]

    def evaluate_stats(self, coeffs: np.ndarray) -> np.ndarray:
        """Statistics at several points: ``(points, 3·n_metrics + 1)`` float64 — the means, the standard error
        ``s/√n`` of each metric, the paired standard error of ``v(θ) − v(θ0)`` of each metric, and the samples
        read (:func:`~lossmap.engine.running.result`)."""
        coeffs = np.asarray(coeffs, dtype=np.float64).reshape(len(coeffs), -1)
        try:
            self.ensure_reference()
            return self._many(coeffs)
        except (LossmapError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code failed: say where and what to do
            raise diagnose(exc, self._stage, self.work) from exc

    def _many(self, coeffs: np.ndarray) -> np.ndarray:
        out = np.empty((len(coeffs), running.n_columns(self.n_metrics)), dtype=np.float64)
        for i, c in enumerate(coeffs):
            out[i] = self._point(c)
        return out
