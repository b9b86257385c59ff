"""Hessian spectrum files: a netCDF/HDF5 file of numbers, the eigenvectors beside it.

``lossmap hessian --out h.nc`` (and :func:`save_spectrum`) writes three files, each atomically:

``h.nc`` — an :class:`xarray.Dataset`, attribute ``lossmap_format = "lossmap.hessian"`` (version 1):

=============================  ==================  ==========================================================
variable                       dims                meaning
=============================  ==================  ==========================================================
``eigenvalues_top``            ``top``             largest eigenvalues, largest first (``top`` = 1, 2, …)
``eigenvalues_bottom``         ``bottom``          smallest eigenvalues, most negative first
``density_nodes``              ``node``            SLQ quadrature nodes (Ritz values) of all runs
``density_weights``            ``node``            their weights (sum 1 over all runs)
``density_run``                ``node``            the run each node came from
``layer_size``                 ``layer``           parameters of each module's block (``layer`` = module name)
``layer_eigenvalues_top``      ``layer, rank``     the block's largest eigenvalues (NaN past its size)
``layer_eigenvalues_bottom``   ``layer, rank``     its smallest
``layer_hvps``                 ``layer``           HVPs each block used
=============================  ==================  ==========================================================

Variables of parts that were not asked for are absent. Attributes: ``parameter_count`` (the Hessian's
dimension), ``tensors`` (JSON list), ``tol``, ``seed``, ``hvps_top``, ``hvps_bottom``, ``hvps_trace``,
``hvps_density``, ``hvps_layers``, ``hvps_probe``, ``hvps_total``, ``trace`` and ``trace_se`` (NaN when
not asked for), ``trace_method``, ``trace_matvecs``, ``density_steps``, ``density_runs``, ``hvp_method``,
``loss``, ``data``, ``samples``, ``dtype``, ``device``, ``ranks``, ``theta0_sha256``, ``seconds_<part>``,
``eigenvectors_file``, ``directions_file``, ``directions_picks``, ``versions`` and ``created``.

``h.eigenvectors.safetensors`` — every eigenvector: keys ``top<i>.<tensor>`` and ``bottom<i>.<tensor>``
(``i`` from 1), unit norm over all the Hessian's parameters; :func:`load_eigenvectors` reads it.

``h.directions.safetensors`` — two of them (``directions_picks``, default the top two) as
:class:`~lossmap.directions.Directions` of kind ``"hessian"`` (normalization ``none``), which
``lossmap surface --directions`` slices along: the grid's coordinates are then Euclidean distances in
parameter space.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..directions import Directions
from ..errors import LossmapError
from ..files import atomic_path, check_output, read_netcdf, sibling
from ..plot.spectrum import FORMAT
from .analysis import Spectrum

__all__ = ["FORMAT", "FORMAT_VERSION", "parse_picks", "hessian_directions", "spectrum_dataset", "save_spectrum",
           "load_spectrum", "load_eigenvectors", "sibling"]

FORMAT_VERSION = 1
ENDS = ("top", "bottom")


def parse_picks(spec: str) -> list[tuple[str, int]]:
    """``"top,bottom"`` → ``[("top", 0), ("bottom", 0)]``: which eigenvectors become directions.

    A repeated end takes that end's next eigenvector (``"top,top"``: the first and second largest).

    Example:
        >>> parse_picks("top,top"), parse_picks("bottom")
        ([('top', 0), ('top', 1)], [('bottom', 0)])
    """
    words = [w.strip() for w in str(spec).split(",") if w.strip()]
    if not 1 <= len(words) <= 2 or any(w not in ENDS for w in words):
        raise LossmapError(f"eigenvector choice {spec!r} is not understood: write top,top (default), top,bottom or top")
    seen: dict[str, int] = {}
    picks = []
    for w in words:
        picks.append((w, seen.get(w, 0)))
        seen[w] = seen.get(w, 0) + 1
    return picks


def _pair(spectrum: Spectrum, end: str, i: int) -> tuple[float, dict[str, torch.Tensor]]:
    eig = spectrum.top if end == "top" else spectrum.bottom
    if eig is None or i >= len(eig.values):
        raise LossmapError(f"the spectrum has no {end} eigenvector {i + 1}: ask for at least {i + 1} {end} eigenvalue(s)")
    return float(eig.values[i]), eig.vectors[i]


def hessian_directions(spectrum: Spectrum, picks: Sequence[tuple[str, int]], tensor_filter: str | None = None,
                       origin_sha256: str = "") -> Directions:
    """The picked unit eigenvectors as :class:`~lossmap.directions.Directions` (kind ``"hessian"``).

    Args:
        spectrum: from :func:`~lossmap.curvature.analysis.spectrum_of`.
        picks: e.g. ``parse_picks("top,bottom")``.
        tensor_filter: the tensor selection the Hessian was taken over (recorded for ``surface``).
        origin_sha256: hash of θ0's selected tensors (:func:`lossmap.space.tensor_hash`).

    Returns:
        Directions: normalization ``none`` (unit vectors: grid units are parameter-space distances), labels
        naming each eigenvalue.
    """
    tensors, labels = [], []
    symbols = ("α", "β")
    for (end, i), symbol in zip(picks, symbols):
        value, vector = _pair(spectrum, end, i)
        tensors.append({n: t.detach().clone() for n, t in vector.items()})
        which = "largest" if end == "top" else "most negative"
        rank = "" if i == 0 else f" no. {i + 1}"
        labels.append(f"{symbol} (Hessian eigenvector, {which}{rank}: λ = {value:.4g}; unit norm)")
    return Directions(tensors=tensors, kind="hessian", normalization="none", bias_policy="keep",
                      tensor_filter=tensor_filter, markers={"θ*": [0.0] * len(tensors)}, labels=labels,
                      origin_sha256=origin_sha256)


def _eigen_vars(spectrum: Spectrum) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for end, eig in (("top", spectrum.top), ("bottom", spectrum.bottom)):
        if eig is not None:
            out[f"eigenvalues_{end}"] = xr.DataArray(eig.values.astype(np.float64), dims=(end,),
                                                     coords={end: np.arange(1, len(eig.values) + 1)},
                                                     attrs={"long_name": f"{'largest' if end == 'top' else 'smallest'} Hessian eigenvalues"})
    if spectrum.density is not None:
        d = spectrum.density
        out["density_nodes"] = xr.DataArray(d.nodes, dims=("node",), attrs={"long_name": "SLQ quadrature nodes"})
        out["density_weights"] = xr.DataArray(d.weights, dims=("node",), attrs={"long_name": "SLQ quadrature weights"})
        out["density_run"] = xr.DataArray(d.run.astype(np.int32), dims=("node",))
    if spectrum.layers:
        names = list(spectrum.layers)
        width = max(1, max(max(s.top.size, s.bottom.size) for s in spectrum.layers.values()))
        for end in ENDS:
            table = np.full((len(names), width), np.nan)
            for row, s in enumerate(spectrum.layers.values()):
                vals = s.top if end == "top" else s.bottom
                table[row, : vals.size] = vals
            out[f"layer_eigenvalues_{end}"] = xr.DataArray(table, dims=("layer", "rank"),
                                                           coords={"layer": names, "rank": np.arange(1, width + 1)})
        out["layer_size"] = xr.DataArray(np.array([s.size for s in spectrum.layers.values()], dtype=np.int64), dims=("layer",))
        out["layer_hvps"] = xr.DataArray(np.array([s.hvps for s in spectrum.layers.values()], dtype=np.int64), dims=("layer",))
    return out


def spectrum_dataset(spectrum: Spectrum, attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The spectrum as a ``lossmap.hessian`` dataset (layout in the module docstring).

    Args:
        spectrum: from :func:`~lossmap.curvature.analysis.spectrum_of`.
        attrs: more attributes (data description, loss, device, …).

    Returns:
        xr.Dataset: the numbers; the eigenvectors are not in it (see :func:`save_spectrum`).
    """
    s = spectrum
    tr = s.trace
    a: dict[str, Any] = {
        "lossmap_format": FORMAT, "lossmap_format_version": FORMAT_VERSION, "parameter_count": s.size,
        "tensors": json.dumps(s.names), "tol": s.tol, "seed": s.seed, "hvp_method": s.hvp_method,
        "hvps_top": s.top.hvps if s.top else 0, "hvps_bottom": s.bottom.hvps if s.bottom else 0,
        "hvps_trace": tr.hvps if tr else 0, "hvps_density": s.density.hvps if s.density else 0,
        "hvps_layers": sum(x.hvps for x in s.layers.values()), "hvps_probe": s.probe_hvps, "hvps_total": s.hvps,
        "trace": tr.estimate if tr else float("nan"), "trace_se": tr.se if tr else float("nan"),
        "trace_method": tr.method if tr else "", "trace_matvecs": tr.hvps if tr else 0,
        "density_steps": s.density.steps if s.density else 0,
        "density_runs": int(s.density.run.max()) + 1 if s.density is not None and s.density.run.size else 0,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **{f"seconds_{k}": v for k, v in s.seconds.items()},
    }
    for key, value in (attrs or {}).items():
        a[key] = value if isinstance(value, (str, int, float, np.integer, np.floating)) else json.dumps(value, default=str)
    return xr.Dataset(_eigen_vars(s), attrs=a)


def _save_tensors(flat: dict[str, torch.Tensor], path: Path, header: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: t.detach().cpu().contiguous() for k, t in flat.items()}, str(tmp), metadata=header)
    return path


def save_spectrum(spectrum: Spectrum, path: str | Path, *, picks: Sequence[tuple[str, int]] | None = None,
                  tensor_filter: str | None = None, origin_sha256: str = "", attrs: Mapping[str, Any] | None = None
                  ) -> dict[str, Path]:
    """Write ``path`` (the numbers), its eigenvectors and two of them as directions (see the module docstring).

    Args:
        spectrum: from :func:`~lossmap.curvature.analysis.spectrum_of`.
        path: the ``.nc`` file.
        picks: the eigenvectors that become directions (default: the top two, or what there is).
        tensor_filter, origin_sha256: recorded in the directions (see :func:`hessian_directions`).
        attrs: more attributes of the dataset.

    Returns:
        dict[str, Path]: ``{"spectrum": ..., "eigenvectors": ..., "directions": ...}`` (the last two only
        when there are eigenvectors).
    """
    from .. import store

    path = check_output(path, "h.nc")
    extra = dict(attrs or {})
    written: dict[str, Path] = {}
    vectors = {f"{end}{i + 1}.{n}": t for end, eig in (("top", spectrum.top), ("bottom", spectrum.bottom)) if eig
               for i, vec in enumerate(eig.vectors) for n, t in vec.items()}
    if vectors:
        picks = list(picks) if picks is not None else _default_picks(spectrum)
        values = {end: [float(v) for v in eig.values] for end, eig in (("top", spectrum.top), ("bottom", spectrum.bottom)) if eig}
        header = {"format": "lossmap.hessian-eigenvectors", "eigenvalues": json.dumps(values), "names": json.dumps(spectrum.names)}
        written["eigenvectors"] = _save_tensors(vectors, sibling(path, ".eigenvectors.safetensors"), header)
        directions = hessian_directions(spectrum, picks, tensor_filter, origin_sha256)
        dpath = sibling(path, ".directions.safetensors")
        with atomic_path(dpath) as tmp:
            directions.save(tmp)
        written["directions"] = dpath
        extra.update(eigenvectors_file=written["eigenvectors"].name, directions_file=dpath.name,
                     directions_picks=",".join(end for end, _ in picks))
    written["spectrum"] = store.save(spectrum_dataset(spectrum, extra), path)
    return {k: written[k] for k in ("spectrum", "eigenvectors", "directions") if k in written}


def _default_picks(spectrum: Spectrum) -> list[tuple[str, int]]:
    n_top = len(spectrum.top.values) if spectrum.top else 0
    if n_top >= 2:
        return [("top", 0), ("top", 1)]
    if n_top == 1:
        return [("top", 0)] + ([("bottom", 0)] if spectrum.bottom else [])
    return [("bottom", 0)] + ([("bottom", 1)] if len(spectrum.bottom.values) > 1 else [])


def load_spectrum(path: str | Path) -> xr.Dataset:
    """Open a ``lossmap.hessian`` file fully into memory; one line when it is missing or not one.

    Example:
        >>> load_spectrum("missing.nc")
        Traceback (most recent call last):
        ...
        lossmap.errors.LossmapError: Hessian file 'missing.nc' does not exist: check the path
    """
    ds = read_netcdf(path, "Hessian file")
    if ds.attrs.get("lossmap_format") != FORMAT:
        raise LossmapError(f"{str(path)!r} is not a lossmap Hessian file (no '{FORMAT}' format attribute): write it with lossmap hessian")
    if int(ds.attrs.get("lossmap_format_version", 0)) > FORMAT_VERSION:
        raise LossmapError(f"{str(path)!r} has a newer format version than this lossmap reads: upgrade lossmap")
    return ds


def load_eigenvectors(path: str | Path) -> dict[str, list[dict[str, torch.Tensor]]]:
    """``{"top": [v1, v2, …], "bottom": [...]}`` (tensor dicts) from an ``*.eigenvectors.safetensors`` file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LossmapError(f"eigenvector file {str(path)!r} does not exist: check the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            flat = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001
        raise LossmapError(f"cannot read eigenvector file {str(path)!r}: it is damaged or not safetensors") from exc
    if header.get("format") != "lossmap.hessian-eigenvectors":
        raise LossmapError(f"{str(path)!r} is not a lossmap eigenvector file: write it with lossmap hessian")
    names = json.loads(header["names"])
    out: dict[str, list[dict[str, torch.Tensor]]] = {}
    for end in ENDS:
        i = 1
        while all(f"{end}{i}.{n}" in flat for n in names):
            out.setdefault(end, []).append({n: flat[f"{end}{i}.{n}"] for n in names})
            i += 1
    return out
