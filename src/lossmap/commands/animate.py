"""``lossmap animate``: a training trajectory growing over its contour map, as a GIF or an MP4."""

from __future__ import annotations

import argparse

from ._common import levels_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "animate",
        help="animate the path of a trajectory file over its contour map (GIF, or MP4 with ffmpeg)",
        description=(
            "Draw the checkpoints of a file written by lossmap trajectory one step after another over the contour "
            "map of their plane (colour = step; start circle, current star, off-plane checkpoints ringed in red). "
            ".gif files are written with Pillow; .mp4 files need an ffmpeg binary (pip install imageio-ffmpeg, or "
            "ffmpeg on the PATH). An existing animation is replaced."
        ),
    )
    p.add_argument("file", metavar="FILE.nc", help="a trajectory file (lossmap trajectory --out FILE.nc)")
    p.add_argument("--out", required=True, metavar="FILE", help="the animation to write: run.gif or run.mp4")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second (default: 8)")
    p.add_argument("--max-frames", type=int, default=120, metavar="N",
                   help="at most N frames, evenly spaced through the recorded steps (default: 120)")
    p.add_argument("--metric", default="loss", help="metric of the contour map (default: loss)")
    p.add_argument("--log", action="store_true", help="log scale for the metric")
    p.add_argument("--levels", type=int, metavar="N", help="number of contour levels (default: 15)")
    p.add_argument("--dpi", type=float, default=100.0, help="pixels per inch of the frames (default: 100)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import store
    from ..errors import LossmapError
    from ..plot.scale import DEFAULT_LEVELS
    from ..trajectory.animation import animate
    from ..trajectory.stored import read_paths

    levels = levels_option(args.levels, DEFAULT_LEVELS)
    if not args.dpi > 0:
        raise LossmapError(f"--dpi {args.dpi} must be positive, e.g. 100")
    ds = store.load(args.file)
    store.require_metric(ds, args.metric, repr(args.file))
    paths = read_paths(ds, repr(args.file))
    path = animate(ds, paths, args.out, fps=args.fps, max_frames=args.max_frames, metric=args.metric, log=args.log,
                   levels=levels, dpi=args.dpi)
    print(f"wrote {path}")
    return 0
