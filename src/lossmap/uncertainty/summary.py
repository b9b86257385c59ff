"""The uncertainty of a landscape in words: the lines ``lossmap surface``, ``compare`` and ``report`` print.

* :func:`error_text` — the standard errors at the centre and the largest paired error;
* :func:`precision_text` — how many samples evaluation to a stated precision read;
* :func:`ensemble_rows` / :func:`ensemble_text` — the flatness numbers over direction seeds: median,
  10/90 % quantiles and the confidence interval of the mean (:func:`lossmap.uncertainty.ensemble.describe`);
* :func:`comparison_text` — whether two ensembles' flatness numbers differ beyond the spread across seeds
  (:func:`lossmap.uncertainty.ensemble.compare_summaries`, the test named in every line).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..errors import LossmapError
from . import ensemble as ens
from .pointwise import SAMPLES_USED, se_of
from .seeds import SEED, is_ensemble

__all__ = ["error_text", "precision_text", "ensemble_rows", "ensemble_text", "comparison_text", "paired_seeds"]

LEVEL = 0.9


def _centre(ds: xr.Dataset) -> dict[str, int]:
    return {a: int(np.argmin(np.abs(ds[a].values))) for a in ("x", "y") if a in ds.dims}


def error_text(ds: xr.Dataset, metric: str = "loss") -> str:
    """``errors: loss at the centre 0.1416 ± 0.0057 (s/√n, …); the change from the centre is known to ± 0.012 or
    better (paired)``; empty for a file without errors or an ensemble."""
    se, paired = se_of(ds, metric, "se"), se_of(ds, metric, "paired_se")
    if se is None or is_ensemble(ds):
        return ""
    at = _centre(ds)
    value, err = float(ds[metric].isel(at).values), float(se.isel(at).values)
    text = f"\nerrors: {metric} at the centre {value:.4g} ± {err:.2g} (one standard error s/√n, w.r.t. the data distribution"
    set_se = se_of(ds, metric, "se_set")
    if set_se is not None:
        text += f"; ± {float(set_se.isel(at).values):.2g} w.r.t. the whole data set"
    text += ")"
    if paired is not None and np.isfinite(paired.values).any():
        text += f"; the change from the centre has a paired standard error of at most {float(np.nanmax(paired.values)):.2g}"
    return text


def precision_text(ds: xr.Dataset) -> str:
    """How many samples the points read under evaluation to a stated precision (empty otherwise)."""
    if SAMPLES_USED not in ds.variables or "precision_tol" not in ds.attrs:
        return ""
    a = ds.attrs
    n = np.asarray(ds[SAMPLES_USED].values, dtype=np.float64)
    n = n[np.isfinite(n)]
    if n.size == 0:
        return ""
    total = float(a.get("samples") or n.max())
    tol = float(a["precision_tol"])
    bound = f"{100 * tol:g} % of the loss" if int(a.get("precision_relative", 1)) else f"{tol:g}"
    z = float(a.get("precision_z", 1.96))
    return (f"\nprecision: each point read batches until {z:g}·SE ≤ {bound} (w.r.t. the {int(total)} evaluation samples): "
            f"{int(n.min())}–{int(n.max())} samples per point, {100 * n.sum() / (total * n.size):.0f} % of a full "
            f"evaluation")


def ensemble_rows(ds: xr.Dataset, metric: str = "loss", rise: float | None = None, radius: float | None = None,
                  level: float = LEVEL) -> dict[str, dict[str, Any]]:
    """:func:`lossmap.uncertainty.ensemble.describe` of each flatness number of an ensemble file."""
    return ens.describe_summaries(ens.seed_summaries(ds, metric=metric, rise=rise, radius=radius), level=level)


def ensemble_text(ds: xr.Dataset, metric: str = "loss", rise: float | None = None, radius: float | None = None,
                  level: float = LEVEL) -> str:
    """A table of the flatness numbers over the seeds of an ensemble file (empty for one seed)."""
    if not is_ensemble(ds):
        return ""
    rows = ensemble_rows(ds, metric, rise, radius, level)
    k = ds.sizes[SEED]
    head = f"\nover {k} direction seeds ({metric}; {100 * level:g} % confidence interval of the mean over directions, t):"
    width = max(len(key) for key in rows)
    lines = [head, f"  {'number'.ljust(width)}  {'median':>9}  {'q10':>9}  {'q90':>9}  {'mean':>9}  {'CI':>21}  seeds"]
    for key, d in rows.items():
        ci = f"[{_f(d['ci_low'])}, {_f(d['ci_high'])}]"
        lines.append(f"  {key.ljust(width)}  {_f(d['median']):>9}  {_f(d['q10']):>9}  {_f(d['q90']):>9}  {_f(d['mean']):>9}  "
                     f"{ci:>21}  {d['n']}/{k}")
    return "\n".join(lines)


def paired_seeds(a: xr.Dataset, b: xr.Dataset) -> bool:
    """Whether seed ``k`` drew the same raw directions for both files: the same seeds, and models with the same
    tensors (the same direction kind, normalization and bias policy and the same parameter count)."""
    same = [a.attrs.get(k) == b.attrs.get(k) for k in ("directions_kind", "normalization", "bias_policy",
                                                          "parameter_count", "moved_parameter_count")]
    return all(same) and np.array_equal(np.asarray(a[SEED].values), np.asarray(b[SEED].values))


def comparison_text(datasets: Sequence[xr.Dataset], names: Sequence[str], metric: str = "loss",
                    rise: float | None = None, radius: float | None = None, alpha: float = 0.05) -> str:
    """Whether the first two ensembles' flatness numbers differ beyond the spread across seeds, one line per
    number, naming the test (paired t-test when seed k drew the same raw directions for both, else Welch's)."""
    if len(datasets) < 2 or not all(is_ensemble(d) for d in datasets[:2]):
        return ""
    a, b = datasets[0], datasets[1]
    if rise is None:  # one threshold for both models, so the rise radii compare
        centre = [float(d[metric].isel({SEED: 0, **_centre(d)}).values) for d in (a, b)]
        rise = 0.1 * (1.0 + max(abs(c) for c in centre if math.isfinite(c))) if any(map(math.isfinite, centre)) else None
    sa, sb = (ens.seed_summaries(d, metric=metric, rise=rise, radius=radius) for d in (a, b))
    paired = paired_seeds(a, b)
    test = "paired t-test: seed k drew the same raw directions for both" if paired else "Welch's t-test on the per-seed values"
    lines = [f"\n{names[0]} vs {names[1]} ({metric}, rise {_f(rise)}; {test}, two-sided, level {alpha:g}; several "
             "numbers at once: read one chosen beforehand, or divide the level by their count):"]
    for key in [k for k in ens.FLATNESS_KEYS if k in sa and k in sb]:
        try:
            c = ens.compare(sa[key], sb[key], paired=paired, alpha=alpha, names=(names[0], names[1]))
        except LossmapError:
            lines.append(f"  {key}: not compared (fewer than 2 seeds with a value for a model)")
            continue
        lines.append(f"  {key}: mean {_f(c.mean_a)} vs {_f(c.mean_b)}: {c.verdict}")
    return "\n".join(lines)


def _f(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
