"""Running a model with a given state dict, and the functional check of a permutation spec."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call

from .._rng import generator
from ..errors import LossmapError
from .spec import PermutationSpec, apply_permutation, random_permutations

__all__ = ["check_spec", "check_states", "as_state", "eval_mode", "fit_state", "run_with_state", "TOLERANCE"]

# Largest relative deviation (max |Δout| / max |out|) a permuted copy may show: only the order of
# floating-point sums differs, which costs a few units of the dtype's epsilon per layer.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode for the block; restore each one's mode after."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def as_state(x: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's state dict (detached), or a mapping's tensors (detached)."""
    if isinstance(x, nn.Module):
        return {k: v.detach() for k, v in x.state_dict().items()}
    return {k: v.detach() for k, v in x.items()}


def check_states(model: nn.Module, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    """Raise LossmapError unless A and B have exactly the model's state-dict names and shapes."""
    own = model.state_dict()
    for label, state in (("A", a), ("B", b)):
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or extra or bad:
            what = f"lacks {missing[0]!r}" if missing else f"has an extra {extra[0]!r}" if extra else (
                f"has {bad[0]!r} of shape {tuple(state[bad[0]].shape)}, not {tuple(own[bad[0]].shape)}")
            raise LossmapError(f"model {label}'s state dict {what}: use checkpoints of the model's architecture")


def fit_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` moved to the device (and floating dtype) of the model's own tensors of the same
    names; tensors already there are not copied."""
    own = model.state_dict(keep_vars=True)
    out = {}
    for k, t in state.items():
        ref = own.get(k)
        if ref is None:
            out[k] = t
        elif t.is_floating_point() and ref.is_floating_point():
            out[k] = t.to(device=ref.device, dtype=ref.dtype)
        else:
            out[k] = t.to(device=ref.device)
    return out


def _as_args(inputs: Any) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


@torch.no_grad()
def run_with_state(model: nn.Module, state: Mapping[str, torch.Tensor], inputs: Any) -> Any:
    """The model's eval-mode output on ``inputs`` with ``state`` in place of its tensors.

    The model's own tensors and modes are left as they were (``torch.func.functional_call``)."""
    with eval_mode(model):
        # every name of a tied tensor is in the state dict, each with its own (equal) copy
        return functional_call(model, fit_state(model, state), _as_args(inputs), tie_weights=False)


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _deviation(ref: Any, got: Any) -> float:
    worst = 0.0
    for r, g in zip(_tensors(ref), _tensors(got)):
        if not r.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(r, g) else float("inf"))
            continue
        scale = float(r.detach().abs().max()) if r.numel() else 0.0
        diff = float((r.detach().double() - g.detach().double()).abs().max()) if r.numel() else 0.0
        worst = max(worst, diff / max(scale, torch.finfo(r.dtype).tiny))
    return worst


def check_spec(
    model: nn.Module,
    spec: PermutationSpec,
    state: Mapping[str, torch.Tensor],
    probe: Any,
    *,
    seed: int = 0,
    source: str = "derived",
) -> float:
    """Check that permuting ``state`` by ``spec`` leaves the model's function unchanged.

    Every permutation of the spec gets a random non-identity draw (``numpy.random.default_rng(seed)``);
    the model runs in eval mode on ``probe`` with ``state`` and with the permuted state, and the
    outputs must agree to :data:`TOLERANCE` (relative to the largest output) of the model's dtype.

    Args:
        model: the network (left unchanged).
        spec: the permutation spec to check.
        state: the state dict to permute (e.g. model B's).
        probe: a batch of inputs (a tensor, or a tuple of the forward's arguments).
        seed: seed of the random permutations.
        source: how the spec was made, for the error message (``"derived"`` or ``"given"``).

    Returns:
        float: the relative deviation found (≤ the tolerance).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lossmap.connect import derive_spec
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> spec = derive_spec(net, torch.randn(5, 3), check=False)
        >>> check_spec(net, spec, net.state_dict(), torch.randn(5, 3)) < 1e-5
        True
    """
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    tol = TOLERANCE.get(dtype, 1e-2)
    perms = random_permutations(spec, generator(seed))
    ref = run_with_state(model, state, probe)
    got = run_with_state(model, apply_permutation(state, spec, perms), probe)
    dev = _deviation(ref, got)
    if not dev <= tol:
        raise LossmapError(
            f"the {source} permutation spec changes the model's outputs on the probe batch "
            f"(relative deviation {dev:.2e} > {tol:.0e}): pass an explicit spec={{perm_name: [(tensor_name, axis), ...]}} "
            "that lists every tensor axis each hidden-unit permutation acts on"
        )
    return dev
