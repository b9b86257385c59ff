"""Direction ensembles: the same grid over K direction seeds, and what survives the choice of directions.

A random slice shows the landscape along one draw of directions; another seed shows another picture. Over
K seeds this module gives

Bands (:func:`band`)
    per grid point the median and the 10–90 % quantiles over seeds (numpy's default linear interpolation
    between order statistics; NaN values are left out). With K = 8 the 10 % and 90 % quantiles lie between
    the two smallest and the two largest values: the band shows the spread of the seeds, not a confidence
    interval.

Per-seed summary numbers (:func:`seed_summaries`)
    :func:`lossmap.stats.summarize` of each seed's slice (rise radii, ball mean increase, …) plus the
    curvature at the centre (:func:`curvature`): the second derivative of the slice at the centre grid point
    by the central finite difference on the (possibly uneven) grid, along ``x`` in 1-D and along ``x`` and ``y``
    through the centre in 2-D. For a quadratic it is exact: along a direction ``d`` it is ``dᵀHd``. Compare
    models with one explicit ``rise`` (and ``radius``) so every seed and model uses the same threshold.

Their distribution (:func:`describe`)
    median and 10/90 % quantiles over seeds, and a confidence interval for the *mean over random directions*
    of the number: by default the t-interval ``mean ± t_{K−1} · sd/√K`` (exact for normally distributed
    values, close to nominal for moderately skewed ones at K ≥ 8); optionally the percentile bootstrap
    (resampling the seeds with a numpy Generator seeded from ``seed``), which needs no normality but
    undercovers at small K (its 90 % interval covers ≈ 85–88 % of the time at K = 8–30).

Comparing two models (:func:`compare`)
    Is model A flatter than model B beyond the spread across seeds? The test is on the per-seed values:
    Welch's t-test (unequal variances, ``scipy.stats.ttest_ind(equal_var=False)``) by default, or the paired
    t-test (``scipy.stats.ttest_rel``) on per-seed differences with ``paired=True``. *Paired* means that seed
    ``k`` drew the same raw Gaussian tensors for both models — possible only when the models have the same
    parameter shapes; filter normalization then rescales each filter of the draw to the norms of the model it
    is applied to, so the two directions are the same draw, not the same vector. Pairing helps when the two
    models' numbers move together with the draw (same architecture, similar weights); for different
    architectures the seed-k draws are unrelated and Welch's test is the right one. Two-sided, level
    ``alpha = 0.05``; the verdict reads "differ beyond the spread across seeds" when ``p < alpha``. Testing
    several numbers at once inflates the chance that one of them differs by luck (with 7 numbers about
    1 − 0.95⁷ ≈ 30 %): read one pre-chosen number, or divide ``alpha`` by the count (Bonferroni).
    Seeds whose number is NaN (e.g. a rise radius beyond the grid) are left out, and counted.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import xarray as xr

from .. import stats as lstats
from .._rng import generator
from ..errors import LossmapError
from ..store import require_metric

__all__ = [
    "band", "curvature", "centre_curvature", "seed_summaries", "stack_seeds", "describe", "describe_summaries", "compare",
    "compare_summaries", "Comparison", "FLATNESS_KEYS",
]

#: the per-seed numbers :func:`compare_summaries` tests by default (those present in both inputs)
FLATNESS_KEYS = (
    "rise_radius_xpos", "rise_radius_xneg", "rise_radius_ypos", "rise_radius_yneg", "ball_mean_increase",
    "curvature_x", "curvature_y",
)


def _seeds(values, what: str, least: int = 2) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[0] < least:
        k = 0 if arr.ndim < 1 else arr.shape[0]
        raise LossmapError(f"{what} has {k} direction seed(s): use at least {least} seeds (e.g. --seeds 0:8)")
    return arr


def band(curves, low: float = 0.1, high: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and ``low``/``high`` quantiles over seeds at every grid point.

    Args:
        curves (array [K, ...]): one slice per seed (``[K, G]`` for 1-D curves, ``[K, Gx, Gy]`` for planes).
        low, high (float): quantile levels, ``0 ≤ low < high ≤ 1``.

    Returns:
        tuple of float64 arrays ``(median, lower, upper)``, each of shape ``curves.shape[1:]``.

    Example:
        >>> med, lo, hi = band([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])
        >>> med.tolist(), lo.tolist(), hi.tolist()
        ([1.0, 2.0], [0.2, 1.2], [1.8, 2.8])
    """
    arr = _seeds(curves, "the ensemble")
    if not (0.0 <= low < high <= 1.0):
        raise LossmapError(f"band levels low={low!r}, high={high!r}: need 0 <= low < high <= 1, e.g. 0.1 and 0.9")
    with warnings.catch_warnings():  # an all-NaN column is NaN in the output, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanquantile(arr, [0.5, low, high], axis=0)
    return q[0], q[1], q[2]


def centre_curvature(coords, values) -> float:
    """Second derivative of a 1-D slice at its centre (the grid point nearest 0) by central differences.

    With ``h₋``, ``h₊`` the spacings to the neighbours: ``2·(h₋·f₊ − (h₋ + h₊)·f₀ + h₊·f₋) / (h₋·h₊·(h₋ + h₊))``,
    exact for a quadratic on any grid.

    Args:
        coords (array [G]): increasing coefficients.
        values (array [G]): the metric along them.

    Returns:
        float: the curvature; NaN when the centre is the grid's first or last point or a value is not finite.

    Example:
        >>> x = [-0.5, 0.0, 0.25, 1.0]
        >>> centre_curvature(x, [3 * v**2 + v for v in x])
        6.0
    """
    xs, f = np.asarray(coords, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != f.shape:
        raise LossmapError(f"coords {xs.shape} and values {f.shape} must be 1-D of the same length")
    i = int(np.argmin(np.abs(xs)))
    if i == 0 or i == len(xs) - 1:
        return math.nan
    hm, hp = xs[i] - xs[i - 1], xs[i + 1] - xs[i]
    fm, f0, fp = f[i - 1], f[i], f[i + 1]
    if not (math.isfinite(fm) and math.isfinite(f0) and math.isfinite(fp)):
        return math.nan
    return float(2.0 * (hm * fp - (hm + hp) * f0 + hp * fm) / (hm * hp * (hm + hp)))


def curvature(ds: xr.Dataset, metric: str = "loss") -> dict[str, float]:
    """Curvature at the centre of one landscape: ``curvature_x`` (and ``curvature_y`` along y through the
    centre in 2-D), see :func:`centre_curvature`.

    Args:
        ds (xarray.Dataset): a landscape with dims ``x`` (and ``y``), no ``seed`` dim.
        metric (str): the variable to read.

    Returns:
        dict: ``{"curvature_x": float}`` (``"curvature_y"`` too in 2-D).

    Example:
        >>> x = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": (("x",), 2 * x**2)}, coords={"x": x})
        >>> curvature(ds)
        {'curvature_x': 4.0}
    """
    require_metric(ds, metric)
    var = ds[metric]
    xs = np.asarray(ds["x"].values, dtype=np.float64)
    if "y" not in var.dims:
        return {"curvature_x": centre_curvature(xs, var.transpose("x").values)}
    ys = np.asarray(ds["y"].values, dtype=np.float64)
    z = np.asarray(var.transpose("x", "y").values, dtype=np.float64)
    i0, j0 = int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys)))
    return {"curvature_x": centre_curvature(xs, z[:, j0]), "curvature_y": centre_curvature(ys, z[i0, :])}


def stack_seeds(x, values, y=None, seeds: Sequence[int] | None = None, metric: str = "loss") -> xr.Dataset:
    """A landscape Dataset with a ``seed`` dimension from plain arrays (for :func:`seed_summaries`).

    Args:
        x (array [Gx]), y (array [Gy], optional): the grid.
        values (array [K, Gx] or [K, Gx, Gy]): the metric per seed.
        seeds (list of int, optional): the seeds' labels (default ``0..K−1``).
        metric (str): the variable's name.

    Returns:
        xarray.Dataset: ``metric`` with dims ``(seed, x[, y])``.

    Example:
        >>> stack_seeds([-1.0, 0.0, 1.0], [[1.0, 0.0, 1.0], [2.0, 0.0, 2.0]]).sizes["seed"]
        2
    """
    arr = np.asarray(values, dtype=np.float64)
    dims = ("seed", "x") if y is None else ("seed", "x", "y")
    if arr.ndim != len(dims):
        raise LossmapError(f"values of shape {arr.shape} need {len(dims)} dims {dims}: one slice per seed")
    coords: dict[str, Any] = {"seed": list(range(arr.shape[0])) if seeds is None else list(seeds), "x": np.asarray(x, dtype=np.float64)}
    if y is not None:
        coords["y"] = np.asarray(y, dtype=np.float64)
    return xr.Dataset({metric: (dims, arr)}, coords=coords)


def seed_summaries(
    ds: xr.Dataset, metric: str = "loss", rise: float | None = None, radius: float | None = None, dim: str = "seed",
) -> dict[str, np.ndarray]:
    """:func:`lossmap.stats.summarize` and :func:`curvature` of every seed's slice.

    Args:
        ds (xarray.Dataset): a landscape whose ``metric`` has dims ``(dim, x[, y])``.
        metric (str): the variable to summarize.
        rise, radius (float, optional): passed to ``summarize``; give them explicitly when comparing models.
        dim (str): the seed dimension's name.

    Returns:
        dict: every numeric summary key (``rise_radius_xpos``, ``ball_mean_increase``, ``curvature_x``, …)
        mapped to a float64 array ``[K]``, plus ``seed``: the seed labels.

    Example:
        >>> x = np.linspace(-1, 1, 21)
        >>> s = seed_summaries(stack_seeds(x, [a * x**2 for a in (1.0, 2.0)]), rise=0.25)
        >>> s["curvature_x"].round(6).tolist(), s["rise_radius_xpos"].round(3).tolist()
        ([2.0, 4.0], [0.5, 0.35])
    """
    require_metric(ds, metric)
    if dim not in ds[metric].dims:
        raise LossmapError(f"{metric!r} has no {dim!r} dimension (dims {ds[metric].dims}): compute it over several direction seeds")
    rows = []
    for k in range(ds.sizes[dim]):
        one = ds.isel({dim: k})
        row = lstats.summarize(one, metric=metric, rise=rise, radius=radius)
        row.update(curvature(one, metric))
        rows.append(row)
    out = {key: np.array([r[key] for r in rows], dtype=np.float64) for key in rows[0] if key != "metric"}
    out["seed"] = np.asarray(ds[dim].values) if dim in ds.coords else np.arange(ds.sizes[dim])
    return out


def describe(values, level: float = 0.9, method: str = "t", seed: int = 0, resamples: int = 10_000) -> dict[str, Any]:
    """Distribution over seeds of one summary number, with a confidence interval for its mean.

    Args:
        values (array [K]): the number per seed (NaN seeds are left out and counted).
        level (float): confidence level of the interval, in (0, 1).
        method (str): ``"t"`` (t-interval) or ``"bootstrap"`` (percentile bootstrap of the mean).
        seed (int): seeds the numpy Generator of the bootstrap.
        resamples (int): bootstrap resamples.

    Returns:
        dict: ``n`` (finite seeds), ``missing`` (NaN seeds), ``mean``, ``sd``, ``median``, ``q10``, ``q90``,
        ``ci_low``, ``ci_high``, ``level``, ``method``.

    Example:
        >>> d = describe([1.0, 2.0, 3.0, 4.0], level=0.9)
        >>> round(d["ci_low"], 4), round(d["ci_high"], 4)
        (0.9809, 4.0191)
    """
    arr = _seeds(np.ravel(np.asarray(values, dtype=np.float64)), "the numbers")
    if not (0.0 < level < 1.0):
        raise LossmapError(f"level={level!r} must lie strictly between 0 and 1, e.g. 0.9")
    finite = arr[~np.isnan(arr)]
    k = finite.size
    out: dict[str, Any] = {"n": int(k), "missing": int(arr.size - k), "level": float(level), "method": method}
    if method not in ("t", "bootstrap"):
        raise LossmapError(f"method={method!r}: choose 't' or 'bootstrap'")
    if k < 2:
        return {**out, **dict.fromkeys(("mean", "sd", "median", "q10", "q90", "ci_low", "ci_high"), math.nan)}
    mu, sd = float(finite.mean()), float(finite.std(ddof=1))
    out.update(mean=mu, sd=sd, median=float(np.median(finite)), q10=float(np.quantile(finite, 0.1)),
               q90=float(np.quantile(finite, 0.9)))
    alpha = 1.0 - level
    if method == "t":
        from scipy import stats as sps  # on first use: it takes a second to import

        half = float(sps.t.ppf(1 - alpha / 2, k - 1)) * sd / math.sqrt(k)
        out.update(ci_low=mu - half, ci_high=mu + half)
    else:
        if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
            raise LossmapError(f"resamples={resamples!r} must be a whole number >= 100")
        rng = generator(seed)
        means = finite[rng.integers(0, k, size=(resamples, k))].mean(axis=1)
        lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
        out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def describe_summaries(
    summaries: dict[str, np.ndarray], keys: Sequence[str] | None = None, level: float = 0.9, method: str = "t",
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """:func:`describe` for each flatness number of a :func:`seed_summaries` result.

    Args:
        summaries (dict): :func:`seed_summaries` of one model.
        keys (list of str, optional): the numbers (default: :data:`FLATNESS_KEYS` present).
        level, method, seed: as for :func:`describe`.

    Returns:
        dict: key → the :func:`describe` dict, in ``keys`` order.

    Example:
        >>> d = describe_summaries({"curvature_x": np.array([1.0, 2.0, 3.0])})
        >>> d["curvature_x"]["mean"]
        2.0
    """
    chosen = [k for k in FLATNESS_KEYS if k in summaries] if keys is None else list(keys)
    missing = [k for k in chosen if k not in summaries]
    if missing or not chosen:
        raise LossmapError(f"numbers {missing or list(FLATNESS_KEYS)} are not in the summaries: choose keys it carries")
    return {k: describe(summaries[k], level=level, method=method, seed=seed) for k in chosen}


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`: the test, its statistic and p-value, and a one-line verdict."""

    test: str
    statistic: float
    pvalue: float
    df: float
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    alpha: float
    differ: bool
    verdict: str


def compare(a, b, paired: bool = False, alpha: float = 0.05, names: tuple[str, str] = ("A", "B")) -> Comparison:
    """Do two models' per-seed values of one number differ beyond the spread across seeds?

    Args:
        a, b (array [K]): the number per direction seed for each model (NaN seeds are left out; when paired,
            a pair with a NaN side is left out).
        paired (bool): paired t-test (seed ``k`` drew the same raw directions for both models, see the module
            docstring); otherwise Welch's t-test.
        alpha (float): two-sided level.
        names (tuple of str): the models' names for the verdict.

    Returns:
        Comparison: ``statistic`` (t), ``pvalue``, ``df``, ``differ = pvalue < alpha`` and the ``verdict`` line.

    Example:
        >>> c = compare([1.0, 1.1, 0.9, 1.05], [2.0, 2.1, 1.9, 2.05])
        >>> c.differ, c.test
        (True, "Welch's t-test")
    """
    if not (0.0 < alpha < 1.0):
        raise LossmapError(f"alpha={alpha!r} must lie strictly between 0 and 1, e.g. 0.05")
    x, y = _seeds(np.ravel(a), f"model {names[0]}"), _seeds(np.ravel(b), f"model {names[1]}")
    if paired:
        if x.size != y.size:
            raise LossmapError(f"a paired test needs the same seeds for both models, got {x.size} and {y.size} values")
        keep = ~(np.isnan(x) | np.isnan(y))
        x, y = x[keep], y[keep]
    else:
        x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    _seeds(x, f"model {names[0]} (finite values)")
    _seeds(y, f"model {names[1]} (finite values)")
    from scipy import stats as sps

    with warnings.catch_warnings():  # scipy warns on (nearly) identical values; the result below covers them
        warnings.simplefilter("ignore", RuntimeWarning)
        if paired:
            test, res = "paired t-test", sps.ttest_rel(x, y)
        else:
            test, res = "Welch's t-test", sps.ttest_ind(x, y, equal_var=False)
    t, p = float(res.statistic), float(res.pvalue)
    df = float(getattr(res, "df", math.nan))
    if math.isnan(p):  # scipy's answer when there is neither spread nor difference: the values agree exactly
        t, p = 0.0, 1.0
    differ = p < alpha
    verdict = (
        f"{names[0]} and {names[1]} {'differ' if differ else 'do not differ'} beyond the spread across seeds "
        f"({test}, t = {t:.3g}, p = {p:.3g} {'<' if differ else '>='} {alpha:g})"
    )
    return Comparison(test, t, p, df, int(x.size), int(y.size), float(x.mean()), float(y.mean()), float(alpha), differ, verdict)


def compare_summaries(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], keys: Sequence[str] | None = None, paired: bool = False,
    alpha: float = 0.05, names: tuple[str, str] = ("A", "B"),
) -> dict[str, Comparison]:
    """:func:`compare` for every flatness number that both :func:`seed_summaries` results carry.

    Args:
        a, b (dict): :func:`seed_summaries` of the two models (computed with the same ``rise``/``radius``).
        keys (list of str, optional): the numbers to test (default: :data:`FLATNESS_KEYS` present in both).
        paired, alpha, names: as for :func:`compare`.

    Returns:
        dict: key → :class:`Comparison`, in ``keys`` order.

    Example:
        >>> a = {"curvature_x": np.array([1.0, 1.2, 0.9])}
        >>> b = {"curvature_x": np.array([1.1, 1.0, 1.0])}
        >>> compare_summaries(a, b)["curvature_x"].differ
        False
    """
    chosen = [k for k in FLATNESS_KEYS if k in a and k in b] if keys is None else list(keys)
    missing = [k for k in chosen if k not in a or k not in b]
    if missing or not chosen:
        raise LossmapError(f"numbers {missing or list(FLATNESS_KEYS)} are not in both summaries: choose keys both carry")
    return {k: compare(a[k], b[k], paired=paired, alpha=alpha, names=names) for k in chosen}
