"""oneDNN kernels for the CPU fast path: float32 ``F.linear`` on oneDNN's GEMM, and a convolution with its
batch norm, residual add and ReLU as one oneDNN call.

Why: on the CPUs measured (see the performance page of the docs) ``torch.mm``/``F.linear`` take MKL's
sgemm, which reached about half of oneDNN's float32 GEMM throughput with the same threads; and a
convolution's following batch norm, add and ReLU are separate passes over its output that oneDNN's
post-ops remove. Both compute the same IEEE float32 products and sums; only the summation order (and,
for a folded batch norm, the order of a product) differs, so results stay within float32 rounding.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["onednn_usable", "cpu_autocast_on", "cpu_floats", "conv_fused", "onednn_linear_op", "OneDNNLinear", "bf16_conv_ok"]

_PLAIN = (torch.Tensor, nn.Parameter)  # not tensor subclasses with their own dispatch


def onednn_usable(op: str) -> bool:
    """Whether this build has oneDNN op ``torch.ops.mkldnn.<op>`` and oneDNN is not switched off."""
    return (
        torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)
        and hasattr(getattr(torch.ops, "mkldnn", None), op)
    )


def cpu_autocast_on() -> bool:
    """Whether a CPU ``torch.autocast`` is active (then the float32 oneDNN shortcuts stand aside)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _conv_out_shape(x: torch.Tensor, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any) -> tuple[int, ...]:
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation)]
    return (x.shape[0], weight.shape[0], *size)


def cpu_floats(ts: Sequence[torch.Tensor | None], dtypes: tuple[torch.dtype, ...]) -> bool:
    return all(t is None or (type(t) in _PLAIN and t.device.type == "cpu" and t.dtype in dtypes) for t in ts)


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype of an active CPU ``torch.autocast``, ``None`` without one."""
    if not cpu_autocast_on():
        return None
    try:
        return torch.get_autocast_dtype("cpu")
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype()


BF16_CONV_CACHE: list[bool] = []  # whether oneDNN runs bf16 convolutions on this CPU (asked once)


def bf16_conv_ok() -> bool:
    if not BF16_CONV_CACHE:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        BF16_CONV_CACHE.append(bool(check is not None and check()))
    return BF16_CONV_CACHE[0]


def conv_fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any,
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
        x.dim() == 4 and weight.dim() == 4 and (amp is None or (amp == torch.bfloat16 and bf16_conv_ok()))
        and cpu_floats((x, other), acts) and cpu_floats((weight, bias, gamma, beta, mean, var), (torch.float32,))
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


def onednn_linear_op() -> Callable | None:
    """oneDNN's float32 GEMM for ``F.linear`` (``torch.ops.mkldnn._linear_pointwise``), if this build has it."""
    if not onednn_usable("_linear_pointwise"):
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


class OneDNNLinear(TorchFunctionMode):
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
            if cpu_floats((x, w, b), (torch.float32,)) and w.dim() == 2 and x.dim() >= 1 and not cpu_autocast_on():
                return self.op(x, w, b, "none", [None], "")
        return func(*args, **kwargs)


