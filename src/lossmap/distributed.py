"""Spreading a landscape's points over the processes that ``torchrun`` starts.

When ``WORLD_SIZE`` > 1 in the environment, :func:`lossmap.landscape.compute` joins the process group
(``env://``; Gloo on CPUs, NCCL too when the device is CUDA) and every rank evaluates the *whole* data set
at its own points, on its own device (``cuda:LOCAL_RANK``). Only a few numbers per point travel between
ranks, always over a Gloo group on the CPU with a timeout — never over NCCL, whose collectives hang
without error when a peer dies — so a rank that dies or stops answering makes the other ranks fail with a
message instead of waiting forever.

Work units are the chunks of ``chunk`` points of the grid's serpentine order that are not yet done. They
are dealt out in rounds: in round ``r`` rank ``k`` takes pending chunk ``r·K + k``, then one
``all_gather`` brings every rank's results to rank 0, which alone writes the file. All points cost the
same (same model, same data), so every rank gets the same number of chunks ±1 and nobody idles for more
than one chunk's time. A chunk always holds the same points, whatever K is, so a fast evaluator that
treats a chunk at once gives the same numbers under any K, and resuming with another K just deals out
the chunks that are still missing.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .errors import LossmapError

__all__ = [
    "Context", "setup", "world_from_env", "deal", "is_primary", "broadcast", "gather_chunk", "all_gather_objects",
    "failure", "TIMEOUT_ENV", "Coordinator", "Torchrun", "coordinator", "PeerFailure",
]

#: seconds a rank waits for the others in one round (default 1800, torch's own default)
TIMEOUT_ENV = "LOSSMAP_DIST_TIMEOUT"

_GROUP: Any = None


@dataclass
class Context:
    """Where this process stands in a torchrun job."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    group: Any

    @property
    def primary(self) -> bool:
        return self.rank == 0


def world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        raise LossmapError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number: start the run with torchrun") from None


def is_primary() -> bool:
    """True unless this process is a torchrun rank other than 0 (print and plot only where this is True)."""
    return world_from_env() <= 1 or int(os.environ.get("RANK", "0") or 0) == 0


def _timeout() -> _dt.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        raise LossmapError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds: set e.g. {TIMEOUT_ENV}=1800") from None
    if seconds <= 0:
        raise LossmapError(f"{TIMEOUT_ENV}={raw!r} must be positive")
    return _dt.timedelta(seconds=seconds)


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def setup(device: str | torch.device) -> Context | None:
    """Join the torchrun job described by the environment; ``None`` for a single process."""
    global _GROUP
    world = world_from_env()
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise LossmapError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed: run one process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise LossmapError(f"WORLD_SIZE={world} but {', '.join(missing)} are not set: start the run with torchrun")
    device = torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LossmapError("device 'cuda' was asked for but CUDA is not available: use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise LossmapError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPUs: "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    timeout = _timeout()
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - rendezvous errors come in many types
            raise LossmapError(f"cannot join the torchrun job ({type(exc).__name__}: {_first_line(exc)}): check MASTER_ADDR/MASTER_PORT") from exc
        atexit.register(_destroy)
    if dist.get_world_size() != world:
        raise LossmapError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} ranks")
    if _GROUP is None:
        _GROUP = dist.new_group(backend="gloo", timeout=timeout)
    return Context(rank=dist.get_rank(), world=world, local_rank=local_rank, device=device, group=_GROUP)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def deal(pending: Sequence[int], world: int) -> list[list[int]]:
    """Rounds of work, the same plan on every rank: ``result[r]`` lists round ``r``'s chunk ids, one per
    rank (-1: none); rank ``k`` takes ``pending[r·world + k]``. Every rank gets ``len(pending) // world``
    chunks, or one more."""
    rounds = []
    for lo in range(0, len(pending), world):
        ids = list(pending[lo : lo + world])
        rounds.append(ids + [-1] * (world - len(ids)))
    return rounds


def failure(exc: BaseException, limit: int = 160) -> str:
    """A short reason for a failed collective (Gloo's messages run long)."""
    text = _first_line(exc)
    for sep in (". ", "; "):  # the first sentence carries the cause ("Connection reset by peer")
        head = text.split(sep)[0]
        if len(head) > 20:
            text = head
            break
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}"


def broadcast(ctx: Context, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj if ctx.primary else None]
    dist.broadcast_object_list(box, src=0, group=ctx.group)
    return box[0]


def all_gather_objects(ctx: Context, obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj, group=ctx.group)
    return out


def gather_chunk(ctx: Context, chunk_id: int, values: np.ndarray, chunk: int, m: int) -> list[tuple[int, np.ndarray]]:
    """Every rank's ``(chunk id, values[points, m])`` of this round (id -1: an idle rank, left out).

    ``values`` has at most ``chunk`` rows; rows are padded to ``chunk`` for the exchange.
    """
    import torch.distributed as dist

    n = int(values.shape[0]) if chunk_id >= 0 else 0
    buf = torch.full((2 + chunk * m,), float("nan"), dtype=torch.float64)
    buf[0], buf[1] = float(chunk_id), float(n)
    if n:
        buf[2 : 2 + n * m] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64).reshape(-1))
    out = [torch.empty_like(buf) for _ in range(ctx.world)]
    dist.all_gather(out, buf, group=ctx.group)
    result = []
    for t in out:
        cid, rows = int(t[0].item()), int(t[1].item())
        if cid >= 0:
            result.append((cid, t[2 : 2 + rows * m].numpy().reshape(rows, m).copy()))
    return result


class PeerFailure(Exception):
    """A collective with the other ranks failed (a rank died or stopped answering)."""


class Coordinator:
    """How the processes of a run work together. A single process is this class itself: a coordinator that
    does nothing (every chunk is its own, nothing is exchanged)."""

    rank, world, primary = 0, 1, True

    def deal(self, pending: Sequence[int]) -> list[list[int]]:
        """Rounds of chunk ids, one per rank (-1: none); see :func:`deal`."""
        return deal(pending, self.world)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj

    def agree(self, settings: dict[str, Any], differences: Any) -> None:
        """Raise unless every rank would compute the same landscape (``differences(a, b)`` lists how two differ)."""

    def gather(self, chunk_id: int, values: np.ndarray, chunk: int) -> list[tuple[int, np.ndarray]]:
        """Every rank's ``(chunk id, values)`` of this round (an idle rank's id is -1 and is left out)."""
        return [(chunk_id, values)] if chunk_id >= 0 else []


class Torchrun(Coordinator):
    """The ranks of a torchrun job (see the module docstring): chunks dealt in rounds, results gathered on rank 0."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.rank, self.world, self.primary = ctx.rank, ctx.world, ctx.primary

    def broadcast(self, obj: Any) -> Any:
        try:
            return broadcast(self.ctx, obj)
        except Exception as exc:  # noqa: BLE001
            raise LossmapError(f"rank 0 stopped answering ({failure(exc)}): see rank 0's error") from exc

    def agree(self, settings: dict[str, Any], differences: Any) -> None:
        try:
            every = all_gather_objects(self.ctx, settings)
        except Exception as exc:  # noqa: BLE001
            raise LossmapError(f"the ranks could not exchange their settings ({failure(exc)}): check that every rank started") from exc
        for rank, other in enumerate(every):
            diff = differences(every[0], other)
            if diff:
                raise LossmapError(
                    f"rank {rank} would compute another landscape than rank 0: {'; '.join(diff)} "
                    f"(rank 0 is 'file', rank {rank} is 'now'): give every rank the same model, checkpoint, data and options"
                )

    def gather(self, chunk_id: int, values: np.ndarray, chunk: int) -> list[tuple[int, np.ndarray]]:
        try:
            return gather_chunk(self.ctx, chunk_id, values, chunk, values.shape[1])
        except Exception as exc:  # noqa: BLE001 - a peer died or timed out
            raise PeerFailure(failure(exc)) from exc


def coordinator(device: str | torch.device) -> tuple[Coordinator, torch.device]:
    """The coordinator of this process (joining the torchrun job the environment describes) and its device."""
    ctx = setup(device)
    if ctx is None:
        return Coordinator(), torch.device(device)
    return Torchrun(ctx), ctx.device
