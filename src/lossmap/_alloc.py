"""Allocator tuning for the CPU hot loop (glibc only).

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves every block above ``M_MMAP_THRESHOLD``
(128 KiB until its dynamic adjustment raises it) with a fresh ``mmap`` and returns it with ``munmap``
on free, and trims the heap top above ``M_TRIM_THRESHOLD``. A forward pass allocates its activation
buffers (megabytes each) anew for every batch, so each forward maps fresh pages and page-faults
them in again: measured on the seed CNN, hundreds of milliseconds of system time per grid point,
and an out-of-place add on an 8.6 MB tensor took 26 ms instead of 0.5 ms. Raising both thresholds
keeps those buffers in the heap, so the next forward reuses warm pages.

What: :func:`tune` (``lossmap.tune_allocator()``) sets ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's largest
accepted value on 64-bit) and ``M_TRIM_THRESHOLD`` to 1 GiB, for the rest of the process. This is a
process-wide change that glibc cannot fully undo (any ``mallopt`` call switches off its dynamic mmap
threshold for good), so the library never makes it on its own: the ``lossmap`` command, which owns its
process, tunes the allocator at start (``LOSSMAP_MALLOC=0`` leaves it alone), and a Python user who
wants the same speed calls ``lossmap.tune_allocator()`` once. :func:`restore` puts glibc's default
values back (128 KiB each). On other C libraries both are no-ops. The cost: freed activation memory
stays in the process (up to the largest working set) instead of going back to the system at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["tune", "tune_allocator", "restore", "tuned", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (4 MiB × sizeof(long))
TRIM_THRESHOLD = 1024 * 1024 * 1024
_DEFAULT = 128 * 1024

_state = {"tuned": False}


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or not platform.libc_ver()[0].startswith("glibc"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def tuned() -> bool:
    """Whether :func:`tune` changed this process's allocator settings (and :func:`restore` has not undone them)."""
    return _state["tuned"]


def tune() -> bool:
    """Raise glibc's mmap and trim thresholds once; True when they are (now or already) raised."""
    if _state["tuned"]:
        return True
    if os.environ.get("LOSSMAP_MALLOC", "1").strip().lower() in ("0", "no", "off", "false"):
        return False
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["tuned"] = ok
    return ok


def restore() -> None:
    """Put glibc's default thresholds back (after :func:`tune`)."""
    if not _state["tuned"]:
        return
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT)
        libc.malloc_trim(0)
    _state["tuned"] = False


def tune_allocator() -> bool:
    """Keep activation buffers in glibc's heap for the rest of the process (the ``lossmap`` command does this):
    about 1.1× faster CPU evaluation of convolutional networks. See the module docstring for why the library
    does not do it by itself; ``lossmap._alloc.restore()`` undoes it.

    Returns:
        bool: True when the allocator is tuned (now or already); False on C libraries other than glibc.

    Examples:
        >>> import lossmap
        >>> lossmap.tune_allocator()              # changes this process's allocator  # doctest: +SKIP
        True
    """
    return tune()
