"""The settings that identify a run: a file is resumed only by a run whose settings are the same.

:data:`SETTINGS_FIELDS` names them. :func:`differences` compares a file's settings with a new run's and
says, field by field, what differs; :func:`show_setting` writes one value for reading (``lossmap info``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["SETTINGS_FIELDS", "LOSS_CONVENTION", "differences", "show_setting", "show_axis"]

#: what identifies a run for resuming: a file whose settings differ in any of these is not resumed
SETTINGS_FIELDS = {
    "theta0_sha256": "the model's parameters θ0 (hash)",
    "directions_sha256": "the direction tensors (hash)",
    "directions_kind": "directions kind",
    "seed": "seed",
    "normalization": "normalization",
    "bias_policy": "bias policy",
    "orthogonalized": "orthogonalization",
    "include_buffers": "include buffers",
    "tensor_filter": "tensor filter",
    "x": "x grid",
    "y": "y grid",
    "data": "data",
    "data_sha256": "the data samples (hash)",
    "samples": "sample count",
    "metrics": "metrics",
    "loss_convention": "the loss convention (2: loss_fn(output, target), batch means weighted by batch size)",
    "loss_function": "the loss function (name and a hash of its source)",
    "metric_functions": "the metric functions (name → name and a hash of its source; null: none)",
    "output_transform": "the output transform (null: the model's output as it is)",
    "forward_function": "the forward function (name and a hash of its source; null: the model's own)",
    "bn_policy": "batch-norm policy",
    "bn_data_sha256": "batch-norm data (hash)",
    "dtype": "dtype",
    "tf32": "TF32 on the GPU",
    "bf16": "bfloat16 autocast",
    "precision": "evaluation to a stated precision (null: every point reads all the data)",
}

#: the loss convention of this version: 1 was lossmap 0.1's (loss_fn(outputs, batch); a summed MSE default)
LOSS_CONVENTION = 2

# settings added after the first files were written, with the value a file that lacks them was made with
_LATER_SETTINGS = {"bf16": False, "loss_function": None, "metric_functions": None, "forward_function": None,
                   "loss_convention": 1, "output_transform": None, "precision": None}
_UNRECORDED = object()
#: how a function setting's null reads: the built-in each falls back to
_CALLABLE_FIELDS = {"loss_function": "default", "metric_functions": "none", "forward_function": "the model's",
                    "output_transform": "none"}
#: a full sha256 in hex; a setting shows it by its first 12 digits (the file holds all of it)
_SHA256 = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52}\b")


def show_axis(values: Sequence[float]) -> str:
    """A grid axis in words: its size, ends and (when even) step."""
    values = np.asarray(values, dtype=float)
    if values.size == 1:
        return f"1 point at {values[0]:g}"
    step = np.diff(values)
    even = np.allclose(step, step[0], rtol=1e-9, atol=0)
    return f"{values.size} points from {values[0]:g} to {values[-1]:g}" + (f", step {step[0]:.6g}" if even else " (uneven)")


def show_setting(key: str, value: Any) -> str:
    """One value of a run's settings on one line, for reading: hashes shortened, grids summarized, a
    function field's null named by what it falls back to."""
    if value is None:
        return _CALLABLE_FIELDS.get(key, "none")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and value and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in value):
        return show_axis(value)
    if isinstance(value, list):
        return ", ".join(show_setting(key, e) for e in value) if value else "none"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show_setting(key, v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return _SHA256.sub("\\1…", value) if value else "none"
    return str(value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``field (file: …, now: …)`` for each setting that differs. A field that ``old`` lacks (a file from an
    older lossmap) counts as that field's value before it was recorded, so a run with those defaults still
    resumes such a file; a file of lossmap 0.1's loss convention is never resumed (its loss differs)."""
    out = []
    for key in SETTINGS_FIELDS:
        was = old[key] if key in old else _LATER_SETTINGS.get(key, _UNRECORDED)
        if was != new.get(key):
            shown = "not recorded" if key not in old else show_setting(key, was)
            if key == "loss_convention" and was == 1:
                shown = "1, lossmap 0.1: loss_fn(outputs, batch), MSE summed over outputs"
            out.append(f"{key} (file: {shown}, now: {show_setting(key, new.get(key))})")
    return out
