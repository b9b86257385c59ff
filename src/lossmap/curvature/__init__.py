"""Curvature of the loss: Hessian eigenvalues and eigenvectors, trace, spectral density and curvature maps,
all on a matrix-free Hessian operator (HVPs only)."""

from __future__ import annotations

from ..plot.spectrum import plot_density, smooth_density
from .density import SLQ, lanczos, slq
from .maps import CurvatureMap, curvature_map
from .operator import HessianOperator, flatten, layer_blocks, matrix_operator, unflatten
from .spectrum import Eigen, dense_matrix, top_eigen
from .trace import TraceEstimate, hutchinson, hutchpp

__all__ = [
    "HessianOperator", "matrix_operator", "flatten", "unflatten", "layer_blocks",
    "Eigen", "top_eigen", "dense_matrix",
    "TraceEstimate", "hutchinson", "hutchpp",
    "SLQ", "lanczos", "slq", "smooth_density",
    "CurvatureMap", "curvature_map",
    "plot_density",
]
