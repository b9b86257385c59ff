"""``lossmap info``: coordinates, metrics and every metadata field of a landscape file."""

from __future__ import annotations

import argparse
import json

import numpy as np


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="print a landscape file's coordinates, metrics and metadata",
        description="Print the grid, each metric's range and value at the centre, and every metadata attribute.",
    )
    p.add_argument("file", metavar="FILE.nc", help="a landscape file")
    p.set_defaults(func=run)
    return p


def _axis(values: np.ndarray) -> str:
    if values.size == 1:
        return f"1 point at {values[0]:g}"
    step = np.diff(values)
    even = np.allclose(step, step[0], rtol=1e-9, atol=0)
    return f"{values.size} points from {values[0]:g} to {values[-1]:g}" + (f", step {step[0]:.6g}" if even else " (uneven)")


def _value(v) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, sort_keys=isinstance(v, dict))
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return _value(json.loads(v))
        except json.JSONDecodeError:
            pass
    return str(v)


def lines(ds, name: str) -> list[str]:
    from ..store import meta

    out = [f"file: {name}", "coordinates:"]
    for axis in ("x", "y"):
        if axis in ds.coords:
            label = ds[axis].attrs.get("long_name", "")
            out.append(f"  {axis}: {_axis(np.asarray(ds[axis].values, dtype=float))}" + (f"  [{label}]" if label else ""))
    out.append("metrics:")
    centre = {a: int(np.argmin(np.abs(ds[a].values))) for a in ("x", "y") if a in ds.coords}
    for var in ds.data_vars:
        v = np.asarray(ds[var].values, dtype=float)
        finite = v[np.isfinite(v)]
        at = float(ds[var].isel(**centre).values)
        rng = f"min {finite.min():.6g}, max {finite.max():.6g}" if finite.size else "no finite value"
        missing = v.size - finite.size
        out.append(f"  {var}: {rng}, at centre {at:.6g}" + (f", {missing} non-finite of {v.size}" if missing else ""))
    out.append("metadata:")
    m = meta(ds)
    width = max((len(str(k)) for k in m), default=0)
    for key in sorted(m):
        out.append(f"  {str(key).ljust(width)} = {_value(m[key])}")
    return out


def run(args: argparse.Namespace) -> int:
    from .. import store

    ds = store.load(args.file)
    print("\n".join(lines(ds, args.file)))
    return 0
