"""How much of a landscape is noise: standard errors of per-point means, evaluation to a stated precision,
and ensembles over direction seeds.

* :mod:`.moments` — running mean/variance of per-example values (Welford/Chan), merged across ranks;
  standard errors w.r.t. the data distribution, the evaluation set, and paired to the centre.
* :mod:`.sequential` — a stopping rule that reads batches until ``z·SE ≤ tol``.
* :mod:`.ensemble` — bands over direction seeds, per-seed summary numbers with confidence intervals, and a
  test of whether two models' flatness numbers differ beyond the spread across seeds.
"""

from __future__ import annotations
