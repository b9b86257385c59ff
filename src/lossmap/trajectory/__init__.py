"""Training trajectories: record a run, find the plane it lives in, draw and animate its path.

>>> rec = Recorder("runs/sgd", schedule=Schedule.log(1, 5000, 50))         # doctest: +SKIP
>>> rec.save(model, step=step, loss=loss, lr=lr)                           # doctest: +SKIP
>>> plane = trajectory_plane("runs/sgd")                                   # doctest: +SKIP
>>> x, y = plane_axes(plane, points=41)                                    # doctest: +SKIP
>>> ds = lossmap.compute(load_origin(Net(), plane), data, x=x, y=y, directions=plane.directions)  # doctest: +SKIP
>>> ds = trajectory_landscape(Net(), "runs/sgd", data, out="traj.nc")   # all of the above, plus every checkpoint  # doctest: +SKIP
>>> paths = read_paths(ds)                                               # doctest: +SKIP

Importing this package imports neither PyTorch Lightning nor transformers (their callbacks live in
:mod:`lossmap.trajectory.callbacks`) nor matplotlib (the figures import it when they draw); the names below load
on first use, so reading and drawing a stored trajectory does not import torch.
"""

from __future__ import annotations

from .._lazy import lazy_names

#: public name → the module that defines it
_EXPORTS = {
    "Recorder": "record", "Schedule": "record",
    "load_run": "run", "Run": "run", "Checkpoint": "run",
    "trajectory_plane": "pca", "Plane": "pca", "RunCoordinates": "pca", "plane_axes": "pca", "load_origin": "pca",
    "select_names": "pca",
    "plot_path": "figures", "plot_path_surface": "figures", "trajectory_figure": "figures",
    "animate": "animation",
    "trajectory_landscape": "landscape", "trajectory_run": "landscape", "TrajectoryResult": "landscape",
    "evaluate_checkpoints": "landscape",
    "read_paths": "stored", "has_trajectory": "stored", "TrajectoryPath": "stored",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_names(__name__, globals(), _EXPORTS)
