"""How much of a landscape is noise: standard errors of per-point means, evaluation to a stated precision,
and ensembles over direction seeds.

* :mod:`.moments` — running mean/variance of per-example values (Welford/Chan), merged across ranks;
  standard errors w.r.t. the data distribution, the evaluation set, and paired to the centre.
* :mod:`.sequential` — a stopping rule that reads batches until ``z·SE ≤ tol``.
* :mod:`.ensemble` — bands over direction seeds, per-seed summary numbers with confidence intervals, and a
  test of whether two models' flatness numbers differ beyond the spread across seeds.

Wired into landscapes:

* :mod:`.pointwise` — the per-point error variables a landscape file stores (``m_se``, ``m_se_set``,
  ``m_paired_se``, ``samples_used``), as coordinates, and the data set's size ``N``;
* :mod:`.seeds` — direction ensembles as one resumable file with a ``seed`` dimension (``seeds="0:8"``);
* :mod:`.order` — the shared random order of the samples for evaluation to a stated precision;
* :mod:`.summary` — the lines the commands print (errors, precision, ensembles, comparisons).

The engines' per-point running statistics are in :mod:`lossmap.engine.running`; the figures in
:mod:`lossmap.plot.uncertainty` and :mod:`lossmap.plot.uncertainty_report`; the user's guide in docs/uncertainty.md.
"""

from __future__ import annotations
