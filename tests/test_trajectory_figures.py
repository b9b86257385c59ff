"""Trajectory figures and animations: what is drawn where, in which colour, and the files written."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import xarray as xr
from matplotlib import colors as mcolors

from lossmap.errors import LossmapError
from lossmap.trajectory.animation import animate, find_ffmpeg, frame_steps
from lossmap.trajectory.figures import plot_path, plot_path_surface, trajectory_figure


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    x, y = np.linspace(-3, 3, 13), np.linspace(-2, 2, 9)
    X, Y = np.meshgrid(x, y, indexing="ij")
    return xr.Dataset({"loss": (("x", "y"), X**2 + 2 * Y**2 + 0.5)}, coords={"x": x, "y": y},
                      attrs={"ndim": 2, "metrics": '["loss"]', "x_label": "PC1", "y_label": "PC2"})


def path(n=8, steps=None, residuals=None, shift=0.0, label="SGD"):
    t = np.linspace(0, 1, n)
    return {"coords": np.stack([-2.5 * (1 - t) + shift, np.sin(3 * t) * (1 - t)], axis=1),
            "steps": np.arange(0, 10 * n, 10) if steps is None else np.asarray(steps),
            "residuals": np.zeros(n) if residuals is None else np.asarray(residuals), "label": label}


def drawn(fig):
    """Render the figure (colours of scatter plots are computed when drawn)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def collections_at(ax, xy) -> list:
    """The scatter collections whose points are exactly ``xy`` (in order)."""
    out = []
    for c in ax.collections:
        off = np.asarray(c.get_offsets())
        if off.shape == np.shape(xy) and np.allclose(off, xy, rtol=0, atol=0):
            out.append(c)
    return out


def test_path_colours_follow_the_steps_and_flags_mark_the_off_plane_checkpoints(ds):
    steps = [0, 1, 2, 5, 10, 30, 100, 1000]  # log-spaced: the colour scale is log(step + 1)
    residuals = [0.9, 0.5, 0.31, 0.29, 0.1, 0.0, 0.0, 0.0]
    p = path(steps=steps, residuals=residuals)
    fig, ax = plot_path(ds, p)
    drawn(fig)
    (points,) = [c for c in collections_at(ax, p["coords"]) if c.get_array() is not None]
    frac = (np.log1p(steps) - np.log1p(0)) / (np.log1p(1000) - np.log1p(0))
    np.testing.assert_allclose(points.get_facecolors(), matplotlib.colormaps["plasma"](frac), atol=1e-6)
    flagged = p["coords"][np.array(residuals) > 0.3]
    (ring,) = collections_at(ax, flagged)
    assert mcolors.to_hex(ring.get_edgecolors()[0]) == "#ff0000" and ring.get_facecolors().size == 0  # hollow red
    assert collections_at(ax, p["coords"][:1]) and collections_at(ax, p["coords"][-1:])  # start and end
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["start", "end", "off the plane (residual > 0.3)"]

    evenly = path(steps=np.arange(0, 80, 10))
    fig, ax = plot_path(ds, evenly, residual_threshold=0.5)
    drawn(fig)
    (points,) = [c for c in collections_at(ax, evenly["coords"]) if c.get_array() is not None]
    np.testing.assert_allclose(points.get_facecolors(), matplotlib.colormaps["plasma"](np.arange(8) / 7), atol=1e-6)
    assert "off the plane" not in " ".join(t.get_text() for t in ax.get_legend().get_texts())


def test_two_runs_share_one_step_scale_and_get_labels(ds):
    a, b = path(steps=np.arange(0, 80, 10)), path(n=5, steps=[0, 20, 40, 80, 160], shift=0.3, label="Adam")
    fig, ax = plot_path(ds, [a, b])
    (pa,) = [c for c in collections_at(ax, a["coords"]) if c.get_array() is not None]
    (pb,) = [c for c in collections_at(ax, b["coords"]) if c.get_array() is not None]
    assert pa.norm.vmin == pb.norm.vmin == 0 and pa.norm.vmax == pb.norm.vmax == 160
    assert {"SGD", "Adam"} <= {t.get_text() for t in ax.get_legend().get_texts()}


def test_surface_lifts_the_path_to_the_given_heights(ds):
    p = path()
    z = np.linspace(6.0, 0.6, 8)
    fig, ax = plot_path_surface(ds, p, z=z)
    lifted = [ln for ln in ax.lines if np.allclose(ln.get_data_3d()[0], p["coords"][:, 0])]
    assert lifted
    xs, ys, zs = lifted[0].get_data_3d()
    np.testing.assert_allclose(ys, p["coords"][:, 1])
    np.testing.assert_allclose(zs, np.clip(z, *ax.get_zlim()))
    # without heights: the grid's loss, interpolated (exact here, at grid points of a separable quadratic's grid)
    on_grid = {"coords": np.array([[-3.0, -2.0], [0.0, 0.0], [1.5, 1.0]]), "steps": [0, 1, 2]}
    fig, ax = plot_path_surface(ds, on_grid)
    zs = [ln for ln in ax.lines if np.allclose(ln.get_data_3d()[0], on_grid["coords"][:, 0])][0].get_data_3d()[2]
    np.testing.assert_allclose(zs, np.clip([9 + 8 + 0.5, 0.5, 2.25 + 2 + 0.5], *ax.get_zlim()))
    with pytest.raises(LossmapError) as exc:
        plot_path_surface(ds, p, z=np.ones(3))
    assert "\n" not in str(exc.value)
    assert trajectory_figure(ds, [p, path(shift=0.2, label="b")]).axes  # both panels draw


def test_bad_paths_are_one_line_errors(ds):
    for bad in ({"coords": np.zeros((3, 3)), "steps": [0, 1, 2]}, {"coords": np.zeros((3, 2)), "steps": [0, 1]}, []):
        with pytest.raises(LossmapError) as exc:
            plot_path(ds, bad)
        assert "\n" not in str(exc.value)


# ---- animations -----------------------------------------------------------------------------------------


def test_frame_steps_merge_runs_and_keep_the_ends():
    np.testing.assert_array_equal(frame_steps([np.array([0, 10, 20]), np.array([0, 5, 20, 40])], 10), [0, 5, 10, 20, 40])
    picked = frame_steps([np.arange(100)], 7)
    assert picked[0] == 0 and picked[-1] == 99 and picked.size == 7 and np.all(np.diff(picked) > 0)


def test_gif_has_one_frame_per_step_and_the_path_grows(ds, tmp_path):
    from PIL import Image

    a, b = path(n=4, steps=[0, 10, 20, 30]), path(n=3, steps=[0, 15, 30], shift=0.4, label="Adam")
    out = animate(ds, [a, b], tmp_path / "run.gif", fps=4, dpi=40)
    with Image.open(out) as im:
        assert im.n_frames == 5  # steps 0, 10, 15, 20, 30
        assert im.info["duration"] == 250
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB"), dtype=np.int16))
    changed = [int((np.abs(f - frames[0]).sum(axis=2) > 0).sum()) for f in frames]
    assert changed[0] == 0 and all(x < y for x, y in zip(changed[1:], changed[2:]))  # more of the path each frame
    out = animate(ds, a, tmp_path / "few.gif", max_frames=2, dpi=30)
    with Image.open(out) as im:
        assert im.n_frames == 2


def test_mp4_frames_with_imageio_ffmpeg(ds, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    out = animate(ds, path(n=6), tmp_path / "run.mp4", fps=5, dpi=40)
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert frames == 6 and seconds == pytest.approx(6 / 5, abs=0.05)


def test_unsupported_suffix_missing_folder_and_missing_ffmpeg(ds, tmp_path, monkeypatch):
    for out, needle in ((tmp_path / "run.avi", ".avi"), (tmp_path / "no" / "run.gif", "does not exist")):
        with pytest.raises(LossmapError) as exc:
            animate(ds, path(), out)
        assert needle in str(exc.value) and "\n" not in str(exc.value)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_ffmpeg() is None
    with pytest.raises(LossmapError) as exc:
        animate(ds, path(), tmp_path / "run.mp4")
    assert "ffmpeg" in str(exc.value) and "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
