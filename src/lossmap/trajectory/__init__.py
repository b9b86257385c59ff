"""Training trajectories: record a run, find the plane it lives in, draw and animate its path.

>>> rec = Recorder("runs/sgd", schedule=Schedule.log(1, 5000, 50))         # doctest: +SKIP
>>> rec.save(model, step=step, loss=loss, lr=lr)                           # doctest: +SKIP
>>> plane = trajectory_plane("runs/sgd")                                   # doctest: +SKIP
>>> x, y = plane_axes(plane, points=41)                                    # doctest: +SKIP
>>> ds = lossmap.compute(load_origin(Net(), plane), data, x=x, y=y, directions=plane.directions)  # doctest: +SKIP
>>> ds = trajectory_landscape(Net(), "runs/sgd", data, out="traj.nc")   # all of the above, plus every checkpoint  # doctest: +SKIP
>>> paths = read_paths(ds)                                               # doctest: +SKIP

Importing this package imports neither PyTorch Lightning nor transformers (their callbacks live in
:mod:`lossmap.trajectory.callbacks`) nor matplotlib (the figures import it when they draw).
"""

from __future__ import annotations

from .animation import animate
from .figures import plot_path, plot_path_surface, trajectory_figure
from .landscape import TrajectoryResult, evaluate_checkpoints, trajectory_landscape, trajectory_run
from .pca import Plane, RunCoordinates, load_origin, plane_axes, select_names, trajectory_plane
from .record import Recorder, Schedule
from .run import Checkpoint, Run, load_run
from .stored import TrajectoryPath, has_trajectory, read_paths

__all__ = [
    "Recorder", "Schedule", "load_run", "Run", "Checkpoint",
    "trajectory_plane", "Plane", "RunCoordinates", "plane_axes", "load_origin", "select_names",
    "plot_path", "plot_path_surface", "trajectory_figure", "animate",
    "trajectory_landscape", "trajectory_run", "TrajectoryResult", "evaluate_checkpoints",
    "read_paths", "has_trajectory", "TrajectoryPath",
]
