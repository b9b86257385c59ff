"""Per-point standard errors in a landscape file: their names, how they are made and read back.

For every metric ``m`` whose values come one per example (the built-in losses, accuracy, ``nn`` losses with
a ``reduction``, metrics returning ``[batch]``), a landscape stores at each point

``m_se``
    ``s/√n`` with the sample standard deviation ``s`` of the per-example values: the error of the point's
    value as an estimate of the mean over the distribution the data were drawn from;
``m_se_set``
    ``s/√n · √(1 − n/N)``: the error with respect to the mean over the whole data set of ``N`` examples, when
    fewer were read (``samples`` below the data set's size, or evaluation to a stated precision); 0 at a
    full pass. It assumes the samples read are a random draw from the set (see ``population`` below);
``m_paired_se``
    the standard error of ``m(θ) − m(θ0)`` from the per-example differences: every point sees the same
    samples in the same order, so the change from the centre is known far better than either value;
``samples_used``
    (evaluation to a stated precision only) how many samples the point read.

These are **coordinates** of the dataset, not data variables (as the ``done`` mask of a partial landscape):
code that walks ``ds.data_vars`` — :func:`lossmap.store.metric_names`, the plots, ``compare``, ``export`` —
sees only the metrics, so files with and without them (lossmap 0.1's) read, plot and compare alike.
``ds["loss_se"]`` reads one like any variable. A metric given only as batch means (a loss without a
per-example form, a metric returning a scalar) gets no error variables: the spread within a batch is unknown.

The data set's size ``N`` (attribute ``population``) is the number of samples a full pass gives when the
whole data was evaluated; with ``samples`` set, ``len()`` of the data (a Dataset, the Dataset of a DataLoader,
the tensors of an ``(inputs, targets)`` pair), or else the count of one pass over the data, without the model;
unknown (no ``m_se_set``) for a one-pass iterator.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..errors import LossmapError

__all__ = [
    "SAMPLES_USED", "column_names", "error_names", "error_coords", "read_columns", "noise_mask", "se_of",
    "population_size", "has_errors",
]

log = logging.getLogger("lossmap")

SAMPLES_USED = "samples_used"
_LONG = {
    "_se": "standard error of {m} (s/√n, w.r.t. the data distribution)",
    "_se_set": "standard error of {m} w.r.t. the whole data set (s/√n·√(1 − n/N))",
    "_paired_se": "standard error of {m}(θ) − {m}(θ0) (paired over the same samples)",
}


def column_names(metrics: Sequence[str]) -> list[str]:
    """The columns of an engine's statistics rows: the metrics, ``m_se``, ``m_paired_se``, ``samples_used``.

    Examples:
        >>> column_names(["loss", "accuracy"])
        ['loss', 'accuracy', 'loss_se', 'accuracy_se', 'loss_paired_se', 'accuracy_paired_se', 'samples_used']
    """
    m = list(metrics)
    return m + [f"{k}_se" for k in m] + [f"{k}_paired_se" for k in m] + [SAMPLES_USED]


def error_names(ds: xr.Dataset) -> list[str]:
    """The per-point error variables ``ds`` holds (any of ``m_se``, ``m_se_set``, ``m_paired_se``, ``samples_used``).

    Examples:
        >>> ds = xr.Dataset({"loss": ("x", [1.0, 2.0])}, coords={"x": [0.0, 1.0], "loss_se": ("x", [0.1, 0.1])})
        >>> error_names(ds)
        ['loss_se']
    """
    from ..store import metric_names

    names = []
    for m in metric_names(ds):
        names += [f"{m}{s}" for s in _LONG if f"{m}{s}" in ds.variables]
    return names + ([SAMPLES_USED] if SAMPLES_USED in ds.variables else [])


def has_errors(ds: xr.Dataset, metric: str = "loss") -> bool:
    """Whether ``ds`` holds ``metric_se`` and ``metric_paired_se`` (files made before lossmap stored them do not).

    Examples:
        >>> has_errors(xr.Dataset({"loss": ("x", [1.0])}))
        False
    """
    return f"{metric}_se" in ds.variables and f"{metric}_paired_se" in ds.variables


def error_coords(
    values: np.ndarray, metrics: Sequence[str], shape: Sequence[int], dims: Sequence[str], *,
    per_example: Sequence[bool], population: int | None, evaluated: int, precision: bool,
) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, str]]]:
    """The error coordinates of a landscape from the engines' statistics rows.

    Args:
        values (array [G, 3M + 1]): the rows, columns as :func:`column_names` (NaN where not evaluated).
        metrics (list of str): the ``M`` metric names.
        shape, dims: the landscape's grid shape and dims (e.g. ``(21, 21)``, ``("x", "y")``).
        per_example (list of bool): per metric, whether it came one value per example.
        population (int or None): the data set's size ``N`` (None: unknown).
        evaluated (int): the samples a full pass reads (the evaluation set's size).
        precision (bool): points stopped at a stated precision (adds ``samples_used``).

    Returns:
        dict: name → ``(dims, array, attrs)`` for :meth:`xarray.Dataset.assign_coords`.
    """
    m = len(metrics)
    n = values[:, 3 * m]
    out: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, str]]] = {}
    with_set = population is not None and (population > evaluated or precision)
    for k, name in enumerate(metrics):
        if not per_example[k]:
            continue
        se, paired = values[:, m + k], values[:, 2 * m + k]
        out[f"{name}_se"] = se
        if with_set:
            with np.errstate(invalid="ignore"):
                factor = np.sqrt(np.clip(1.0 - n / float(population), 0.0, None))
            out[f"{name}_se_set"] = np.where(n >= population, 0.0, se * factor)
        out[f"{name}_paired_se"] = paired
    if precision:
        out[SAMPLES_USED] = n
    dims = tuple(dims)
    return {
        key: (dims, np.asarray(arr, dtype=np.float64).reshape(tuple(shape)),
              {"long_name": _long_name(key, metrics)})
        for key, arr in out.items()
    }


def _long_name(key: str, metrics: Sequence[str]) -> str:
    if key == SAMPLES_USED:
        return "samples read at this point (evaluation to a stated precision)"
    for suffix in ("_paired_se", "_se_set", "_se"):
        if key.endswith(suffix) and key[: -len(suffix)] in metrics:
            return _LONG[suffix].format(m=key[: -len(suffix)])
    return key


def read_columns(ds: xr.Dataset, metrics: Sequence[str], dims: Sequence[str] | None = None) -> np.ndarray:
    """The statistics rows ``[G, 3M + 1]`` of a landscape file (the inverse of :func:`error_coords`); errors
    the file lacks (a file made before lossmap stored them) are NaN, ``samples_used`` then the file's ``samples``.

    Args:
        ds (xarray.Dataset): a landscape.
        metrics (list of str): the metrics, in the order of the rows.
        dims (list of str, optional): the order of the flattened grid (default: the first metric's dims).

    Returns:
        numpy array ``[G, 3M + 1]`` (float64), ``G`` the grid's points.

    Examples:
        >>> ds = xr.Dataset({"loss": ("x", [1.0, 2.0])}, coords={"loss_se": ("x", [0.1, 0.2])}, attrs={"samples": 50})
        >>> read_columns(ds, ["loss"]).tolist()
        [[1.0, 0.1, nan, 50.0], [2.0, 0.2, nan, 50.0]]
    """
    dims = tuple(dims) if dims is not None else tuple(ds[metrics[0]].dims)

    def flat(name: str) -> np.ndarray:
        return np.asarray(ds[name].transpose(*dims).values, dtype=np.float64).reshape(-1)

    means = [flat(m) for m in metrics]
    size = means[0].size
    nan = np.full(size, np.nan)
    se = [flat(f"{m}_se") if f"{m}_se" in ds.variables else nan for m in metrics]
    paired = [flat(f"{m}_paired_se") if f"{m}_paired_se" in ds.variables else nan for m in metrics]
    if SAMPLES_USED in ds.variables:
        n = flat(SAMPLES_USED)
    else:
        n = np.full(size, float(ds.attrs.get("samples", np.nan) or np.nan))
    return np.stack(means + se + paired + [n], axis=1)


def se_of(ds: xr.Dataset, metric: str, kind: str = "se") -> xr.DataArray | None:
    """``ds[metric + "_" + kind]`` (``kind``: ``se``, ``se_set`` or ``paired_se``), or None when the file lacks it."""
    name = f"{metric}_{kind}"
    return ds[name] if name in ds.variables else None


def noise_mask(ds: xr.Dataset, metric: str = "loss", k: float = 2.0) -> np.ndarray | None:
    """Where the change from the centre is within ``k`` paired standard errors: ``|m − m(centre)| ≤ k·m_paired_se``.

    Args:
        ds (xarray.Dataset): a 1-D or 2-D landscape (no seed dim).
        metric (str): the metric.
        k (float): how many paired standard errors count as noise (2: about 95 %).

    Returns:
        bool array with the metric's ``(x[, y])`` shape, True where the change is noise; None when the file
        holds no paired errors for ``metric``.

    Examples:
        >>> x = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": ("x", x**2)}, coords={"x": x, "loss_paired_se": ("x", np.full(5, 0.2))})
        >>> noise_mask(ds).tolist()
        [False, True, True, True, False]
    """
    paired = se_of(ds, metric, "paired_se")
    if paired is None:
        return None
    if not (np.isfinite(k) and k >= 0):
        raise LossmapError(f"k={k!r} must be a finite number >= 0 (paired standard errors, e.g. 2)")
    dims = ("x", "y") if "y" in ds[metric].dims else ("x",)
    z = np.asarray(ds[metric].transpose(*dims).values, dtype=np.float64)
    se = np.asarray(paired.transpose(*dims).values, dtype=np.float64)
    xs = np.asarray(ds["x"].values, dtype=np.float64)
    centre_idx: Any = (int(np.argmin(np.abs(xs))),)
    if len(dims) == 2:
        centre_idx += (int(np.argmin(np.abs(np.asarray(ds["y"].values, dtype=np.float64)))),)
    change = np.abs(z - z[centre_idx])
    with np.errstate(invalid="ignore"):
        return np.asarray(change <= k * se, dtype=bool)


def population_size(data: Any, samples: int | None, evaluated: int, batch_size: int) -> int | None:
    """The size ``N`` of the data set the evaluated samples come from (see the module docstring).

    Args:
        data: what was given to :func:`lossmap.compute`.
        samples (int or None): the ``samples`` option.
        evaluated (int): the samples a full pass read.
        batch_size (int): the batch size (for a counting pass).

    Returns:
        int or None: ``N`` (None: unknown).

    Examples:
        >>> import torch
        >>> population_size((torch.zeros(50, 2), torch.zeros(50)), samples=20, evaluated=20, batch_size=8)
        50
    """
    if samples is None or evaluated < samples:
        return int(evaluated)
    size = _declared_size(data)
    if size is None:
        size = _counted_size(data, batch_size)
    if size is None:
        log.info("the data set's size is unknown (a one-pass iterator): no errors with respect to the whole set")
        return None
    return max(int(size), int(evaluated))


def _declared_size(data: Any) -> int | None:
    import torch
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return int(data[0].shape[0])
    if isinstance(data, DataLoader):
        data = data.dataset
    if not isinstance(data, Dataset) or isinstance(data, IterableDataset):
        return None  # a list or iterable of batches: its len() counts batches, not samples
    try:
        return int(len(data))
    except TypeError:
        return None


def _counted_size(data: Any, batch_size: int) -> int | None:
    from ..data.batches import iterate, make_batch

    raws = iterate(data, batch_size)
    if iter(raws) is raws:  # a one-pass iterator, already read
        return None
    log.info("counting the data set's samples (one pass over the data, without the model)")
    return sum(make_batch(raw).size for raw in raws)
