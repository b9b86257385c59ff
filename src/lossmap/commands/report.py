"""``lossmap report FILE.nc [FILE2.nc …] --out report.html``: one self-contained interactive HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..errors import LossmapError


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
    add_common_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)
    return p


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``report`` and ``compare``."""
    p.add_argument("--titles", nargs="+", metavar="TITLE", help="one title per file (default: the file names)")
    p.add_argument("--metric", default="loss", help="metric to draw (default: loss)")
    p.add_argument("--log", action="store_true", help="log scale for the metric")
    p.add_argument("--levels", type=int, default=None, metavar="N", help="number of contour levels (default 15)")
    p.add_argument("--rise", type=float, default=None, metavar="R",
                   help="loss increase for the rise-radius flatness measure (default 0.1·(1+|centre loss|))")


def refuse_existing(paths: Sequence[str | Path | None], overwrite: bool) -> None:
    for p in paths:
        if p is not None and Path(p).exists() and not overwrite:
            raise LossmapError(f"output {str(p)!r} exists: choose another path or pass --overwrite")


def titles_for(files: Sequence[str], titles: Sequence[str] | None) -> list[str]:
    """The given titles (one per file) or the files' names (stems; whole paths when stems repeat)."""
    if titles is not None:
        if len(titles) != len(files):
            raise LossmapError(f"{len(titles)} --titles for {len(files)} files: give one title per file")
        return list(titles)
    stems = [Path(f).stem for f in files]
    return stems if len(set(stems)) == len(stems) else [str(f) for f in files]


def load_all(files: Sequence[str]):
    from .. import store

    return [store.load(f) for f in files]


def run(args: argparse.Namespace) -> int:
    from .. import stats
    from ..plot.interactive import DEFAULT_LEVELS, write_report

    refuse_existing([args.out], args.overwrite)
    titles = titles_for(args.files, args.titles)
    datasets = load_all(args.files)
    for ds, name in zip(datasets, args.files):
        if args.metric not in ds.data_vars:
            raise LossmapError(
                f"{name} has no metric {args.metric!r} (it has {sorted(map(str, ds.data_vars))}): choose one with --metric"
            )
    path = write_report(datasets, args.out, titles=titles, metric=args.metric, log=args.log,
                        levels=args.levels or DEFAULT_LEVELS, rise=args.rise)
    summaries = [stats.summarize(ds, metric=args.metric, rise=args.rise) for ds in datasets]
    print(stats.table(summaries, titles))
    print(f"wrote {path}")
    return 0
