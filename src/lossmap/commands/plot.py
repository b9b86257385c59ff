"""``lossmap plot``: figures of a landscape file, or the spectral density of a Hessian file (PNG, PDF or SVG)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._common import levels_option


KINDS = ("line", "contour", "contourf", "heatmap", "surface", "trajectory", "curvature", "summary", "density", "all")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plot",
        help="draw a landscape file (line, contour, filled contour, heatmap, 3-D surface or all) or a Hessian file's "
             "spectral density",
        description=(
            "Figures are written as <stem>_<kind>.<format> (default stem: the landscape file without .nc). "
            "An --out ending in .png/.pdf/.svg with a single --kind names the file exactly. "
            "Existing figures are replaced."
        ),
    )
    p.add_argument("file", metavar="FILE.nc", help="a landscape file, or a Hessian file of lossmap hessian --density")
    p.add_argument("--kind", choices=KINDS, default="all",
                   help="which figure (default: all that apply: line for 1-D; contour, contourf, heatmap, surface, line for 2-D; "
                        "for a trajectory file also 'trajectory', the path over the map and on the surface side by side, "
                        "and its contour and surface figures carry the path; 'curvature' for a landscape made with "
                        "surface --curvature; for a direction ensemble (--seeds): line = median and 10-90%% band, "
                        "contour/contourf/heatmap = one panel per seed, summary = the flatness numbers over seeds; "
                        "for a Hessian file: density, its smoothed spectral density on a log axis)")
    p.add_argument("--metric", default="loss", help="metric for 2-D figures (default: loss)")
    p.add_argument("--log", action="store_true", help="log scale for the metric")
    p.add_argument("--vmin", type=float, help="lower end of the colour range / contour levels")
    p.add_argument("--vmax", type=float, help="upper end of the colour range / contour levels (surface: z clip)")
    p.add_argument("--levels", type=int, metavar="N", help="number of contour levels (default: 15)")
    p.add_argument("--format", default="png", metavar="FMT",
                   help="png, pdf or svg; several separated by commas, e.g. png,pdf (default: png)")
    p.add_argument("--out", metavar="PATH",
                   help="output stem, file, or folder (ending in /: the figures go into it); default: beside FILE.nc")
    p.add_argument("--mask-noise", action="store_true",
                   help="contour maps: leave out the contours where the change from the centre is within 2 paired "
                        "standard errors (shaded grey); needs a file with per-point errors")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import store
    from ..errors import LossmapError
    from ..plot import static
    from ..plot.scale import DEFAULT_LEVELS
    from ..plot.spectrum import FORMAT as SPECTRUM

    formats = [f.strip().lower().lstrip(".") for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in static.FORMATS]
    if not formats or bad:
        raise LossmapError(f"--format {args.format!r}: choose png, pdf or svg (several separated by commas)")
    levels = levels_option(args.levels, DEFAULT_LEVELS)
    if args.vmin is not None and args.vmax is not None and not args.vmin < args.vmax:
        raise LossmapError(f"--vmin {args.vmin} must be less than --vmax {args.vmax}")
    ds = store.load(args.file, accept=(SPECTRUM,))
    out, single_file = _destination(args)
    if ds.attrs.get("lossmap_format") == SPECTRUM:
        written = _density_figure(ds, args, out, single_file, formats)
    else:
        options = dict(metric=args.metric, log=args.log, levels=levels, vmin=args.vmin, vmax=args.vmax)
        written = _landscape_figures(ds, args, out, single_file, formats, options)
    for path in written:
        print(f"wrote {path}")
    return 0


def _destination(args: argparse.Namespace) -> tuple[Path, bool]:
    """The figures' stem (or exact file) and whether ``--out`` names a single file."""
    from .. import store
    from ..errors import LossmapError
    from ..plot import static

    src = Path(args.file)
    out = Path(args.out) if args.out else src.with_suffix("")
    if args.out and (args.out.endswith(("/", os.sep)) or out.is_dir()):  # a folder: the figures go into it
        if not out.is_dir():
            raise LossmapError(f"output folder {args.out!r} does not exist: create it (mkdir -p) or choose another --out")
        out = out / src.with_suffix("").name
    single_file = bool(args.out) and args.kind != "all" and out.suffix.lower().lstrip(".") in static.FORMATS
    store.check_output(out)
    return out, single_file


def _density_figure(ds, args: argparse.Namespace, out: Path, single_file: bool, formats: list[str]) -> list[Path]:
    """A Hessian file's spectral density as ``<stem>_density.<fmt>``, or exactly ``out``."""
    from ..errors import LossmapError
    from ..plot import static
    from ..plot.spectrum import density_figure

    if args.kind not in ("density", "all"):
        raise LossmapError(f"{args.file!r} is a Hessian spectrum (lossmap hessian): its figure is --kind density")
    fig = density_figure(ds, repr(args.file))
    return static.save_figure(fig, out if single_file else static.figure_stem(out, "density"), formats)


def _landscape_figures(ds, args: argparse.Namespace, out: Path, single_file: bool, formats: list[str],
                       options: dict) -> list[Path]:
    """The figures ``--kind`` asks for of a landscape (all that apply for ``all``), drawn with ``options``."""
    from .. import store
    from ..errors import LossmapError
    from ..plot import static
    from ..plot.curvature import has_curvature

    two_d = "y" in ds.dims
    store.require_metric(ds, args.metric, repr(args.file))
    ensemble = "seed" in ds.dims
    if args.kind == "density":
        raise LossmapError(f"--kind density draws a Hessian file (lossmap hessian --density); {args.file!r} is a landscape")
    if args.kind == "summary" and not ensemble:
        raise LossmapError(f"--kind summary needs a direction ensemble (lossmap surface --seeds); {args.file!r} has one seed")
    if args.kind not in ("line", "all", "summary", "curvature") and not two_d:
        raise LossmapError(f"--kind {args.kind} needs a 2-D landscape; {args.file!r} is 1-D: use --kind line")
    if ensemble or args.mask_noise:
        return _uncertainty_figures(ds, args, out, single_file, formats, options)
    if args.kind == "all":
        written = static.plot_all(ds, out, formats, **options)
        return written + (_curvature_figure(ds, None, formats, stem=out) if has_curvature(ds) else [])
    if args.kind == "curvature":
        return _curvature_figure(ds, out if single_file else None, formats, stem=out)
    fig = static.figure(ds, args.kind, **options)
    return static.save_figure(fig, out if single_file else static.figure_stem(out, args.kind), formats)


def _uncertainty_figures(ds, args: argparse.Namespace, out: Path, single_file: bool, formats: list[str], options: dict):
    """The figures of a direction ensemble, or of a landscape whose contour maps mask what is noise."""
    from ..plot import static
    from ..plot import uncertainty as figs

    if "seed" in ds.dims:
        options = {**options, "mask_noise": args.mask_noise}
        if args.kind == "all":
            return figs.plot_ensemble_all(ds, out, formats, **options)
        fig = figs.ensemble_figure(ds, args.kind, **options)
        return static.save_figure(fig, out if single_file else static.figure_stem(out, args.kind), formats)
    written = []
    for kind in static.kinds_for(ds) if args.kind == "all" else (args.kind,):
        if kind in ("contour", "contourf"):
            fig = figs.plot_contour_noise(ds, metric=args.metric, log=args.log, levels=options["levels"], vmin=args.vmin,
                                          vmax=args.vmax, filled=kind == "contourf")[0]
        else:
            fig = static.figure(ds, kind, **options)
        written += static.save_figure(fig, out if single_file else static.figure_stem(out, kind), formats)
    return written


def _curvature_figure(ds, out: Path | None, formats: list[str], stem: Path | None = None) -> list[Path]:
    """The curvature map (``--kind curvature``) as ``<stem>_curvature.<fmt>``, or exactly ``out``."""
    from ..plot import static
    from ..plot.curvature import plot_curvature

    fig = plot_curvature(ds)
    return static.save_figure(fig, out if out is not None else static.figure_stem(stem, "curvature"), formats)
