"""Reduced precision a run may trade for speed — TF32 on CUDA, bfloat16 autocast — and its measured cost."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

__all__ = ["tf32_allowed", "centre_errors"]


@contextmanager
def tf32_allowed(device: str | torch.device, tf32: bool) -> Iterator[None]:
    """On CUDA, TF32 matmuls and convolutions only when asked for (cuDNN allows TF32 convolutions by
    default, a ~1e-3 relative error); the global flags are restored afterwards."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def centre_errors(engine, ndim: int, tf32: bool) -> dict[str, float]:
    """The largest relative difference of the metrics at the centre between each reduced precision in use
    (TF32, bf16 autocast) and the same engine without it: ``{"tf32_centre_rel_error": e, …}``."""
    amp = engine.autocast
    if not tf32 and amp is None:
        return {}
    centre = np.zeros((1, ndim))
    used = engine.evaluate_many(centre)

    def rel(exact: np.ndarray) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.nanmax(np.abs(used - exact) / np.maximum(np.abs(exact), 1e-30)))

    errors = {}
    if tf32:
        with tf32_allowed("cuda", False):
            errors["tf32_centre_rel_error"] = rel(engine.evaluate_many(centre))
    if amp is not None:
        engine.autocast = None
        try:
            errors["bf16_centre_rel_error"] = rel(engine.evaluate_many(centre))
        finally:
            engine.autocast = amp
    return errors
