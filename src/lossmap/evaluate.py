"""The hot loop: metrics of a model at θ0 + Σ cᵢdᵢ over cached batches.

Data is materialized once on the evaluation device (and dtype) as a list of ``(inputs, targets, n)``
batches. A point is evaluated by writing its parameters in place (foreach kernels, no allocation),
then one forward pass per batch under ``torch.inference_mode`` that feeds every metric.
Sums are accumulated on the device in float64 and read back once per point.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import LossmapError
from . import _alloc
from .space import write_point

BN_POLICIES = ("frozen", "recompute")
_INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values", "input_ids")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
MetricFn = Callable[[torch.Tensor, Any], torch.Tensor]

__all__ = [
    "Batch", "prepare_batches", "split_batch", "Evaluator", "FastEvaluator", "VmapEvaluator", "make_evaluator",
    "ENGINES", "BN_POLICIES", "describe_data",
]


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

    ``autocast`` (e.g. ``torch.bfloat16``): forward passes run under ``torch.autocast`` with that
    dtype (convolutions and matmuls in it, parameters and sums stay in their own dtype); the
    outputs are widened back before the metrics.
    """

    engine = "plain"
    features: Sequence[str] = ()
    preferred_chunk = 8  # points per evaluate_many call that suit this evaluator

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
        autocast: torch.dtype | None = None,
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
        self.autocast = autocast
        base = ["loss"] + (["accuracy"] if self.accuracy else [])
        self.metric_names = base + [n for n in self.extra if n not in base]
        self.n_metrics = len(self.metric_names)
        self._extra_names = self.metric_names[len(base):]
        self._acc = torch.zeros(self.n_metrics, dtype=torch.float64, device=self.origin[0].device)

    def describe(self) -> str:
        """The engine and the speed-ups in use, e.g. ``"fast: malloc, channels_last"``."""
        return self.engine + (": " + ", ".join(self.features) if self.features else "")

    def _amp(self) -> contextlib.AbstractContextManager:
        """The autocast context of a forward pass (nothing without ``autocast``)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.origin[0].device.type, dtype=self.autocast)

    def _widen(self, out: Any) -> Any:
        """Autocast outputs back in the parameters' dtype, so that metrics sum in full precision."""
        dtype = self.origin[0].dtype
        if self.autocast is not None and isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != dtype:
            return out.to(dtype)
        return out

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
        coeffs = [float(c) for c in coeffs]
        write_point(self.live, self.origin, self.directions, coeffs)
        self.model.eval()
        if self.bn == "recompute" and self.bn_modules:
            self._recompute_bn()
        acc = self._acc
        acc.zero_()
        with torch.inference_mode():
            for j, b in enumerate(self.batches):
                with self._amp():
                    out = self._output(j, b, coeffs)
                self._accumulate(acc, self._widen(out), b)
        return (acc / self.total).tolist()

    def _output(self, j: int, b: Batch, coeffs: Sequence[float]) -> torch.Tensor:
        """The model's output on batch ``j`` at the point just written (fast paths override this)."""
        return self._run(b)

    def _accumulate(self, acc: torch.Tensor, out: torch.Tensor, b: Batch) -> None:
        """Add one batch's metric sums (loss, accuracy, extras) to ``acc``."""
        if self.loss_fn is None:
            acc[0] += _default_loss(out, b.targets).double()
        else:
            acc[0] += torch.as_tensor(self.loss_fn(out, b.raw)).double() * b.size
        if self.accuracy:
            acc[1] += (out.argmax(dim=1) == b.targets).sum()
        for k, name in enumerate(self._extra_names, start=self.n_metrics - len(self._extra_names)):
            acc[k] += torch.as_tensor(self.extra[name](out, b.raw)).double() * b.size

    def evaluate_many(self, coeffs: np.ndarray) -> np.ndarray:
        """Metrics at several points: ``coeffs`` is ``(points, ndim)``, the result ``(points, n_metrics)``.

        The landscape loop hands points over in chunks through this method, so that a faster
        evaluator may treat a chunk at once.
        """
        out = np.empty((len(coeffs), self.n_metrics), dtype=np.float64)
        for i, c in enumerate(coeffs):
            out[i] = self(c)
        return out


# --------------------------------------------------------------------------------------------
# Fast paths. Each computes exactly the same function as ``Evaluator`` (same metrics, same sums),
# only faster; tests hold them to the float64 plain path at 1e-6 relative. Choices, measured on the
# seed CNN (1,000 MNIST samples, fp32; first on a 2-core AVX2 CPU, the later ones on a 2-core AVX-512 one):
#
# * allocator (``_alloc.tune``): glibc maps/unmaps every activation buffer per forward; keeping them
#   in the heap removes the page faults (an out-of-place add on an 8.6 MB tensor: 26 ms -> 0.5 ms).
# * sub-batches: batches are re-cut so that the largest activation of one sub-batch is about
#   ``SUB_BATCH_BYTES`` (seed net, fp32: ~110 samples). At 256 samples conv2's output (37.7 MB) is
#   above glibc's largest mmap threshold and a forward cost 1.7x the CPU time of batches of 50-128.
#   Only for the default loss/accuracy (sums, so the cut does not matter); user metrics that are
#   batch means keep the user's batches, and so do models with batch norms that normalize by the
#   batch's own statistics (no running statistics), whose outputs depend on the cut.
# * channels_last conv weights (CPU): max-pool in NCHW cost a third of the forward; with NHWC
#   activations the whole forward took half the time (profile: 680 -> 340 ms per 1,000 samples).
# * first moved layer (``first_layer``): when the first module holding moved tensors is a Linear or
#   Conv whose input does not depend on moved tensors, its output at θ0 + Σ cᵢdᵢ is exactly
#   L(x; θ0) + Σ cᵢ L(x; dᵢ) (dᵢ's weight and bias parts). Those k+1 outputs are computed once per
#   grid; a point then costs k axpys over the layer's output instead of the layer. That trades
#   2·fan-in FLOPs per output value for k+1 values read from memory, so it is used only for a
#   fan-in of at least ``FIRST_LAYER_MIN_FAN_IN`` (a Linear on 784 pixels: yes; the seed's conv1,
#   1 channel × 3×3 = 9: no — measured, caching it made a point 9% slower, 0.175 vs 0.161 CPU s
#   with 1 thread, because reading three 86 MB tensors costs more than the small convolution).
#   ``first_layer=True`` forces it where it is exact. Modules before that layer still run.
# * several points per forward (``VmapEvaluator``): ``torch.func.functional_call`` + ``vmap`` over
#   stacked parameters; on a CPU one point already fills the cores with 1,000 samples and the
#   grouped convolutions vmap produces are slower, so it is the GPU default only.
# * oneDNN's GEMM for float32 ``F.linear`` on the CPU (``onednn_linear``): torch.mm/F.linear take
#   MKL's sgemm, which on a 2-core AMD EPYC (Zen 5, AVX-512) ran at ~200 GFLOP/s against ~445 for
#   oneDNN with the same threads; the seed's fc1 went from 12.3 to 5.4 ms per 1,000 samples.
#   Routed by a TorchFunctionMode during forwards only, so functional calls are covered too.
# * Conv2d with what follows it as one oneDNN convolution (``fuse``; an FX graph of the model,
#   checked against the model's own forward on a probe batch): an evaluation-mode BatchNorm2d folded
#   into the weights and bias, a residual add as a binary post-op, a ReLU as a unary one. The passes
#   over the conv output disappear. Seed net (conv+ReLU): 10.5-11.6 -> 11.9-12.9 points/s,
#   bit-identical (the post-op is exact). CIFAR ResNet-20 (conv+BN(+add)+ReLU, 1,000 samples, six
#   runs): 3.1-3.4 -> 3.2-3.6 points/s in float32 (little gain on this 2-core CPU: its activations
#   stay in the 32 MB L3, so the separate passes were cheap; a binary-add post-op costs about what a
#   separate add does), 6.1-6.4 -> 6.6-7.2 under bf16 autocast, where the fused convolutions run in
#   bf16. Folding changes float32 rounding only (within 1e-6 of the float64 loop).
# * flatten → Linear on channels_last activations (``_FlattenLinear``, same FX pass): the Linear reads
#   the NHWC memory as it lies against its weight's columns permuted once per point, instead of
#   copying the activations to NCHW order for every batch. Seed net: 84.6 -> 81.2 ms a point (medians
#   of ten alternating rounds in one process). Not under bf16 autocast: there the copy is of bf16
#   values, and the permuted GEMM measured 4 % slower.
# * ``torch.inference_mode`` everywhere; parameters written with foreach kernels (``write_point``).
# * opt-in, not exact: bf16 autocast (``autocast=torch.bfloat16``): a bf16 convolution is 2x the fp32
#   one on AVX512-BF16; 11.9 -> 21.2 points/s (bench lever rows) at up to ~3e-3 relative error in the loss.
# * tried and not kept: ``torch.compile`` (26 s to compile, no measurable gain); two points at once on
#   one thread each with a model replica (10.8 -> 11.0 points/s, not worth a second model copy);
#   pooling before ReLU (same time; max-pool of NHWC data is already cheap); NNPACK's Winograd
#   convolution (fewer multiplications, but AVX2 kernels: 86-106 ms vs 49 ms direct for conv2 per
#   1,000 samples, and 30x the rounding error); max-pool as strided maxima written in NCHW order to
#   save the flatten copy (6.6-7.1 vs 6.1-7.0 ms for pool + flatten: no gain; the permuted Linear
#   above saves it instead); sub-batches of 40-90 instead of ~113 (within noise).
# --------------------------------------------------------------------------------------------

ENGINES = ("auto", "plain", "fast", "vmap")
FIRST_LAYER_MIN_FAN_IN = 128
SUB_BATCH_BYTES = 16 * 1024 * 1024
FIRST_LAYER_CACHE_BYTES = 2 * 1024**3
VMAP_PARAM_BYTES = 1024**3
FLATTEN_LINEAR_MAX_BYTES = 64 * 1024**2
_AFFINE_FORWARDS = (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def _slice(obj: Any, lo: int, hi: int) -> Any:
    if isinstance(obj, torch.Tensor) and obj.dim() > 0:
        return obj[lo:hi]
    if isinstance(obj, Mapping):
        return {k: _slice(v, lo, hi) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_slice(v, lo, hi) for v in obj)
    return obj


def _rebatch(batches: Sequence[Batch], size: int) -> list[Batch]:
    """Re-cut the batches into nearly equal pieces of at most ``size`` samples.

    Tuple batches of tensors with matching shapes are joined first (256+256+256+232 samples at
    size 113 become 9 pieces of 111-112, not 113+113+30+…+6); other batches are only split.
    """
    raws = [b.raw for b in batches]
    if all(isinstance(r, tuple) and all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in r) for r in raws) and all(
        len(r) == len(raws[0]) and all(t.shape[1:] == t0.shape[1:] for t, t0 in zip(r, raws[0])) for r in raws
    ):
        joined = tuple(torch.cat(parts) for parts in zip(*raws)) if len(raws) > 1 else raws[0]
        total = sum(b.size for b in batches)
        pieces = -(-total // size)
        bounds = [round(i * total / pieces) for i in range(pieces + 1)]
        out_even: list[Batch] = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            raw = tuple(t[lo:hi].contiguous() for t in joined)
            inputs, targets = split_batch(raw)
            out_even.append(Batch(raw, inputs, targets, hi - lo))
        return out_even
    out: list[Batch] = []
    for b in batches:
        if b.size <= size:
            out.append(b)
            continue
        for lo in range(0, b.size, size):
            hi = min(lo + size, b.size)
            raw = _slice(b.raw, lo, hi)
            inputs, targets = split_batch(raw)
            out.append(Batch(raw, inputs, targets, hi - lo))
    return out


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FIRST_LAYER_CACHE_BYTES * 4


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (while caching the first layer's input)."""


class _FirstLayer:
    """Cached outputs of the first moved Linear/Conv: ``z[j] = [L(x_j; θ0), L(x_j; d_1), …]`` per batch j."""

    def __init__(self, module: nn.Module, cache: list[list[torch.Tensor]]) -> None:
        self.module = module
        self.cache = cache
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.current: torch.Tensor | None = None

    def prepare(self, j: int, coeffs: Sequence[float]) -> None:
        """Write L at the point ``coeffs`` for batch ``j`` into a reused buffer (returned by the stub)."""
        z = self.cache[j]
        key = (tuple(z[0].shape), z[0].stride())
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = torch.empty_like(z[0])
        started = False
        for c, zi in zip(coeffs, z[1:]):
            if c != 0.0:
                if started:
                    buf.add_(zi, alpha=float(c))
                else:  # one pass fewer than copy + add
                    torch.add(z[0], zi, alpha=float(c), out=buf)
                    started = True
        if not started:
            buf.copy_(z[0])
        self.current = buf

    def stub(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert self.current is not None
        return self.current

    def install(self) -> None:
        self.module.forward = self.stub  # an instance attribute shadows the class's forward

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)
_PLAIN = (torch.Tensor, nn.Parameter)  # not tensor subclasses with their own dispatch


def _onednn_usable(op: str) -> bool:
    """Whether this build has oneDNN op ``torch.ops.mkldnn.<op>`` and oneDNN is not switched off."""
    return (
        torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)
        and hasattr(getattr(torch.ops, "mkldnn", None), op)
    )


def _cpu_autocast_on() -> bool:
    """Whether a CPU ``torch.autocast`` is active (then the float32 oneDNN shortcuts stand aside)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _conv_out_shape(x: torch.Tensor, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any) -> tuple[int, ...]:
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation)]
    return (x.shape[0], weight.shape[0], *size)


def _cpu_floats(ts: Sequence[torch.Tensor | None], dtypes: tuple[torch.dtype, ...]) -> bool:
    return all(t is None or (type(t) in _PLAIN and t.device.type == "cpu" and t.dtype in dtypes) for t in ts)


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype of an active CPU ``torch.autocast``, ``None`` without one."""
    if not _cpu_autocast_on():
        return None
    try:
        return torch.get_autocast_dtype("cpu")
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype()


_BF16_CONV: list[bool] = []  # whether oneDNN runs bf16 convolutions on this CPU (asked once)


def _bf16_conv_ok() -> bool:
    if not _BF16_CONV:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        _BF16_CONV.append(bool(check is not None and check()))
    return _BF16_CONV[0]


def _conv_fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any,
                dilation: Any, groups: int, bn: tuple | None = None, other: torch.Tensor | None = None,
                relu: bool = False) -> torch.Tensor:
    """``relu?(batch_norm?(conv2d(x)) + other?)`` as one oneDNN convolution (CPU).

    ``bn`` is an evaluation-mode batch norm, ``(weight, bias, running_mean, running_var, eps)``,
    folded into the convolution: w' = w·s, b' = (b - mean)·s + β with s = γ / √(var + ε); the
    residual ``other`` is a binary post-op and ReLU a unary one. Folding changes only float32
    rounding (the order of a product), so results stay within float32 error of the unfused layers.
    Under a CPU bf16 autocast, the folded float32 weights are rounded to bf16 and the convolution
    runs in bf16, as autocast would run it (output bf16). Anything else (another dtype or device,
    another autocast, a broadcast residual) runs the layers one after another, as the model would.
    """
    gamma, beta, mean, var, eps = bn if bn is not None else (None, None, None, None, 0.0)
    amp = _cpu_autocast_dtype()
    acts = (torch.float32,) if amp is None else (torch.float32, torch.bfloat16)
    fusable = (
        x.dim() == 4 and weight.dim() == 4 and (amp is None or (amp == torch.bfloat16 and _bf16_conv_ok()))
        and _cpu_floats((x, other), acts) and _cpu_floats((weight, bias, gamma, beta, mean, var), (torch.float32,))
        and (bn is None or (mean is not None and var is not None))
        and (other is None or tuple(other.shape) == _conv_out_shape(x, weight, stride, padding, dilation))
    )
    if not fusable:
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        if bn is not None:
            y = F.batch_norm(y, mean, var, gamma, beta, False, 0.0, eps)
        if other is not None:
            y = y + other
        return F.relu(y) if relu else y
    if bn is not None:
        s = torch.rsqrt(var + eps) if gamma is None else gamma * torch.rsqrt(var + eps)
        shift = -mean * s if bias is None else (bias - mean) * s
        bias = shift if beta is None else shift + beta
        weight = weight * s.view(-1, 1, 1, 1)
    if amp is not None:
        x, weight = x.to(amp), weight.to(amp)
        bias = bias.to(amp) if bias is not None else None
        other = other.to(amp) if other is not None else None
    padding, stride, dilation = list(padding), list(stride), list(dilation)
    if other is None:
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, padding, stride, dilation, groups, "relu" if relu else "none", [None], ""
        )
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, weight, bias, padding, stride, dilation, groups, "add", None, "relu" if relu else None, [None], ""
    )


def _is_relu(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    if node.op == "call_module":
        m = modules[str(node.target)]
        return type(m) is nn.ReLU and not (m._forward_hooks or m._forward_pre_hooks)
    return False


def _explicit_padding(m: nn.Conv2d) -> tuple[int, ...] | None:
    """``m``'s padding as numbers ("valid": 0; "same": half the dilated kernel, when that is symmetric)."""
    if not isinstance(m.padding, str):
        return tuple(m.padding)
    if m.padding == "valid":
        return (0, 0)
    span = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
    return tuple(s // 2 for s in span) if all(s % 2 == 0 for s in span) else None


def _bn_to_fold(node: torch.fx.Node, tail: torch.fx.Node, modules: Mapping[str, nn.Module]) -> nn.BatchNorm2d | None:
    """The evaluation-mode BatchNorm2d that ``node`` calls on ``tail`` alone, if it can be folded."""
    m = modules.get(str(node.target)) if node.op == "call_module" else None
    if (
        type(m) is nn.BatchNorm2d and m.track_running_stats and m.running_mean is not None
        and m.running_var is not None and not (m._forward_hooks or m._forward_pre_hooks)
        and node.args == (tail,) and not node.kwargs
    ):
        return m
    return None


def _residual(node: torch.fx.Node, tail: torch.fx.Node) -> torch.fx.Node | None:
    """The other operand where ``node`` adds a tensor to ``tail`` (``+``, ``+=``, ``torch.add``, ``.add``)."""
    inplace = (node.op == "call_function" and node.target is operator.iadd) or (
        node.op == "call_method" and node.target == "add_")
    is_add = inplace or (node.op == "call_function" and node.target in (operator.add, torch.add)) or (
        node.op == "call_method" and node.target == "add")
    if not is_add or node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    # ``other += tail`` writes into other, which a fused (out-of-place) add would not do
    other = b if a is tail else (a if b is tail and not inplace else None)
    return other if isinstance(other, torch.fx.Node) and other is not tail else None


def _sole_user(node: torch.fx.Node) -> torch.fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


class _FlattenLinear(nn.Module):
    """``linear(flatten(x, 1), weight, bias)`` without the copy that flattening a channels_last ``x``
    costs: x's memory is read as it lies, (N, H·W·C), against the weight with its columns permuted
    to H, W, C order. The permuted weight is kept while the weight's storage and version are
    unchanged (every point's in-place write bumps the version), so it is made once per point, not
    once per batch. The same products and sums, only the order of the columns differs. Anything
    else (NCHW input, a weight above ``FLATTEN_LINEAR_MAX_BYTES``, autocast, where the copy is of
    bf16 values and measured cheaper than the permuted GEMM) flattens as usual."""

    def __init__(self) -> None:
        super().__init__()
        self._key: tuple | None = None
        self._perm: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1
            and x.is_contiguous(memory_format=torch.channels_last) and weight.dim() == 2
            and weight.shape[1] == x.shape[1] * x.shape[2] * x.shape[3] and weight.device == x.device
            and weight.numel() * weight.element_size() <= FLATTEN_LINEAR_MAX_BYTES and not weight.is_inference()
            and x.dtype == weight.dtype and not _cpu_autocast_on()
        ):
            n, c, h, w = x.shape
            key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.stride()), c, h, w)
            if key != self._key:
                self._perm = weight.view(-1, c, h, w).permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
                self._key = key
            return F.linear(x.permute(0, 2, 3, 1).reshape(n, -1), self._perm, bias)
        return F.linear(torch.flatten(x, 1), weight, bias)


def _flatten_into_linear(node: torch.fx.Node, modules: Mapping[str, nn.Module], skip: nn.Module | None) -> torch.fx.Node | None:
    """The ``nn.Linear`` call that is the only use of ``node`` when ``node`` is ``flatten(x, 1)``."""
    flat = (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten")
    if not flat or not 1 <= len(node.args) <= 2 or set(node.kwargs) - {"start_dim"}:
        return None  # an end_dim too: left as it is
    if (node.args[1] if len(node.args) == 2 else node.kwargs.get("start_dim", 0)) != 1:
        return None
    user = _sole_user(node)
    m = modules.get(str(user.target)) if user is not None and user.op == "call_module" else None
    if type(m) is not nn.Linear or m is skip or m._forward_hooks or m._forward_pre_hooks:
        return None
    return user if user.args == (node,) and not user.kwargs else None


def _fuse_convs(
    model: nn.Module, skip: nn.Module | None, flatten_linear: bool = True
) -> tuple[torch.fx.GraphModule, dict[str, int]] | None:
    """``model``'s forward as an FX graph in which each Conv2d runs with what follows it as one
    :func:`_conv_fused` call: a BatchNorm2d (folded), then a residual add, then a ReLU, each taken
    where it is the only use of the value before it. Weights, biases and batch-norm statistics are
    read from the modules at every call (so in-place point writes and ``functional_call``
    overrides reach them). With ``flatten_linear``, each ``flatten(x, 1)`` whose only use is an
    ``nn.Linear`` runs as :class:`_FlattenLinear`. ``None`` where the model cannot be traced or
    nothing fuses."""
    if not _onednn_usable("_convolution_pointwise") or not any(type(m) is nn.Conv2d for m in model.modules()):
        return None
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow and the like: keep the model's own forward
        return None
    modules = dict(gm.named_modules())
    counts: dict[str, int] = {}
    graph = gm.graph
    for node in list(graph.nodes):
        linear = _flatten_into_linear(node, modules, skip) if flatten_linear else None
        if linear is not None:
            name = f"_flatten_{str(linear.target).replace('.', '_')}"
            gm.add_submodule(name, _FlattenLinear())
            with graph.inserting_before(linear):
                weight = graph.get_attr(f"{linear.target}.weight")
                bias = graph.get_attr(f"{linear.target}.bias") if modules[str(linear.target)].bias is not None else None
                new = graph.call_module(name, (node.args[0], weight, bias))
            linear.replace_all_uses_with(new)
            graph.erase_node(linear)
            graph.erase_node(node)
            counts["flatten+linear"] = counts.get("flatten+linear", 0) + 1
            continue
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        if (
            type(m) is not nn.Conv2d or m is skip or m.padding_mode != "zeros" or _explicit_padding(m) is None
            or m._forward_hooks or m._forward_pre_hooks or len(node.args) != 1 or node.kwargs
        ):
            continue
        chain, kind, bn, other, relu = [node], ["conv"], None, None, False
        user = _sole_user(node)
        if user is not None and (bn := _bn_to_fold(user, node, modules)) is not None:
            chain.append(user)
            kind.append("bn")
        user = _sole_user(chain[-1])
        if user is not None and (other := _residual(user, chain[-1])) is not None:
            chain.append(user)
            kind.append("add")
        user = _sole_user(chain[-1])
        if user is not None and _is_relu(user, modules) and user.args[:1] == (chain[-1],):
            chain.append(user)
            kind.append("relu")
            relu = True
        if len(chain) == 1:
            continue
        tail = chain[-1]
        with graph.inserting_before(tail):  # after ``other``, which the tail already uses
            weight = graph.get_attr(f"{node.target}.weight")
            bias = graph.get_attr(f"{node.target}.bias") if m.bias is not None else None
            bn_args = None
            if bn is not None:
                name = str(chain[1].target)
                affine = [graph.get_attr(f"{name}.{a}") if getattr(bn, a) is not None else None for a in ("weight", "bias")]
                stats = [graph.get_attr(f"{name}.{a}") for a in ("running_mean", "running_var")]
                bn_args = (*affine, *stats, float(bn.eps))
            args = (node.args[0], weight, bias, m.stride, _explicit_padding(m), m.dilation, m.groups)
            new = graph.call_function(_conv_fused, args, {"bn": bn_args, "other": other, "relu": relu})
        tail.replace_all_uses_with(new)
        for n in reversed(chain):
            graph.erase_node(n)
        label = "+".join(kind)
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    gm.recompile()
    return gm, counts


def _onednn_linear_op() -> Callable | None:
    """oneDNN's float32 GEMM for ``F.linear`` (``torch.ops.mkldnn._linear_pointwise``), if this build has it."""
    if not _onednn_usable("_linear_pointwise"):
        return None
    op = torch.ops.mkldnn._linear_pointwise
    try:
        with torch.inference_mode():
            x, w, b = torch.randn(3, 5), torch.randn(4, 5), torch.randn(4)
            if not torch.allclose(op(x, w, b, "none", [None], ""), F.linear(x, w, b), rtol=1e-5, atol=1e-6):
                return None
    except (RuntimeError, TypeError):
        return None
    return op


class _OneDNNLinear(TorchFunctionMode):
    """While active, float32 CPU ``F.linear`` calls (``nn.Linear`` included) run on oneDNN's GEMM.

    Same arithmetic (IEEE float32 products and sums, only the summation order differs); every
    other call passes through unchanged.
    """

    def __init__(self, op: Callable) -> None:
        super().__init__()
        self.op = op

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2:  # every other call of the forward passes straight through
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if _cpu_floats((x, w, b), (torch.float32,)) and w.dim() == 2 and x.dim() >= 1 and not _cpu_autocast_on():
                return self.op(x, w, b, "none", [None], "")
        return func(*args, **kwargs)


class FastEvaluator(Evaluator):
    """The plain evaluator with the exact speed-ups above (sub-batches, channels_last, oneDNN linear,
    graph rewrites, first layer).

    Same contract as :class:`Evaluator`. ``features`` lists the speed-ups in use. ``fuse=False``
    turns the graph rewrites off (conv fusion and flatten → Linear). Not for
    ``bn="recompute"`` or a user ``forward`` (``make_evaluator`` gives the plain path there).
    """

    engine = "fast"

    def __init__(
        self,
        *args: Any,
        sub_batch: int | None = None,
        channels_last: bool | None = None,
        first_layer: bool | None = None,
        onednn_linear: bool | None = None,
        fuse: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.features: list[str] = []
        device = self.origin[0].device
        if device.type == "cpu" and _alloc.tune():
            self.features.append("malloc")
        self._linear_mode: _OneDNNLinear | None = None
        if self.autocast is not None:
            self.features.append(f"autocast {str(self.autocast).replace('torch.', '')}")
        # the oneDNN shortcuts are float32 CPU kernels: the GEMM stands aside under autocast (autocast's
        # own kernels run); the fused convolutions run in bf16 under a bf16 autocast
        fp32_cpu = device.type == "cpu" and self.origin[0].dtype == torch.float32
        if onednn_linear is not False and fp32_cpu and self.autocast is None:
            op = _onednn_linear_op()
            if op is not None:
                self._linear_mode = _OneDNNLinear(op)
                self.features.append("onednn-linear")
        self._first: _FirstLayer | None = None
        self._graph: nn.Module = self.model  # what a forward runs: the model, or its graph with fused layers
        self._overrides: dict[str, torch.Tensor] = {}
        self._user_live = list(self.live)

        # batch norms that normalize by the batch's own statistics: their outputs depend on how the
        # data is cut, and in channels_last their float32 statistics lose digits (5.6e-6 relative
        # off the float64 loop on a small net, against 5e-8 in NCHW)
        batch_stats = any(m.running_mean is None or m.running_var is None for m in self.bn_modules)
        # sub-batches sized by the largest activation per sample
        simple = (
            self.loss_fn is None and not self.extra and all(isinstance(b.inputs, torch.Tensor) for b in self.batches)
            and not batch_stats
        )
        if simple and (sub_batch is not None or device.type == "cpu"):
            if sub_batch is None:
                per_sample = self._largest_activation_per_sample()
                sub_batch = max(8, min(1024, SUB_BATCH_BYTES // max(per_sample, 1)))
            if sub_batch < max(b.size for b in self.batches) or len(self.batches) > 1:
                self.batches = _rebatch(self.batches, int(sub_batch))
                self.features.append(f"sub-batch {int(sub_batch)}")

        # channels_last working copies of 4-D conv weights (moved ones are written in place there)
        if channels_last is None:
            channels_last = device.type == "cpu" and not batch_stats
        if channels_last:
            live_ids = {id(t): i for i, t in enumerate(self.live)}
            copies: dict[int, torch.Tensor] = {}  # one copy per tensor, also when modules share a weight
            for m_name, m in self.model.named_modules(remove_duplicate=False):
                if isinstance(m, nn.Conv2d) and m.weight is not None and m.weight.dim() == 4:
                    w = m.weight
                    if id(w) not in copies:
                        copies[id(w)] = w.detach().clone(memory_format=torch.channels_last)
                        if id(w) in live_ids:
                            self.live[live_ids[id(w)]] = copies[id(w)]
                    self._overrides[f"{m_name}.weight" if m_name else "weight"] = copies[id(w)]
            if self._overrides:
                self.features.append("channels_last")
                self.batches = [self._channels_last_batch(b) for b in self.batches]

        if first_layer is not False:
            self._first = self._build_first_layer(force=bool(first_layer))
            if self._first is not None:
                self.features.append("first-layer")

        if fuse is not False and fp32_cpu and self.autocast in (None, torch.bfloat16):
            self._fuse()

    def _fuse(self) -> None:
        """The graph rewrites of :func:`_fuse_convs`, kept only if the probe batch agrees."""
        self.model.eval()  # traced in evaluation mode (a forward that reads self.training bakes it in)
        first = self._first.module if self._first is not None else None
        made = _fuse_convs(self.model, first, flatten_linear=self.autocast is None)  # see _FlattenLinear
        if made is None:
            return
        graph, counts = made
        b = self.batches[0]
        write_point(self.live, self.origin, self.directions, [0.0] * len(self.directions))
        try:
            with torch.inference_mode():
                ref = self._forward(b.inputs)
                self._graph = graph
                got = self._forward(b.inputs)
        except Exception:  # an op the graph cannot replay: keep the model's forward
            self._graph = self.model
            return
        agree = isinstance(ref, torch.Tensor) and isinstance(got, torch.Tensor) and got.shape == ref.shape
        if agree and ref.numel():
            agree = float((got - ref).abs().max()) <= 1e-4 * max(float(ref.abs().max()), 1.0)
        if not agree:
            self._graph = self.model
            return
        self.features.append("fused " + ", ".join(f"{k} x{n}" for k, n in counts.items()))

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _channels_last_batch(b: Batch) -> Batch:
        if isinstance(b.inputs, torch.Tensor) and b.inputs.dim() == 4 and isinstance(b.raw, tuple):
            x = b.inputs.contiguous(memory_format=torch.channels_last)
            raw = (x,) + tuple(b.raw[1:])
            return Batch(raw, x, b.targets, b.size)
        return b

    def _forward(self, inputs: Any) -> torch.Tensor:
        if self._linear_mode is not None:
            with self._linear_mode:
                return self._forward_plain(inputs)
        return self._forward_plain(inputs)

    def _forward_plain(self, inputs: Any) -> torch.Tensor:
        if self._overrides:
            return torch.func.functional_call(self._graph, self._overrides, (inputs,))
        return self._graph(inputs)

    def _largest_activation_per_sample(self) -> int:
        b = self.batches[0]
        n = min(b.size, 4)
        x = _slice(b.inputs, 0, n)
        biggest = [0]

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                biggest[0] = max(biggest[0], out.numel() * out.element_size())

        handles = [m.register_forward_hook(hook) for m in self.model.modules()]
        try:
            write_point(self.live, self.origin, self.directions, [0.0] * len(self.directions))
            self.model.eval()
            with torch.inference_mode(), self._amp():  # activations in the dtype they will have (bf16: half)
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        return max(1, biggest[0] // n)

    def _build_first_layer(self, force: bool = False) -> _FirstLayer | None:
        """Find the first module holding moved tensors; cache its k+1 affine outputs if that is exact."""
        if not all(isinstance(b.inputs, torch.Tensor) for b in self.batches):
            return None
        moved = {id(t) for t, d in zip(self._user_live, zip(*self.directions)) if any(bool(x.any()) for x in d)}
        if not moved:
            return None
        owners: dict[int, nn.Module] = {}
        for m in self.model.modules():
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                if id(t) in moved:
                    if any(True for _ in m.children()):
                        return None  # a container uses the tensor itself: order unknown
                    owners[id(t)] = m
        if len(owners) != len(moved):
            return None
        modules = list({id(m): m for m in owners.values()}.values())
        calls: list[nn.Module] = []
        seen_input: dict[str, torch.Tensor] = {}

        def pre(m: nn.Module, args: Any) -> None:
            calls.append(m)
            if len(calls) == 1 and args and isinstance(args[0], torch.Tensor):
                seen_input["x"] = args[0].detach().clone()

        def probe(coeffs: Sequence[float]) -> tuple[torch.Tensor | None, torch.Tensor]:
            calls.clear()
            seen_input.clear()
            write_point(self.live, self.origin, self.directions, coeffs)
            handles = [m.register_forward_pre_hook(pre) for m in modules]
            try:
                with torch.inference_mode():
                    out = self._forward(self.batches[0].inputs)
            finally:
                for h in handles:
                    h.remove()
            return seen_input.get("x"), out

        self.model.eval()
        k = len(self.directions)
        zero, one = [0.0] * k, [1.0] * k
        x0, _ = probe(zero)
        first = calls[0] if calls else None
        if first is None or x0 is None or sum(c is first for c in calls) != 1:
            return None
        if type(first).forward not in _AFFINE_FORWARDS or "forward" in vars(first):
            return None
        if not force and first.weight[0].numel() < FIRST_LAYER_MIN_FAN_IN:
            return None  # cheaper to run than to read k+1 cached outputs (see the notes above)
        x1, out1 = probe(one)
        if x1 is None or not torch.equal(x0, x1):
            return None  # its input moves with the parameters
        # the layer's parameters: θ0 and direction parts (zero where a tensor does not move)
        index = {id(t): i for i, t in enumerate(self._user_live)}
        weight, bias = first.weight, first.bias

        def parts(t: torch.Tensor | None) -> list[torch.Tensor | None]:
            if t is None:
                return [None] * (k + 1)
            if id(t) in index:
                i = index[id(t)]
                return [self.origin[i]] + [d[i] for d in self.directions]
            return [t.detach()] + [torch.zeros_like(t)] * k

        ws, bs = parts(weight), parts(bias)
        if isinstance(first, nn.Conv2d) and self._overrides:
            ws = [w.contiguous(memory_format=torch.channels_last) for w in ws]

        def affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            if isinstance(first, nn.Linear):
                return F.linear(x, w, b)
            return first._conv_forward(x, w, b)  # padding modes included

        # memory: k+1 outputs for every sample
        with torch.inference_mode():
            probe_out = affine(x0, ws[0], bs[0])
        per_sample = probe_out[0].numel() * probe_out.element_size() if probe_out.dim() > 0 else 0
        need = per_sample * self.total * (k + 1)
        if need > min(FIRST_LAYER_CACHE_BYTES, _available_bytes(self.origin[0].device) // 4):
            return None
        # inputs of the layer for every batch, at θ0 (they do not depend on the point)
        write_point(self.live, self.origin, self.directions, zero)
        cache: list[list[torch.Tensor]] = []
        grab: dict[str, torch.Tensor] = {}

        def capture(_m: nn.Module, args: Any) -> None:
            grab["x"] = args[0]
            raise _Stop  # the rest of the forward is not needed

        handle = first.register_forward_pre_hook(capture)
        try:
            with torch.inference_mode():
                for b in self.batches:
                    grab.clear()
                    try:
                        self._forward(b.inputs)
                    except _Stop:
                        pass
                    if "x" not in grab:
                        return None
                    x = grab["x"]
                    cache.append([affine(x, w, bb) for w, bb in zip(ws, bs)])
        finally:
            handle.remove()
        layer = _FirstLayer(first, cache)
        # check on the probe batch at the point (1, …, 1): stub + rest of net == the full net
        write_point(self.live, self.origin, self.directions, one)
        try:
            layer.install()
            with torch.inference_mode():
                layer.prepare(0, one)
                out_fast = self._forward(self.batches[0].inputs)
        finally:
            layer.remove()
        with torch.inference_mode():
            out_ref = self._forward(self.batches[0].inputs)
        tol = 1e-9 if out_ref.dtype == torch.float64 else 1e-3
        scale = float(out_ref.abs().max()) if out_ref.numel() else 0.0
        if out_fast.shape != out_ref.shape or float((out_fast - out_ref).abs().max()) > tol * max(scale, 1.0):
            return None
        write_point(self.live, self.origin, self.directions, zero)
        return layer

    # -- evaluation ----------------------------------------------------------------------------
    def _output(self, j: int, b: Batch, coeffs: Sequence[float]) -> torch.Tensor:
        first = self._first
        if first is None:
            return self._forward(b.inputs)
        first.prepare(j, coeffs)  # the first layer's output at this point, from its cached parts
        first.install()
        try:
            return self._forward(b.inputs)
        finally:
            first.remove()
            first.current = None


class VmapEvaluator(FastEvaluator):
    """Several grid points per forward: ``vmap`` over stacked parameters θ0 + Σ cᵢdᵢ (one row per point).

    Keeps a GPU busy with a small model. The stacked parameters cost ``points × moved bytes``, so
    points per forward are capped by ``VMAP_PARAM_BYTES``. Falls back to the per-point fast path
    (for good) when the model cannot be vmapped.
    """

    engine = "vmap"

    def __init__(self, *args: Any, points_per_forward: int | None = None, **kwargs: Any) -> None:
        for per_point in ("channels_last", "first_layer", "onednn_linear", "fuse"):  # speed-ups of the per-point forward
            kwargs.setdefault(per_point, False)
        super().__init__(*args, **kwargs)
        names = {id(p): n for n, p in self.model.named_parameters(remove_duplicate=False)}
        names.update({id(b): n for n, b in self.model.named_buffers(remove_duplicate=False)})
        self._names = [names.get(id(t)) for t in self._user_live]
        moved_bytes = sum(t.numel() * t.element_size() for t in self.origin)
        cap = max(1, VMAP_PARAM_BYTES // max(moved_bytes, 1))
        self.points_per_forward = int(points_per_forward or min(64, cap))
        self.preferred_chunk = self.points_per_forward
        self.vmap_ok = all(n is not None for n in self._names)
        if self.vmap_ok:
            self.features.append("vmap")
            if not self._vmaps():
                self._fall_back()

    def _vmaps(self) -> bool:
        """Whether the model runs under vmap: two points on two samples of the first batch (so that the
        engine the file records is the one that runs)."""
        ref = self.origin[0]
        c = torch.zeros(min(2, self.points_per_forward), len(self.directions), dtype=ref.dtype, device=ref.device)
        self.model.eval()
        try:
            with torch.inference_mode():
                self._forward_points(self._stack(c), _slice(self.batches[0].inputs, 0, 2))
        except (RuntimeError, NotImplementedError, TypeError):
            return False
        return True

    def _fall_back(self) -> None:
        """An operation vmap cannot batch: one point at a time (the fast path) from here on."""
        self.vmap_ok = False
        self.features = [f for f in self.features if f != "vmap"] + ["vmap-fallback"]

    def _forward_points(self, params: dict[str, torch.Tensor], inputs: Any) -> Any:
        """The model's outputs at several points at once, ``(points, batch, …)``."""
        model = self.model

        def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, p, (x,))

        with self._amp():
            return torch.vmap(f, in_dims=(0, None))(params, inputs)

    def _stack(self, c: torch.Tensor) -> dict[str, torch.Tensor]:
        params = {}
        for i, name in enumerate(self._names):
            o = self.origin[i]
            view = (-1,) + (1,) * o.dim()
            t = o.unsqueeze(0).expand((c.shape[0],) + tuple(o.shape)).clone()
            for j, d in enumerate(self.directions):
                t.add_(c[:, j].reshape(view) * d[i].unsqueeze(0))
            params[name] = t
        return params

    def _many(self, coeffs: np.ndarray) -> np.ndarray:
        P = len(coeffs)
        ref = self.origin[0]
        c = torch.as_tensor(np.asarray(coeffs, dtype=np.float64), device=ref.device).to(ref.dtype)
        params = self._stack(c)
        acc = torch.zeros(P, self.n_metrics, dtype=torch.float64, device=ref.device)
        self.model.eval()
        with torch.inference_mode():
            for b in self.batches:
                out = self._widen(self._forward_points(params, b.inputs))  # (P, batch, …)
                if self.loss_fn is None and not self.extra:
                    t = b.targets
                    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.shape == out.shape[1:]:
                        acc[:, 0] += ((out - t.unsqueeze(0)) ** 2).flatten(1).sum(1).double()
                    else:
                        if t is None:
                            _default_loss(out[0], t)  # raises the helpful error
                        flat = out.reshape((P * out.shape[1],) + tuple(out.shape[2:]))
                        tt = t.unsqueeze(0).expand((P,) + tuple(t.shape)).reshape((-1,) + tuple(t.shape[1:]))
                        acc[:, 0] += F.cross_entropy(flat, tt, reduction="none").reshape(P, -1).sum(1).double()
                    if self.accuracy:
                        acc[:, 1] += (out.argmax(dim=2) == b.targets.unsqueeze(0)).sum(1).double()
                else:
                    for p in range(P):
                        self._accumulate(acc[p], out[p], b)
        return (acc / self.total).cpu().numpy()

    def evaluate_many(self, coeffs: np.ndarray) -> np.ndarray:
        coeffs = np.asarray(coeffs, dtype=np.float64).reshape(len(coeffs), -1)
        if not self.vmap_ok:
            return super().evaluate_many(coeffs)
        out = np.empty((len(coeffs), self.n_metrics), dtype=np.float64)
        step = self.points_per_forward
        for lo in range(0, len(coeffs), step):
            try:
                out[lo : lo + step] = self._many(coeffs[lo : lo + step])
            except (RuntimeError, NotImplementedError, TypeError):  # one the probe at the start did not meet
                self._fall_back()
                out[lo:] = super().evaluate_many(coeffs[lo:])
                break
        return out


def make_evaluator(*args: Any, engine: str = "auto", **kwargs: Any) -> Evaluator:
    """The evaluator for these settings: :class:`Evaluator`'s arguments plus ``engine``.

    ``engine``: ``plain`` (the reference loop), ``fast`` (exact CPU/GPU speed-ups, one point per
    forward), ``vmap`` (several points per forward) or ``auto`` (``vmap`` on CUDA, ``fast``
    elsewhere). A user ``forward`` or ``bn="recompute"`` with batch-norm layers always gets the
    plain path, which is exact for them.
    """
    if engine not in ENGINES:
        raise LossmapError(f"engine {engine!r} is unknown: choose one of {', '.join(ENGINES)}")
    plain = Evaluator(*args, **kwargs)
    if engine == "plain" or plain.forward is not None or (plain.bn == "recompute" and plain.bn_modules):
        return plain
    if engine == "auto":
        engine = "vmap" if plain.origin[0].device.type == "cuda" else "fast"
    try:
        return VmapEvaluator(*args, **kwargs) if engine == "vmap" else FastEvaluator(*args, **kwargs)
    except LossmapError:
        raise
    except Exception:  # a model the fast paths cannot drive (scripted, exotic hooks…): the plain loop
        return plain
