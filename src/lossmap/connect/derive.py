"""Deriving a model's permutation structure from its graph (torch.fx).

The forward is traced with ``torch.fx.symbolic_trace`` and run once on an example batch to learn
every intermediate shape. Walking the graph, each tensor gets a *label*: which of its axes holds
permutable hidden units, of which permutation *group*, in blocks of how many entries — or no label
(nothing permutable, as for the input). Linear, convolution and embedding layers start a new group
on their outputs and take their input's group on their input axis; batch/layer/group/instance norms,
PReLU, elementwise activations, dropout, pooling, softmax, flatten/view/reshape, transpose, cat and
reductions pass labels through; an elementwise op joining two labelled tensors (a residual add, a
gate) merges their groups (union–find), and joining a labelled tensor with an unpermuted one of full
size (the input of a residual stream, a parameter used in ``forward``) pins the group to the
identity. Groups that reach the model's output are pinned as well.

What the walk does not know — a layer type holding tensors (attention, recurrent layers, custom leaf
modules), an op applied to permuted units (matmul, indexing, …), a norm or grouped convolution that
mixes units across groups — raises :class:`LossmapError` naming the layer; pass an explicit spec then.
Tensors the traced forward never uses are not permuted.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import LossmapError
from .check import check_spec, eval_mode
from .labels import (
    FIXED, Label, Walk, cat, fail_at, find, join, label_in, label_of, pool, reduce, reshape, shape_of, tensor_args, transpose, union,
)
from .layers import conv, embedding, linear, norm
from .spec import PermutationSpec, spec_from_axes

__all__ = ["derive_spec"]


# ---------------------------------------------------------------- dispatch

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.CELU,
    nn.Softplus, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Identity, nn.Softmax, nn.LogSoftmax,  # softmax commutes with permutations
)
_POOL_MODULES = {
    **dict.fromkeys((nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d), 1),
    **dict.fromkeys((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d), 2),
    **dict.fromkeys((nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d), 3),
    nn.Upsample: None,
}
_NORMS = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.relu_, torch.tanh, torch.sigmoid, torch.exp,
    torch.abs, torch.neg, torch.square, torch.sqrt, torch.rsqrt, torch.clamp, torch.maximum, torch.minimum,
    torch.where, torch.softmax, torch.log_softmax,
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.selu, F.celu, F.softplus, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.logsigmoid, F.tanh, F.sigmoid, F.softmax, F.log_softmax,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.normalize,
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "relu", "relu_", "sigmoid", "tanh", "exp",
    "abs", "neg", "square", "sqrt", "rsqrt", "pow", "clamp", "clamp_min", "clamp_max", "softmax",
    "log_softmax", "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "masked_fill",
}
_FIRST_METHODS = {"to", "type", "type_as", "cpu", "cuda"}
_RESHAPES = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
             "flatten", "view", "reshape", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
_TRANSPOSES = {torch.transpose, torch.permute, "transpose", "permute", "t"}
_POOL_FUNCTIONS = {
    **dict.fromkeys((F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, F.lp_pool1d), 1),
    **dict.fromkeys((F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d), 2),
    **dict.fromkeys((F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d), 3),
    F.interpolate: None,
}


def _module(w: Walk, node: fx.Node, deferred: list) -> Label | None:
    name, mod = str(node.target), w.gm.get_submodule(str(node.target))
    if shape_of(node) is None:
        pass  # known layers return one tensor; anything else is treated as unknown below
    elif isinstance(mod, nn.Linear):
        return linear(w, node, name, mod)
    elif isinstance(mod, nn.modules.conv._ConvNd):
        return conv(w, node, name, mod)
    elif isinstance(mod, nn.Embedding):
        return embedding(w, node, name, mod)
    elif isinstance(mod, _NORMS):
        return norm(w, node, name, mod)
    elif isinstance(mod, _ELEMENTWISE_MODULES):
        return join(w, node)
    elif type(mod) in _POOL_MODULES:
        return pool(_POOL_MODULES[type(mod)])(w, node)
    elif isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return reshape(w, node)
    held = [n for n, _ in mod.named_parameters()] + [n for n, _ in mod.named_buffers()]
    if held:
        raise fail_at(node, f"layers of type {type(mod).__name__} (holding {', '.join(held[:3])}) are not known to the derivation")
    return _unknown(w, node, deferred, f"layers of type {type(mod).__name__} are not known to the derivation")


def _unknown(w: Walk, node: fx.Node, deferred: list, why: str) -> None:
    """An op the walk cannot follow: acceptable only if its inputs turn out to be unpermuted (checked
    once the whole graph is walked); its output is unpermuted."""
    groups = [lab.group for lab in (label_of(w, a) for a in tensor_args(node)) if lab is not None]
    if groups:
        deferred.append((node, groups, why))
    return None


def _function(w: Walk, node: fx.Node, deferred: list) -> Label | None:
    t = node.target
    if t in _ELEMENTWISE_FUNCTIONS or (node.op == "call_method" and t in _ELEMENTWISE_METHODS):
        return join(w, node)
    if node.op == "call_method" and t in _FIRST_METHODS:
        return label_in(w, node)
    if t in _RESHAPES:
        return reshape(w, node)
    if t in _REDUCTIONS:
        return reduce(w, node)
    if t in _TRANSPOSES:
        return transpose(w, node)
    if t in (torch.cat, torch.concat, torch.concatenate):
        return cat(w, node)
    if node.op == "call_function" and t in _POOL_FUNCTIONS:
        return pool(_POOL_FUNCTIONS[t])(w, node)
    return _unknown(w, node, deferred, "the derivation does not know how it acts on hidden units")


def _visit(w: Walk, node: fx.Node, deferred: list) -> Label | None:
    if node.op in ("placeholder", "get_attr"):
        return None  # the input, and tensors used directly in forward, are never permuted
    if node.op == "output":
        for arg in tensor_args(node):
            lab = label_of(w, arg)
            if lab is not None:
                union(w, lab.group, FIXED, node)
        return None
    if node.op == "call_module":
        return _module(w, node, deferred)
    if shape_of(node) is None:
        if isinstance(node.meta.get("tensor_meta"), (tuple, list, dict)):
            return _unknown(w, node, deferred, "it returns several tensors")
        return None  # sizes, dims, …: no tensor comes out
    return _function(w, node, deferred)


# ---------------------------------------------------------------- the walk


def _trace(model: nn.Module, example_input: Any) -> fx.GraphModule:
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    with eval_mode(model), torch.no_grad():
        try:
            gm = fx.symbolic_trace(model)
        except Exception as exc:
            raise LossmapError(
                f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                "pass an explicit spec={perm_name: [(tensor_name, axis), ...]}"
            ) from exc
        try:
            ShapeProp(gm).propagate(*args)
        except Exception as exc:
            raise LossmapError(
                f"the model fails on the example input ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                "pass a batch the model's forward accepts"
            ) from exc
    return gm


def _spec(w: Walk, model: nn.Module) -> PermutationSpec:
    """The permutations found, named ``P_<layer>`` after the layer that created each. A tensor shared
    under several names (tied weights) is one tensor: groups reaching the same axis of it merge, and
    every name gets its permutations."""
    state = model.state_dict(keep_vars=True)
    names: dict[int, list[str]] = {}
    for k, t in state.items():
        names.setdefault(id(t), []).append(k)
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    for tensor, axis, block, group in w.entries:
        key = (id(state[tensor]), axis)
        if key in seen and seen[key][1] != block:
            raise LossmapError(f"tensor {tensor!r} is reached on axis {axis} in two layouts: pass an explicit spec=")
        if key in seen:
            lo, hi = sorted((find(w, group), find(w, seen[key][0])))
            w.parent[hi] = lo
        seen.setdefault(key, (group, block))
    axes: dict[str, list[tuple[str, int, int]]] = {}
    for (tid, axis), (group, block) in seen.items():
        root = find(w, group)
        if root != FIXED:
            axes.setdefault(f"P_{w.name[root]}", []).extend((name, axis, block) for name in names[tid])
    if not axes:
        return PermutationSpec(perms={}, sizes={})
    return spec_from_axes(axes, {k: v.detach() for k, v in state.items()})


def derive_spec(model: nn.Module, example_input: Any, *, check: bool = True, seed: int = 0) -> PermutationSpec:
    """Derive which tensor axes each permutation of hidden units acts on, from the model's graph.

    The forward is traced with ``torch.fx`` and run once in eval mode on ``example_input`` (no
    gradient; the model's modes are restored). The input's channels and the output's units are
    never permuted.

    Args:
        model: the network (left unchanged).
        example_input: a batch the forward accepts (a tensor, or a tuple of the forward's arguments).
        check: also run :func:`~lossmap.connect.check.check_spec` with the model's own weights.
        seed: seed of that check's random permutations.

    Returns:
        PermutationSpec: permutations named ``P_<layer>`` after the layer whose outputs they reorder.

    Raises:
        LossmapError: naming the layer or operation the derivation cannot follow.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> derive_spec(net, torch.randn(5, 3)).perms
        {'P_0': (('0.weight', 0, 1), ('0.bias', 0, 1), ('2.weight', 1, 1))}
    """
    gm = _trace(model, example_input)
    w, deferred = Walk(gm), []
    for node in gm.graph.nodes:
        w.labels[node] = _visit(w, node, deferred)
    for node, groups, why in deferred:
        if any(find(w, g) != FIXED for g in groups):
            raise fail_at(node, why)
    spec = _spec(w, model)
    if check and spec.perms:
        check_spec(model, spec, {k: v.detach() for k, v in model.state_dict().items()}, example_input, seed=seed)
    return spec
