"""Mode connectivity: permutation alignment (weight matching), low-loss curves, barriers."""

from .align import AlignResult, align, weight_matching
from .barrier import Barriers, PeakSearch, barriers, entezari_barrier, frankle_barrier, locate_max
from .check import check_spec
from .connection import Connection, barrier_table, connect, save_connection
from .curve import Curve, curve_coefficients, train_curve
from .derive import derive_spec
from .path import line_grid, search_path
from .spec import PermutationSpec, apply_permutation, random_permutations, spec_from_axes

__all__ = [
    "AlignResult", "align", "weight_matching", "derive_spec", "check_spec",
    "PermutationSpec", "spec_from_axes", "apply_permutation", "random_permutations",
    "Barriers", "PeakSearch", "barriers", "frankle_barrier", "entezari_barrier", "locate_max",
    "Curve", "curve_coefficients", "train_curve",
    "Connection", "connect", "save_connection", "barrier_table", "line_grid", "search_path",
]
