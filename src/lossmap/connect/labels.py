"""Labels: which axis of a traced tensor holds permutable hidden units, and how ops move them.

While :mod:`lossmap.connect.derive` walks a model's ``torch.fx`` graph, each tensor gets a
:class:`Label` — its axis holding hidden units of permutation *group* ``group``, in blocks of
``block`` consecutive entries — or none (nothing permutable, as for the input). Groups live in a
union–find: an elementwise op joining two labelled tensors (a residual add, a gate) merges their
groups, and joining a labelled tensor with an unpermuted one of full size (the input of a residual
stream, a parameter used in ``forward``) merges the group into :data:`FIXED`, the units that must
not move. This module holds that state and the rules of ops that hold no tensors: elementwise ops,
reshapes, reductions, transposes, concatenation and pooling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from ..errors import LossmapError

__all__ = ["Label", "Walk", "FIXED", "find", "union", "new_group", "fail_at", "shape_of", "label_of", "tensor_args",
           "add_entry", "tensors_of", "join", "label_in", "reshape", "reduce", "transpose", "cat", "pool"]

FIXED = 0  # the group of units that must not move: the input's and the output's


@dataclass(frozen=True)
class Label:
    """Axis ``axis`` of a tensor holds units of permutation group ``group``, ``block`` entries each."""

    group: int
    axis: int
    block: int = 1


class Walk:
    """State of one walk over a graph: union–find over groups, labels, and the tensor axes found."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.parent: list[int] = [FIXED]
        self.size: list[int] = [0]
        self.name: list[str] = [""]
        self.labels: dict[fx.Node, Label | None] = {}
        self.entries: list[tuple[str, int, int, int]] = []  # (tensor, axis, block, group)
        self.layer_in: dict[str, Label | None] = {}
        self.layer_out: dict[str, int] = {}


def find(w: Walk, g: int) -> int:
    while w.parent[g] != g:
        w.parent[g] = w.parent[w.parent[g]]
        g = w.parent[g]
    return g


def union(w: Walk, a: int, b: int, node: fx.Node) -> int:
    ra, rb = find(w, a), find(w, b)
    if ra == rb:
        return ra
    if FIXED not in (ra, rb) and w.size[ra] != w.size[rb]:
        raise fail_at(node, f"it joins {w.size[ra]} units of {w.name[ra]!r} with {w.size[rb]} of {w.name[rb]!r}")
    lo, hi = min(ra, rb), max(ra, rb)  # the earlier group names the merged one; FIXED (0) absorbs all
    w.parent[hi] = lo
    return lo


def new_group(w: Walk, size: int, name: str) -> int:
    w.parent.append(len(w.parent))
    w.size.append(int(size))
    w.name.append(name)
    return len(w.parent) - 1


def _where(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r}"
    what = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    stack = node.meta.get("nn_module_stack") or {}
    inside = f" in layer {list(stack.values())[-1][0]!r}" if stack else ""
    return f"operation {what!r} (node {node.name!r}){inside}"


def fail_at(node: fx.Node, why: str) -> LossmapError:
    return LossmapError(
        f"cannot derive the permutation structure at {_where(node)}: {why}; "
        "pass an explicit spec={perm_name: [(tensor_name, axis), ...]}"
    )


def shape_of(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def label_of(w: Walk, arg: Any) -> Label | None:
    lab = w.labels.get(arg) if isinstance(arg, fx.Node) else None
    if lab is None or find(w, lab.group) == FIXED:
        return None
    return lab


def tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if shape_of(n) is not None else None)
    return found


def add_entry(w: Walk, tensor: str, axis: int, block: int, group: int) -> None:
    w.entries.append((tensor, axis, block, group))


def tensors_of(prefix: str, mod: nn.Module, names: tuple[str, ...]) -> list[str]:
    own = dict(mod.named_parameters(recurse=False)) | dict(mod.named_buffers(recurse=False))
    return [f"{prefix}.{n}" if prefix else n for n in names if own.get(n) is not None]


# ---------------------------------------------------------------- ops that hold no tensors


def join(w: Walk, node: fx.Node, operands: list[fx.Node] | None = None) -> Label | None:
    """Elementwise op (with broadcasting): labelled operands share one group on one output axis;
    an unlabelled operand spanning that axis pins the group."""
    out_nd = len(shape_of(node))
    operands = tensor_args(node) if operands is None else operands
    found: Label | None = None
    for op in operands:
        lab = label_of(w, op)
        if lab is None:
            continue
        here = Label(lab.group, lab.axis + out_nd - len(shape_of(op)), lab.block)
        if found is None:
            found = here
        elif (here.axis, here.block) != (found.axis, found.block):
            raise fail_at(node, f"its operands carry hidden units on different axes ({found.axis} and {here.axis})")
        else:
            found = Label(union(w, found.group, here.group, node), found.axis, found.block)
    if found is None:
        return None
    for op in operands:
        shape = shape_of(op)
        at = found.axis - (out_nd - len(shape))
        if label_of(w, op) is None and at >= 0 and shape[at] > 1:
            found = Label(union(w, found.group, FIXED, node), found.axis, found.block)
    return found if find(w, found.group) != FIXED else None


def label_in(w: Walk, node: fx.Node) -> Label | None:
    """The label of the op's first argument."""
    return label_of(w, node.args[0])


def reshape(w: Walk, node: fx.Node) -> Label | None:
    """Any row-major reshape (flatten, view, squeeze, …): find the output axis that holds each unit's
    entries contiguously, in blocks."""
    src = node.args[0]
    lab = label_of(w, src)
    if lab is None:
        return None
    shape_in, shape_out = shape_of(src), shape_of(node)
    n = shape_in[lab.axis] // lab.block
    unit = lab.block * math.prod(shape_in[lab.axis + 1 :])
    outer = math.prod(shape_in[: lab.axis])
    for q in range(len(shape_out)):
        inner = math.prod(shape_out[q + 1 :])
        if math.prod(shape_out[:q]) == outer and unit % inner == 0 and shape_out[q] == n * (unit // inner):
            return Label(lab.group, q, unit // inner)
    raise fail_at(node, f"it reshapes {tuple(shape_in)} to {tuple(shape_out)} and splits the hidden units on axis {lab.axis}")


def _dims(arg: Any, nd: int) -> list[int]:
    dims = [arg] if isinstance(arg, int) else list(arg)
    return [d % nd for d in dims]


def reduce(w: Walk, node: fx.Node) -> Label | None:
    lab = label_in(w, node)
    if lab is None:
        return None
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keep = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return None  # a full reduction does not see the order of units
    if not (isinstance(dim, int) or (isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim))):
        raise fail_at(node, f"its dim {dim!r} is not a constant")
    shape_in = shape_of(node.args[0])
    dims = _dims(dim, len(shape_in))
    if lab.axis in dims:
        return None  # summing or averaging over the units: invariant
    axis = lab.axis if keep else lab.axis - sum(d < lab.axis for d in dims)
    if not (axis < len(shape_of(node)) and shape_of(node)[axis] == shape_in[lab.axis]):
        raise fail_at(node, f"its result {shape_of(node)} does not keep the hidden units of axis {lab.axis}")
    return Label(lab.group, axis, lab.block)


def transpose(w: Walk, node: fx.Node) -> Label | None:
    lab = label_in(w, node)
    if lab is None:
        return None
    nd = len(shape_of(node.args[0]))
    if node.target in ("permute", torch.permute):
        raw = node.args[1:] if len(node.args) > 2 or isinstance(node.args[1], int) else node.args[1]
        order = _dims(list(raw), nd)
        return Label(lab.group, order.index(lab.axis), lab.block)
    pair = [0, 1] if node.target == "t" else [*node.args[1:3], *(node.kwargs[k] for k in ("dim0", "dim1") if k in node.kwargs)]
    d0, d1 = _dims(pair, nd)
    axis = d1 if lab.axis == d0 else d0 if lab.axis == d1 else lab.axis
    return Label(lab.group, axis, lab.block)


def cat(w: Walk, node: fx.Node) -> Label | None:
    parts = [p for p in node.args[0] if shape_of(p) is not None]
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) % len(shape_of(node))
    labs = [label_of(w, p) for p in parts]
    if any(lab is not None and lab.axis == dim for lab in labs):
        raise fail_at(node, f"it concatenates along the hidden units' axis {dim}")
    return join(w, node, parts)


def pool(spatial: int | None):
    def handle(w: Walk, node: fx.Node) -> Label | None:
        lab = label_in(w, node)
        nd = len(shape_of(node.args[0]))
        k = nd - 2 if spatial is None else spatial
        if lab is not None and lab.axis >= nd - k:
            raise fail_at(node, f"it pools over axis {lab.axis}, which holds hidden units")
        return lab

    return handle
