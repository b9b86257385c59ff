"""Rules of the layers that hold tensors: which of their tensor axes each permutation group reaches.

Linear, convolution and embedding layers start a new group on their outputs and take their input's
group on their input axis; batch, instance, group and layer norms, RMS norm and PReLU carry one
value per unit and take their input's group. A layer called more than once must see the same units
each time (the groups of its inputs are merged).
"""

from __future__ import annotations

from torch import fx, nn

from .labels import FIXED, Label, Walk, add_entry, fail_at, label_in, new_group, shape_of, tensors_of, union

__all__ = ["linear", "conv", "embedding", "norm"]


def _reconcile(w: Walk, node: fx.Node, name: str, lab: Label | None) -> bool:
    """A layer called again must see its input's units in the same group; True on its first call."""
    if name not in w.layer_in:
        w.layer_in[name] = lab
        return True
    prev = w.layer_in[name]
    if prev is None and lab is not None:
        union(w, lab.group, FIXED, node)
    elif prev is not None and lab is None:
        union(w, prev.group, FIXED, node)
    elif prev is not None and lab is not None:
        if (prev.axis, prev.block) != (lab.axis, lab.block):
            raise fail_at(node, "it is called twice on hidden units laid out differently")
        union(w, prev.group, lab.group, node)
    return False


def _layer_out(w: Walk, name: str, size: int) -> int:
    if name not in w.layer_out:
        w.layer_out[name] = new_group(w, size, name)
    return w.layer_out[name]


def linear(w: Walk, node: fx.Node, name: str, mod: nn.Linear) -> Label | None:
    lab, nd = label_in(w, node), len(shape_of(node.args[0]))
    if lab is not None and lab.axis != nd - 1:
        # it mixes another axis (tokens, say) for each unit alike: the units pass by, and its own
        # outputs stay in place (a tensor carries one permuted axis)
        _reconcile(w, node, name, None)
        if name in w.layer_out:
            union(w, w.layer_out[name], FIXED, node)
        w.layer_out.setdefault(name, FIXED)
        return lab
    first = _reconcile(w, node, name, lab)
    g = _layer_out(w, name, mod.out_features)
    if g == FIXED:
        return None
    if first:
        if lab is not None:
            add_entry(w, f"{name}.weight", 1, lab.block, lab.group)
        for t in tensors_of(name, mod, ("weight", "bias")):
            add_entry(w, t, 0, 1, g)
    return Label(g, len(shape_of(node)) - 1)


def conv(w: Walk, node: fx.Node, name: str, mod: nn.modules.conv._ConvNd) -> Label | None:
    lab, nd = label_in(w, node), len(shape_of(node.args[0]))
    channel = nd - len(mod.kernel_size) - 1
    if lab is not None and (lab.axis != channel or lab.block != 1):
        raise fail_at(node, f"its input holds hidden units on axis {lab.axis}, not on the channel axis {channel}")
    out_axis, in_axis = (1, 0) if mod.transposed else (0, 1)
    if mod.groups != 1:
        if not (mod.groups == mod.in_channels == mod.out_channels):
            raise fail_at(node, f"it is a grouped convolution (groups={mod.groups}), which mixes units only within groups")
        if _reconcile(w, node, name, lab) and lab is not None:  # depthwise: channel c → channel c
            for t in tensors_of(name, mod, ("weight", "bias")):
                add_entry(w, t, 0, 1, lab.group)
        return lab
    first = _reconcile(w, node, name, lab)
    g = _layer_out(w, name, mod.out_channels)
    if first:
        if lab is not None:
            add_entry(w, f"{name}.weight", in_axis, 1, lab.group)
        add_entry(w, f"{name}.weight", out_axis, 1, g)
        for t in tensors_of(name, mod, ("bias",)):
            add_entry(w, t, 0, 1, g)
    return Label(g, channel)


def embedding(w: Walk, node: fx.Node, name: str, mod: nn.Embedding) -> Label | None:
    if label_in(w, node) is not None:
        raise fail_at(node, "its indices come from permuted hidden units")
    if _reconcile(w, node, name, None):
        add_entry(w, f"{name}.weight", 1, 1, _layer_out(w, name, mod.embedding_dim))
    return Label(_layer_out(w, name, mod.embedding_dim), len(shape_of(node)) - 1)


def _per_unit(w: Walk, node: fx.Node, name: str, mod: nn.Module, channel: int, names: tuple[str, ...]) -> Label | None:
    """A layer whose tensors hold one value per unit along ``channel`` of its input (batch/instance
    norm, PReLU, one-group or per-channel group norm)."""
    lab = label_in(w, node)
    if lab is not None and lab.axis != channel:
        raise fail_at(node, f"its input holds hidden units on axis {lab.axis}, not on its channel axis {channel}")
    if _reconcile(w, node, name, lab) and lab is not None:
        for t in tensors_of(name, mod, names):
            add_entry(w, t, 0, lab.block, lab.group)
    return lab


def norm(w: Walk, node: fx.Node, name: str, mod: nn.Module) -> Label | None:
    nd = len(shape_of(node.args[0]))
    stats = ("weight", "bias", "running_mean", "running_var")
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return _per_unit(w, node, name, mod, 1, stats)
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm):
        return _per_unit(w, node, name, mod, 0 if nd == mod._get_no_batch_dim() else 1, stats)
    if isinstance(mod, nn.PReLU):
        if mod.num_parameters == 1:
            return label_in(w, node)  # one slope for all units
        return _per_unit(w, node, name, mod, 1 if nd >= 2 else 0, ("weight",))
    if isinstance(mod, nn.GroupNorm):
        if mod.num_groups not in (1, mod.num_channels) and label_in(w, node) is not None:
            raise fail_at(node, f"it normalizes {mod.num_groups} groups of channels, and a permutation would mix them")
        return _per_unit(w, node, name, mod, 1, ("weight", "bias"))
    return _layer_norm(w, node, name, mod)


def _layer_norm(w: Walk, node: fx.Node, name: str, mod: nn.Module) -> Label | None:
    lab, nd = label_in(w, node), len(shape_of(node.args[0]))
    start = nd - len(mod.normalized_shape)
    inside = lab if lab is not None and lab.axis >= start else None  # else the units just pass by
    if _reconcile(w, node, name, inside) and inside is not None:
        for t in tensors_of(name, mod, ("weight", "bias")):
            add_entry(w, t, inside.axis - start, inside.block, inside.group)
    return lab
