"""Permutation specs: which tensor axes each permutation of hidden units acts on, and applying them.

A permutation ``P`` of ``n`` hidden units acts on a list of tensor axes. An axis entry is
``(tensor_name, axis, block)``: along ``axis`` the tensor has ``n · block`` entries, unit ``u``
owning the ``block`` consecutive entries ``u·block … u·block + block − 1`` (``block`` is 1 except
after a flatten: a linear layer after ``flatten`` of ``(C, H, W)`` sees each channel as ``H·W``
consecutive input columns). The explicit format, like git-re-basin's
``permutation_spec_from_axes_to_perm``, is a plain dict::

    {"P_fc1": [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]}

with an optional third element ``block`` per entry. Tensors that no entry names are never permuted.

A permutation is an integer array ``perm`` of length ``n``: unit ``i`` of the permuted tensor is
unit ``perm[i]`` of the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import LossmapError

__all__ = ["PermutationSpec", "spec_from_axes", "apply_permutation", "random_permutations"]

Axis = tuple[str, int, int]


@dataclass(frozen=True)
class PermutationSpec:
    """Permutations by name: ``perms[name]`` lists the ``(tensor, axis, block)`` entries it acts on,
    ``sizes[name]`` its number of units."""

    perms: dict[str, tuple[Axis, ...]]
    sizes: dict[str, int]

    def axes(self) -> dict[str, list[list]]:
        """The explicit (JSON-friendly) form ``{name: [[tensor, axis, block], ...]}``."""
        return {p: [list(e) for e in entries] for p, entries in self.perms.items()}


def _entry(perm: str, raw) -> Axis:
    if not isinstance(raw, (tuple, list)) or len(raw) not in (2, 3):
        raise LossmapError(f"spec entry {raw!r} of permutation {perm!r} is not (tensor_name, axis) or (tensor_name, axis, block)")
    name, axis, block = raw[0], raw[1], (raw[2] if len(raw) == 3 else 1)
    if not isinstance(name, str) or not isinstance(axis, (int, np.integer)) or not isinstance(block, (int, np.integer)) or block < 1:
        raise LossmapError(f"spec entry {raw!r} of permutation {perm!r}: use a tensor name, an int axis and an int block ≥ 1")
    return (name, int(axis), int(block))


def spec_from_axes(axes: Mapping[str, Sequence], state: Mapping[str, torch.Tensor]) -> PermutationSpec:
    """Check an explicit spec against a state dict and return it as a :class:`PermutationSpec`.

    Args:
        axes: ``{perm_name: [(tensor_name, axis), ...]}``; an entry may add a third element, the block.
        state: a state dict of the model (only names and shapes are read).

    Returns:
        PermutationSpec: with each permutation's size read from the shapes.

    Example:
        >>> import torch
        >>> state = {"fc1.weight": torch.zeros(4, 3), "fc1.bias": torch.zeros(4), "fc2.weight": torch.zeros(2, 4)}
        >>> spec_from_axes({"P": [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]}, state).sizes
        {'P': 4}
    """
    if not isinstance(axes, Mapping) or not axes:
        raise LossmapError("the permutation spec is empty or not a dict: pass {perm_name: [(tensor_name, axis), ...]}")
    perms: dict[str, tuple[Axis, ...]] = {}
    sizes: dict[str, int] = {}
    owner: dict[tuple[str, int], str] = {}
    for perm, raw_entries in axes.items():
        entries = tuple(_entry(perm, e) for e in raw_entries)
        if not entries:
            raise LossmapError(f"permutation {perm!r} of the spec lists no tensor axis: give it at least one (tensor_name, axis)")
        for name, axis, block in entries:
            if name not in state:
                raise LossmapError(f"spec permutation {perm!r} names tensor {name!r}, which the model does not have")
            shape = tuple(state[name].shape)
            if not -len(shape) <= axis < len(shape):
                raise LossmapError(f"spec permutation {perm!r}: tensor {name!r} of shape {shape} has no axis {axis}")
            axis %= len(shape)
            if (name, axis) in owner:
                raise LossmapError(f"axis {axis} of {name!r} is in permutations {owner[(name, axis)]!r} and {perm!r}: give each axis one permutation")
            owner[(name, axis)] = perm
            if shape[axis] % block:
                raise LossmapError(f"spec permutation {perm!r}: axis {axis} of {name!r} has {shape[axis]} entries, not a multiple of block {block}")
            size = shape[axis] // block
            if sizes.setdefault(perm, size) != size:
                raise LossmapError(f"spec permutation {perm!r} has {sizes[perm]} units but axis {axis} of {name!r} holds {size}: fix the entry or its block")
        perms[perm] = tuple((n, a % state[n].dim(), b) for n, a, b in entries)
    return PermutationSpec(perms=perms, sizes=sizes)


def _index(perm: np.ndarray, block: int, device: torch.device) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(perm, dtype=np.int64), device=device)
    if block == 1:
        return idx
    return (idx[:, None] * block + torch.arange(block, device=device)).reshape(-1)


def permute_tensor(t: torch.Tensor, entries: Sequence[tuple[int, int, np.ndarray]]) -> torch.Tensor:
    """``t`` with each ``(axis, block, perm)`` of ``entries`` applied (a new tensor when any is)."""
    for axis, block, perm in entries:
        t = t.index_select(axis, _index(perm, block, t.device))
    return t


def apply_permutation(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Mapping[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    """The state dict with every permutation of ``spec`` applied to the axes it acts on.

    Args:
        state: the state dict to permute (not modified).
        spec: which axes each permutation acts on.
        perms: ``{perm_name: index array}``; unit ``i`` of the result is unit ``perms[name][i]`` of ``state``.

    Returns:
        dict[str, torch.Tensor]: a new dict; permuted tensors are new, the others are ``state``'s own objects.

    Example:
        >>> import numpy as np, torch
        >>> state = {"w": torch.tensor([[1.0], [2.0], [3.0]])}
        >>> spec = spec_from_axes({"P": [("w", 0)]}, state)
        >>> apply_permutation(state, spec, {"P": np.array([2, 0, 1])})["w"].flatten().tolist()
        [3.0, 1.0, 2.0]
    """
    missing = [p for p in spec.perms if p not in perms]
    if missing:
        raise LossmapError(f"no permutation given for {missing[0]!r}: pass one index array per permutation of the spec")
    for p, size in spec.sizes.items():
        arr = np.asarray(perms[p])
        if arr.shape != (size,) or not np.array_equal(np.sort(arr), np.arange(size)):
            raise LossmapError(f"permutation {p!r} is not a permutation of {size} units: pass an index array of 0…{size - 1}")
    by_tensor: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    for p, entries in spec.perms.items():
        for name, axis, block in entries:
            by_tensor.setdefault(name, []).append((axis, block, np.asarray(perms[p])))
    return {name: permute_tensor(t, by_tensor[name]) if name in by_tensor else t for name, t in state.items()}


def random_permutations(spec: PermutationSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One random permutation per permutation of ``spec``, never the identity where ``n ≥ 2``.

    Args:
        spec: the permutation spec.
        rng: the numpy generator to draw from.

    Returns:
        dict[str, np.ndarray]: ``{perm_name: index array}``.

    Example:
        >>> import numpy as np, torch
        >>> spec = spec_from_axes({"P": [("w", 0)]}, {"w": torch.zeros(3, 2)})
        >>> sorted(random_permutations(spec, np.random.default_rng(0))["P"].tolist())
        [0, 1, 2]
    """
    out = {}
    for p, n in spec.sizes.items():
        perm = rng.permutation(n)
        while n >= 2 and np.array_equal(perm, np.arange(n)):
            perm = rng.permutation(n)
        out[p] = perm
    return out
