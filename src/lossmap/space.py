"""The parameter space of a model: which tensors move, θ0, writing θ0 + Σ cᵢdᵢ, restoring the model."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .errors import LossmapError

__all__ = ["select_tensors", "tensor_hash", "borrow", "Lease", "write_point", "check_finite", "pieces"]


def _patterns(tensor_filter: str | Sequence[str] | None) -> list[str]:
    if tensor_filter is None:
        return []
    if isinstance(tensor_filter, str):
        return [p.strip() for p in tensor_filter.split(",") if p.strip()]
    return [str(p) for p in tensor_filter]


def select_tensors(
    model: nn.Module, include_buffers: bool = False, tensor_filter: str | Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """The live tensors that move, by name, in the model's order.

    All parameters by default; ``include_buffers`` adds floating-point buffers (e.g. batch-norm running
    statistics, the "states" of the original code); ``tensor_filter`` keeps names matching any of the
    shell-style patterns (``"fc1.*"`` or ``"conv*.weight,fc2.*"``).
    """
    chosen: dict[str, torch.Tensor] = {name: p for name, p in model.named_parameters()}
    if include_buffers:
        for name, b in model.named_buffers():
            if b.is_floating_point():
                chosen[name] = b
    patterns = _patterns(tensor_filter)
    if patterns:
        chosen = {n: t for n, t in chosen.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        if not chosen:
            raise LossmapError(
                f"tensor filter {tensor_filter!r} matches no tensor of the model; names look like "
                f"{', '.join(list(dict(model.named_parameters()))[:4])}"
            )
    if not chosen:
        raise LossmapError("the model has no parameters to move: pass a model with parameters")
    return chosen


# Whole-tensor work on a large model is done in pieces of at most this many values, so the
# temporaries it needs (a host copy, a packed copy, isfinite's |t| and boolean masks) stay a few MB
# instead of a multiple of the largest tensor.
_PIECE = 1 << 20


def pieces(t: torch.Tensor, limit: int = _PIECE) -> Iterator[torch.Tensor]:
    """Views of ``t`` that together cover it in row-major order, each of at most ``limit`` values.
    Views only: nothing is copied."""
    if t.dim() == 0 or t.numel() <= limit:
        yield t
    elif t.is_contiguous():
        flat = t.view(-1)
        for lo in range(0, flat.numel(), limit):
            yield flat[lo : lo + limit]
    elif t.dim() == 1:
        for lo in range(0, t.shape[0], limit):
            yield t[lo : lo + limit]
    else:
        row = t[0].numel()
        if row > limit:
            for i in range(t.shape[0]):
                yield from pieces(t[i], limit)
        else:
            step = limit // row
            for lo in range(0, t.shape[0], step):
                yield t[lo : lo + step]


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes, dtypes and raw bytes, in name order (device independent).

    The bytes are fed piece by piece, in row-major order: a contiguous CPU tensor is hashed from its
    own memory; other tensors are packed or copied to the host one piece at a time.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        feed_bytes(h, t)
    return h.hexdigest()


def feed_bytes(h: "hashlib._Hash", t: torch.Tensor) -> None:
    """Add ``t``'s raw bytes in row-major order to the hash ``h``, piece by piece (no full-size copy)."""
    for piece in pieces(t.detach()):
        h.update(piece.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())


def check_finite(tensors: dict[str, torch.Tensor], what: str = "θ0") -> None:
    """Raise LossmapError if a floating-point tensor holds NaN or ±inf.

    Checked piece by piece: ``torch.isfinite`` of a whole tensor would make a full-size |t| and
    boolean masks (about twice the tensor's bytes).
    """
    for name, t in tensors.items():
        if not t.is_floating_point():
            continue
        ok = torch.ones((), dtype=torch.bool, device=t.device)
        for piece in pieces(t.detach()):
            ok &= torch.isfinite(piece).all()
        if not bool(ok):
            raise LossmapError(f"{what} has non-finite values in {name!r}: load a checkpoint without NaN/inf weights")


def _same_placement(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> bool:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device != device:
            return False
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            return False
    return True


class Lease:
    """A model lent for evaluation, with the saved copy of its tensors (θ0 comes from there)."""

    def __init__(self, model: nn.Module, saved: dict[int, torch.Tensor] | None = None) -> None:
        self.model = model
        self._saved = saved or {}

    def origin(self, live: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """θ0 for the given live tensors: the backup already taken, or a fresh copy."""
        return [self._saved[id(t)] if id(t) in self._saved else t.detach().clone() for t in live.values()]


@contextmanager
def borrow(model: nn.Module, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Iterator[Lease]:
    """Lend a model for evaluation and give it back exactly as it was.

    When the model already lives on ``device`` in ``dtype`` it is used in place: every parameter and
    buffer is backed up (the backup doubles as θ0, so no second copy is made) and copied back bit for
    bit on exit, together with each module's train/eval mode and each parameter's ``requires_grad`` —
    on success, on error and on KeyboardInterrupt. Otherwise a converted copy is used and the user's
    model is never touched.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LossmapError("device 'cuda' was asked for but CUDA is not available: use --device cpu")
    if dtype is not None and not dtype.is_floating_point:
        raise LossmapError(f"dtype {dtype} is not a floating-point type: use torch.float32 or torch.float64")
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    if not _same_placement(model, device, dtype):
        try:
            yield Lease(copy.deepcopy(model).to(device=device, dtype=dtype))
        finally:
            for m, mode in modes.items():
                m.training = mode
        return
    tensors = list(model.parameters()) + list(model.buffers())
    saved = {id(t): t.detach().clone() for t in tensors}
    try:
        yield Lease(model, saved)
    finally:
        with torch.no_grad():
            for t in tensors:
                t.copy_(saved[id(t)])
        for m, mode in modes.items():
            m.training = mode
        for p, flag in grads.items():
            p.requires_grad_(flag)


@torch.no_grad()
def write_point(
    live: Sequence[torch.Tensor],
    origin: Sequence[torch.Tensor],
    directions: Sequence[Sequence[torch.Tensor]],
    coeffs: Sequence[float],
) -> None:
    """Set ``live = origin + Σ coeffs[i] · directions[i]`` in place (foreach kernels, no allocation)."""
    torch._foreach_copy_(list(live), list(origin))
    for c, d in zip(coeffs, directions):
        if c != 0.0:
            torch._foreach_add_(list(live), list(d), alpha=float(c))
