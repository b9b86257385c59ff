"""Evaluation engines: the metrics of a model at points θ0 + Σ cᵢdᵢ.

* :mod:`~lossmap.engine.reference` — the reference loop (``plain``) and the :class:`Workload` every engine takes;
* :mod:`~lossmap.engine.fast` — the reference loop plus exact speed-ups, one small object each (``fast``);
* :mod:`~lossmap.engine.vmap` — several points per forward (``vmap``, the default on CUDA);
* :mod:`~lossmap.engine.fx`, :mod:`~lossmap.engine.onednn`, :mod:`~lossmap.engine.first_layer` — what the speed-ups use;
* :mod:`~lossmap.engine.diagnose` — mistakes in the user's model, data or loss told in one line;
* :mod:`~lossmap.engine.running` — per-point running statistics of per-example values (standard errors, paired
  errors) and the stop at a stated precision.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import LossmapError
from .reference import BN_POLICIES, Engine, Workload

__all__ = ["make_engine", "ENGINES", "Engine", "Workload", "BN_POLICIES"]

log = logging.getLogger("lossmap")

ENGINES = ("auto", "plain", "fast", "vmap")


def make_engine(work: Workload, engine: str = "auto", **options: Any) -> Engine:
    """The engine for ``work``: ``plain`` (the reference loop), ``fast`` (exact speed-ups, one point per
    forward), ``vmap`` (several points per forward) or ``auto`` (``vmap`` on CUDA, ``fast`` elsewhere). A user
    ``forward`` or ``bn="recompute"`` with batch-norm layers gets the reference loop, which is exact for them.
    ``options`` go to the fast engines (see :class:`~lossmap.engine.fast.FastEngine`)."""
    if engine not in ENGINES:
        raise LossmapError(f"engine {engine!r} is unknown: choose one of {', '.join(ENGINES)}")
    if engine == "plain":
        return Engine(work)
    if work.forward is not None or (work.bn == "recompute" and work.bn_modules):
        why = "a user forward function" if work.forward is not None else "batch-norm statistics are recomputed per point"
        log.info("%s engine not used: %s; the reference loop runs", engine, why)
        return Engine(work)
    if engine == "auto":
        engine = "vmap" if work.origin[0].device.type == "cuda" else "fast"
    from .fast import FastEngine
    from .vmap import VmapEngine

    try:
        return VmapEngine(work, **options) if engine == "vmap" else FastEngine(work, **options)
    except LossmapError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model the fast paths cannot drive (scripted, exotic hooks…)
        log.warning("%s engine not used (%s: %s); the reference loop runs", engine, type(exc).__name__, exc)
        return Engine(work)
