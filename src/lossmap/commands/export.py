"""``lossmap export FILE.nc --out PATH [--format vtk|vtu|obj|stl|ply]``: a 2-D landscape as a 3-D mesh."""

from __future__ import annotations

import argparse
from pathlib import Path

#: lossmap.export.FORMATS' names, here so that building the parser imports nothing heavy (a test holds them equal)
MESH_FORMATS = ("obj", "ply", "stl", "vtk", "vtu")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a 2-D landscape as a mesh for ParaView, Blender or 3-D printing",
        description=(
            "Write a 2-D landscape as a triangle mesh (one vertex per grid point, z = the metric). "
            "vtk, vtu and ply also carry every metric as point data. Unevaluated or infinite points become "
            "a wall at the top z and are flagged 0 in the 'valid' point data."
        ),
    )
    p.add_argument("file", metavar="FILE.nc", help="a 2-D landscape file")
    p.add_argument("--out", required=True, metavar="PATH", help="mesh file to write")
    p.add_argument("--format", choices=MESH_FORMATS, help="mesh format (default: from the --out suffix)")
    p.add_argument("--metric", default="loss", help="metric to use as height (default: loss)")
    p.add_argument("--log", action="store_true", help="height = log10(metric)")
    p.add_argument("--zmin", type=float, help="clip the metric below this value (metric units, before --log)")
    p.add_argument("--zmax", type=float, help="clip the metric above this value (metric units, before --log)")
    p.add_argument("--zscale", type=float, default=1.0, metavar="S",
                   help="multiply the heights by S after clipping and --log (default 1)")
    p.add_argument("--overwrite", action="store_true", help=argparse.SUPPRESS)  # outputs are replaced anyway
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import store
    from ..export import export_mesh

    out = Path(args.out)
    ds = store.load(args.file)
    path = export_mesh(ds, out, format=args.format, metric=args.metric, log=args.log, zmin=args.zmin, zmax=args.zmax,
                       z_scale=args.zscale)
    nx, ny = ds.sizes["x"], ds.sizes["y"]
    print(f"wrote {path} ({nx * ny} vertices, {2 * (nx - 1) * (ny - 1)} triangles)")
    return 0
