"""An animation of a training trajectory: the path growing over the contour map, step by step.

Frames follow the recorded steps of all paths together (frame f shows every checkpoint whose step is
at most the f-th step), so runs recorded on different schedules move in step with each other. At
most ``max_frames`` frames are drawn: evenly spaced through the steps, always with the last one.

``.gif`` files are written with Pillow. ``.mp4`` files (H.264) need an ffmpeg binary: the one of the
``imageio-ffmpeg`` package when it is installed, else ``ffmpeg`` on the PATH. Frames go to ffmpeg as
they are drawn, and the file is written atomically (a temporary file renamed over the target).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import LossmapError
from .. import store
from ..store import atomic_path
from .figures import _RUN_MARKERS, LEGEND, RESIDUAL_THRESHOLD, STEP_CMAP, _legend_handles, as_paths, step_norm, step_ticks

__all__ = ["animate", "find_ffmpeg", "frame_steps", "SUFFIXES"]

SUFFIXES = (".gif", ".mp4")


def find_ffmpeg() -> str | None:
    """The ffmpeg binary to use: imageio-ffmpeg's, else ``ffmpeg`` on the PATH, else None."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


def frame_steps(steps: Sequence[np.ndarray], max_frames: int) -> np.ndarray:
    """The step shown by each frame: every distinct step, or ``max_frames`` of them evenly spaced
    (first and last included)."""
    unique = np.unique(np.concatenate([np.asarray(s, dtype=np.float64) for s in steps]))
    if unique.size <= max_frames:
        return unique
    return unique[np.unique(np.rint(np.linspace(0, unique.size - 1, max_frames)).astype(int))]


def _check(out: Path, fps: float, max_frames: int) -> str | None:
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise LossmapError(f"animation file {str(out)!r}: the suffix {out.suffix or '(none)'!r} is not supported; "
                           "write a .gif or an .mp4")
    store.check_output(out, "run.gif")
    if not (fps > 0) or not (isinstance(max_frames, int) and max_frames >= 1):
        raise LossmapError(f"fps {fps!r} and max_frames {max_frames!r} must be positive")
    if suffix != ".mp4":
        return None
    exe = find_ffmpeg()
    if exe is None:
        raise LossmapError(f"writing {out.name} needs an ffmpeg binary and none was found: pip install imageio-ffmpeg "
                           "(or install ffmpeg), or write a .gif")
    return exe


class _Artists:
    """The artists of one path that each frame updates."""

    def __init__(self, ax: Any, marker: str, norm: Any, cmap: str) -> None:
        empty = np.empty((0, 2))
        (self.line,) = ax.plot([], [], color="0.15", lw=1.1, zorder=20)
        self.points = ax.scatter(empty[:, 0], empty[:, 1], c=np.empty(0), cmap=cmap, norm=norm, s=22, marker=marker,
                                 edgecolors="black", linewidths=0.3, zorder=21)
        self.start = ax.scatter(empty[:, 0], empty[:, 1], s=90, marker="o", c="white", edgecolors="black",
                                linewidths=1.2, zorder=23)
        self.now = ax.scatter(empty[:, 0], empty[:, 1], s=200, marker="*", c="white", edgecolors="black",
                              linewidths=1.2, zorder=23)
        self.flagged = ax.scatter(empty[:, 0], empty[:, 1], s=110, marker="o", facecolors="none", edgecolors="red",
                                  linewidths=1.6, zorder=24)

    def show(self, coords: np.ndarray, steps: np.ndarray, flag: np.ndarray, upto: float) -> None:
        k = int(np.searchsorted(steps, upto, side="right"))  # steps are in order
        xy = coords[:k]
        self.line.set_data(xy[:, 0], xy[:, 1])
        self.points.set_offsets(xy)
        self.points.set_array(steps[:k])
        self.start.set_offsets(xy[:1])
        self.now.set_offsets(xy[-1:] if k else xy[:0])
        self.flagged.set_offsets(xy[flag[:k]])


def _frames(ds: xr.Dataset, items: list, times: np.ndarray, *, metric: str, log: bool, levels: Any, dpi: float,
            threshold: float, cmap: str):
    """Yields each frame as an (h, w, 3) uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable

    from ..plot.static import plot_contour

    fig, ax = plot_contour(ds, metric=metric, log=log, levels=levels)
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    norm = step_norm(items)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="step", shrink=0.85)
    ticks = step_ticks(norm)
    if ticks:
        cbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    flags = [p.residuals > threshold for p in items]
    ax.legend(handles=_legend_handles(items, threshold, any(f.any() for f in flags)), **LEGEND)
    artists = [_Artists(ax, _RUN_MARKERS[i % len(_RUN_MARKERS)], norm, cmap) for i in range(len(items))]
    base = ax.get_title()
    for f, upto in enumerate(times):
        for a, p, flag in zip(artists, items, flags):
            a.show(p.coords, p.steps, flag, upto)
        ax.set_title(f"{base}\nstep {upto:g}")
        canvas.draw()
        if f == 0:
            fig.set_layout_engine("none")  # keep the layout of the first frame: no jitter between frames
        yield np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def animate(ds: xr.Dataset, paths: Any, out: str | Path, *, fps: float = 8.0, max_frames: int = 120,
            metric: str = "loss", log: bool = False, levels: int | Sequence[float] | None = None, dpi: float = 100.0,
            residual_threshold: float = RESIDUAL_THRESHOLD, cmap: str = STEP_CMAP) -> Path:
    """Write an animation of the path(s) growing over the contour map.

    Args:
        ds (xr.Dataset): a 2-D landscape of the plane.
        paths: a :class:`~lossmap.trajectory.pca.Plane`, one path or a list (see :mod:`.figures`).
        out (str | Path): ``.gif`` (Pillow) or ``.mp4`` (needs ffmpeg, see the module docstring).
        fps (float): frames per second.
        max_frames (int): the most frames to draw.
        metric, log, levels: as for :func:`lossmap.plot.static.plot_contour`.
        dpi (float): pixels per inch of the frames.
        residual_threshold, cmap: as for :func:`lossmap.trajectory.figures.plot_path`.
    Returns:
        Path: ``out``.
    Raises:
        LossmapError: an unsupported suffix, a missing output folder, no ffmpeg for ``.mp4``.
    Example:
        >>> animate(ds, plane, "lossmap-demo/run.gif")  # doctest: +SKIP
    """
    out = Path(out)
    exe = _check(out, fps, max_frames)
    items = as_paths(paths)
    order = [np.argsort(p.steps, kind="stable") for p in items]
    for p, o in zip(items, order):
        p.coords, p.steps, p.residuals = p.coords[o], p.steps[o], p.residuals[o]
    times = frame_steps([p.steps for p in items], max_frames)
    frames = _frames(ds, items, times, metric=metric, log=log, levels=levels, dpi=dpi, threshold=residual_threshold,
                     cmap=cmap)
    with atomic_path(out, durable=True) as tmp:
        if exe is None:
            _write_gif(frames, tmp, fps)
        else:
            _write_mp4(frames, tmp, fps, exe)
    return out


def _write_gif(frames: Any, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=255) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   optimize=False)


def _write_mp4(frames: Any, path: Path, fps: float, exe: str) -> None:
    first = next(frames)
    h, w = first.shape[:2]
    cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps:g}",
           "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", "-f", "mp4", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for frame in _chain(first, frames):
            proc.stdin.write(frame.tobytes())
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise LossmapError(f"ffmpeg ({exe}) failed to write the MP4: {' '.join(err.split())[:300]}; write a .gif instead")
    except BrokenPipeError:
        err = proc.stderr.read().decode(errors="replace")
        proc.wait()
        raise LossmapError(f"ffmpeg ({exe}) stopped early: {' '.join(err.split())[:300]}; write a .gif instead") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _chain(first: np.ndarray, rest: Any):
    yield first
    yield from rest
