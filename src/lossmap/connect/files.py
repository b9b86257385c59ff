"""Files of the connectivity analyses: checkpoints of states (the aligned model, a curve's bend),
permutation specs as JSON, and reading back the netCDF files :mod:`~lossmap.connect.connection` and
:mod:`~lossmap.connect.curve_run` write. Every write is atomic (temporary file + rename)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import LossmapError
from ..files import atomic_path, check_output, read_netcdf, sibling

__all__ = ["save_state", "save_spec", "load_spec", "load_result", "sibling"]


def save_state(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write a state dict as safetensors (CPU, contiguous; tied tensors stored once per name).

    Args:
        state: ``{name: tensor}``.
        path: the ``.safetensors`` file to write (replaced).

    Returns:
        Path: the file written.

    Example:
        >>> import tempfile, torch, os
        >>> p = save_state({"w": torch.ones(2)}, os.path.join(tempfile.mkdtemp(), "s.safetensors"))
        >>> p.name
        's.safetensors'
    """
    from safetensors.torch import save_file

    path = check_output(path, "model.safetensors")
    plain = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    with atomic_path(path, durable=True) as tmp:
        save_file(plain, str(tmp))
    return path


def save_spec(axes: Mapping[str, Any], path: str | Path) -> Path:
    """Write a permutation spec ``{perm: [[tensor, axis, block], ...]}`` as JSON (the ``--spec`` format)."""
    path = check_output(path, "spec.json")
    with atomic_path(path) as tmp:
        lines = [f" {json.dumps(str(p))}: {json.dumps([list(e) for e in entries])}" for p, entries in axes.items()]
        tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return path


def load_spec(path: str | Path) -> dict[str, list]:
    """Read a permutation spec written by :func:`save_spec` (or by hand): ``{perm: [[tensor, axis(, block)], ...]}``."""
    path = Path(path)
    if not path.is_file():
        raise LossmapError(f"spec file {str(path)!r} does not exist: check the path")
    try:
        axes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LossmapError(f"cannot read spec file {str(path)!r} as JSON ({exc}): write {{\"P\": [[\"fc1.weight\", 0], ...]}}") from None
    if not isinstance(axes, dict) or not axes:
        raise LossmapError(f"spec file {str(path)!r} holds no permutation: write {{\"P\": [[\"fc1.weight\", 0], ...]}}")
    return axes


def load_result(path: str | Path, fmt: str):
    """Open a connectivity file fully into memory and check it is of format ``fmt``.

    Args:
        path: the ``.nc`` file.
        fmt: ``"lossmap.connect"`` or ``"lossmap.curve"``.

    Returns:
        xarray.Dataset: the file's contents.
    """
    ds = read_netcdf(path, "file")
    if ds.attrs.get("lossmap_format") != fmt:
        raise LossmapError(f"{str(path)!r} is not a {fmt} file (format {ds.attrs.get('lossmap_format')!r}): pass the file that command wrote")
    return ds
