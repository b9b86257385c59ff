"""``lossmap report FILE.nc [FILE2.nc …] --out report.html``: one self-contained interactive HTML report."""

from __future__ import annotations

import argparse

from ._common import add_view_options, levels_option, load_all, titles_for


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="write one interactive HTML report (3-D surfaces, contours, curves, summary, metadata)",
        description=(
            "Write ONE self-contained HTML file (plotly embedded, opens offline) with, per landscape, a 3-D "
            "surface, the contour map, the 1-D curves, the summary numbers and the metadata. Several landscapes on "
            "the same grid are also drawn side by side on one colour scale."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE.nc", help="landscape files")
    p.add_argument("--out", required=True, metavar="PATH", help="HTML file to write, e.g. report.html")
    add_view_options(p)
    p.add_argument("--overwrite", action="store_true", help=argparse.SUPPRESS)  # outputs are replaced anyway
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import stats
    from ..plot.interactive import DEFAULT_LEVELS, write_report

    titles = titles_for(args.files, args.titles)
    levels = levels_option(args.levels, DEFAULT_LEVELS)
    datasets = load_all(args.files)
    if any("seed" in d.dims for d in datasets):  # direction ensembles (lossmap surface --seeds)
        from ..plot.uncertainty_report import write_ensemble_report
        from ..uncertainty.summary import comparison_text, ensemble_text

        path = write_ensemble_report(datasets, args.out, titles, metric=args.metric, log=args.log, levels=levels,
                                     rise=args.rise)
        for d, t in zip(datasets, titles):
            print(f"{t}:{ensemble_text(d, metric=args.metric, rise=args.rise)}")
        print(comparison_text(datasets, titles, metric=args.metric, rise=args.rise).lstrip("\n"))
        print(f"wrote {path}")
        return 0
    path = write_report(datasets, args.out, titles=titles, metric=args.metric, log=args.log, levels=levels, rise=args.rise)
    summaries = [stats.summarize(ds, metric=args.metric, rise=args.rise) for ds in datasets]
    print(stats.table(summaries, titles))
    print(f"wrote {path}")
    return 0
