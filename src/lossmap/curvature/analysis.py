"""The spectrum of an objective's Hessian in one call: extreme eigenpairs, trace, density, per-layer spectra.

:func:`spectrum_of` runs the determinism probe (:func:`~lossmap.curvature.hessian.check_deterministic`), then
what was asked for, on one :class:`~lossmap.curvature.operator.HessianOperator` of the objective:

* the ``top`` largest and the ``bottom`` smallest (most negative) eigenvalues with unit eigenvectors
  (thick-restart Lanczos, :mod:`~lossmap.curvature.lanczos`; the largest to ``‖Hx − λx‖ ≤ tol·|λ|``, the smallest to
  ``tol·(λmax − λ)``, see :mod:`~lossmap.curvature.extremes`; start vectors drawn from ``seed``, so a run is
  reproducible);
* the trace by Hutch++ with ``trace_matvecs`` HVPs and its standard error;
* the spectral density by stochastic Lanczos quadrature (``runs`` × ``steps`` HVPs);
* per-layer spectra: the same ends of the spectrum of each module's diagonal block ``H[B, B]``.

Every part records the HVPs it used; the probe's two are counted apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .._rng import generator
from ..errors import LossmapError
from ..objective import Objective
from .density import SLQ, slq
from .hessian import Reduce, check_deterministic, hessian_operator
from .operator import HessianOperator, layer_blocks
from .extremes import largest, smallest, start
from .spectrum import Eigen, dense_matrix
from .trace import TraceEstimate, hutchpp

__all__ = ["Spectrum", "LayerSpectrum", "spectrum_of", "check_counts"]

log = logging.getLogger("lossmap")


@dataclass
class LayerSpectrum:
    """The extreme eigenvalues of one module's diagonal block of the Hessian.

    Attributes:
        names (tuple[str, ...]): the block's tensors.
        size (int): its number of parameters.
        top (np.ndarray): float64, largest first (fewer than asked when the block is small).
        bottom (np.ndarray): float64, most negative first.
        hvps (int): HVPs used for this block.
    """

    names: tuple[str, ...]
    size: int
    top: np.ndarray
    bottom: np.ndarray
    hvps: int


@dataclass
class Spectrum:
    """What :func:`spectrum_of` found (parts not asked for are None or empty).

    Attributes:
        top (Eigen | None): the largest eigenpairs (``top.values`` largest first, ``top.vectors`` unit dicts).
        bottom (Eigen | None): the smallest (most negative first).
        trace (TraceEstimate | None): Hutch++ estimate with its standard error.
        density (SLQ | None): quadrature nodes and weights of the spectral density.
        layers (dict[str, LayerSpectrum]): per-module spectra, by module name.
        size (int): the Hessian's dimension (number of parameters it covers).
        names (list[str]): its tensors.
        tol (float): the eigensolver's relative tolerance.
        seed (int): seed of the start, probe and trace vectors.
        probe_hvps (int): HVPs of the determinism probe.
        hvp_method (str): the HVP method that ran.
        seconds (dict[str, float]): wall time of each part.
    """

    top: Eigen | None
    bottom: Eigen | None
    trace: TraceEstimate | None
    density: SLQ | None
    layers: dict[str, LayerSpectrum]
    size: int
    names: list[str]
    tol: float
    seed: int
    probe_hvps: int
    hvp_method: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def hvps(self) -> int:
        """All HVPs, the probe's included."""
        parts = [self.top, self.bottom, self.trace, self.density]
        return self.probe_hvps + sum(p.hvps for p in parts if p is not None) + sum(s.hvps for s in self.layers.values())


def _whole(value: int, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise LossmapError(f"{what}={value!r}: use a whole number >= {low}")
    return int(value)


def check_counts(size: int, top: int, bottom: int) -> None:
    """Raise one line unless ``top`` and ``bottom`` eigenvalues can be found for a Hessian of ``size`` parameters.

    Example:
        >>> check_counts(10, 3, 0)
    """
    for k, what in ((top, "top"), (bottom, "bottom")):
        if k >= size:
            raise LossmapError(
                f"{what}={k} eigenvalues of a Hessian of {size} parameters: ask for at most {size - 1}"
            )


#: blocks up to this many parameters are built densely (n HVPs) instead of by Lanczos
DENSE_BLOCK = 64


def _block_values(op: HessianOperator, top: int, bottom: int, tol: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``top`` largest and ``bottom`` smallest eigenvalues of a block; small blocks are built densely."""
    n = op.shape[0]
    if n <= max(top, bottom) + 1 or n <= DENSE_BLOCK:
        values = np.linalg.eigvalsh(dense_matrix(op))
        return values[::-1][:top].copy(), values[:bottom].copy()
    hi = largest(op, top, tol, seed) if top else None
    lo = smallest(op, bottom, tol, seed, sigma=hi.values[0] if hi is not None else None) if bottom else None
    return (hi.values if hi is not None else np.empty(0)), (lo.values if lo is not None else np.empty(0))


def spectrum_of(objective: Objective, *, top: int = 5, bottom: int = 0, tol: float = 1e-3,
                trace_matvecs: int | None = None, density_steps: int | None = None, density_runs: int = 1,
                per_layer: bool = False, theta: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
                method: str = "auto", ncv: int | None = None, reduce: Reduce | None = None, probe: bool = True,
                say: Callable[[str], None] | None = None, keep_memory: int | str | None = None) -> Spectrum:
    """The Hessian's spectrum at ``theta`` (default θ0): see the module docstring.

    Args:
        objective: model, data, loss and tensor selection (:class:`~lossmap.objective.Objective`).
        top, bottom: how many largest / smallest (most negative) eigenpairs (0: none); each below the
            parameter count.
        tol: relative tolerance of the eigenpairs (ARPACK's test ``‖Hx − λx‖ ≤ tol·|λ|``; 0: machine precision).
        trace_matvecs: HVPs of the Hutch++ trace estimate (None: no trace; at least 3).
        density_steps, density_runs: Lanczos steps and runs of the SLQ density (None: no density).
        per_layer: also the ``top``/``bottom`` eigenvalues (at least one each) of every module's block.
        theta: the point (``{name: tensor}`` over ``objective.names``).
        seed: seed of the Lanczos starts, the probe and the trace and density probes.
        method: the HVP method (``"auto"``, ``"forward-over-reverse"``, ``"double-backward"``).
        ncv: Lanczos vectors held before a restart (default ``max(2k + 1, 20)``).
        reduce: sums HVPs over torchrun ranks (:class:`~lossmap.curvature.shards.RankSum`).
        probe: run the determinism probe first (False: trust the data and model).
        say: called with a line after each part (progress).
        keep_memory: the memory the kept gradient graphs may hold (:func:`~lossmap.curvature.hessian.hessian_operator`).

    Returns:
        Spectrum: eigenpairs, trace, density and per-layer spectra with their HVP counts.

    Example:
        >>> from torch import nn
        >>> x = torch.randn(64, 3, dtype=torch.float64)
        >>> obj = Objective(nn.Linear(3, 1, bias=False).double(), (x, torch.zeros(64, 1, dtype=torch.float64)))
        >>> s = spectrum_of(obj, top=1, bottom=1, tol=0)
        >>> ref = np.linalg.eigvalsh(2 * (x.T @ x).numpy() / 64)
        >>> bool(np.allclose([s.top.values[0], s.bottom.values[0]], [ref[-1], ref[0]]))
        True
    """
    top, bottom = _whole(top, "top", 0), _whole(bottom, "bottom", 0)
    density_runs = _whole(density_runs, "density_runs", 1)
    if not (tol >= 0):
        raise LossmapError(f"tol={tol}: use a relative tolerance >= 0 (0: machine precision)")
    if trace_matvecs is not None:
        _whole(trace_matvecs, "trace_matvecs", 3)
    if density_steps is not None:
        _whole(density_steps, "density_steps", 1)
    if not (top or bottom or trace_matvecs or density_steps or per_layer):
        raise LossmapError("nothing to compute: ask for top or bottom eigenvalues, the trace, the density or per-layer spectra")
    op = hessian_operator(objective, theta, method=method, reduce=reduce, keep_memory=keep_memory)
    n = op.shape[0]
    check_counts(n, top, bottom)
    say = say or (lambda line: log.info(line))
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[part] = round(now - clock, 3)
        clock = now

    # the probe multiplies the start of the first Lanczos run (the top's, or the bottom's shift run, which finds
    # λmax from the same start), whose first product it then gives for free
    probe_hvps = check_deterministic(op, seed, v=start(seed, n, "top") if top or bottom else None) if probe else 0
    lap("probe")
    found_top = largest(op, top, tol, seed, ncv=ncv) if top else None
    lap("top")
    sigma = float(found_top.values[0]) if found_top is not None else None
    found_bottom = smallest(op, bottom, tol, seed, ncv=ncv, sigma=sigma) if bottom else None
    lap("bottom")
    if found_top is not None or found_bottom is not None:
        say(_eigen_line(found_top, found_bottom, tol))
    trace = hutchpp(op, trace_matvecs, seed=generator(seed, 2)) if trace_matvecs else None
    lap("trace")
    if trace is not None:
        say(f"trace {trace.estimate:.6g} ± {trace.se:.2g} (Hutch++, {trace.hvps} HVPs)")
    density = slq(op, density_steps, density_runs, seed=generator(seed, 3)) if density_steps else None
    lap("density")
    method = op.hvp.method  # the probe's choice where it was "auto"
    layers = _layers(op, max(top, 1), max(bottom, 1), tol, seed) if per_layer else {}
    lap("layers")
    return Spectrum(found_top, found_bottom, trace, density, layers, n, list(op.names), float(tol), int(seed),
                    probe_hvps, method, seconds)


def _eigen_line(top: Eigen | None, bottom: Eigen | None, tol: float) -> str:
    parts = []
    for eig, what in ((top, "largest"), (bottom, "most negative")):
        if eig is not None:
            parts.append(f"{what} eigenvalues {', '.join(f'{v:.6g}' for v in eig.values)} ({eig.hvps} HVPs)")
    return "; ".join(parts) + f"; tol {tol:g}"


def _layers(base: HessianOperator, top: int, bottom: int, tol: float, seed: int) -> dict[str, LayerSpectrum]:
    """Each module's block of ``base`` (its products share ``base``'s kept graphs)."""
    out: dict[str, LayerSpectrum] = {}
    for layer, names in layer_blocks(list(base.names)).items():
        op = HessianOperator(base.hvp, base.template, block=names)
        hi, lo = _block_values(op, top, bottom, tol, seed)
        out[layer] = LayerSpectrum(tuple(names), op.shape[0], hi, lo, op.count)
    return out

