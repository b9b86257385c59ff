"""The two passes over a run's checkpoint files that the plane of a trajectory needs.

Every tensor is read in flat pieces, the same piece from all M files at once: an M × k block of
float64 values (k ≈ ``chunk_values`` / M). The Gram pass accumulates G += DDᵀ over the blocks of
offsets D (float64 products, float64 sums); the direction pass forms u = Wᵀd piece by piece, with
each offset's off-plane remainder. Memory: the block, G and the tensors being built — never M × P.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np
import torch

from ..errors import LossmapError
from .run import FLOAT_DTYPES, Header, read_piece

__all__ = ["Origin", "gram_pass", "direction_pass", "CHUNK_VALUES"]

#: values in one block of pieces (M checkpoints × k values): 16 MiB in float64
CHUNK_VALUES = 1 << 21
_MIN_PIECE = 1024


@dataclass
class Origin:
    """The origin as a pass understands it: one of the checkpoints (its ``row``), their mean, or given tensors."""

    kind: str  # "row" (one of the checkpoints), "mean" or "given"
    row: int = -1
    given: Mapping[str, torch.Tensor] | None = None


def _ranges(numel: int, k: int):
    for lo in range(0, numel, k):
        yield lo, min(lo + k, numel)


def _block(files: list[BinaryIO], headers: list[Header], name: str, lo: int, hi: int, flat: torch.Tensor,
           buf: torch.Tensor) -> torch.Tensor:
    """The values lo:hi of ``name`` from every file, as a contiguous float64 (M, hi − lo) block."""
    block = flat[: len(files) * (hi - lo)].view(len(files), hi - lo)
    rows = block.numpy()
    for i, (fh, h) in enumerate(zip(files, headers)):
        piece = read_piece(fh, h, name, lo, hi, buf)
        if piece.dtype == torch.bfloat16:  # no numpy dtype
            block[i].copy_(piece)
        else:  # numpy converts one row ~20× faster than torch's threaded copy_ on a busy machine
            np.copyto(rows[i], piece.numpy())
    return block


def _origin_values(origin: Origin, rows: np.ndarray, name: str, lo: int, hi: int) -> np.ndarray:
    """θ_o's values lo:hi in float64, before rounding to the checkpoints' dtype."""
    if origin.kind == "row":
        return rows[origin.row]
    if origin.kind == "mean":
        return rows.mean(axis=0)
    return _load(origin.given[name].reshape(-1)[lo:hi])


# Element-wise work on the pieces is done with numpy (one thread): torch's threaded kernels on
# vectors of this size were up to 20× slower on a busy 2-core machine. Matrix products stay in torch.


def _load(t: torch.Tensor) -> np.ndarray:
    """A float64 copy of a 1-D CPU tensor."""
    return t.double().numpy() if t.dtype == torch.bfloat16 else t.numpy().astype(np.float64)


def _store(dst: torch.Tensor, values: np.ndarray) -> None:
    """``dst[:] = values``, rounded (to nearest) to ``dst``'s dtype."""
    if dst.dtype == torch.bfloat16:
        dst.copy_(torch.from_numpy(np.ascontiguousarray(values)))
    else:
        np.copyto(dst.numpy(), values, casting="unsafe")


def _buffers(paths: list[Path], headers: list[Header], names: list[str], chunk_values: int):
    """The piece length k, a float64 block buffer (M·k values) and a byte buffer (one piece) for one pass."""
    M = len(paths)
    k = max(_MIN_PIECE, chunk_values // M)
    k = min(k, max(headers[0].tensors[n].numel for n in names))
    flat = torch.empty(M * k, dtype=torch.float64)
    buf = torch.empty(k * 8, dtype=torch.uint8)
    return k, flat, buf


def _open(stack: ExitStack, paths: list[Path]) -> list[BinaryIO]:
    try:
        return [stack.enter_context(open(p, "rb", buffering=0)) for p in paths]
    except OSError as exc:
        raise LossmapError(f"cannot open the checkpoints ({exc}): check the run folder; a very long run may need a "
                           "higher open-file limit (ulimit -n)") from exc


def gram_pass(paths: list[Path], headers: list[Header], names: list[str], origin: Origin,
              chunk_values: int = CHUNK_VALUES) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """G (M × M, float64) of the offsets from the origin, and the origin's tensors (checkpoint dtype)."""
    k, flat, buf = _buffers(paths, headers, names, chunk_values)
    M = len(paths)
    G = torch.zeros(M, M, dtype=torch.float64)
    origin_tensors: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        files = _open(stack, paths)
        for name in names:
            info = headers[0].tensors[name]
            out = torch.empty(info.shape, dtype=FLOAT_DTYPES[info.dtype])
            for lo, hi in _ranges(info.numel, k):
                block = _block(files, headers, name, lo, hi, flat, buf)
                rows, piece = block.numpy(), out.view(-1)[lo:hi]
                _store(piece, _origin_values(origin, rows, name, lo, hi))
                np.subtract(rows, _load(piece), out=rows)  # θ_o as the model holds it (in its dtype)
                G.addmm_(block, block.T)
            origin_tensors[name] = out
    G = (G + G.T) / 2  # exact products are symmetric; this removes the rounding of the two halves
    return G.numpy(), origin_tensors


def direction_pass(paths: list[Path], headers: list[Header], names: list[str], origin_tensors: dict[str, torch.Tensor],
                   weights: np.ndarray, coords: np.ndarray, chunk_values: int = CHUNK_VALUES
                   ) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """uₖ = Σᵢ weights[i, k]·dᵢ (in the checkpoints' dtype) and Σ over pieces of ‖dᵢ − Σₖ coords[i, k]·uₖ‖²."""
    k, flat, buf = _buffers(paths, headers, names, chunk_values)
    W = torch.from_numpy(np.ascontiguousarray(weights.T))  # (2, M)
    C = torch.from_numpy(np.ascontiguousarray(coords))  # (M, 2)
    dirs: list[dict[str, torch.Tensor]] = [{}, {}]
    remainder = np.zeros(len(paths))
    with ExitStack() as stack:
        files = _open(stack, paths)
        for name in names:
            info = headers[0].tensors[name]
            u = [torch.empty(info.shape, dtype=FLOAT_DTYPES[info.dtype]) for _ in range(2)]
            origin_flat = origin_tensors[name].reshape(-1)
            for lo, hi in _ranges(info.numel, k):
                block = _block(files, headers, name, lo, hi, flat, buf)
                rows = block.numpy()
                np.subtract(rows, _load(origin_flat[lo:hi]), out=rows)
                U = W @ block  # (2, n) float64
                _store(u[0].view(-1)[lo:hi], U[0].numpy())
                _store(u[1].view(-1)[lo:hi], U[1].numpy())
                block.addmm_(C, U, alpha=-1.0)  # the off-plane part of every offset
                remainder += np.einsum("ij,ij->i", rows, rows)
            dirs[0][name], dirs[1][name] = u
    return dirs, remainder
