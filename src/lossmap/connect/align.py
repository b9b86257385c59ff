"""Permutation alignment by weight matching (Ainsworth et al. 2022, "Git Re-Basin", Algorithm 1).

Model B's hidden units are reordered to match model A's: coordinate descent over the permutations
of a :class:`~lossmap.connect.spec.PermutationSpec`, in a random order each sweep, each step a linear
assignment (``scipy.optimize.linear_sum_assignment``) maximizing Σ ⟨W_A, P W_B⟩ over every tensor the
permutation touches, with the other permutations held at their current values; sweeps stop when a
whole sweep changes no permutation. All inner products are taken in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .._rng import generator
from ..errors import LossmapError
from ..space import pieces
from .check import as_state, check_spec, check_states
from .derive import derive_spec
from .spec import PermutationSpec, apply_permutation, permute_tensor, spec_from_axes

__all__ = ["AlignResult", "align", "weight_matching"]


@dataclass
class AlignResult:
    """What :func:`align` found.

    ``state`` is B's state dict with its hidden units permuted to match A (tensors no permutation
    touches are B's own objects); ``perms[name][i]`` is the unit of B that became unit ``i``.
    ``objective_*`` is Σ ⟨A, B⟩ over all floating tensors before and after, ``distance_*`` the L2
    distance ‖A − B‖ over the same tensors; ``check_deviation`` the functional check's relative
    output deviation (None when no probe was given).
    """

    state: dict[str, torch.Tensor]
    perms: dict[str, np.ndarray]
    spec: PermutationSpec
    iterations: int
    converged: bool
    objective_before: float
    objective_after: float
    distance_before: float
    distance_after: float
    check_deviation: float | None


def _inner(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], diff: bool = False) -> float:
    """Σ ⟨a, b⟩ (or Σ ‖a − b‖² with ``diff``) over floating tensors, in float64, piece by piece."""
    total = 0.0
    for k, x in a.items():
        if not x.is_floating_point():
            continue
        y = b[k].to(x.device)
        xs, ys = list(pieces(x.contiguous())), list(pieces(y.contiguous()))
        for p, q in zip(xs, ys):
            p, q = p.reshape(-1).double(), q.reshape(-1).double()
            total += float(torch.dot(p - q, p - q)) if diff else float(torch.dot(p, q))
    return total


def _cost(spec: PermutationSpec, p: str, a: Mapping, b: Mapping, perms: dict, by_tensor: dict) -> np.ndarray:
    """C[i, j] = Σ over the tensors of ``p`` of ⟨unit i of A, unit j of B⟩, B's other axes permuted."""
    n = spec.sizes[p]
    cost = np.zeros((n, n), dtype=np.float64)
    for name, axis, block in spec.perms[p]:
        others = [(ax, bl, perms[q]) for q, ax, bl in by_tensor[name] if not (q == p and ax == axis)]
        wb = permute_tensor(b[name], others).double()
        wa = a[name].to(wb.device).double()
        cost += (wa.movedim(axis, 0).reshape(n, -1) @ wb.movedim(axis, 0).reshape(n, -1).T).cpu().numpy()
    return cost


def weight_matching(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    *,
    seed: int = 0,
    max_iter: int = 100,
) -> tuple[dict[str, np.ndarray], int, bool]:
    """Permutations of B's units that maximize Σ ⟨A, π(B)⟩, by coordinate descent from the identity.

    Args:
        spec: the permutation spec.
        state_a: model A's state dict.
        state_b: model B's state dict (same names and shapes).
        seed: seed of the numpy generator that orders each sweep.
        max_iter: the most sweeps over all permutations.

    Returns:
        tuple[dict[str, np.ndarray], int, bool]: the permutations, the sweeps run, and whether the
        last sweep changed nothing (converged).

    Example:
        >>> import numpy as np, torch
        >>> a = {"w": torch.tensor([[1.0], [2.0], [3.0]])}
        >>> spec = spec_from_axes({"P": [("w", 0)]}, a)
        >>> perms, sweeps, done = weight_matching(spec, a, {"w": torch.tensor([[3.0], [1.0], [2.0]])})
        >>> perms["P"].tolist(), done
        ([1, 2, 0], True)
    """
    if max_iter < 1:
        raise LossmapError(f"max_iter={max_iter!r}: weight matching needs at least 1 sweep")
    rng = generator(seed)
    names = list(spec.perms)
    perms = {p: np.arange(n) for p, n in spec.sizes.items()}
    by_tensor: dict[str, list[tuple[str, int, int]]] = {}
    for p, entries in spec.perms.items():
        for name, axis, block in entries:
            by_tensor.setdefault(name, []).append((p, axis, block))
    if not names:
        return perms, 0, True
    for sweep in range(1, max_iter + 1):
        changed = False
        for i in rng.permutation(len(names)):
            p = names[i]
            cost = _cost(spec, p, state_a, state_b, perms, by_tensor)
            _, col = linear_sum_assignment(cost, maximize=True)
            rows = np.arange(len(col))
            old, new = cost[rows, perms[p]].sum(), cost[rows, col].sum()
            if new > old + 1e-12 * np.abs(cost).sum():  # strictly better, beyond float64 rounding
                perms[p], changed = col, True
        if not changed:
            return perms, sweep, True
    return perms, max_iter, False


def align(
    model: nn.Module,
    state_a: nn.Module | Mapping[str, torch.Tensor],
    state_b: nn.Module | Mapping[str, torch.Tensor],
    *,
    spec: PermutationSpec | Mapping[str, Any] | None = None,
    probe: Any = None,
    seed: int = 0,
    max_iter: int = 100,
) -> AlignResult:
    """Permute B's hidden units to match A's by weight matching.

    Without ``spec`` the structure is derived from the model's graph (:func:`derive_spec`, which needs
    ``probe``); with ``probe`` any spec, derived or given, must first pass :func:`check_spec` on B's
    weights, so a wrong structure is refused rather than producing a different network.

    Args:
        model: the architecture of A and B (left unchanged; only its graph and forward are used).
        state_a: model A (a state dict or a module).
        state_b: model B, the one permuted.
        spec: a :class:`PermutationSpec` or the explicit ``{perm_name: [(tensor_name, axis[, block]), ...]}``.
        probe: a batch of inputs for the derivation and the functional check.
        seed: seed of the sweep order and of the check's random permutations.
        max_iter: the most sweeps of weight matching.

    Returns:
        AlignResult: B's permuted state dict, the permutations and the matching's record.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> torch.manual_seed(0) and None
        >>> a, b = (nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)) for _ in range(2))
        >>> res = align(a, a.state_dict(), b.state_dict(), probe=torch.randn(4, 3))
        >>> res.objective_after >= res.objective_before
        True
    """
    a, b = as_state(state_a), as_state(state_b)
    check_states(model, a, b)
    source = "given"
    if spec is None:
        if probe is None:
            raise LossmapError("align needs probe= (a batch of inputs) to derive the permutation structure, or an explicit spec=")
        spec, source = derive_spec(model, probe, check=False), "derived"
    else:  # checked against these state dicts, whichever form it came in
        spec = spec_from_axes(spec.axes() if isinstance(spec, PermutationSpec) else spec, a)
    deviation = check_spec(model, spec, b, probe, seed=seed, source=source) if probe is not None and spec.perms else None
    perms, sweeps, converged = weight_matching(spec, a, b, seed=seed, max_iter=max_iter)
    aligned = apply_permutation(b, spec, perms)
    return AlignResult(
        state=aligned,
        perms=perms,
        spec=spec,
        iterations=sweeps,
        converged=converged,
        objective_before=_inner(a, b),
        objective_after=_inner(a, aligned),
        distance_before=math.sqrt(_inner(a, b, diff=True)),
        distance_after=math.sqrt(_inner(a, aligned, diff=True)),
        check_deviation=deviation,
    )
