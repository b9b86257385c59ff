"""``lossmap compare A.nc B.nc [...] --out cmp.png``: landscapes side by side on one colour scale.

The files must share their grid and metrics (the same kind of slice, evaluated on the same grid); otherwise
the command refuses with one line saying which file and which axis differ. Direction ensembles (files made
with ``--seeds``) are compared by their flatness numbers over seeds: the figure shows their distributions and
the command prints whether the first two files' numbers differ beyond the spread across seeds, naming the
test (Welch's t-test, or the paired t-test when seed k drew the same raw directions for both models).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import LossmapError
from ._common import add_view_options, levels_option, load_all, titles_for

KINDS = ("contour", "contourf", "heatmap", "surface", "line")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="draw several landscapes side by side with one colour scale and shared contour levels",
        description=(
            "Draw landscapes computed on the same grid side by side with ONE colour scale and the same contour "
            "levels (static figure), print their summary numbers as a table, and optionally write the "
            "interactive HTML report too (--html). 'line' draws 1-D curves; for 2-D files it overlays the "
            "central cross-sections along x."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE.nc", help="two or more landscape files")
    p.add_argument("--out", required=True, metavar="PATH", help="figure to write: .png, .pdf or .svg")
    p.add_argument("--kind", choices=KINDS, default="contour", help="kind of panel for 2-D landscapes (default contour)")
    p.add_argument("--html", metavar="PATH", help="also write the interactive HTML report here")
    add_view_options(p)
    p.add_argument("--overwrite", action="store_true", help=argparse.SUPPRESS)  # outputs are replaced anyway
    p.set_defaults(func=run)
    return p


def _central_x_section(ds):
    """The 2-D landscape's curve along x at the y nearest 0, as a 1-D landscape."""
    import numpy as np

    j0 = int(np.argmin(np.abs(ds["y"].values)))
    out = ds.isel(y=j0, drop=True)
    out.attrs = {**ds.attrs, "ndim": 1}
    return out


def run(args: argparse.Namespace) -> int:
    from .. import stats
    from ..plot.interactive import DEFAULT_LEVELS, write_report

    if len(args.files) < 2:
        raise LossmapError(f"compare needs at least two landscape files, got {len(args.files)}: add another file")
    out = Path(args.out)
    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise LossmapError(f"--out {args.out!r} must end in .png, .pdf or .svg (the figure format)")
    if args.html is not None and Path(args.html).resolve() == out.resolve():
        raise LossmapError("--html and --out name the same file: give them different paths")
    levels = levels_option(args.levels, DEFAULT_LEVELS)
    titles = titles_for(args.files, args.titles)
    datasets = load_all(args.files)
    if any("seed" in d.dims for d in datasets):
        return _ensembles(args, datasets, titles, out, levels)
    stats.require_comparable(datasets, titles, args.metric)
    for note in stats.caveats(datasets, titles):
        print(f"lossmap: note: {note}", file=sys.stderr)

    from ..plot.static import plot_compare, save_figure

    drawn = datasets
    if args.kind == "line" and "y" in datasets[0].dims:
        drawn = [_central_x_section(ds) for ds in datasets]
    kind = "contour" if args.kind == "line" else args.kind
    fig = plot_compare(drawn, titles=titles, metric=args.metric, kind=kind, log=args.log, levels=levels)
    written = save_figure(fig, out)

    if args.html is not None:
        written.append(write_report(datasets, args.html, titles=titles, metric=args.metric, log=args.log,
                                    levels=levels, rise=args.rise))
    summaries = [stats.summarize(ds, metric=args.metric, rise=args.rise) for ds in datasets]
    print(stats.table(summaries, titles))
    for path in written:
        print(f"wrote {path}")
    return 0


def _ensembles(args: argparse.Namespace, datasets, titles: list[str], out: Path, levels: int) -> int:
    """Direction ensembles: their flatness numbers over seeds side by side, and whether they differ beyond the
    spread across seeds (printed with the test used)."""
    from .. import stats
    from ..plot.static import save_figure
    from ..plot.uncertainty import plot_summaries
    from ..uncertainty.summary import comparison_text, ensemble_text

    if not all("seed" in d.dims for d in datasets):
        raise LossmapError("compare mixes direction ensembles (files made with --seeds) and single landscapes: compare "
                           "ensembles with ensembles")
    stats.require_same_grid(datasets, titles, args.metric)
    for note in stats.caveats(datasets, titles):
        print(f"lossmap: note: {note}", file=sys.stderr)
    written = save_figure(plot_summaries(datasets, titles, metric=args.metric, rise=args.rise), out)
    if args.html is not None:
        from ..plot.uncertainty_report import write_ensemble_report

        written.append(write_ensemble_report(datasets, args.html, titles, metric=args.metric, log=args.log,
                                             levels=levels, rise=args.rise))
    for d, t in zip(datasets, titles):
        print(f"{t}:{ensemble_text(d, metric=args.metric, rise=args.rise)}")
    print(comparison_text(datasets, titles, metric=args.metric, rise=args.rise).lstrip("\n"))
    for path in written:
        print(f"wrote {path}")
    return 0
