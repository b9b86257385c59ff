"""Data sources: the evaluation data as batches on the device, pass after pass, in one fixed order.

Small data is cached on the device once (:class:`Cached`): a point then costs only forwards. Data
beyond a memory budget (by default a quarter of the free memory of the device, or of the host for a
CPU run) is streamed from the user's data at every pass (:class:`Streamed`): a background thread
prepares the next batches (loading, moving to the device, re-cutting) while the current one runs, at
most :data:`PREFETCH` batches ahead, so peak memory does not grow with the data set.

A landscape needs the same samples in the same order at every point. A ``DataLoader`` with a random
sampler (``shuffle=True``) is refused at once; random augmentation is caught by one cheap check (the
first batch of two passes must be identical, and it is checked again at every streamed pass).
``allow_nondeterministic=True`` accepts such data with a warning, and the file records it.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from ..errors import LossmapError
from .batches import Batch, iterate, make_batch, nbytes, rebatch, to_device, truncate

__all__ = ["Source", "Cached", "Streamed", "make_source", "available_bytes", "parse_bytes", "budget_bytes", "PREFETCH",
           "CACHE_MODES"]

log = logging.getLogger("lossmap")

PREFETCH = 2  # batches prepared ahead of the one being evaluated
CACHE_MODES = ("auto", "device", "stream")
_RANDOM_SAMPLERS = ("RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler")

Transform = Callable[[Batch], Sequence[Batch]]


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device`` (a CUDA device's free memory; the host's available memory otherwise)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3, "t": 1024**4, "tb": 1024**4}


def parse_bytes(value: int | str | None) -> int | None:
    """``"2GB"``, ``"512M"``, ``1000000`` → bytes (binary units); None stays None."""
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value < 0:
            raise LossmapError(f"memory budget {value} must be 0 or more bytes")
        return value
    text = str(value).strip().lower().replace("ib", "b").replace(" ", "")
    number = text.rstrip("kmgtb")
    unit = text[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or amount < 0:
        raise LossmapError(f"memory budget {value!r} is not understood: write e.g. 2GB, 512MB or a number of bytes")
    return int(amount * _UNITS[unit])


def budget_bytes(value: int | str | None, device: torch.device) -> int:
    """A memory budget in bytes: ``value`` as :func:`parse_bytes` reads it; None: a quarter of the free memory of
    ``device`` (of the host for the CPU), the default of every budget lossmap keeps.

    Example:
        >>> budget_bytes("1KB", torch.device("cpu")), budget_bytes(None, torch.device("cpu")) > 0
        (1024, True)
    """
    budget = parse_bytes(value)
    return available_bytes(device) // 4 if budget is None else budget


class Source:
    """Batches on the device, the same ones in the same order at every pass."""

    total: int = 0
    streamed: bool = False
    nondeterministic: bool = False

    def __iter__(self) -> Iterator[Batch]:
        raise NotImplementedError

    def first(self) -> Batch:
        """The first batch (a probe for checks and speed-up decisions)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A SHA-256 of the samples, batch by batch."""
        raise NotImplementedError

    def transformed(self, fn: Transform) -> "Source":
        """The same data with every batch replaced by ``fn(batch)`` (a list of batches)."""
        raise NotImplementedError

    def rebatched(self, size: int) -> "Source":
        """The same samples in batches of at most ``size``."""
        raise NotImplementedError

    def uniform(self) -> bool:
        """Whether every batch's inputs are one tensor (what the shape-based speed-ups need)."""
        return isinstance(self.first().inputs, torch.Tensor)


class Cached(Source):
    """Batches held on the device."""

    def __init__(self, batches: Sequence[Batch], nondeterministic: bool = False) -> None:
        self.batches = list(batches)
        self.total = sum(b.size for b in self.batches)
        self.nondeterministic = nondeterministic

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def first(self) -> Batch:
        return self.batches[0]

    def fingerprint(self) -> str:
        return _hash(self.batches)

    def transformed(self, fn: Transform) -> "Cached":
        return Cached([c for b in self.batches for c in fn(b)], self.nondeterministic)

    def rebatched(self, size: int) -> "Cached":
        return Cached(rebatch(self.batches, size), self.nondeterministic)

    def uniform(self) -> bool:
        return all(isinstance(b.inputs, torch.Tensor) for b in self.batches)


class Streamed(Source):
    """Batches read from the user's data at every pass, prepared ahead by a background thread."""

    streamed = True

    def __init__(self, data: Iterable, samples: int | None, device: torch.device, dtype: torch.dtype | None,
                 transforms: Sequence[Transform] = (), nondeterministic: bool = False) -> None:
        self.data, self.samples, self.device, self.dtype = data, samples, device, dtype
        self.transforms = list(transforms)
        self.nondeterministic = nondeterministic
        self._first_raw: tuple[Any, int] | None = None  # as read, before the transforms
        self._first: Batch | None = None
        self._first_hash = ""
        self._hash = ""
        self.total = 0

    def survey(self) -> "Streamed":
        """One pass without the model: the sample count, the fingerprint and the first batch."""
        h, total = hashlib.sha256(), 0
        for raw, n in self._raw():
            if self._first_raw is None:
                self._first_raw = (raw, n)
            _feed(h, raw)
            total += n
        if self._first_raw is None:
            raise LossmapError("the data has no samples: pass a non-empty dataset (check the data spec and --samples)")
        self.total, self._hash = total, h.hexdigest()
        self._first_hash = _hash_raw(self._first_raw[0])
        return self

    def _raw(self) -> Iterator[tuple[Any, int]]:
        """``(raw batch on the device, size)``, up to ``samples`` examples."""
        seen = 0
        for raw in self.data:
            n = make_batch(raw).size
            if self.samples is not None and seen + n > self.samples:
                n = self.samples - seen
                raw = truncate(raw, n)
            if n <= 0:
                break
            yield to_device(raw, self.device, self.dtype, non_blocking=self.device.type == "cuda"), n
            seen += n
            if self.samples is not None and seen >= self.samples:
                break

    def _prepare(self, raw: Any, n: int) -> list[Batch]:
        out = [make_batch(raw, n)]
        for fn in self.transforms:
            out = [c for b in out for c in fn(b)]
        return out

    def __iter__(self) -> Iterator[Batch]:
        return _prefetched(self._pass(), PREFETCH)

    def _pass(self) -> Iterator[Batch]:
        checked = self.nondeterministic
        for raw, n in self._raw():
            if not checked:
                checked = True
                if _hash_raw(raw) != self._first_hash:
                    raise LossmapError(
                        "the data gave another first batch than in the previous pass (shuffling or random augmentation): "
                        "evaluate on data in a fixed order without random transforms (shuffle=False, eval transforms)"
                    )
            yield from self._prepare(raw, n)

    def first(self) -> Batch:
        if self._first is None:
            assert self._first_raw is not None, "survey() first"
            self._first = self._prepare(*self._first_raw)[0]
        return self._first

    def fingerprint(self) -> str:
        return self._hash

    def transformed(self, fn: Transform) -> "Streamed":
        twin = Streamed(self.data, self.samples, self.device, self.dtype, self.transforms + [fn], self.nondeterministic)
        twin.total, twin._hash, twin._first_hash, twin._first_raw = self.total, self._hash, self._first_hash, self._first_raw
        return twin

    def rebatched(self, size: int) -> "Streamed":
        return self.transformed(lambda b: rebatch([b], size))


def _prefetched(items: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """``items``, produced by a background thread at most ``depth`` ahead; its errors are raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    worker = threading.Thread(target=produce, name="lossmap-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


def _feed(h: "hashlib._Hash", raw: Any) -> None:
    from ..fingerprint import feed

    feed(h, raw)


def _hash_raw(raw: Any) -> str:
    h = hashlib.sha256()
    _feed(h, raw)
    return h.hexdigest()


def _hash(batches: Sequence[Batch]) -> str:
    h = hashlib.sha256()
    for b in batches:
        _feed(h, b.raw)
    return h.hexdigest()


def _shuffles(data: Any) -> bool:
    """Whether ``data`` is a DataLoader that draws its samples in a random order."""
    if not isinstance(data, DataLoader):
        return False
    samplers = [getattr(data, "sampler", None), getattr(getattr(data, "batch_sampler", None), "sampler", None)]
    return any(type(s).__name__ in _RANDOM_SAMPLERS or getattr(s, "shuffle", False) is True for s in samplers)


def _refuse_or_warn(reason: str, allow: bool) -> bool:
    if not allow:
        raise LossmapError(
            f"the data {reason}, but a landscape needs the same samples in the same order at every point: "
            "use shuffle=False and evaluation transforms (or allow_nondeterministic=True to accept it)"
        )
    log.warning("the data %s; accepted as asked (allow_nondeterministic): points see different samples", reason)
    return True


def _cache(raws: Iterable[Any], samples: int | None, device: torch.device, dtype: torch.dtype | None,
           budget: int | None) -> list[Batch] | None:
    """The batches on the device, or None as soon as they pass ``budget`` bytes."""
    out: list[Batch] = []
    seen = held = 0
    for raw in raws:
        b = make_batch(raw)
        n = b.size
        if samples is not None and seen + n > samples:
            n = samples - seen
            raw = truncate(raw, n)
        if n <= 0:
            break
        moved = to_device(raw, device, dtype)
        held += nbytes(moved)
        if budget is not None and held > budget:
            return None
        out.append(make_batch(moved, n))
        seen += n
        if samples is not None and seen >= samples:
            break
    return out


def make_source(
    data: Any, *, batch_size: int = 256, samples: int | None = None, device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None, cache: str = "auto", memory_budget: int | str | None = None,
    allow_nondeterministic: bool = False,
) -> Source:
    """The evaluation data as a :class:`Source`: cached on ``device`` when it fits ``memory_budget`` (default:
    a quarter of the free memory), otherwise streamed. ``cache``: ``auto``, ``device`` (always cache) or
    ``stream`` (always stream)."""
    if batch_size < 1:
        raise LossmapError(f"batch size {batch_size} must be at least 1")
    if samples is not None and samples < 1:
        raise LossmapError(f"samples {samples} must be at least 1 (or None for all)")
    if cache not in CACHE_MODES:
        raise LossmapError(f"cache mode {cache!r} is unknown: choose one of {', '.join(CACHE_MODES)}")
    device = torch.device(device)
    budget = budget_bytes(memory_budget, device)
    flagged = _shuffles(data) and _refuse_or_warn("is shuffled (a random sampler)", allow_nondeterministic)
    raws = iterate(data, batch_size)
    one_pass = iter(raws) is raws
    if cache in ("device", "auto"):
        batches = _cache(raws, samples, device, dtype, None if cache == "device" or one_pass else budget)
        if batches is not None:
            if not batches:
                raise LossmapError("the data has no samples: pass a non-empty dataset (check the data spec and --samples)")
            if one_pass and budget is not None and sum(nbytes(b.raw) for b in batches) > budget:
                log.warning("the data (a one-pass iterator) was cached beyond the memory budget: pass a DataLoader to stream it")
            flagged = flagged or (not one_pass and not _same_first(raws, batches[0], device, dtype, allow_nondeterministic))
            return Cached(batches, flagged)
        log.info("the data is larger than the memory budget (%d bytes): streaming it at every point", budget)
    if one_pass:
        raise LossmapError("data given as a one-pass iterator cannot be streamed: pass a Dataset or a DataLoader")
    source = Streamed(raws, samples, device, dtype, nondeterministic=flagged).survey()
    if not flagged and not _same_first(raws, source.first(), device, dtype, allow_nondeterministic):
        source.nondeterministic = True
    return source


def _same_first(raws: Iterable[Any], first: Batch, device: torch.device, dtype: torch.dtype | None, allow: bool) -> bool:
    """One cheap check for random order or augmentation: a second pass starts with the same batch."""
    again = next(iter(raws), None)
    if again is None:
        return _refuse_or_warn("gave no batches on a second pass", allow) is False
    moved = truncate(to_device(again, device, dtype), first.size)
    if _hash_raw(moved) == _hash_raw(first.raw):
        return True
    _refuse_or_warn("gave another first batch on a second pass (random order or random augmentation)", allow)
    return False
