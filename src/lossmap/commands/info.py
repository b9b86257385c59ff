"""``lossmap info``: coordinates, metrics and every metadata field of a landscape file."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np

#: a full sha256 in hex; in the settings it is shown by its first 12 digits (the file holds all of it)
_SHA256 = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52}\b")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="print a landscape file's coordinates, metrics and metadata",
        description="Print the grid, each metric's range and value at the centre, every metadata attribute, "
        "and the settings a resumed run must match, one per line.",
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


def _setting(key: str, v) -> str:
    """One value of the ``settings`` attribute, for reading: hashes shortened, grids summarized."""
    if v is None:  # a function field's null is the built-in default
        return "default" if key.endswith(("_function", "_functions")) else "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list) and v and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v):
        return _axis(np.asarray(v, dtype=float))
    if isinstance(v, list):
        return ", ".join(_setting(key, e) for e in v) if v else "none"
    if isinstance(v, dict):
        return json.dumps(v, ensure_ascii=False, sort_keys=True)
    if isinstance(v, str):
        return _SHA256.sub("\\1…", v) if v else "none"
    return str(v)


def _settings(settings) -> list[str]:
    """``settings:`` and under it ``key: value`` per line (a mapping's entries indented one level more)."""
    if not isinstance(settings, dict):  # not a JSON object: as it is
        return ["settings:", f"  {_value(settings)}"]
    width = max((len(str(k)) for k in settings), default=0) + 1
    out = ["settings:"]
    for key in sorted(settings, key=str):
        v = settings[key]
        if isinstance(v, dict) and v:
            out.append(f"  {key}:")
            inner = max(len(str(k)) for k in v) + 1
            out.extend(f"    {(str(k) + ':').ljust(inner)} {_setting(key, v[k])}" for k in sorted(v, key=str))
        else:
            out.append(f"  {(str(key) + ':').ljust(width)} {_setting(key, v)}")
    return out


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
    settings = m.pop("settings", None)
    width = max((len(str(k)) for k in m), default=0)
    for key in sorted(m):
        out.append(f"  {str(key).ljust(width)} = {_value(m[key])}")
    if settings not in (None, ""):  # what a resumed run must match
        out.extend(_settings(settings))
    return out


def run(args: argparse.Namespace) -> int:
    from .. import store

    ds = store.load(args.file)
    print("\n".join(lines(ds, args.file)))
    return 0
