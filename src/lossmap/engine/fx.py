"""Graph rewrites of the CPU fast path, on an FX graph of the model (``torch.fx.symbolic_trace``):

* each ``Conv2d`` with what follows it — an evaluation-mode ``BatchNorm2d`` (folded into its weights), a
  residual add, a ReLU — as one oneDNN convolution with post-ops (:func:`lossmap.engine.onednn.conv_fused`);
* ``flatten(x, 1)`` → ``nn.Linear`` on channels_last activations without the copy to NCHW order
  (:class:`FlattenLinear`).

Weights, biases and batch-norm statistics are read from the modules at every call, so in-place point writes
and ``functional_call`` overrides reach them. The fast engine keeps a rewritten graph only after it matched
the model's own forward on a probe batch.
"""

from __future__ import annotations

import operator
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .onednn import conv_fused, cpu_autocast_on, onednn_usable

__all__ = ["fuse_convs", "FlattenLinear", "FLATTEN_LINEAR_MAX_BYTES"]

FLATTEN_LINEAR_MAX_BYTES = 64 * 1024**2
_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)


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


class FlattenLinear(nn.Module):
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
            and x.dtype == weight.dtype and not cpu_autocast_on()
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


def fuse_convs(
    model: nn.Module, skip: nn.Module | None, flatten_linear: bool = True
) -> tuple[torch.fx.GraphModule, dict[str, int]] | None:
    """``model``'s forward as an FX graph in which each Conv2d runs with what follows it as one
    :func:`conv_fused` call: a BatchNorm2d (folded), then a residual add, then a ReLU, each taken
    where it is the only use of the value before it. Weights, biases and batch-norm statistics are
    read from the modules at every call (so in-place point writes and ``functional_call``
    overrides reach them). With ``flatten_linear``, each ``flatten(x, 1)`` whose only use is an
    ``nn.Linear`` runs as :class:`FlattenLinear`. ``None`` where nothing fuses; tracing errors propagate."""
    if not onednn_usable("_convolution_pointwise") or not any(type(m) is nn.Conv2d for m in model.modules()):
        return None
    gm = torch.fx.symbolic_trace(model)  # raises for data-dependent control flow and the like
    modules = dict(gm.named_modules())
    counts: dict[str, int] = {}
    graph = gm.graph
    for node in list(graph.nodes):
        linear = _flatten_into_linear(node, modules, skip) if flatten_linear else None
        if linear is not None:
            name = f"_flatten_{str(linear.target).replace('.', '_')}"
            gm.add_submodule(name, FlattenLinear())
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
            new = graph.call_function(conv_fused, args, {"bn": bn_args, "other": other, "relu": relu})
        tail.replace_all_uses_with(new)
        for n in reversed(chain):
            graph.erase_node(n)
        label = "+".join(kind)
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    gm.recompile()
    return gm, counts


