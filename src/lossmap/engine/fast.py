"""The fast engine: the reference loop plus exact speed-ups, each a small object that says whether it
applies (and why not), installs itself and names itself in the file's ``engine`` attribute.

Every speed-up computes the same function as the reference loop (tests hold each to the float64 loop at
1e-6); the measurements behind each choice are on the performance page of the documentation. A speed-up
that should apply but fails (an untraceable model, a rewritten graph that disagrees with the model on the
probe batch) is left out with one warning saying why; one that does not apply to this model or device is
left out quietly (logged at INFO).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import torch
from torch import nn

from .. import _alloc
from ..data.batches import Batch, cut
from ..data.source import Cached
from ..losses import accuracy
from .first_layer import FirstLayer, build_first_layer
from .fx import fuse_convs
from .onednn import OneDNNLinear, onednn_linear_op
from .reference import Engine, Workload

__all__ = ["FastEngine", "SUB_BATCH_BYTES", "SPEEDUPS"]

log = logging.getLogger("lossmap")

SUB_BATCH_BYTES = 16 * 1024 * 1024


class Speedup:
    """One speed-up: ``reason_not`` says why it does not apply (None: it does); ``install`` changes the engine
    and returns its label for the file (None: it turned out not to apply)."""

    option = ""

    def reason_not(self, eng: "FastEngine", asked: Any) -> str | None:
        raise NotImplementedError

    def install(self, eng: "FastEngine", asked: Any) -> str | None:
        raise NotImplementedError


def _batch_invariant(eng: "FastEngine") -> str | None:
    """Why the sums depend on how the data is cut into batches (None: they do not)."""
    if eng.work.loss.per_example is None:
        return "the loss has no per-example form, so its batch means depend on the batches"
    if any(m is not accuracy for m in eng.work.metrics.values()):
        return "user metrics may be batch means, which depend on the batches"
    if eng.batch_stats:
        return "the model normalizes by each batch's own statistics"
    return None


class SubBatches(Speedup):
    """Re-cut the data so the largest activation of a batch is about :data:`SUB_BATCH_BYTES`: at 256 samples
    the seed CNN's conv2 output (37.7 MB) is page-faulted in at every forward; ~110 samples keep it warm."""

    option = "sub_batch"

    def reason_not(self, eng: "FastEngine", asked: Any) -> str | None:
        if asked is None and eng.device.type != "cpu":
            return "re-cutting batches pays on CPUs only"
        if not eng.source.uniform():
            return "the inputs are not one tensor per batch"
        return _batch_invariant(eng)

    def install(self, eng: "FastEngine", asked: Any) -> str | None:
        size = int(asked) if asked is not None else max(8, min(1024, SUB_BATCH_BYTES // eng.largest_activation_per_sample()))
        cap = getattr(eng.source, "max_batch", None)  # points that stop at a stated precision stop at batch ends
        size = size if cap is None else min(size, int(cap))
        first = eng.source.first().size
        if isinstance(eng.source, Cached) and len(eng.source) == 1 and size >= first:
            return None
        eng.source = eng.source.rebatched(size)
        return f"sub-batch {size}"


def _channels_last(b: Batch) -> list[Batch]:
    if isinstance(b.inputs, torch.Tensor) and b.inputs.dim() == 4 and isinstance(b.raw, (tuple, list)):
        x = b.inputs.contiguous(memory_format=torch.channels_last)
        return [Batch((x,) + tuple(b.raw[1:]), x, b.targets, b.size)]
    return [b]


class ChannelsLast(Speedup):
    """Conv weights and images in channels_last (CPU): max-pool in NCHW cost a third of the seed CNN's forward."""

    option = "channels_last"

    def reason_not(self, eng: "FastEngine", asked: Any) -> str | None:
        if asked is None and eng.device.type != "cpu":
            return "channels_last pays on CPUs only"
        if eng.batch_stats:  # their float32 statistics lose digits in channels_last (5.6e-6 vs 5e-8 measured)
            return "the model normalizes by each batch's own statistics"
        if not any(isinstance(m, nn.Conv2d) and m.weight is not None and m.weight.dim() == 4 for m in eng.model.modules()):
            return "the model has no 2-D convolutions"
        return None

    def install(self, eng: "FastEngine", asked: Any) -> str | None:
        live_ids = {id(t): i for i, t in enumerate(eng.work.live)}
        copies: dict[int, torch.Tensor] = {}  # one copy per tensor, also when modules share a weight
        for m_name, m in eng.model.named_modules(remove_duplicate=False):
            if isinstance(m, nn.Conv2d) and m.weight is not None and m.weight.dim() == 4:
                w = m.weight
                if id(w) not in copies:
                    copies[id(w)] = w.detach().clone(memory_format=torch.channels_last)
                    if id(w) in live_ids:
                        eng.work.live[live_ids[id(w)]] = copies[id(w)]
                eng.overrides[f"{m_name}.weight" if m_name else "weight"] = copies[id(w)]
        eng.source = eng.source.transformed(_channels_last)
        return "channels_last"


class OneDNNGemm(Speedup):
    """float32 ``F.linear`` on oneDNN's GEMM instead of MKL's (CPU; measured about 2× on the seed's fc1)."""

    option = "onednn_linear"

    def reason_not(self, eng: "FastEngine", asked: Any) -> str | None:
        if not eng.fp32_cpu or eng.autocast is not None:
            return "oneDNN's GEMM is used for float32 on CPUs without autocast"
        return None

    def install(self, eng: "FastEngine", asked: Any) -> str | None:
        op = onednn_linear_op()
        if op is None:
            return None
        eng.linear_mode = OneDNNLinear(op)
        return "onednn-linear"


class FirstLayerCache(Speedup):
    """The first moved layer's outputs cached per grid (:mod:`lossmap.engine.first_layer`)."""

    option = "first_layer"

    def reason_not(self, eng: "FastEngine", asked: Any) -> str | None:
        if not isinstance(eng.source, Cached):
            return "the data is streamed"
        if not eng.source.uniform():
            return "the inputs are not one tensor per batch"
        return None

    def install(self, eng: "FastEngine", asked: Any) -> str | None:
        eng.first = build_first_layer(eng, force=bool(asked))
        return "first-layer" if eng.first is not None else None


class GraphRewrites(Speedup):
    """Conv2d + batch norm + residual add + ReLU as one oneDNN convolution, and flatten → Linear without a
    copy (:mod:`lossmap.engine.fx`), kept only when the graph matches the model on the probe batch."""

    option = "fuse"

    def reason_not(self, eng: "FastEngine", asked: Any) -> str | None:
        if not eng.fp32_cpu or eng.autocast not in (None, torch.bfloat16):
            return "the graph rewrites are float32 (or bf16 autocast) CPU kernels"
        if not any(type(m) is nn.Conv2d for m in eng.model.modules()):
            return "the model has no 2-D convolutions"
        return None

    def install(self, eng: "FastEngine", asked: Any) -> str | None:
        eng.model.eval()  # traced in evaluation mode (a forward that reads self.training bakes it in)
        skip = eng.first.module if eng.first is not None else None
        try:
            made = fuse_convs(eng.model, skip, flatten_linear=eng.autocast is None)
        except Exception as exc:  # noqa: BLE001 - data-dependent control flow and the like
            log.warning("fast engine: graph rewrites not used: the model cannot be traced (%s: %s)", type(exc).__name__, exc)
            return None
        if made is None:
            return None
        graph, counts = made
        why = eng.adopt_graph(graph)
        if why is not None:
            log.warning("fast engine: graph rewrites not used: %s", why)
            return None
        eng.fused = dict(counts)
        return "fused " + ", ".join(f"{k} x{n}" for k, n in counts.items())


#: in the order they are installed (sub-batches and channels_last change the batches the others see)
SPEEDUPS: tuple[Speedup, ...] = (SubBatches(), ChannelsLast(), OneDNNGemm(), FirstLayerCache(), GraphRewrites())


class FastEngine(Engine):
    """The reference loop with the exact speed-ups of :data:`SPEEDUPS`. Options (``sub_batch``,
    ``channels_last``, ``onednn_linear``, ``first_layer``, ``fuse``): None lets each decide, False turns
    it off, True (or a sub-batch size) forces it where it is exact."""

    name = "fast"

    def __init__(self, work: Workload, **options: Any) -> None:
        unknown = set(options) - {s.option for s in SPEEDUPS}
        if unknown:
            raise TypeError(f"unknown fast-engine options {sorted(unknown)}")
        work = dataclasses.replace(work, live=list(work.live))  # channels_last swaps in copies
        super().__init__(work)
        self.device = work.origin[0].device
        self.fp32_cpu = self.device.type == "cpu" and work.origin[0].dtype == torch.float32
        self.batch_stats = any(m.running_mean is None or m.running_var is None for m in work.bn_modules)
        self.user_live = list(work.live)  # the model's own tensors (the live list may hold copies)
        self.graph: nn.Module = self.model  # what a forward runs: the model, or its rewritten graph
        self.overrides: dict[str, torch.Tensor] = {}
        self.linear_mode: OneDNNLinear | None = None
        self.first: FirstLayer | None = None
        self.fused: dict[str, int] = {}  # graph rewrites made: kind → count
        self.applied: dict[str, str] = {}  # option → the label of each speed-up in use
        if self.device.type == "cpu" and _alloc.tuned():
            self.speedups.append("malloc")
        if self.autocast is not None:
            self.speedups.append(f"autocast {str(self.autocast).replace('torch.', '')}")
        for speedup in SPEEDUPS:
            asked = options.get(speedup.option)
            if asked is False:
                continue
            why = speedup.reason_not(self, asked)
            if why is not None:
                log.info("fast engine: %s not used: %s", speedup.option, why)
                continue
            label = speedup.install(self, asked)
            if label is not None:
                self.speedups.append(label)
                self.applied[speedup.option] = label

    # -- forwards ------------------------------------------------------------------------------
    def forward(self, inputs: Any) -> Any:
        """One forward of the (rewritten) model with the speed-ups' weights and GEMM."""
        if self.linear_mode is not None:
            with self.linear_mode:
                return self._forward_graph(inputs)
        return self._forward_graph(inputs)

    def _forward_graph(self, inputs: Any) -> Any:
        if self.overrides:
            return torch.func.functional_call(self.graph, self.overrides, (inputs,))
        return self.graph(inputs)

    def _output(self, j: int, b: Batch, coeffs: Sequence[float]) -> Any:
        first = self.first
        if first is None:
            return self.forward(b.inputs)
        first.prepare(j, coeffs)  # the first layer's output at this point, from its cached parts
        first.install()
        try:
            return self.forward(b.inputs)
        finally:
            first.remove()

    # -- helpers of the speed-ups ----------------------------------------------------------------
    def adopt_graph(self, graph: nn.Module) -> str | None:
        """Use ``graph`` for forwards if it gives the model's output on the probe batch; else why not."""
        inputs = self.source.first().inputs
        self.work.write([0.0] * len(self.work.directions))
        try:
            with torch.inference_mode():
                ref = self.work.output(self.forward(inputs))
                self.graph = graph
                got = self.work.output(self.forward(inputs))
        except Exception as exc:  # noqa: BLE001 - an op the graph cannot replay
            self.graph = self.model
            return f"the rewritten graph failed on the probe batch ({type(exc).__name__}: {exc})"
        agree = isinstance(ref, torch.Tensor) and isinstance(got, torch.Tensor) and got.shape == ref.shape
        if agree and ref.numel():
            agree = float((got - ref).abs().max()) <= 1e-4 * max(float(ref.abs().max()), 1.0)
        if not agree:
            self.graph = self.model
            return "the rewritten graph disagrees with the model on the probe batch"
        return None

    def largest_activation_per_sample(self) -> int:
        """Bytes of the largest module output per sample, in the dtype the forward uses (bf16 autocast: half)."""
        b = self.source.first()
        n = min(b.size, 4)
        x = cut(b.inputs, 0, n)
        biggest = [0]

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                biggest[0] = max(biggest[0], out.numel() * out.element_size())

        handles = [m.register_forward_hook(hook) for m in self.model.modules()]
        try:
            self.work.write([0.0] * len(self.work.directions))
            self.model.eval()
            with torch.inference_mode(), self.amp():
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        return max(1, biggest[0] // n)
