"""``lossmap info``: coordinates, metrics and every metadata field of a landscape file; the numbers of a Hessian,
barrier or curve file."""

from __future__ import annotations

import argparse
import json

import numpy as np


from ..settings import show_axis, show_setting


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="print a landscape file's coordinates, metrics and metadata, or what a Hessian, barrier or curve file holds",
        description="Print the grid, each metric's range and value at the centre, every metadata attribute, "
        "and the settings a resumed run must match, one per line. For a Hessian file (lossmap hessian): its "
        "eigenvalues, trace, density and per-layer spectra, what each cost in HVPs, and every attribute; for a "
        "file of lossmap connect or lossmap curve: its barriers (the table the command printed) and every attribute.",
    )
    p.add_argument("file", metavar="FILE.nc", help="a file written by lossmap")
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
    m = meta(ds)
    settings = m.pop("settings", None)
    out.extend(_metadata(m))
    if settings not in (None, ""):  # what a resumed run must match
        out.extend(_settings(settings))
    return out


def _metadata(attrs) -> list[str]:
    """``metadata:`` and under it ``key = value``, one attribute per line, sorted."""
    width = max((len(str(k)) for k in attrs), default=0)
    return ["metadata:", *(f"  {str(key).ljust(width)} = {_value(attrs[key])}" for key in sorted(attrs))]


def spectrum_lines(ds, name: str) -> list[str]:
    """A Hessian file (``lossmap hessian``): what it holds, what each part cost, then every attribute."""
    a = ds.attrs
    out = [f"file: {name}", f"Hessian spectrum of {int(a.get('parameter_count', 0)):,} parameters "
           f"(mean {a.get('loss', '?')} loss over {a.get('samples', '?')} samples of {a.get('data', '?')})"]
    for end, what in (("top", "largest"), ("bottom", "most negative")):
        if f"eigenvalues_{end}" in ds:
            values = ", ".join(f"{v:.6g}" for v in ds[f"eigenvalues_{end}"].values)
            out.append(f"{what} eigenvalues: {values} ({a.get(f'hvps_{end}', '?')} HVPs; tol {a.get('tol', '?')})")
    if np.isfinite(float(a.get("trace", np.nan))):
        out.append(f"trace: {a['trace']:.6g} ± {a.get('trace_se', np.nan):.2g} ({a.get('trace_method', '?')}, "
                   f"{a.get('hvps_trace', '?')} HVPs)")
    if "density_nodes" in ds:
        nodes = ds["density_nodes"].values
        out.append(f"spectral density: {nodes.size} nodes in [{nodes.min():.4g}, {nodes.max():.4g}] from "
                   f"{a.get('density_runs', '?')} run(s) of {a.get('density_steps', '?')} Lanczos steps "
                   f"({a.get('hvps_density', '?')} HVPs)")
    if "layer" in ds.dims:
        out.append("per layer (parameters: largest, most negative eigenvalues):")
        for i, layer in enumerate(ds["layer"].values):
            row = [f"{v:.4g}" for v in ds["layer_eigenvalues_top"].values[i] if np.isfinite(v)]
            low = [f"{v:.4g}" for v in ds["layer_eigenvalues_bottom"].values[i] if np.isfinite(v)]
            out.append(f"  {layer} ({int(ds['layer_size'].values[i]):,}): {', '.join(row) or '-'}; {', '.join(low) or '-'}")
    out.append(f"HVPs: {a.get('hvps_total', '?')} by {a.get('hvp_method', '?')} (the determinism probe's "
               f"{a.get('hvps_probe', 0)} included)")
    out.extend(_metadata(dict(a)))
    return out


def connectivity_lines(ds, name: str) -> list[str]:
    """A ``lossmap connect`` file (its barrier table) or a ``lossmap curve`` file (its peaks and barrier), then
    every attribute."""
    from ..connect.connection import FORMAT as CONNECT, barrier_table
    from .curve import curve_summary

    table = barrier_table(ds) if ds.attrs.get("lossmap_format") == CONNECT else curve_summary(ds)
    return [f"file: {name}", *table.splitlines(), *_metadata(dict(ds.attrs))]


def run(args: argparse.Namespace) -> int:
    from .. import store
    from ..plot.spectrum import FORMAT as SPECTRUM

    ds = store.load(args.file, accept=tuple(store.OTHER_FORMATS))
    fmt = ds.attrs.get("lossmap_format")
    if fmt == SPECTRUM:
        found = spectrum_lines(ds, args.file)
    elif fmt in store.OTHER_FORMATS:
        found = connectivity_lines(ds, args.file)
    else:
        found = lines(ds, args.file)
    print("\n".join(found))
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
