"""Mode connectivity: permutation alignment (weight matching), low-loss curves, barriers."""

from .align import AlignResult, align, weight_matching
from .barrier import Barriers, PeakSearch, barriers, entezari_barrier, frankle_barrier, locate_max
from .check import check_spec
from .curve import Curve, curve_coefficients, train_curve
from .derive import derive_spec
from .spec import PermutationSpec, apply_permutation, random_permutations, spec_from_axes

__all__ = [
    "AlignResult", "align", "weight_matching", "derive_spec", "check_spec",
    "PermutationSpec", "spec_from_axes", "apply_permutation", "random_permutations",
    "Barriers", "PeakSearch", "barriers", "frankle_barrier", "entezari_barrier", "locate_max",
    "Curve", "curve_coefficients", "train_curve",
]
