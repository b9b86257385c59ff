"""``lossmap info``: coordinates, metrics and every metadata field of a landscape file."""

from __future__ import annotations

import argparse
import json

import numpy as np


from ..settings import show_axis, show_setting


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
            out.extend(f"    {(str(k) + ':').ljust(inner)} {show_setting(key, v[k])}" for k in sorted(v, key=str))
        else:
            out.append(f"  {(str(key) + ':').ljust(width)} {show_setting(key, v)}")
    return out


def lines(ds, name: str) -> list[str]:
    from ..store import meta

    out = [f"file: {name}", "coordinates:"]
    for axis in ("seed", "x", "y"):
        if axis in ds.dims:
            label = ds[axis].attrs.get("long_name", "")
            out.append(f"  {axis}: {show_axis(ds[axis].values)}" + (f"  [{label}]" if label else ""))
    out.append("metrics:")
    centre = {a: int(np.argmin(np.abs(ds[a].values))) for a in ("x", "y") if a in ds.coords}
    for var in ds.data_vars:
        v = np.asarray(ds[var].values, dtype=float)
        finite = v[np.isfinite(v)]
        at = float(ds[var].isel(**centre).median().values)  # a direction ensemble's seeds share the centre
        rng = f"min {finite.min():.6g}, max {finite.max():.6g}" if finite.size else "no finite value"
        missing = v.size - finite.size
        out.append(f"  {var}: {rng}, at centre {at:.6g}" + (f", {missing} non-finite of {v.size}" if missing else ""))
    out.extend(_error_lines(ds, centre))
    if "trajectory_runs" in ds.attrs:  # the checkpoints of a trajectory file (coordinates, not metrics)
        from ..trajectory.stored import trajectory_lines

        out.extend(trajectory_lines(ds))
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


def _error_lines(ds, centre: dict[str, int]) -> list[str]:
    """The per-point error variables (lossmap.uncertainty.pointwise), with their value at the centre."""
    from ..uncertainty.pointwise import error_names

    names = error_names(ds)
    if not names:
        return []
    out = ["per-point errors" + (" (a 'seed' dimension: a direction ensemble)" if "seed" in ds.dims else "") + ":"]
    for name in names:
        v = np.asarray(ds[name].values, dtype=float)
        finite = v[np.isfinite(v)]
        at = float(ds[name].isel(**centre).median().values)
        rng = f"min {finite.min():.4g}, max {finite.max():.4g}" if finite.size else "no finite value"
        out.append(f"  {name}: {rng}, at centre {at:.4g}")
    return out
